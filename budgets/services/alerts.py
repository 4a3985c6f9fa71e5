"""Budget alerts: warning / critical / emergency once per threshold type per window, and
the overrun alert of a call that used more than it reserved."""
from decimal import Decimal

from django.db import IntegrityError, transaction

from budgets.models import BudgetAlert, BudgetWindow, ProjectBudget
from core.times import iso_utc
from events.services import event_emit
from projects.notifications import notify_project_on_commit


def alert_payload(alert: BudgetAlert) -> dict:
    return {"alert_type": alert.alert_type, "threshold_type": alert.threshold_type,
            "threshold_value": f"{alert.threshold_value:.4f}", "current_value": f"{alert.current_value:.4f}",
            "triggered_at": iso_utc(alert.triggered_at), "window_start": iso_utc(alert.window.start),
            "detail": alert.detail}


def emit_alert(alert: BudgetAlert) -> None:
    """A threshold alert is a ``budget_alert`` event (API.md: warning, critical or emergency); a
    call's overrun is a ``budget_overrun`` event of its own, so no ``budget_alert`` carries an
    ``alert_type`` outside API.md's three."""
    payload = alert_payload(alert)
    event_type = "budget_overrun" if alert.alert_type == BudgetAlert.AlertType.OVERRUN else "budget_alert"
    event_emit(project_id=alert.project_id, event_type=event_type, data=payload)
    notify_project_on_commit(project_id=alert.project_id, event_type=event_type,
                             subject=f"[BotArmy HITL] Budget {alert.alert_type}: {alert.threshold_type} of "
                                     f"{alert.project.slug}", payload=payload)


def check_alerts(project, budget: ProjectBudget, windows) -> list[BudgetAlert]:
    """warning / critical / emergency once per threshold type per window. ``windows`` are the
    locked windows as just updated; the alerts already fired are read only when a threshold is
    reached (most calls reach none, and cost no query here)."""
    made = []
    levels = [(BudgetAlert.AlertType.WARNING, budget.warning_percent),
              (BudgetAlert.AlertType.CRITICAL, budget.critical_percent),
              (BudgetAlert.AlertType.EMERGENCY, budget.emergency_percent)]
    fired = None
    for window in windows:
        daily = window.kind == BudgetWindow.Kind.DAY
        measures = [
            ("token_daily" if daily else "token_monthly",
             Decimal(budget.daily_token_limit if daily else budget.monthly_token_limit),
             Decimal(window.spent_tokens + window.reserved_tokens)),
            ("cost_daily" if daily else "cost_monthly", budget.daily_cost_limit if daily else budget.monthly_cost_limit,
             window.spent_cost + window.reserved_cost),
        ]
        for threshold_type, limit, value in measures:
            if not limit:
                continue
            for alert_type, percent in levels:
                threshold = (limit * percent / 100).quantize(Decimal("0.0001"))
                if value < threshold:
                    continue
                if fired is None:
                    fired = set(BudgetAlert.objects.filter(window_id__in=[w.pk for w in windows]).values_list(
                        "window_id", "threshold_type", "alert_type"))
                if (window.pk, threshold_type, alert_type) in fired:
                    continue
                try:
                    with transaction.atomic():
                        alert = BudgetAlert.objects.create(project=project, window=window, alert_type=alert_type,
                                                           threshold_type=threshold_type, threshold_value=threshold,
                                                           current_value=value)
                except IntegrityError:
                    continue  # already fired in this window
                emit_alert(alert)
                made.append(alert)
    return made
