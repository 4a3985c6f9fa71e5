"""budget_critical as a condition beat checks (registered with emergency.conditions.REGISTRY when
this module is imported, from BudgetsConfig.ready): the day's spent + reserved cost past 1.5 x the
daily cost limit. A call's admission and a usage report trip it where their cost arrives; this
catches what no call brings: a manager lowering the daily limit below what the day already holds
(``budget_limits_update`` checks it at once too)."""
from budgets.services.windows import day_cost_past_critical
from emergency.conditions import StopCondition
from emergency.models import Condition


class DayCostCritical(StopCondition):
    name = Condition.BUDGET_CRITICAL

    def check(self, project, settings, now):
        return day_cost_past_critical(project, now)
