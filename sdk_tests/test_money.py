"""What a run or a gated function reports it spent is money: a Decimal, whatever it was given as,
and a float or a word is refused where it is written, not by the server after the run."""
from decimal import Decimal

import pytest

from hitl_sdk import RunResult, WithUsage
from hitl_sdk.models import Usage


@pytest.mark.parametrize("kind", [RunResult, WithUsage, Usage])
@pytest.mark.parametrize("given, kept", [("0.0150", Decimal("0.0150")), (" 0.5 ", Decimal("0.5")),
                                         (3, Decimal(3)), (Decimal("1.25"), Decimal("1.25")), (None, None)])
def test_actual_cost_is_kept_as_a_decimal(kind, given, kept):
    first = {"output": {}} if kind is RunResult else {"value": None} if kind is WithUsage else {}
    made = kind(**first, tokens_used=10, actual_cost=given)
    assert made.actual_cost == kept and (kept is None or type(made.actual_cost) is Decimal)


@pytest.mark.parametrize("given, error", [(0.015, TypeError), (True, TypeError), ([1], TypeError),
                                          ("abc", ValueError), ("", ValueError), ("NaN", ValueError),
                                          ("Infinity", ValueError)])
def test_a_float_or_a_word_is_refused_at_once(given, error):
    with pytest.raises(error, match="actual_cost"):
        RunResult(output={}, actual_cost=given)
    with pytest.raises(error, match="actual_cost"):
        WithUsage(None, actual_cost=given)
