"""Recovery: a person walks a stopped project back, one approved step at a time. Only the
last step (lift_stop) resolves the stop and makes the project active again."""
from datetime import timezone as dt_timezone
from decimal import ROUND_FLOOR, Decimal

from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Count
from django.utils import timezone

from approvals.models import AgentCallApproval, ResponseApproval
from audit.services import audit_record
from budgets.services import CRITICAL_FACTOR, budget_for, critical_line, current_windows
from core.errors import InvalidInput, NotFoundError, TransitionError
from core.text import visible_text
from core.times import iso_utc
from core.uow import LockOrderError, retry_transient
from emergency.conditions import conditions_evaluate
from emergency.models import Condition, EmergencySettings, EmergencyStop
from emergency.services import emergency_settings_for, emergency_stop_resolve, stop_payload
from events.services import event_emit
from projects import roles
from projects.models import AgentState, Task
from projects.permissions import require_not_requester, require_project_perm
from projects.services import agent_state_refresh, tasks_settle_halted
from projects.uow import project_uow
from recovery.models import RecoverySession, RecoveryStep

# Steps an automated recovery runs by itself when they come up (no judgement needed); the
# others (review, budget, halted tasks, lifting the stop) always wait for a person.
AUTOMATIC_STEPS = ("reset_error_window", "re_enable_agents")


# --- the steps: what approving each one does --------------------------------------------
def flagged_cancelled(stop: EmergencyStop) -> list[dict]:
    """The calls and the outputs (response approvals) with high or critical risk flags that the
    stop cancelled: what a person reviews before the project runs again (an output that tripped a
    security_threat stop is one of them)."""
    ids = stop.cancelled_approvals
    levels = ["high", "critical"]
    calls = AgentCallApproval.objects.filter(pk__in=ids, risk_assessment__level__in=levels).order_by("created_at")
    outputs = (ResponseApproval.objects.filter(pk__in=ids, analysis__level__in=levels).order_by("created_at")
               .select_related("agent_call_approval"))
    return [
        *({"kind": "call", "approval_id": str(c.pk), "proposed_action": c.proposed_action[:200],
           "risk_level": c.risk_assessment["level"], "flags": _serious_codes(c.risk_assessment.get("flags"))}
          for c in calls),
        *({"kind": "response", "approval_id": str(r.pk), "proposed_action": r.agent_call_approval.proposed_action[:200],
           "risk_level": r.analysis["level"], "flags": _serious_codes(r.risk_flags)} for r in outputs),
    ]


def _serious_codes(flags) -> list[str]:
    return sorted({f.get("code", "?") for f in flags or [] if isinstance(f, dict)
                   and f.get("severity") in ("high", "critical")})


def _review_flagged(session, step, now, option, uow):
    return {"reviewed": flagged_cancelled(session.emergency_stop)}


def _budget_state(project) -> dict:
    budget = budget_for(project)
    day, month = current_windows(project)
    return {"daily_cost_limit": f"{budget.daily_cost_limit:.4f}", "spent_today": f"{day.spent_cost:.4f}",
            "reserved_today": f"{day.reserved_cost:.4f}", "allowance_today": f"{day.allowance_cost:.4f}",
            "monthly_cost_limit": f"{budget.monthly_cost_limit:.4f}", "spent_month": f"{month.spent_cost:.4f}"}


def _confirm_budget(session, step, now, option, uow):
    """Records the budget a person confirmed (refused before it runs while the day's cost is at or
    past 1.5 x the daily limit: refuse_while_budget_critical; an override does not clear that)."""
    return {"confirmed": _budget_state(session.project)}


