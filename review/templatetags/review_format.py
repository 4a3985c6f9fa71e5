"""One display of money, tokens and times on every reviewer page (``{% load review_format %}``).

- money: ``$1,234.0125``, always four places, as the API's decimals have them (``0.0125``).
- tokens: ``12,345 tokens`` (``1 token``).
- when: ``2026-12-05 14:07:33 UTC``, always in UTC whatever the project's time zone, as
  recovery.presentation (shared with the admin) writes the recovery's recorded times.
Nothing to show is an em dash. A value that is not a number or a time is shown as it is."""
import datetime
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django import template
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from core.times import iso_utc
from recovery.presentation import person as person_text
from recovery.presentation import step_title as step_title_text
from review.selectors import expiring_soon, time_left_text  # the inbox's own words for a deadline and urgency

register = template.Library()

NOTHING = "—"
FOUR_PLACES = Decimal("0.0001")
# A number written with exactly four decimals (the API's money), not part of a longer number or word.
# (not a four-place amount the text itself says is tokens or USD: "would add 150,000.0000 tokens")
_MONEY_IN_TEXT = re.compile(r"(?<![\w$.,])(-?\d[\d,]*\.\d{4})(?![\w.])(?!\s*(?:tokens?|USD)\b)")
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


def _utc(value):
    """An aware UTC datetime from a datetime (aware, or naive in UTC) or an ISO-8601 string; any
    other value comes back as it is."""
    if isinstance(value, str):
        value = parse_datetime(value.strip()) or value
    if isinstance(value, datetime.datetime):
        if timezone.is_naive(value):
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.astimezone(datetime.timezone.utc)
    return value


@register.filter
def person(value) -> str:
    """Who did it, as the pages name people: the audit's ``rita#2`` is ``rita``, an automatic
    stop's ``system:security_threat`` is ``the system (security threat)``."""
    return person_text(value)


@register.filter
def step_title(action) -> str:
    """A recovery step's title: ``lift_stop`` → ``Lift the emergency stop``."""
    return step_title_text(str(action))


@register.filter
def money(value) -> str:
    """``Decimal("0.0125")`` → ``$0.0125``; ``1234.5`` → ``$1,234.5000``; ``-1`` → ``-$1.0000``."""
    number = _decimal(value)
    if number is None:
        return _not_a_number(value)
    number = number.quantize(FOUR_PLACES, rounding=ROUND_HALF_UP)
    return f"{'-' if number < 0 else ''}${abs(number):,.4f}"


@register.filter
def tokens(value) -> str:
    """``12345`` → ``12,345 tokens``; ``1`` → ``1 token``."""
    number = _decimal(value)
    if number is None:
        return _not_a_number(value)
    count = int(number.to_integral_value(rounding=ROUND_HALF_UP))
    return f"{count:,} token{'' if count == 1 else 's'}"


@register.filter
def budget_amount(value, kind) -> str:
    """A budget amount whose unit its kind names: a threshold or violation type with ``token`` in
    it (``token_daily``, ``daily_token_limit``, ``tokens``) counts tokens, any other is money."""
    return tokens(value) if "token" in str(kind or "").lower() else money(value)


@register.filter
def money_text(value) -> str:
    """Text the services wrote (a recovery's assessment, a step's result, why a call is blocked by
    its budget) with its money as bare four-place decimals (``spent today: 8.5000``) shown as money,
    and the tokens past a token limit as tokens (``by 12,345 tokens``)."""
    if value is None:
        return NOTHING
    text = _MONEY_IN_TEXT.sub(lambda m: money(m.group(1)), str(value))
    return _TOKENS_IN_TEXT.sub(lambda m: m.group(1) + tokens(m.group(2)), text)


@register.filter
def when(value) -> str:
    """A moment as ``2026-12-05 14:07:33 UTC``: a datetime (aware, or naive in UTC) or an ISO-8601
    string (as the JSON columns keep them); a date as ``2026-12-05``."""
    if value is None or value == "":
        return NOTHING
    value = _utc(value)
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, datetime.date):
        return value.strftime("%Y-%m-%d")
    return str(value)


@register.filter
def iso(value) -> str:
    """The machine-readable moment for ``<time datetime>``, in UTC as the API writes it
    (``2026-12-05T14:07:33.721336Z``)."""
    value = _utc(value)
    if isinstance(value, datetime.datetime):
        return iso_utc(value)
    return "" if value is None else str(value)


@register.filter
def time_left(value) -> str:
    """A deadline as the inbox counts it down: ``4 min 5 s left``, ``expired``."""
    return time_left_text(value, none=NOTHING) if isinstance(value, datetime.datetime) else NOTHING


@register.filter
def urgent_class(obj) -> str:
    """`` urgent`` (the red countdown) for a pending item whose time-out warning is due or that has
    under five minutes left, as the inbox marks it; else nothing."""
    return " urgent" if getattr(obj, "status", "pending") == "pending" and expiring_soon(obj) else ""
