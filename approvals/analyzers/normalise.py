"""Normalisation before every analyzer: the text an agent wrote is turned into the text it means.

``normalise_segments(segments)`` returns the segments to scan and the Unicode findings:

- every original segment, unchanged (messages and locations point at the original place);
- when the text differs once normalised, the same location again with the normalised text:
  zero-width, bidi and Unicode tag characters stripped, NFKC (full-width letters, ligatures),
  and look-alike letters of other scripts folded to ASCII inside words that mix them with Latin;
- derived segments, located ``<location> (base64)``, ``(hex)``, ``(url-encoded)``, ``(joined)``
  or ``(unicode tags)``: base64, hex and %-encoded candidates decoded when they decode to text,
  and adjacent string literals (``"ghp_" + "abc"``, ``'a' 'b'``, ``"".join(["a", "b"])``) joined.

Everything is bounded (candidates per segment, decoded bytes per scan, nesting of decodes), so a
hostile input costs bounded time. ``Finding`` records invisible / bidi characters with a location
and the character codes, for the ``unicode`` analyzer.
"""
from __future__ import annotations

import base64
import binascii
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass

from core.redaction import BIDI_CONTROL, BIDI_MARK, HIDDEN_RX, INVISIBLE, TAG_END, TAG_START, VARIATION_SELECTORS

from .context import Segment

MAX_CANDIDATES = 16            # decodable candidates tried per segment text
MAX_CANDIDATE_CHARS = 65_536   # longer base64 / hex runs are not decoded
MAX_DECODED_CHARS = 262_144    # decoded text added per scan, in total
MAX_DEPTH = 2                  # a decoded text is itself decoded at most once more
MIN_DECODED = 8                # shorter decodings say nothing

# Letters of Cyrillic, Greek, Armenian and a few Latin extensions that look like ASCII letters.
CONFUSABLES = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i", "ј": "j", "к": "k", "м": "m", "н": "h",
    "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ɡ": "g",
    "А": "A", "В": "B", "Е": "E", "Ё": "E", "Һ": "H", "І": "I", "Ї": "I", "Ј": "J", "К": "K", "М": "M", "Н": "H",
    "О": "O", "Р": "P", "С": "C", "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "Ԁ": "D", "Ԛ": "Q", "Ԝ": "W", "Ү": "Y",
    "ү": "y", "ӏ": "l", "Ӏ": "I", "ԍ": "G", "ո": "n", "ս": "u", "օ": "o", "ց": "g", "զ": "q", "հ": "h",
    # Greek
    "α": "a", "ο": "o", "ν": "v", "ρ": "p", "τ": "t", "υ": "u", "ι": "i", "κ": "k", "χ": "x", "ε": "e",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P",
    "Τ": "T", "Υ": "Y", "Χ": "X",
    # Latin look-alikes outside ASCII
    "ı": "i", "ȷ": "j", "ʟ": "l", "ɪ": "i", "ᴀ": "a", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ᴍ": "m", "ᴏ": "o", "ᴘ": "p",
    "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z", "ʀ": "r", "ꜱ": "s",
}
CONFUSABLE_TABLE = str.maketrans(CONFUSABLES)
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Finding:
    kind: str          # "invisible", "bidi", "bidi_mark" or "tags"
    location: str
    chars: tuple[str, ...]   # "U+200B", ... (distinct, sorted)
    count: int


def _fold_word(m: re.Match) -> str:
    word = m.group(0)
    if word.isascii():
        return word
    has_latin = has_confusable = False
    for ch in word:
        if ch.isascii():
            has_latin = has_latin or ch.isalpha()
        elif ch in CONFUSABLES:
            has_confusable = True
        elif ch.isalpha():
            return word            # a letter of another script with no look-alike: a real foreign word
    # a word made only of look-alikes ("рор") is folded too when it is all confusable
    return word.translate(CONFUSABLE_TABLE) if has_confusable and (has_latin or len(word) >= 3) else word


