"""Masking of token-like strings (generated keys, URL passwords) in text that is shown or sent on:
event payloads, messages, flags. Shared by every app that echoes what an agent wrote (the
analyzers, questions, budget overrides), so it lives at the bottom of the layers."""
from __future__ import annotations

import re

from detect_secrets.filters.heuristic import is_potential_uuid, is_sequential_string


def mask(value: str) -> str:
    """At most the first 4 characters (a quarter of a short value), then an ellipsis."""
    value = value.strip()
    shown = min(4, len(value) // 4)
    return f"{value[:shown]}…"


_SEPARATORS = re.compile(r"[_/+-]")
_CASE_CONSISTENT = re.compile(r"[a-z0-9]+|[A-Z0-9]+|[A-Z][a-z0-9]+")
_WORD_RUN = re.compile(r"[A-Z]?[a-z]{3,}")


def _identifier_like(token: str) -> bool:
    """snake_case / kebab-case / path-like names, or CamelCase made mostly of pronounceable words."""
    parts = [p for p in _SEPARATORS.split(token) if p]
    if len(parts) >= 2 and all(_CASE_CONSISTENT.fullmatch(p) for p in parts if len(p) >= 4):
        return True
    runs = _WORD_RUN.findall(token)
    letters = "".join(runs).lower()
    return len(letters) >= len(token) * 0.5 and sum(c in "aeiou" for c in letters) >= 0.25 * len(letters)


def random_looking(token: str) -> bool:
    """Shape of a generated key: digits and letters, varied, not a UUID, hash, sequence or name."""
    if not (any(c.isdigit() for c in token) and any(c.isalpha() for c in token)):
        return False
    if len(set(token)) < 8 or is_potential_uuid(token) or is_sequential_string(token):
        return False
    if re.fullmatch(r"[0-9a-fA-F]+", token):      # hex: commit SHAs, checksums, digests
        return False
    if sum(a <= b for a, b in zip(token, token[1:])) >= 0.8 * (len(token) - 1):
        return False                              # a sorted alphabet such as "23456789ABCDEF..."
    return not _identifier_like(token)


_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^/\s@]+(@)")
_TOKEN_LIKE = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_=.-]{20,}(?![A-Za-z0-9+/_=-])")


def _mask_if_random(m: re.Match) -> str:
    token = m.group(0)
    return mask(token) if random_looking(token.replace(".", "")) else token


def redact(text: str, limit: int = 80) -> str:
    """A short, single-line snippet for messages, with anything token-like masked."""
    text = " ".join(text.split())
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}…{m.group(2)}", text)
    text = _TOKEN_LIKE.sub(_mask_if_random, text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
