"""Emergency stops: one unit of work that locks the project and halts everything in it."""
from django.core.exceptions import ValidationError
from django.utils import timezone

from audit.services import actor_repr, audit_record
from core.errors import InvalidInput
from core.times import iso_utc
from core.uow import retry_transient
from emergency.hooks import project_halting, stop_condition_added
from emergency.models import (
    SEVERITY_ORDER,
    Condition,
    EmergencySettings,
    EmergencyStop,
    Severity,
    actor_words,
)
from events.services import event_emit
from projects.models import AgentState, Project
from projects.notifications import notify_project_on_commit
from projects.services import tasks_halt
from projects.uow import project_uow



def emergency_settings_for(project_id) -> EmergencySettings:
    settings_row, _ = EmergencySettings.objects.get_or_create(project_id=project_id)
    return settings_row


def stop_payload(stop: EmergencyStop) -> dict:
    return {
        "id": str(stop.pk), "project_id": str(stop.project_id), "triggered_conditions": stop.triggered_conditions,
        "stop_reason": stop.stop_reason, "severity": stop.severity, "triggered_by": stop.triggered_by,
        "stopped_tasks": stop.stopped_tasks, "cancelled_approvals": stop.cancelled_approvals,
        "created_at": iso_utc(stop.created_at), "resolved_at": iso_utc(stop.resolved_at),
    }


def _halt_project_work(uow, project: Project, now) -> tuple[list[str], list[str]]:
    """Halt every open task; the domains above (the project_halting hook) cancel their open
    work; stop every agent. Locks in LOCK_ORDER: tasks, then the hook's rows, then agent states."""
    tasks = tasks_halt(uow=uow, project=project, now=now)
    cancelled = [pk for ids in project_halting(uow=uow, project=project, now=now) for pk in ids]
    uow.enter_stage("agent_state")
    AgentState.objects.filter(project=project).update(status=AgentState.Status.EMERGENCY_STOPPED,
                                                      current_task=None, updated_at=now)
    return [str(t) for t in tasks], [str(a) for a in cancelled]


@retry_transient
def emergency_stop_trigger(*, project_id, condition: str, reason: str, severity: str = Severity.HIGH,
                           actor=None, data: dict | None = None) -> tuple[EmergencyStop, bool]:
    """Stop a project: in one unit of work holding the project's row lock, record the stop, mark
    the project stopped, halt its tasks, cancel its open calls and stop its agents. Every
    admission of new work waits for this lock and then sees the stop (423). A trigger while
    already stopped adds its condition to the active stop. Returns (stop, created).

    Called inside another unit of work of the same project (a request refused for a critical
    risk), the stop joins it and commits with it."""
    if condition not in Condition.values:
        raise InvalidInput(fields={"condition": [f"Unknown condition {condition!r}."]})
    if severity not in Severity.values:
        raise InvalidInput(fields={"severity": [f"Must be one of {', '.join(Severity.values)}."]})
    reason = (reason or "").strip() or f"{condition} tripped"
    with project_uow(project_id) as uow:
        project = uow.project
        now = timezone.now()
        by = actor_repr(actor) if actor is not None else f"system:{condition}"
        detail = {"condition": condition, "reason": reason, "severity": severity, "at": iso_utc(now),
                  "by": by, "data": data or {}}
        active = EmergencyStop.objects.filter(project=project, resolved_at__isnull=True)
        stop = uow.lock_many("project_state", active)
        stop = stop[0] if stop else None
        created = stop is None
        # An automatic condition the active stop already has, tripped again (30 failures reported at once:
        # each outcome's check saw the project active): it adds nothing, so no second trigger is recorded,
        # sent or notified (one stop gave four events, audit rows and webhook alerts) and no open recovery
        # is failed for it; only what it halts (work resumed meanwhile) is recorded.
        again = not created and actor is None and condition in stop.triggered_conditions
        if created:
            stop = EmergencyStop(project=project, triggered_conditions=[condition], condition_details=[detail],
                                 stop_reason=reason, severity=severity, triggered_by=by,
                                 triggered_by_user=actor if actor is not None else None)
        elif not again:
            stop_condition_added(uow=uow, stop=stop, condition=condition, actor=actor)
            if condition not in stop.triggered_conditions:
                stop.triggered_conditions = [*stop.triggered_conditions, condition]
            stop.condition_details = [*stop.condition_details, detail]
            stop.severity = max(stop.severity, severity, key=SEVERITY_ORDER.index)
        tasks, approvals = _halt_project_work(uow, project, now)  # nothing new can exist while stopped; harmless
        if again and not tasks and not approvals:
            return stop, False
        # each once: tasks a recovery resumed and this stop halts again are already listed
        stop.stopped_tasks = list(dict.fromkeys([*stop.stopped_tasks, *tasks]))
        stop.cancelled_approvals = list(dict.fromkeys([*stop.cancelled_approvals, *approvals]))
        stop.save()
        if project.status != Project.Status.EMERGENCY_STOPPED or project.active_stop_id != stop.pk:
            project.status, project.active_stop_id = Project.Status.EMERGENCY_STOPPED, stop.pk
            project.save(update_fields=["status", "active_stop_id", "updated_at"])
        audit_record(actor=actor, action="emergency_stop.trigger" if created else "emergency_stop.add_condition",
                     obj=stop, project_id=project.pk, reason=reason,
                     after={"condition": condition, "severity": stop.severity, "stopped_tasks": tasks,
                            "cancelled_approvals": approvals, "data": data or {}})
        payload = {**stop_payload(stop), "new_condition": condition, "created": created,
                   "triggered_by_name": actor_words(stop.triggered_by)}  # as the pages name who stopped it
        event_emit(project_id=project.pk, event_type="emergency_stop_triggered", data=payload)
        notify_project_on_commit(project_id=project.pk, event_type="emergency_stop_triggered",
                                 subject=f"[BotArmy HITL] Emergency stop of {project.slug}: {condition}",
                                 payload=payload)
    return stop, created