def _benign_zwj(text: str, i: int) -> bool:
    """ZWJ / ZWNJ between two non-ASCII characters (emoji sequences, Indic and Persian script)."""
    before = text[i - 1] if i > 0 else ""
    after = text[i + 1] if i + 1 < len(text) else ""
    return bool(before) and bool(after) and not before.isascii() and not after.isascii()


def _benign_selector(text: str, i: int) -> bool:
    """A variation selector after a non-ASCII character (an emoji's U+FE0F, a CJK ideograph's
    variant, Mongolian), or a keycap's (``1``, U+FE0F, U+20E3): how the text is meant to look.
    After an ASCII letter it only hides (``r\ufe0fm -rf``)."""
    before = text[i - 1] if i > 0 else ""
    if before and not before.isascii():
        return True
    return before in tuple("0123456789#*") and text[i + 1:i + 2] == "\u20e3"


def normalise_text(text: str, location: str = "") -> tuple[str, list[Finding], str]:
    """(normalised text, findings, text smuggled in Unicode tag characters)."""
    if text.isascii():
        return text, [], ""
    findings: list[Finding] = []
    smuggled = ""
    if HIDDEN_RX.search(text):  # the characters that do not show: core.redaction's one list
        kinds: dict[str, list[str]] = {}
        tags = []
        for i, ch in enumerate(text):
            if ch in INVISIBLE:
                if (ch == "\ufeff" and i == 0) or (ch in "\u200c\u200d" and _benign_zwj(text, i)) \
                        or (ch in VARIATION_SELECTORS and _benign_selector(text, i)):
                    continue
                kinds.setdefault("invisible", []).append(ch)
            elif ch in BIDI_CONTROL:
                kinds.setdefault("bidi", []).append(ch)
            elif ch in BIDI_MARK:
                kinds.setdefault("bidi_mark", []).append(ch)
            elif TAG_START <= ord(ch) <= TAG_END:
                kinds.setdefault("tags", []).append(ch)
                if 0xE0020 <= ord(ch) <= 0xE007E:
                    tags.append(chr(ord(ch) - 0xE0000))
        for kind, chars in kinds.items():
            codes = tuple(sorted({f"U+{ord(c):04X}" for c in chars}))
            findings.append(Finding(kind, location, codes[:8], len(chars)))
        smuggled = "".join(tags)
        text = HIDDEN_RX.sub("", text)
    text = unicodedata.normalize("NFKC", text)
    if not text.isascii():
        text = _WORD.sub(_fold_word, text)
    return text, findings, smuggled


# --- decoding ---------------------------------------------------------------------------------------

def _b64_candidates(least: int) -> re.Pattern:
    """Runs of at least ``least`` base64 (or base64url) characters, standing alone."""
    return re.compile(rf"(?<![A-Za-z0-9+/_-])([A-Za-z0-9+/]{{{least},}}={{0,2}}|[A-Za-z0-9_-]{{{least},}}={{0,2}})"
                      r"(?![A-Za-z0-9+/=_-])")


_B64 = _b64_candidates(16)
_B64_SHORT = _b64_candidates(8)
_DECODER = re.compile(r"\bbase64\s+(?:-\w*d\b|--decode\b|-D\b)|\bb64decode\b|\batob\s*\(|"
                      r"\bFromBase64String\b|\bBase64\.decode|\bbase64_decode\b")
_HEX = re.compile(r"(?<![0-9A-Fa-f])(?:0x)?((?:[0-9A-Fa-f]{2}){8,})(?![0-9A-Fa-f])")
_HEX_ESCAPES = re.compile(r"((?:\\x[0-9A-Fa-f]{2}){4,})")
_PCT = re.compile(r"%[0-9A-Fa-f]{2}")


def _printable(raw: bytes) -> str | None:
    """The UTF-8 text of decoded bytes, when it is text (mostly printable), else None."""
    if len(raw) < MIN_DECODED:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    good = sum(ch.isprintable() or ch in "\n\r\t" for ch in text)
    if good < 0.95 * len(text) or not any(ch.isalpha() for ch in text):
        return None
    return text