def refuse_while_budget_critical(project, step: RecoveryStep) -> None:
    """confirm_budget and lift_stop are refused (409, the step stays pending, the session open)
    while the day's spent + reserved cost is at or past 1.5 x the daily cost limit: lifting the
    stop then would only let the next call stop the project again. A person raises the limit
    first (or the day's window ends). The refusal names the least limit that clears it and what
    leaves the next calls room."""
    budget = budget_for(project)
    line = critical_line(budget)
    if line is None:
        return
    day, _ = current_windows(project)
    used = day.spent_cost + day.reserved_cost
    if used < line:  # at the line: the next call with any cost passes it (critical_line)
        return
    step_up = Decimal("0.0001")
    needed = (used / CRITICAL_FACTOR).quantize(step_up, rounding=ROUND_FLOOR) + step_up  # 1.5 x it passes used
    monthly = budget.monthly_cost_limit
    also_monthly = (f" (and the monthly cost limit, now {monthly:.4f}, as high: a daily limit may not pass it)"
                    if monthly and needed > monthly else "")
    raise TransitionError(
        f"The day's cost {used:.4f} is still at or past 1.5 x the daily cost limit {budget.daily_cost_limit:.4f}: "
        f"the next call would stop the project again. Raise the daily cost limit{also_monthly}, or set it to 0 "
        f"(no daily limit). Above {needed - step_up:.4f} lifts the stop, but a call that would take the day past "
        f"1.5 x the limit stops it again, and one past the limit waits for an override: a limit of {used:.4f} (the "
        f"day's cost) leaves {used / 2:.4f} before the stop line; only a limit above the day's cost lets calls run "
        f"without an override. Or wait for the day's window to end at "
        f"{day.end.astimezone(dt_timezone.utc):%Y-%m-%d %H:%M} UTC. Then approve this step.",
        current_status=step.status, daily_cost_today=f"{used:.4f}",
        daily_cost_limit=f"{budget.daily_cost_limit:.4f}", daily_cost_limit_needed=f"{needed:.4f}")


def _reset_error_window(session, step, now, option, uow):
    emergency_settings_for(session.project_id)  # made on first use
    settings_row = uow.lock("project_state", EmergencySettings.objects, project_id=session.project_id)
    settings_row.error_window_reset_at = now
    settings_row.save(update_fields=["error_window_reset_at", "updated_at"])
    return {"error_window_reset_at": iso_utc(now)}


def _re_enable_agents(session, step, now, option, uow):
    uow.enter_stage("agent_state")
    AgentState.objects.filter(project_id=session.project_id).update(status=AgentState.Status.IDLE, updated_at=now)
    for agent_type in AgentState.objects.filter(project_id=session.project_id).values_list("agent_type", flat=True):
        agent_state_refresh(project_id=session.project_id, agent_type=agent_type, at_once=True)  # read below
    return {"agent_states": dict(AgentState.objects.filter(project_id=session.project_id)
                                 .values_list("agent_type", "status"))}


def _settle_halted_tasks(session, step, now, option, uow):
    option = option or "resume"
    to = Task.Status.PENDING if option == "resume" else Task.Status.CANCELLED
    tasks = tasks_settle_halted(uow=uow, project_id=session.project_id, to=to, now=now)
    return {"option": option, "tasks": [str(t.pk) for t in tasks], "titles": [t.title for t in tasks], "now": to}


def _lift_stop(session, step, now, option, uow):
    stop = session.emergency_stop
    emergency_stop_resolve(uow=uow, stop=stop, actor=step.approved_by, now=now, recovery_session_id=session.pk)
    return {"emergency_stop_id": str(stop.pk), "resolved_at": iso_utc(now)}


STEPS = {  # action: (description, run, options)
    "review_flagged": ("Review the calls and outputs with high or critical risk flags that the stop cancelled.",
                       _review_flagged, None),
    "confirm_budget": ("Confirm the project's budget, or raise it, before agents spend again.", _confirm_budget, None),
    "reset_error_window": ("Reset the error-rate window so past failures do not trip the stop again.",
                           _reset_error_window, None),
    "re_enable_agents": ("Re-enable the project's agents (their states go back to idle).", _re_enable_agents, None),
    "settle_halted_tasks": ("Resume the halted tasks (option 'resume': back to pending) or cancel them (option "
                            "'cancel'): the approver chooses (through the API, resume unless told).",
                            _settle_halted_tasks, ["resume", "cancel"]),
    "lift_stop": ("Lift the emergency stop: the project becomes active and accepts agent calls again.",
                  _lift_stop, None),
}


