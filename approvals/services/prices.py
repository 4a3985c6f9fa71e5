"""The model price table (admin only): every change and deletion is audited, in the global chain
(a price is no project's, and every project's cost estimates follow it)."""
from decimal import Decimal

from django.db import transaction

from approvals.models import ModelPrice
from audit.services import audit_record


def _exact(values: dict | None) -> dict | None:
    """Prices as the API writes money: strings with 4 places ("1000.0000", never "1E+3")."""
    if values is None:
        return None
    return {k: f"{v:.4f}" if isinstance(v, Decimal) else v for k, v in values.items()}


@transaction.atomic
def model_price_save(*, price: ModelPrice, actor, before: dict | None, after: dict) -> ModelPrice:
    price.save()
    audit_record(actor=actor, action="model_price.create" if before is None else "model_price.update", obj=price,
                 before=_exact(before), after=_exact({"model": price.model, **after}))
    return price


@transaction.atomic
def model_price_delete(*, price: ModelPrice, actor) -> None:
    audit_record(actor=actor, action="model_price.delete", obj=price,
                 before=_exact({"model": price.model, "input_per_million": price.input_per_million,
                                "output_per_million": price.output_per_million,
                                "default_output_tokens": price.default_output_tokens}))
    price.delete()
