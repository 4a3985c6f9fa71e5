import codecs
import json
import math
import re
import sys
from decimal import Decimal, localcontext

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_document(value, path="body"):
    """Refuse U+0000 anywhere (PostgreSQL cannot store it in text or jsonb) and nesting
    deeper than MAX_DEPTH (it would only fail later, when stored or rendered)."""
    stack = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ParseError(f"JSON parse error - nesting is deeper than {MAX_DEPTH} levels.")
        if isinstance(item, str):
            if "\x00" in item:
                raise ParseError(f"{where} contains a NUL character (\\u0000), which is not accepted.")
            if _SURROGATE.search(item):
                raise ParseError(f"{where} contains a lone UTF-16 surrogate, which is not valid Unicode.")
        elif isinstance(item, dict):
            for k, v in item.items():
                if "\x00" in k or _SURROGATE.search(k):
                    raise ParseError(f"{where} has a key with a NUL character or a lone surrogate.")
                stack.append((v, f"{where}.{k}", depth + 1))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(item))


class BoundedJSONParser(JSONParser):
    """JSON only, at most DATA_UPLOAD_MAX_MEMORY_SIZE bytes, no NaN, no NUL, bounded nesting.

    DRF reads the request stream itself, so Django's body size limit does not apply to it:
    this parser enforces the limit while reading.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise ParseError(f"Request body is larger than {limit} bytes.")
        encoding = _text_encoding((parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET)
        # A charset other than UTF-8 is read as declared; the messages then say it was declared.
        declared = "" if encoding == "utf-8" else ", the charset its Content-Type declares"
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise ParseError(f"JSON parse error - the body is not valid {encoding}{declared}: byte 0x{exc.object[exc.start]:02x} "
                             f"at position {exc.start}. Send JSON in UTF-8.") from None
        except UnicodeError:  # a codec that decodes nothing (charset=undefined)
            raise ParseError(f"JSON parse error - the body cannot be read as {encoding}{declared}. "
                             f"Send JSON in UTF-8.") from None
        if text.startswith("\ufeff"):
            raise ParseError("JSON parse error - the body starts with a byte order mark (U+FEFF): "
                             "send the JSON without one.")
        try:
            data = _loads(text)
        except ValueError as exc:
            read_as = f" (read as {encoding}{declared})" if declared else ""
            raise ParseError(f"JSON parse error - {exc}{read_as}") from None
        except RecursionError:
            raise ParseError("JSON parse error - nesting is too deep.") from None
        _check_document(data)
        return data


def _text_encoding(name: str) -> str:
    """The charset to decode with: an unknown name falls back to UTF-8 (as Django does); a
    codec that is not a text encoding (base64, zlib, rot13, ...) is refused."""
    try:
        info = codecs.lookup(name)
    except LookupError:
        return "utf-8"
    if not getattr(info, "_is_text_encoding", True):
        raise ParseError(f"charset={name} is not a text encoding; send UTF-8 JSON.")
    return info.name


def _refuse_constant(name):
    raise ValueError(f"{name} is not valid JSON")


MAX_INT_DIGITS = 4300  # Python's own limit for converting a string to an int


def _bounded_int(text: str) -> int:
    """A JSON integer; one longer than Python converts says so plainly (Python's own message
    names sys.set_int_max_str_digits, a server setting no client can change)."""
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise ValueError(f"a number has {len(text) - text.startswith('-')} digits, more than {MAX_INT_DIGITS}: "
                         f"send at most {MAX_INT_DIGITS} digits, or the number as a string")
    return int(text)


MAX_SIGNIFICANT_DIGITS = 17  # what a double's exact decimal form needs at most (C's %.17g, Java's toString)
_SIGNIFICAND = re.compile(r"-?([0-9]*)\.?([0-9]*)")


def _finite_float(text: str) -> float:
    """A JSON number with a fraction or an exponent, as a double holds it. One beyond a double's
    range (1e999) is refused by name, where Python would read it as infinity (which JSON cannot
    hold); so is one whose digits a double cannot hold (more than 17 significant digits that are not
    exactly a double, such as 123456789012345678901234567890.5), and one too small for a double to
    hold as written (1e-400, read as 0.0; 2.5e-324, read as 5e-324): it was rounded silently, and the
    input a reviewer approved was not the one sent."""
    value = float(text)
    shown = text if len(text) <= 40 else f"{text[:20]}...{text[-10:]}"
    if math.isinf(value):
        raise ValueError(f"the number {shown} is out of range: send one between -1.7e308 and 1.7e308, "
                         f"or the number as a string")
    whole, fraction = _SIGNIFICAND.match(text.lower().partition("e")[0]).groups()
    digits = (whole + fraction).strip("0")
    if digits and (value == 0 or (abs(value) < sys.float_info.min and not _subnormal_holds(value, text))):
        raise ValueError(f"the number {shown} is too small for a 64-bit float to hold as written (it would be read "
                         f"as {value!r}; below 2.2e-308 a double has fewer digits): send the number as a string")
    if len(digits) > MAX_SIGNIFICANT_DIGITS and not _exactly(value, text):
        raise ValueError(f"the number {shown} has more digits than a 64-bit float holds (it would be read as "
                         f"{value!r}): send at most {MAX_SIGNIFICANT_DIGITS} significant digits, or the number "
                         f"as a string")
    return value


def _subnormal_holds(value: float, text: str) -> bool:
    """Whether a number below the smallest normal double (2.2e-308), where doubles have fewer
    digits, is held as written: it is the shortest form of its double (5e-324, as Python and
    JavaScript print that double), or within what 17 digits carry (4.9406564584124654e-324, C's
    %.17g). 2.5e-324 is read as 5e-324, twice what was sent."""
    try:
        sent, held = Decimal(text), Decimal(value)
        if sent == Decimal(repr(value)):
            return True
        with localcontext() as exact:
            exact.prec = 60
            return abs(held - sent) <= abs(sent) * Decimal(2) ** -53
    except ArithmeticError:
        return False


def _exactly(value: float, text: str) -> bool:
    """Whether the double ``value`` is exactly the number ``text`` writes (2.82879384806159008E17 is)."""
    try:
        return Decimal(value) == Decimal(text)
    except ArithmeticError:  # an exponent past what Decimal takes
        return False


class RepeatedKey(ValueError):
    """JSON with a key twice in one object (json.loads lets the hook's exception through)."""


def _unique_keys(pairs) -> dict:
    """An object whose keys are all different: JSON parsers disagree on a repeated one (Python's
    keeps the last, many the first), so a proxy or a log could read {"decision": "reject", ...,
    "decision": "approve"} as a rejection while the call is approved. Refused by name."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        shown = repeated if len(repeated) <= 40 else f"{repeated[:40]}..."
        # quoted as typed, a lone surrogate written out ("\ud800"): it could not be sent back raw
        shown = '"' + shown.encode("utf-8", "backslashreplace").decode("utf-8") + '"'
        raise RepeatedKey(f"the key {shown} appears more than once in one object: send each key once")
    return obj


def _loads(text: str):
    """json.loads with the API's rules: no NaN or Infinity, integers of at most MAX_INT_DIGITS
    digits, numbers within a double's range, no key twice in one object."""
    return json.loads(text, parse_constant=_refuse_constant, parse_int=_bounded_int, parse_float=_finite_float,
                      object_pairs_hook=_unique_keys)


class NotJson(ValueError):
    """Text that is not written as JSON at all (where plain text is an answer too)."""


def _written_as_json(text: str) -> bool:
    """JSON's syntax, whatever its values (NaN, 1e400, a key twice): read without the rules."""
    try:
        json.loads(text, parse_constant=str, parse_float=str, parse_int=str)
    except json.JSONDecodeError:
        return False
    except (ValueError, RecursionError):
        return True
    return True


def json_or_text(text: str):
    """What a person typed where JSON or plain text is an answer (a question's amendment): the
    JSON it is written as, held to the API's rules (ValueError with the reason: never sent on as
    text without a word), or else the text itself."""
    try:
        return loads_strict(text)
    except NotJson:
        return text


def loads_strict(text: str):
    """JSON typed by a person into a form (an amended input or answer), held to the API's rules:
    no NaN or Infinity, no NUL or lone surrogate, nesting at most MAX_DEPTH levels. ValueError
    with the reason otherwise (never a RecursionError or a value the database refuses): NotJson
    for text that is not JSON, another one for JSON the rules refuse."""
    try:
        value = _loads(text)
    except json.JSONDecodeError as exc:
        raise NotJson(str(exc)) from None
    except ValueError:  # a rule's refusal, met while reading: is the text JSON at all ("NaN values must go")?
        if not _written_as_json(text):
            raise NotJson("not JSON") from None
        raise
    except RecursionError:
        raise ValueError(f"nesting is deeper than {MAX_DEPTH} levels") from None
    try:
        _check_document(value, "$")
    except ParseError as exc:  # "$.files[0] contains a NUL character ...": the place, without the last period
        raise ValueError(str(exc.detail).removeprefix("JSON parse error - ").rstrip(".")) from None
    return value


def json_to_edit(value) -> str:
    """A value prefilled in a form's JSON box (an amendment's editor): indented to read, or compact
    when indented it would take more than a quarter of the body limit (a 90 KB input became a
    megabyte of indentation, and the form could not be sent back unchanged)."""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is not None and len(text.encode()) > limit // 4:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return text
