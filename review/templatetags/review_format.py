"""One display of money, tokens and times on every reviewer page (``{% load review_format %}``).

- money: ``$1,234.0125``, always four places, as the API's decimals have them (``0.0125``).
- tokens: ``12,345 tokens`` (``1 token``).
- when: ``2026-12-05 14:07:33 UTC``, always in UTC whatever the project's time zone, as
  recovery.presentation (shared with the admin) writes the recovery's recorded times.
Nothing to show is an em dash. A value that is not a number or a time is shown as it is."""
import datetime

from django import template
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from core.text import NOTHING, money, money_text, tokens
from core.times import iso_utc
from recovery.presentation import person as person_text
from recovery.presentation import step_title as step_title_text
from review.selectors import expiring_soon, time_left_text  # the inbox's own words for a deadline and urgency

register = template.Library()
register.filter("money", money)
register.filter("tokens", tokens)
register.filter("money_text", money_text)


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
def budget_amount(value, kind) -> str:
    """A budget amount whose unit its kind names: a threshold or violation type with ``token`` in
    it (``token_daily``, ``daily_token_limit``, ``tokens``) counts tokens, any other is money."""
    return tokens(value) if "token" in str(kind or "").lower() else money(value)


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
