"""Calls cancelled in bulk because what they belong to halted or ended, connected in
ApprovalsConfig.ready:
- an emergency stop (emergency.hooks.project_halting) cancels every pending and
  approved-not-started call of the project (one past its deadline times out instead, as beat
  would have), and wakes every waiting agent;
- a task reported completed or failed (projects.hooks.task_ending) cancels its own such calls,
  each with its audit row and event.
Either way the overrides they waited for are withdrawn and their reservations given back."""
from django.db.models import Q

from approvals.models import CANCELLED_BY_STOP, AgentCallApproval, ResponseApproval
from approvals.services.common import (
    BudgetState,
    Status,
    approval_event_data,
    project_stop_group,
    record_closed,
    snapshot,
    withdraw_orphaned_overrides,
)
from budgets.services import budget_release_many
from core.wakeup import wakeup_on_commit
from events.services import event_emit_many

OPEN_CALLS = Q(status=Status.PENDING) | Q(status=Status.APPROVED, started_at__isnull=True)  # not run, may not


def _cancel_locked(uow, ids, *, reason: str, override_reason: str, now) -> None:
    AgentCallApproval.objects.filter(pk__in=ids).update(
        status=Status.CANCELLED, budget_state=BudgetState.RELEASED, rejection_reason=reason, updated_at=now)
    withdraw_orphaned_overrides(uow, ids, override_reason)
    budget_release_many(uow=uow, call_ids=ids)


def cancel_open_calls(*, uow, project, now) -> list[str]:
    """Cancel every pending and approved-not-started call of a stopped project. A pending call
    past its deadline that beat had not timed out yet (late or down) times out instead, as beat
    would have, with its audit row and ``approval_timed_out`` event: a stop is no withdrawal of a
    call a person missed (the inbox's timeout rate counts it). Both kinds go through the stages
    once, in LOCK_ORDER (their overrides, then every reservation); their tasks are the stop's to
    halt (no task move here)."""
    locked = uow.lock_many("approval", AgentCallApproval.objects.filter(project=project).filter(OPEN_CALLS)
                           .only("pk", "status", "expires_at"))
    due = [call.pk for call in locked if call.status == Status.PENDING and call.expires_at <= now]
    late_ids = set(due)
    ids = [call.pk for call in locked if call.pk not in late_ids]
    late = list(AgentCallApproval.objects.filter(pk__in=due).select_related("approved_by")) if due else []
    befores = [snapshot(call) for call in late]
    if due:
        AgentCallApproval.objects.filter(pk__in=due).update(status=Status.TIMED_OUT,
                                                            budget_state=BudgetState.RELEASED, updated_at=now)
    AgentCallApproval.objects.filter(pk__in=ids).update(
        status=Status.CANCELLED, budget_state=BudgetState.RELEASED, rejection_reason=CANCELLED_BY_STOP, updated_at=now)
    if due:
        withdraw_orphaned_overrides(uow, due, f"Its call ended ({Status.TIMED_OUT}) before a decision.")
    withdraw_orphaned_overrides(uow, ids, "Its call was cancelled by an emergency stop.")
    budget_release_many(uow=uow, call_ids=[*due, *ids])
    for call, before in zip(late, befores):
        call.status, call.budget_state = Status.TIMED_OUT, BudgetState.RELEASED
        record_closed(call, actor=None, action="agent_approval.time_out", before=before, reason="",
                      event_type="approval_timed_out")
    # each cancelled call's own `agent_approval_decided` (one insert, after the stop's event): a
    # dashboard counting calls by their events saw them pending for ever (the stop's audit row lists them)
    cancelled = AgentCallApproval.objects.filter(pk__in=ids).select_related("approved_by").defer(
        "input_data", "amended_input_data", "context_summary") if ids else ()
    event_emit_many(project_id=project.pk, events=[("agent_approval_decided", call.task_id, approval_event_data(call))
                                                   for call in cancelled])
    wakeup_on_commit(project_stop_group(project.pk), status="emergency_stopped")  # every waiting agent
    return [str(pk) for pk in ids]


def requested_the_first_call_on(*, task, user_id) -> bool:
    """Whether ``user_id`` requested ``task``'s first call: the agent running a task another made for
    it (projects.task_worked_on_by). Any call it asked gave the right: another agent of the project
    asked one on someone else's task, cancelled it, and reported the task completed (the owner's
    output then got 409) or failed (its pending outputs and questions cancelled)."""
    first = (AgentCallApproval.objects.filter(task_id=task.pk).order_by("created_at", "pk")
             .values_list("requested_by_id", flat=True).first())
    return first is not None and first == user_id


def has_output_under_review(*, task) -> bool:
    """Whether an output of ``task`` waits for review (projects.task_output_under_review)."""
    return ResponseApproval.objects.filter(task_id=task.pk, status=ResponseApproval.Status.PENDING).exists()


def cancel_calls_of_ended_task(*, uow, task, actor, now) -> list[str]:
    """A task reported completed or failed will not run its calls: one still pending would ask a
    person for nothing, one approved and not started would hold its reservation until its grant
    lapsed. Both are cancelled, in the outcome's unit of work."""
    calls = uow.lock_many("approval", AgentCallApproval.objects.filter(task=task).filter(OPEN_CALLS)
                          .select_related("approved_by"))
    if not calls:
        return []
    reason = f"its task was reported {task.status} before the call ran"
    _cancel_locked(uow, [call.pk for call in calls], reason=reason,
                   override_reason=f"Its call was cancelled: its task was reported {task.status}.", now=now)
    for call in calls:
        before = snapshot(call)
        call.status, call.budget_state, call.rejection_reason = Status.CANCELLED, BudgetState.RELEASED, reason
        record_closed(call, actor=actor, action="agent_approval.task_ended", before=before, reason=reason)
    return [str(call.pk) for call in calls]
