"""Budgets: windows, the ledger (admission, settlement, release), alerts and overrides.
One module per subdomain; the names other apps use are re-exported here."""
from budgets.services.alerts import alert_payload, check_alerts, emit_alert
from budgets.services.ledger import (
    Admission,
    BudgetCritical,
    Settlement,
    budget_admission_preview,
    budget_admit,
    budget_reconcile,
    budget_release,
    budget_release_many,
    budget_reserve_more,
    budget_settle,
    ledger_totals,
)
from budgets.services.overrides import (
    budget_close_past_windows,
    budget_limits_update,
    budget_override_create,
    override_create_locked,
    override_decide_locked,
    override_payload,
    override_withdraw_locked,
    overrides_withdraw,
)
from budgets.services.windows import (
    BUDGET_RELATED,
    CRITICAL_FACTOR,
    budget_for,
    budget_remaining,
    critical_line,
    current_windows,
    day_cost_past_critical,
    window_add,
    window_bounds,
    windows_add,
)

__all__ = [
    "BUDGET_RELATED", "CRITICAL_FACTOR", "Admission", "BudgetCritical", "Settlement", "alert_payload", "budget_admission_preview",
    "budget_admit", "critical_line", "day_cost_past_critical",
    "budget_close_past_windows", "budget_for", "budget_limits_update", "budget_override_create",
    "budget_reconcile", "budget_release", "budget_release_many", "budget_remaining", "budget_reserve_more", "budget_settle",
    "check_alerts", "current_windows", "emit_alert", "ledger_totals",
    "override_create_locked", "override_decide_locked", "override_payload", "override_withdraw_locked", "overrides_withdraw",
    "window_add", "window_bounds", "windows_add",
]