def _b64(token: str) -> str | None:
    if len(token) > MAX_CANDIDATE_CHARS:
        return None
    core = token.rstrip("=")
    if len(core) % 4 == 1 or core.isalpha() or core.isdigit():
        return None        # an impossible length, or a plain word / number
    try:
        if "-" in core or "_" in core:
            raw = base64.urlsafe_b64decode(core + "=" * (-len(core) % 4))
        else:
            raw = base64.b64decode(core + "=" * (-len(core) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return _printable(raw)


def _hex(token: str) -> str | None:
    if len(token) > MAX_CANDIDATE_CHARS:
        return None
    try:
        return _printable(bytes.fromhex(token.replace("\\x", "")))
    except ValueError:
        return None


def _decodings(text: str) -> list[tuple[str, str]]:
    """(label, decoded text) for the decodable candidates in ``text`` (bounded)."""
    out: list[tuple[str, str]] = []
    tried = 0
    if len(text) >= 16:
        # next to a decoder (`echo cm0gLXJmIC8q | base64 -d | sh`), base64 shorter than 16 characters too
        b64 = _B64_SHORT if _DECODER.search(text) else _B64
        for rx, label, decode in ((b64, "base64", _b64), (_HEX, "hex", _hex), (_HEX_ESCAPES, "hex", _hex)):
            if label == "hex" and rx is _HEX_ESCAPES and "\\x" not in text:
                continue
            for m in rx.finditer(text):
                tried += 1
                if tried > MAX_CANDIDATES:
                    break
                decoded = decode(m.group(1))
                if decoded:
                    out.append((label, decoded))
    if "%" in text and _PCT.search(text):
        decoded = urllib.parse.unquote(text[:MAX_CANDIDATE_CHARS])
        if decoded != text[:MAX_CANDIDATE_CHARS]:
            out.append(("url-encoded", decoded))
    return out


# --- string literal joining ---------------------------------------------------------------------------

_LIT = r"(?:\"(?:[^\"\\\n]|\\.){0,400}\"|'(?:[^'\\\n]|\\.){0,400}'|`[^`\n$]{0,400}`)"
_CHAIN = re.compile(rf"{_LIT}(?:\s*(?:\+|\.\.|\\\n)?\s*{_LIT})+")
_JOIN_LIST = re.compile(rf"(?:\"\"|'')\s*\.join\(\s*[\[(]\s*({_LIT}(?:\s*,\s*{_LIT})+)\s*,?\s*[\])]\s*\)")
_ARGV = re.compile(rf"\[\s*({_LIT}(?:\s*,\s*{_LIT}){{1,40}})\s*,?\s*\]")
_ONE_LIT = re.compile(_LIT)
_CHAIN_HINT = re.compile(r"[\"'`]\s*(?:\+|\.\.|,)?\s*[\"'`]|\.join\(")


def _unquote(lit: str) -> str:
    body = lit[1:-1]
    if "\\" in body:
        body = re.sub(r"\\(.)", r"\1", body)
    return body


def _join_chain(m: re.Match) -> str:
    parts = _ONE_LIT.findall(m.group(0))
    if len(parts) < 2:
        return m.group(0)
    quote = parts[0][0] if parts[0][0] in "\"'" else '"'
    return quote + "".join(_unquote(p) for p in parts) + quote


def _join_list(m: re.Match) -> str:
    return '"' + "".join(_unquote(p) for p in _ONE_LIT.findall(m.group(1))) + '"'


def _join_argv(m: re.Match) -> str:
    return '"' + " ".join(_unquote(p) for p in _ONE_LIT.findall(m.group(1))) + '"'


# Shell quoting that splits a command word without changing it: `"rm" -rf /`, `r''m`, `r\m`, `rm${IFS}-rf`
_SHELL_TRICK = re.compile(r"\$\{IFS\}|\$IFS\b|(?<=[A-Za-z])(?:''|\"\"|\\)(?=[A-Za-z])|"
                          r"(?<![\w'\"\\])(['\"])([A-Za-z][\w.-]{0,15})\1(?=[ \t]+-|[A-Za-z])|"
                          r"(?<=[A-Za-z])(['\"])([A-Za-z]{1,15})\3")


def _untrick(m: re.Match) -> str:
    if m.group(2) or m.group(4):
        return m.group(2) or m.group(4)
    return " " if m.group(0).startswith("$") else ""


def shell_unquote(text: str) -> str | None:
    """The text with shell quoting tricks inside or around command words undone, or None if it has none."""
    undone, count = _SHELL_TRICK.subn(_untrick, text)
    return undone if count else None


_SPACED = re.compile(r"(?:\b\w (?=\w\b)){4,}\w\b")


def unspace(text: str) -> str | None:
    """``I g n o r e   a l l`` -> ``Ignore all`` (letters spaced out to dodge word patterns)."""
    if not _SPACED.search(text):
        return None
    joined = _SPACED.sub(lambda m: m.group(0).replace(" ", ""), text)
    return re.sub(r" {2,}", " ", joined)


def join_literals(text: str) -> str | None:
    """The text with adjacent / concatenated string literals joined into one, and argv lists
    (``["rm", "-rf", "/"]``) into one command line, or None if there are none."""
    if not _CHAIN_HINT.search(text):
        return None
    joined = _JOIN_LIST.sub(_join_list, text) if ".join(" in text else text
    joined = _CHAIN.sub(_join_chain, joined)
    if "[" in joined:
        joined = _ARGV.sub(_join_argv, joined)
    return joined if joined != text else None


# --- segments ------------------------------------------------------------------------------------------

DERIVED_LABELS = ("joined", "spaced", "unquoted", "unicode tags", "base64", "hex", "url-encoded")
_DERIVED_SUFFIX = re.compile(r" \((?:" + "|".join(re.escape(label) for label in DERIVED_LABELS) + r")\)$")


def base_location(location: str) -> str:
    """The location a derived segment was derived from (``input_data.code (joined)`` ->
    ``input_data.code``); a location that is not derived is its own."""
    return _DERIVED_SUFFIX.sub("", location)


@dataclass
class Normalised:
    segments: tuple[Segment, ...]
    findings: tuple[Finding, ...]
    capped: bool          # a decode cap was hit: part of the encoded text was not looked at


def normalise_segments(segments: tuple[Segment, ...]) -> Normalised:
    out: list[Segment] = []
    findings: list[Finding] = []
    budget = MAX_DECODED_CHARS
    capped = False
    memo: dict[str, tuple] = {}

    def derive(seg: Segment, text: str, depth: int) -> None:
        nonlocal budget, capped
        joined = join_literals(text)
        if joined:
            out.append(Segment(f"{seg.location} (joined)", joined, seg.key))
        spaced = unspace(text) if depth == 1 and len(text) < 20_000 else None
        if spaced:
            out.append(Segment(f"{seg.location} (spaced)", spaced, seg.key))
        unquoted = shell_unquote(text)
        if unquoted:
            out.append(Segment(f"{seg.location} (unquoted)", unquoted, seg.key))
        if depth > MAX_DEPTH:
            return
        for label, decoded in _decodings(text):
            if budget <= 0:
                capped = True
                return
            decoded = decoded[:budget]
            budget -= len(decoded)
            decoded, more, smuggled = normalise_text(decoded, f"{seg.location} ({label})")
            findings.extend(more)
            child = Segment(f"{seg.location} ({label})", decoded, seg.key)
            out.append(child)
            derive(child, decoded, depth + 1)

    for seg in segments:
        out.append(seg)
        if seg.is_key and seg.text.isascii():
            continue
        cached = memo.get(seg.text)
        if cached is None:
            cached = memo[seg.text] = normalise_text(seg.text, seg.location)
        text, found, smuggled = cached
        findings.extend(Finding(f.kind, seg.location, f.chars, f.count) for f in found)
        if text != seg.text:
            out.append(Segment(seg.location, text, seg.key, seg.is_key))
        if smuggled:
            out.append(Segment(f"{seg.location} (unicode tags)", smuggled, seg.key))
        if not seg.is_key:
            derive(seg, text, 1)
    return Normalised(tuple(out), tuple(findings), capped)
