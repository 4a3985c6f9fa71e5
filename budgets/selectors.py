from budgets.models import BudgetAlert, manager_threshold
from budgets.services import budget_for, current_windows
from emergency.models import Condition, EmergencyStop


def budget_summary(*, project, now=None) -> dict:
    """Every number of the budget page, read from the current windows (kept equal to the
    ledger; `manage.py reconcile_budgets` checks it)."""
    budget = budget_for(project)
    day, month = current_windows(project, now)
    # API.md's alerts: warning / critical / emergency (overruns are events and admin rows of their own)
    alerts = BudgetAlert.objects.filter(window_id__in=[w.pk for w in (day, month) if w.pk],
                                        alert_type__in=["warning", "critical", "emergency"]).select_related(
        "window").order_by("triggered_at")
    return {
        "project_id": project.pk, "timezone": project.timezone,
        "daily_token_limit": budget.daily_token_limit, "monthly_token_limit": budget.monthly_token_limit,
        "daily_cost_limit": budget.daily_cost_limit, "monthly_cost_limit": budget.monthly_cost_limit,
        "tokens_used_today": day.spent_tokens, "tokens_used_month": month.spent_tokens,
        "cost_incurred_today": day.spent_cost, "cost_incurred_month": month.spent_cost,
        "tokens_reserved": day.reserved_tokens, "cost_reserved": day.reserved_cost,
        "tokens_reserved_month": month.reserved_tokens, "cost_reserved_month": month.reserved_cost,
        "override_allowance_today": {"tokens": day.allowance_tokens, "cost": f"{day.allowance_cost:.4f}"},
        "override_allowance_month": {"tokens": month.allowance_tokens, "cost": f"{month.allowance_cost:.4f}"},
        "budget_alerts": list(alerts),
        "emergency_stop_triggered": any(Condition.BUDGET_CRITICAL in stop.triggered_conditions for stop in
                                        EmergencyStop.objects.filter(project=project, resolved_at__isnull=True)),
        "last_reset_date": day.start, "month_start": month.start,
        "warning_percent": budget.warning_percent, "critical_percent": budget.critical_percent,
        "emergency_percent": budget.emergency_percent, "manager_threshold": manager_threshold("daily_cost_limit"),
        "manager_token_threshold": int(manager_threshold("daily_token_limit")),
    }