def recovery_plan_for(stop: EmergencyStop) -> list[str]:
    conditions = set(stop.triggered_conditions)
    plan = []
    if conditions & {Condition.SECURITY_THREAT, Condition.MANUAL_STOP}:
        plan.append("review_flagged")
    if Condition.BUDGET_CRITICAL in conditions:
        plan.append("confirm_budget")
    if conditions & {Condition.ERROR_RATE_HIGH, Condition.RESOURCE_EXHAUSTION}:
        plan.append("reset_error_window")
    return plan + ["re_enable_agents", "settle_halted_tasks", "lift_stop"]


def recovery_assessment(stop: EmergencyStop, now) -> dict:
    project = stop.project
    settings_row = emergency_settings_for(project.pk)
    trips = {trip.condition: trip for trip in conditions_evaluate(
        project, settings_row, now, names=[Condition.ERROR_RATE_HIGH, Condition.RESOURCE_EXHAUSTION])}
    error_trip, resource_trip = trips.get(Condition.ERROR_RATE_HIGH), trips.get(Condition.RESOURCE_EXHAUSTION)
    tasks = dict(Task.objects.filter(project=project).values_list("status").annotate(n=Count("id")))
    return {
        "stop": stop_payload(stop),
        "conditions": stop.condition_details,
        "halted_tasks": len(stop.stopped_tasks),
        "cancelled_approvals": len(stop.cancelled_approvals),
        "task_counts": tasks,
        "error_rate": error_trip.data if error_trip else "below threshold",
        "resources": resource_trip.data if resource_trip else "within limits",
        "open_flags": [f["approval_id"] for f in flagged_cancelled(stop)],
        "budget": _budget_state(project),
    }


def _session_payload(session: RecoverySession) -> dict:
    return {"session_id": str(session.pk), "status": session.status, "steps_completed": session.steps_completed,
            "total_steps": session.total_steps}


@retry_transient
def recovery_start(*, project_id, actor, recovery_type: str) -> RecoverySession:
    """A manager opens a recovery session on the project's active stop. In an ``automated``
    recovery the steps that need no judgement (AUTOMATIC_STEPS) run by themselves when they
    come up; a ``manual`` one waits for a person at every step."""
    if recovery_type not in RecoverySession.Type.values:
        raise InvalidInput(fields={"recovery_type": ["Must be automated or manual."]})
    with project_uow(project_id) as uow:
        project = uow.project
        require_project_perm(actor, roles.MANAGE, project, "start a recovery")
        stops = uow.lock_many("project_state", EmergencyStop.objects.filter(project=project, resolved_at__isnull=True))
        if not stops:
            raise TransitionError("The project is not emergency-stopped.", current_status=project.status)
        stop = stops[0]
        now = timezone.now()
        session = RecoverySession(project=project, emergency_stop=stop, recovery_type=recovery_type,
                                  created_by=actor, assessment=recovery_assessment(stop, now))
        try:
            with transaction.atomic():
                session.save(force_insert=True)
        except IntegrityError:
            open_session = RecoverySession.objects.filter(emergency_stop=stop,
                                                          status__in=RecoverySession.OPEN_STATUSES).first()
            raise TransitionError("A recovery of this stop is already open.", current_status=open_session.status,
                                  recovery_session_id=str(open_session.pk)) from None
        plan = recovery_plan_for(stop)
        RecoveryStep.objects.bulk_create(
            RecoveryStep(session=session, order=i, action=action, description=STEPS[action][0])
            for i, action in enumerate(plan, start=1))
        session.total_steps = len(plan)
        session.save(update_fields=["total_steps", "updated_at"])
        stop.recovery_session_id = session.pk
        stop.save(update_fields=["recovery_session_id"])
        audit_record(actor=actor, action="recovery.start", obj=session, project_id=project.pk,
                     after={"emergency_stop_id": str(stop.pk), "plan": plan, "recovery_type": recovery_type})
        event_emit(project_id=project.pk, event_type="recovery_initiated",
                   data={**_session_payload(session), "emergency_stop_id": str(stop.pk), "plan": plan})
        _run_automatic_steps(uow, session)
    return session


