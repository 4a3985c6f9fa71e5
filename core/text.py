"""Words for people: counts, money and tokens in the pages, the admin and messages."""
import re
import unicodedata
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

# Characters a page shows as nothing (with the format controls, Unicode category Cf): "\u200b",
# "\ufeff" or a braille blank passed Python's strip() as a rejection's reason, and two options
# "yes" and "yes\u200b" were two identical radio buttons.
_BLANKS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0"
                    + "".join(map(chr, range(0xFE00, 0xFE10)))       # variation selectors: they show as
                    + "".join(map(chr, range(0xE0100, 0xE01F0))))    # nothing after nothing (category Mn)


def plural(n: int, word: str, words: str = "") -> str:
    """"1 task", "3 tasks" (or ``words`` for more than one when an "s" does not make it)."""
    return f"{n} {word}" if n == 1 else f"{n} {words or word + 's'}"


def visible_text(value) -> str:
    """``value`` stripped, or "" when nothing of it would be seen (whitespace, format controls such
    as U+200B ZERO WIDTH SPACE and U+FEFF, blank letters): what a required reason, an option or an
    answer is checked with."""
    text = (value or "").strip()
    if any(not (ch.isspace() or ch in _BLANKS or unicodedata.category(ch) == "Cf") for ch in text):
        return text
    return ""


def seen_as(text: str) -> str:
    """What a person reads ``text`` as: NFKC-normalised ("e" + U+0301 is "é"), without format
    controls and blank letters: two options that are equal so are one choice to the eye."""
    normal = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in normal if ch not in _BLANKS and unicodedata.category(ch) != "Cf").strip()


def has_nul(*values: str) -> bool:
    """Whether a value typed by a person holds U+0000, which PostgreSQL cannot store in text."""
    return any("\x00" in value for value in values)


# A decision form that was not valid, as the admin's and the reviewer pages' decision pages say it.
FORM_ERROR_NOTE = "Nothing was decided: correct the form below."


# --- money and tokens as people read them (the reviewer pages' filters, the admin's, the models' names) ---
NOTHING = "—"
FOUR_PLACES = Decimal("0.0001")
# A number written with exactly four decimals (the API's money), not part of a longer number or word.
# (not a four-place amount the text itself says is tokens or USD: "would add 150,000.0000 tokens")
# A full stop after it ends the sentence ("by 0.2016."), not the number (it was left as it was).
_MONEY_IN_TEXT = re.compile(r"(?<![\w$.,])(-?\d[\d,]*\.\d{4})(?!\w|\.\d)(?!\s*(?:tokens?|USD)\b)")
# "would add 120.2007 USD": the amount the text says is money, shown as money ("$120.2007").
_USD_IN_TEXT = re.compile(r"(?<![\w$.,])(-?\d[\d,]*\.\d{4}) USD\b")
# A moment as the services write it (ISO 8601 in UTC: "at 2026-12-07T12:37:34.860736Z"), shown as
# the pages show times ("2026-12-07 12:37:34 UTC").
_UTC_IN_TEXT = re.compile(r"\b(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.\d+)?(?:Z|\+00:00)(?![\w:])")
# The budget's "would pass the daily token limit by 12345" (whole tokens), as texts stored before
# the services printed "12,345 tokens" themselves (budgets.services.ledger.excess_text) have it.
_TOKENS_IN_TEXT = re.compile(r"(token limit by )(\d+)(?![\w.,])(?: tokens)?")


def _decimal(value) -> Decimal | None:
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        number = Decimal(str(value).replace(",", "").strip())
    except (InvalidOperation, ValueError, TypeError):
        return None
    return number if number.is_finite() else None


def _not_a_number(value) -> str:
    """What money and tokens show for a value that is not a number: nothing, or the value as it is."""
    return NOTHING if value is None or value == "" else str(value)


def money(value) -> str:
    """``Decimal("0.0125")`` → ``$0.0125``; ``1234.5`` → ``$1,234.5000``; ``-1`` → ``-$1.0000``."""
    number = _decimal(value)
    if number is None:
        return _not_a_number(value)
    number = number.quantize(FOUR_PLACES, rounding=ROUND_HALF_UP)
    return f"{'-' if number < 0 else ''}${abs(number):,.4f}"


def tokens(value) -> str:
    """``12345`` → ``12,345 tokens``; ``1`` → ``1 token``."""
    number = _decimal(value)
    if number is None:
        return _not_a_number(value)
    count = int(number.to_integral_value(rounding=ROUND_HALF_UP))
    return f"{count:,} token{'' if count == 1 else 's'}"


def money_text(value) -> str:
    """Text the services wrote (a recovery's assessment, a step's result, why a call is blocked by
    its budget) with its money as bare four-place decimals (``spent today: 8.5000``, ``12.0000
    USD``) shown as money, the tokens past a token limit as tokens (``by 12,345 tokens``) and its
    UTC moments (``2026-12-07T12:37:34.860736Z``) as the pages show times."""
    if value is None:
        return NOTHING
    text = _MONEY_IN_TEXT.sub(lambda m: money(m.group(1)), str(value))
    text = _USD_IN_TEXT.sub(lambda m: money(m.group(1)), text)
    text = _UTC_IN_TEXT.sub(lambda m: f"{m.group(1)} {m.group(2)} UTC", text)
    return _TOKENS_IN_TEXT.sub(lambda m: m.group(1) + tokens(m.group(2)), text)


LIST_SHOWN = 50  # items of one stored list a page shows (a stop of 9,000 tasks made pages of 1 to 4 MB)


def more_than_shown(n: int) -> str:
    return f"… and {n:,} more"


def first_shown(items: list, text=str) -> str:
    """``items`` as ``text`` joined with commas: the first LIST_SHOWN of them and how many more."""
    shown = ", ".join(text(v) for v in items[:LIST_SHOWN])
    return f"{shown}, {more_than_shown(len(items) - LIST_SHOWN)}" if len(items) > LIST_SHOWN else shown


def clipped(value, limit: int = LIST_SHOWN):
    """``value`` (stored JSON) with each list in it cut to its first ``limit`` items and a last one
    saying how many more there are: for pages, which showed every task a stop halted, every call it
    cancelled (the whole record stays in the database, the API and the admin's audit row)."""
    if isinstance(value, list):
        head = [clipped(v, limit) for v in value[:limit]]
        return head + [more_than_shown(len(value) - limit)] if len(value) > limit else head
    if isinstance(value, dict):
        return {k: clipped(v, limit) for k, v in value.items()}
    return value
