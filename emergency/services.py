"""Emergency stops: one transaction that locks the project and halts everything in it."""
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from approvals.models import AgentCallApproval
from approvals.services import project_stop_group
from audit.services import actor_repr, audit_record
from budgets.services import budget_override_withdraw, budget_release_many
from core.errors import InvalidInput
from core.wakeup import wakeup_on_commit
from emergency.models import (
    SEVERITY_ORDER,
    Condition,
    EmergencySettings,
    EmergencyStop,
    Severity,
)
from events.services import event_emit
from projects.models import AgentState, Project, Task
from projects.notifications import notify_project_on_commit

HALTED_TASK_STATUSES = (Task.Status.PENDING, Task.Status.WAITING_FOR_HITL, Task.Status.RUNNING)


def emergency_settings_for(project_id) -> EmergencySettings:
    settings_row, _ = EmergencySettings.objects.get_or_create(project_id=project_id)
    return settings_row


def stop_payload(stop: EmergencyStop) -> dict:
    return {
        "id": str(stop.pk), "project_id": str(stop.project_id), "triggered_conditions": stop.triggered_conditions,
        "stop_reason": stop.stop_reason, "severity": stop.severity, "triggered_by": stop.triggered_by,
        "stopped_tasks": stop.stopped_tasks, "cancelled_approvals": stop.cancelled_approvals,
        "created_at": stop.created_at.isoformat(), "resolved_at": stop.resolved_at.isoformat() if stop.resolved_at else None,
    }


def _halt_project_work(project: Project, now) -> tuple[list[str], list[str]]:
    """Halt every open task and cancel every pending (or approved, not started) call."""
    tasks = list(Task.objects.select_for_update().filter(project=project, status__in=HALTED_TASK_STATUSES)
                 .values_list("pk", flat=True))
    Task.objects.filter(pk__in=tasks).update(status=Task.Status.HALTED, updated_at=now)
    approvals = list(AgentCallApproval.objects.select_for_update().filter(project=project).filter(
        Q(status=AgentCallApproval.Status.PENDING)
        | Q(status=AgentCallApproval.Status.APPROVED, started_at__isnull=True)).values_list("pk", flat=True))
    AgentCallApproval.objects.filter(pk__in=approvals).update(status=AgentCallApproval.Status.CANCELLED,
                                                              rejection_reason="emergency stop", updated_at=now)
    budget_release_many(approval_ids=approvals)  # the cancelled calls give their reservations back
    budget_override_withdraw(approval_ids=approvals, reason="Its call was cancelled by an emergency stop.")
    AgentState.objects.filter(project=project).update(status=AgentState.Status.EMERGENCY_STOPPED,
                                                      current_task=None, updated_at=now)
    return [str(t) for t in tasks], [str(a) for a in approvals]


def emergency_stop_trigger(*, project_id, condition: str, reason: str, severity: str = Severity.HIGH,
                           actor=None, data: dict | None = None) -> tuple[EmergencyStop, bool]:
    """Stop a project: in one transaction holding the project's row lock, record the stop, mark
    the project stopped, halt its tasks, cancel its open calls and stop its agents. Every
    admission of new work waits for this lock and then sees the stop (423). A trigger while
    already stopped adds its condition to the active stop. Returns (stop, created)."""
    if condition not in Condition.values:
        raise InvalidInput(fields={"condition": [f"Unknown condition {condition!r}."]})
    if severity not in Severity.values:
        raise InvalidInput(fields={"severity": [f"Must be one of {', '.join(Severity.values)}."]})
    reason = (reason or "").strip() or f"{condition} tripped"
    with transaction.atomic():
        project = Project.objects.select_for_update().get(pk=project_id)
        now = timezone.now()
        by = actor_repr(actor) if actor is not None else f"system:{condition}"
        detail = {"condition": condition, "reason": reason, "severity": severity, "at": now.isoformat(),
                  "by": by, "data": data or {}}
        stop = EmergencyStop.objects.select_for_update().filter(project=project, resolved_at__isnull=True).first()
        created = stop is None
        if created:
            stop = EmergencyStop(project=project, triggered_conditions=[condition], condition_details=[detail],
                                 stop_reason=reason, severity=severity, triggered_by=by,
                                 triggered_by_user=actor if actor is not None else None)
        else:
            _fail_open_recovery(stop, condition, actor)
            if condition not in stop.triggered_conditions:
                stop.triggered_conditions = [*stop.triggered_conditions, condition]
            stop.condition_details = [*stop.condition_details, detail]
            stop.severity = max(stop.severity, severity, key=SEVERITY_ORDER.index)
        tasks, approvals = _halt_project_work(project, now)  # nothing new can exist while stopped; harmless
        stop.stopped_tasks = [*stop.stopped_tasks, *tasks]
        stop.cancelled_approvals = [*stop.cancelled_approvals, *approvals]
        stop.save()
        if project.status != Project.Status.EMERGENCY_STOPPED:
            project.status = Project.Status.EMERGENCY_STOPPED
            project.save(update_fields=["status", "updated_at"])
        audit_record(actor=actor, action="emergency_stop.trigger" if created else "emergency_stop.add_condition",
                     obj=stop, project_id=project.pk, reason=reason,
                     after={"condition": condition, "severity": stop.severity, "stopped_tasks": tasks,
                            "cancelled_approvals": approvals, "data": data or {}})
        payload = {**stop_payload(stop), "new_condition": condition, "created": created}
        event_emit(project_id=project.pk, event_type="emergency_stop_triggered", data=payload)
        wakeup_on_commit(project_stop_group(project.pk), status="emergency_stopped")  # every waiting agent
        notify_project_on_commit(project_id=project.pk, event_type="emergency_stop_triggered",
                                 subject=f"[BotArmy HITL] Emergency stop of {project.slug}: {condition}",
                                 payload=payload)
    return stop, created


def _fail_open_recovery(stop: EmergencyStop, condition: str, actor) -> None:
    """A new condition during a recovery voids its plan: that session fails and a new one,
    planned for every condition, is needed to lift the stop."""
    from recovery.models import RecoverySession

    open_states = [RecoverySession.Status.WAITING_APPROVAL, RecoverySession.Status.IN_PROGRESS]
    for session in RecoverySession.objects.select_for_update().filter(emergency_stop=stop, status__in=open_states):
        session.status, session.completed_at = RecoverySession.Status.FAILED, timezone.now()
        session.save(update_fields=["status", "completed_at", "updated_at"])
        audit_record(actor=actor, action="recovery.fail", obj=session, project_id=stop.project_id,
                     reason=f"New condition {condition} during the recovery: start a new one.")


@transaction.atomic
def emergency_settings_save(*, settings_row: EmergencySettings, actor, before, after) -> EmergencySettings:
    """Save a project's condition thresholds (admin form), audited in the same transaction."""
    settings_row.save()
    audit_record(actor=actor, action="emergency_settings.update", obj=settings_row, project_id=settings_row.project_id,
                 before=before, after=after)
    return settings_row
