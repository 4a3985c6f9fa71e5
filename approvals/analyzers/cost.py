"""Cost: the estimate against the configured thresholds and the remaining budget (flag codes ``cost.*``)."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings

from .base import Analyzer
from .context import RiskContext

def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


class CostAnalyzer(Analyzer):
    """Estimated cost above the configured thresholds, or large against the remaining budget."""
    code = "cost"
    names = frozenset(("high_estimate", "exceeds_budget", "budget_share"))

    def analyze(self, ctx: RiskContext) -> list[dict]:
        cost = _decimal(ctx.estimated_cost)
        if cost is None or cost <= 0:
            return []
        flags = []
        medium, high = Decimal(settings.HITL_RISK_COST_MEDIUM), Decimal(settings.HITL_RISK_COST_HIGH)
        if cost > high:
            flags.append(self.flag("high_estimate", "high", f"Estimated cost {cost} is above {high}", "estimated_cost"))
        elif cost > medium:
            flags.append(self.flag("high_estimate", "medium", f"Estimated cost {cost} is above {medium}",
                                   "estimated_cost"))
        budget = _decimal(ctx.budget_remaining)
        if budget is not None:
            if cost > budget:
                flags.append(self.flag("exceeds_budget", "high", f"Estimated cost {cost} exceeds the remaining "
                                                                 f"budget {budget}", "budget_remaining"))
            elif cost > budget / 2:
                flags.append(self.flag("budget_share", "medium",
                                       f"Estimated cost {cost} is more than half the remaining budget {budget}",
                                       "budget_remaining"))
        return flags