@retry_transient
def recovery_step_respond(*, session_id, step_id, actor, decision: str, reason: str = "",
                          option: str = "", reason_required: bool = True,
                          option_required: bool = False) -> RecoverySession:
    """Approve (and so run) or reject the next step (with a reason unless ``reason_required`` is
    False, as through the API; approving a step with options names one when ``option_required``,
    as on the pages, which pre-chose "resume" for the person; the API keeps it as the default).
    Steps run strictly in order; a rejected or failed step fails the session and the stop stays;
    the last step lifts the stop."""
    if decision not in ("approve", "reject"):
        raise InvalidInput(fields={"decision": ["Must be approve or reject."]})
    if decision == "reject" and not visible_text(reason) and reason_required:
        raise InvalidInput(fields={"reason": ["Rejecting a step needs a reason."]})
    project_id = RecoverySession.objects.filter(pk=session_id).values_list("project_id", flat=True).first()
    if project_id is None:
        raise NotFoundError("No such recovery.")
    with project_uow(project_id) as uow:
        sessions = uow.lock_many("project_state", RecoverySession.objects.filter(pk=session_id)
                                 .select_related("emergency_stop"))
        session = sessions[0]
        require_project_perm(actor, roles.REVIEW, uow.project, "approve recovery steps")
        require_not_requester(decider=actor, requester_id=session.created_by_id)  # a second person approves
        if session.status not in RecoverySession.OPEN_STATUSES:
            raise TransitionError(f"The recovery is {session.status}.", current_status=session.status)
        step = RecoveryStep.objects.select_for_update().filter(session=session, pk=step_id).first()
        if step is None:
            raise NotFoundError("No such step in this recovery.")
        next_step = session.steps.filter(status=RecoveryStep.Status.PENDING).order_by("order").first()
        if step.status != RecoveryStep.Status.PENDING or step != next_step:
            # who decided it, as a call's 409 says (two approvers at once: the loser was told only the status)
            by = (f" (by {step.approved_by.get_username()} at {iso_utc(step.decided_at)})"
                  if step.approved_by_id and step.decided_at else "")
            raise TransitionError(f"Step {step.order} is {step.status}{by}; the next step is "
                                  f"{next_step.order if next_step else 'none'}.", current_status=step.status)
        options = STEPS[step.action][2]
        if option and (options is None or option not in options):
            raise InvalidInput(fields={"option": [f"This step takes one of {', '.join(options)}." if options else
                                                  "This step takes no options."]})
        if decision == "approve" and options and not option and option_required:
            raise InvalidInput(fields={"option": [f"Choose what to do ({' or '.join(options)}): nothing was run."]})
        if decision == "reject":
            now = timezone.now()
            step.approved_by, step.decided_at, step.reason = actor, now, reason.strip()
            step.status = RecoveryStep.Status.REJECTED
            step.save()
            _fail(session, actor, f"Step {step.order} ({step.action}) rejected: {reason.strip()}", step)
            audit_record(actor=actor, action="recovery.step_reject", obj=step, project_id=uow.project.pk,
                         reason=reason, after={"order": step.order, "action": step.action})
            return session
        if step.action in ("confirm_budget", "lift_stop"):
            refuse_while_budget_critical(uow.project, step)
        if _run_step(uow, session, step, actor, reason, option):
            _run_automatic_steps(uow, session)
    return session


def _run_automatic_steps(uow, session: RecoverySession) -> None:
    """Automated recoveries: run the next steps while they are AUTOMATIC_STEPS."""
    if session.recovery_type != RecoverySession.Type.AUTOMATED:
        return
    while session.status in RecoverySession.OPEN_STATUSES:
        step = session.steps.filter(status=RecoveryStep.Status.PENDING).order_by("order").first()
        if step is None or step.action not in AUTOMATIC_STEPS:
            return
        if not _run_step(uow, session, step, None, "run automatically (automated recovery)", ""):
            return


