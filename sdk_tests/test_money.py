"""What a run or a gated function reports it spent is money: a Decimal, whatever it was given as,
and what the API would refuse (a float, a word, a negative amount, a fraction of 0.0001) is refused
before anything is sent, outside the run (the run ran: no usage of 0 is reported for it); token
counts likewise."""
from decimal import Decimal

import pytest

from hitl_sdk import RunResult, SafetyEnhancedBaseAgent, WithUsage


def checked(kind, **usage):
    if kind is RunResult:
        return SafetyEnhancedBaseAgent._as_result(RunResult(output={}, **usage))
    return WithUsage.of(WithUsage(None, **usage))


@pytest.mark.parametrize("kind", [RunResult, WithUsage])
@pytest.mark.parametrize("given, kept", [("0.0150", Decimal("0.0150")), (" 0.5 ", Decimal("0.5")),
                                         (3, Decimal(3)), (Decimal("1.25"), Decimal("1.25")), (None, None)])
def test_actual_cost_is_kept_as_a_decimal(kind, given, kept):
    made = checked(kind, tokens_used=10, actual_cost=given)
    assert made.actual_cost == kept and (kept is None or type(made.actual_cost) is Decimal)


@pytest.mark.parametrize("kind", [RunResult, WithUsage])
@pytest.mark.parametrize("given, error", [(0.015, TypeError), (True, TypeError), ([1], TypeError),
                                          ("abc", ValueError), ("", ValueError), ("NaN", ValueError),
                                          ("Infinity", ValueError), ("-0.5", ValueError), (-1, ValueError),
                                          ("0.000012345", ValueError), ("100000000", ValueError)])
def test_a_float_or_a_word_is_refused(kind, given, error):
    with pytest.raises(error, match="actual_cost"):
        checked(kind, actual_cost=given)


@pytest.mark.parametrize("kind", [RunResult, WithUsage])
@pytest.mark.parametrize("given, error", [(1.5, TypeError), ("12", TypeError), (None, TypeError), (False, TypeError),
                                          (-5, ValueError), (2**31, ValueError)])
def test_a_token_count_is_a_whole_number_the_api_takes(kind, given, error):
    with pytest.raises(error, match="tokens_used"):
        checked(kind, tokens_used=given)
    assert checked(kind, tokens_used=2**31 - 1).tokens_used == 2**31 - 1


def test_a_bad_request_says_which_field_and_why():
    from hitl_sdk.errors import BadRequest, error_from_response

    exc = error_from_response(400, {"error": "invalid", "detail": "Invalid input.",
                                    "fields": {"actual_cost": ["Ensure that there are no more than 4 decimal places."],
                                               "budget": {"daily_cost_limit": ["Must be positive."]}}})
    assert isinstance(exc, BadRequest) and exc.detail == "Invalid input."
    assert str(exc) == ("400 invalid: Invalid input. actual_cost: Ensure that there are no more than 4 decimal "
                        "places.; budget: daily_cost_limit: Must be positive.")
    assert str(error_from_response(400, {"error": "invalid", "detail": "Bad JSON."})) == "400 invalid: Bad JSON."
