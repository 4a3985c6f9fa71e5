"""Masking of token-like strings (generated keys, URL passwords) in text that is shown or sent on:
event payloads, messages, flags. Shared by every app that echoes what an agent wrote (the
analyzers, questions, budget overrides), so it lives at the bottom of the layers."""
from __future__ import annotations

import re
import unicodedata

from detect_secrets.filters.heuristic import is_potential_uuid, is_sequential_string


# Characters that do not show. Zero-width and other format characters: U+00AD soft hyphen, U+034F,
# the U+115F/U+1160/U+3164/U+FFA0 fillers, U+17B4/U+17B5, the Mongolian U+180B-U+180F, U+200B-U+200D,
# U+2060-U+2064 and the deprecated U+206A-U+206F, U+FEFF, U+FFF9-U+FFFB, U+1BCA0-U+1BCA3, U+1D173-U+1D17A;
# and the variation selectors U+FE00-U+FE0F and U+E0100-U+E01EF (an emoji's U+FE0F is one).
VARIATION_SELECTORS = frozenset("".join(map(chr, range(0xFE00, 0xFE10))) + "".join(map(chr, range(0xE0100, 0xE01F0)))
                                + "\u180b\u180c\u180d\u180f")
INVISIBLE = VARIATION_SELECTORS | frozenset(
    "\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d"
    "\u2060\u2061\u2062\u2063\u2064\u206a\u206b\u206c\u206d\u206e\u206f\u3164\ufeff\uffa0"
    "\ufff9\ufffa\ufffb"
    + "".join(map(chr, range(0x1BCA0, 0x1BCA4))) + "".join(map(chr, range(0x1D173, 0x1D17B))))
# embeddings, overrides and isolates (Trojan Source) and the implicit marks
BIDI_CONTROL = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
BIDI_MARK = frozenset("\u200e\u200f\u061c")
TAG_START, TAG_END = 0xE0000, 0xE007F   # Unicode tags: invisible ASCII ("ASCII smuggling")
HIDDEN_RX = re.compile("[" + "".join(sorted(INVISIBLE | BIDI_CONTROL | BIDI_MARK)) + "\U000e0000-\U000e007f]")


def without_hidden(text: str) -> str:
    """``text`` without the characters that do not show (above): what a reader sees."""
    return text if text.isascii() else HIDDEN_RX.sub("", text)


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


_URL_PASSWORD = re.compile(r"(://[^/\s:@]*:)[^/\s@]+(@)")
_TOKEN_LIKE = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_=.-]{20,}(?![A-Za-z0-9+/_=-])")


def _mask_if_random(m: re.Match) -> str:
    token = m.group(0)
    return mask(token) if random_looking(token.replace(".", "")) else token


def redact(text: str, limit: int = 80) -> str:
    """A short, single-line snippet for messages, with anything token-like masked."""
    text = " ".join(text.split())
    masked = _masked(text)
    # a token with zero-width characters slipped in, or in full-width letters, is masked too (in
    # the text as a reader sees it: those characters taken out, NFKC); where no mask applies, the
    # text stays as written (an emoji's own selector, a Persian word's joiner)
    bare = text if text.isascii() else unicodedata.normalize("NFKC", without_hidden(text))
    if bare != text:
        masked_bare = _masked(bare)
        if masked_bare != bare:
            masked = masked_bare
    return masked if len(masked) <= limit else masked[: limit - 1] + "…"


def _masked(text: str) -> str:
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}…{m.group(2)}", text)
    return _TOKEN_LIKE.sub(_mask_if_random, text)