def emergency_stop_resolve(*, uow, stop: EmergencyStop, actor, now, recovery_session_id) -> None:
    """Lift a stop inside the recovery's unit of work: the project is active again."""
    stop.resolved_at, stop.resolved_by, stop.recovery_session_id = now, actor, recovery_session_id
    stop.save(update_fields=["resolved_at", "resolved_by", "recovery_session_id"])
    project = uow.project
    project.status, project.active_stop_id = Project.Status.ACTIVE, None
    project.save(update_fields=["status", "active_stop_id", "updated_at"])
    uow.enter_stage("agent_state")
    AgentState.objects.filter(project_id=project.pk, status=AgentState.Status.EMERGENCY_STOPPED).update(
        status=AgentState.Status.IDLE, updated_at=now)


def _settings_clean(row: EmergencySettings, *, concurrent: bool = False) -> None:
    try:
        row.full_clean(exclude=["project"], validate_unique=False)
    except ValidationError as exc:
        detail = ("Another manager changed these settings since this form was loaded; together with that "
                  "change these values are refused. Nothing was saved." if concurrent else "")
        raise InvalidInput(detail, fields={k: list(v) for k, v in exc.message_dict.items()}) from None


@retry_transient
def emergency_settings_save(*, settings_row: EmergencySettings, actor, before, after) -> EmergencySettings:
    """Save a project's condition thresholds (admin form), audited in the same unit of work.
    Values the model refuses (a threshold outside (0, 1), an empty window) are 400s, never saved.

    Only what the form changed is written, onto the row as it stands (read under the project's
    lock): another manager's edit saved since the form was loaded is kept, and the two together
    are checked again, so two edits valid each on its own copy (a larger minimum of outcomes, a
    smaller window) cannot combine into settings that never trip."""
    _settings_clean(settings_row)
    with project_uow(settings_row.project_id) as uow:
        if settings_row.pk is None:
            uow.enter_stage("project_state")
            settings_row.save()
        elif after:  # only what the form changed: never a stale copy of the rest (nothing changed: nothing written)
            current = uow.lock("project_state", EmergencySettings.objects, pk=settings_row.pk)
            for name in after:
                setattr(current, name, getattr(settings_row, name))
            _settings_clean(current, concurrent=True)
            current.save(update_fields=[*after.keys(), "updated_at"])
            settings_row.refresh_from_db()
        audit_record(actor=actor, action="emergency_settings.update", obj=settings_row,
                     project_id=settings_row.project_id, before=before, after=after)
    return settings_row