def _run_step(uow, session: RecoverySession, step: RecoveryStep, actor, reason: str, option: str) -> bool:
    """Run one approved step; False when it failed (the session failed with it)."""
    project = uow.project
    uow.new_pass("project_state")  # each step is its own pass through the lock order
    now = timezone.now()
    step.approved_by, step.decided_at, step.reason = actor, now, reason.strip()
    step.status, step.started_at = RecoveryStep.Status.RUNNING, now
    step.save()
    mark = uow.mark()
    try:
        with transaction.atomic():
            step.result = STEPS[step.action][1](session, step, now, option, uow)
    except (OperationalError, LockOrderError):
        raise  # the database or a bug, not the step: the whole unit of work retries or fails
    except Exception as exc:  # noqa: BLE001 - a failed step fails the session, the stop stays
        uow.discard_since(mark)  # its savepoint rolled back: so do its buffered audit rows and events
        step.status, step.result, step.finished_at = RecoveryStep.Status.FAILED, {"error": str(exc)}, timezone.now()
        step.save()
        _fail(session, actor, f"Step {step.order} ({step.action}) failed: {exc}", step)
        audit_record(actor=actor, action="recovery.step_fail", obj=step, project_id=project.pk,
                     after={"order": step.order, "action": step.action, "error": str(exc)})
        return False
    step.status, step.finished_at = RecoveryStep.Status.COMPLETED, timezone.now()
    step.save()
    session.steps_completed += 1
    session.status = RecoverySession.Status.IN_PROGRESS
    if step.action == "lift_stop":
        session.status, session.completed_at = RecoverySession.Status.COMPLETED, step.finished_at
    session.save()
    audit_record(actor=actor, action="recovery.step_complete", obj=step, project_id=project.pk, reason=reason,
                 after={"order": step.order, "action": step.action, "option": option, "result": step.result,
                        "automatic": actor is None})
    event_emit(project_id=project.pk, event_type="recovery_step_completed",
               data={**_session_payload(session), "step_id": str(step.pk), "order": step.order,
                     "action": step.action, "result": step.result, "automatic": actor is None})
    if step.action == "lift_stop":
        audit_record(actor=actor, action="emergency_stop.resolve", obj=session.emergency_stop,
                     project_id=project.pk, after={"resolved_at": step.finished_at, "recovery_session": str(session.pk)})
        event_emit(project_id=project.pk, event_type="emergency_resolved",
                   data={**_session_payload(session), "emergency_stop_id": str(session.emergency_stop_id)})
    return True


def _fail(session: RecoverySession, actor, why: str, step: RecoveryStep | None = None,
          condition: str | None = None) -> None:
    """The session failed (the stop stays): by ``step`` (rejected or failed), or by a new stop
    ``condition``. Live clients learn it from a ``recovery_step_completed`` event either way."""
    session.status, session.completed_at = RecoverySession.Status.FAILED, timezone.now()
    session.save(update_fields=["status", "completed_at", "updated_at"])
    audit_record(actor=actor, action="recovery.fail", obj=session, project_id=session.project_id, reason=why)
    if step is not None:
        about = {"step_id": str(step.pk), "order": step.order, "action": step.action, "step_status": step.status}
    else:  # no step failed, the session did
        about = {"step_id": None, "order": None, "action": None, "step_status": None, "condition": condition}
    event_emit(project_id=session.project_id, event_type="recovery_step_completed",
               data={**_session_payload(session), **about, "reason": why})


def fail_open_recovery(*, uow, stop: EmergencyStop, condition: str, actor) -> None:
    """emergency.hooks.stop_condition_added: a new condition during a recovery voids its plan;
    that session fails and a new one, planned for every condition, is needed to lift the stop."""
    for session in uow.lock_many("project_state", RecoverySession.objects.filter(
            emergency_stop=stop, status__in=RecoverySession.OPEN_STATUSES)):
        _fail(session, actor, f"New condition {condition} during the recovery: start a new one.",
              condition=condition)
