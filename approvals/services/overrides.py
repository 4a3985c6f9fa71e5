"""Deciding a budget override that calls wait for: a flow of this layer, because it combines
budgets (the override, the window's allowance) with calls (unblock or reject them)."""
from django.utils import timezone

from approvals.models import AgentCallApproval
from approvals.services.common import BudgetState, Status, approval_group, close_call
from approvals.services.requests import admission_apply
from audit.services import audit_record
from budgets.models import BudgetOverrideRequest
from budgets.services import (BudgetCritical, budget_admission_preview, budget_admit, override_decide_locked,
                              overrides_withdraw)
from core.errors import NotFoundError
from core.uow import retry_transient
from core.wakeup import wakeup_on_commit
from projects.models import Task
from projects.uow import project_uow


@retry_transient
def budget_override_respond(*, override_id, actor, decision: str, reason: str = "",
                            reason_required: bool = True) -> BudgetOverrideRequest:
    """Approve (raising the allowance of that window, then admitting its blocked calls again:
    each is reserved, or stays blocked with the reason) or reject (rejecting its blocked calls;
    with a reason unless ``reason_required`` is False, as through the API).
    One unit of work, locks in LOCK_ORDER: project, the calls' tasks, the calls, the override,
    the windows. 423 while the project is stopped (no allowance changes under a stop; the
    recovery settles the budget)."""
    project_id = BudgetOverrideRequest.objects.filter(pk=override_id).values_list("project_id", flat=True).first()
    if project_id is None:
        raise NotFoundError("No such budget override.")
    with project_uow(project_id, gate=True) as uow:
        # Its calls and every other call blocked behind an override, locked in LOCK_ORDER (their
        # tasks, the calls, their overrides, then the windows): each override was sized without
        # the calls blocked beside it, so approving this one can leave another asking for less
        # than its call now needs; that one is sized again below.
        blocked = AgentCallApproval.objects.filter(project_id=project_id, status=Status.PENDING,
                                                   budget_state=BudgetState.BLOCKED)
        blocked = _lock_calls(uow, blocked.exclude(budget_override_id=None) if decision == "approve" else
                              blocked.filter(budget_override_id=override_id))  # a rejection: its own calls
        others = _lock_overrides(uow, [call for call in blocked if call.budget_override_id != override_id],
                                 also=override_id)
        own = [call for call in blocked if call.budget_override_id == override_id]
        override = override_decide_locked(uow=uow, override_id=override_id, actor=actor, decision=decision,
                                          reason=reason, reason_required=reason_required)
        now = timezone.now()
        for call in own:
            if override.status == BudgetOverrideRequest.Status.REJECTED:
                close_call(uow, call, actor=actor, to=Status.REJECTED, now=now,
                           reason=f"Budget override rejected{': ' + override.rejection_reason if override.rejection_reason else '.'}",
                           event_type="agent_approval_decided", action="agent_approval.reject_budget")
                continue
            _readmit(uow, call, actor, now)
        if override.status == BudgetOverrideRequest.Status.APPROVED:
            _size_again(uow, others, now, actor=actor, pending_only=True,
                        reason=f"Budget override {override.pk} was approved first: its call was admitted again "
                               f"against what that left.")
    return override


def _lock_calls(uow, calls) -> list[AgentCallApproval]:
    """Lock some calls in LOCK_ORDER (their tasks, then them), each with its locked task."""
    tasks = {t.pk: t for t in uow.lock_many("task", Task.objects.filter(pk__in=calls.values("task_id")))}
    locked = uow.lock_many("approval", calls.select_related("project"))
    for call in locked:
        call.task = tasks[call.task_id]
    return locked


def _readmit(uow, call: AgentCallApproval, actor, now, *, keep_link: bool = True) -> bool:
    """Admit the call again (its override approved, or the limits changed). It is reserved,
    blocked behind a new override (a limit still passed), or stays blocked behind its override
    with a clear reason (the projected daily cost would pass 1.5 x the limit, which no override
    lifts). True when it no longer waits for its old override (reserved, or a new one)."""
    try:
        admission = budget_admit(uow=uow, call=call, requested_by=call.requested_by, now=now)
    except BudgetCritical as critical:
        call.budget_blocked_reason = (
            f"Still blocked: with this call the projected daily cost {critical.projected:.4f} would pass 1.5 x the "
            f"daily limit {critical.limit:.4f}, which no override lifts. A manager may raise the daily cost limit "
            f"(the call is then admitted again at once), or the agent cancels it.")
        call.save(update_fields=["budget_blocked_reason", "updated_at"])
        audit_record(actor=actor, action="agent_approval.still_blocked", obj=call,
                     after={"budget_state": call.budget_state, "reason": call.budget_blocked_reason})
        return False
    if admission.reserved and not keep_link:
        call.budget_override_id = None  # admitted without its (pending, then withdrawn) override
    admission_apply(call, admission)
    audit_record(actor=actor, action="agent_approval.unblock" if admission.reserved else "agent_approval.reblock",
                 obj=call, after={"budget_state": call.budget_state,
                                  "budget_override_id": str(call.budget_override_id) if call.budget_override_id
                                  else None})
    wakeup_on_commit(approval_group(call.pk), status=call.status)
    return True


def readmit_after_limits_change(*, uow) -> None:
    """budgets.hooks.budget_limits_changed: the blocked calls admitted again under the new limits
    (``_size_again``; the limits change holds the project exclusively)."""
    blocked = (AgentCallApproval.objects.filter(project=uow.project, status=Status.PENDING,
                                                budget_state=BudgetState.BLOCKED)
               .exclude(budget_override_id=None))
    override_ids = list(blocked.values_list("budget_override_id", flat=True))
    if not BudgetOverrideRequest.objects.filter(pk__in=override_ids, status__in=[
            BudgetOverrideRequest.Status.APPROVED, BudgetOverrideRequest.Status.PENDING]).exists():
        return
    calls = _lock_calls(uow, blocked)
    _size_again(uow, _lock_overrides(uow, calls), timezone.now(), actor=None,
                reason="The budget limits changed: its call was admitted again under the new ones.")


def readmit_after_windows_ended(*, uow, now) -> None:
    """budgets.hooks.budget_windows_ended (beat, once a day or month of the project ended): a call
    blocked behind an override of a window that ended waited for a decision about a budget gone by
    (approving it is refused: 409). It is admitted again in the new windows: reserved, or blocked
    behind a new override for what it needs there; its old override, if still pending, is
    withdrawn. One held by the 1.5 x ceiling of the old day is admitted too: the new day's is its own."""
    ended = BudgetOverrideRequest.objects.filter(project=uow.project, window__end__lte=now).values("pk")
    blocked = AgentCallApproval.objects.filter(project=uow.project, status=Status.PENDING,
                                               budget_state=BudgetState.BLOCKED, budget_override_id__in=ended)
    if not blocked.exists():
        return
    pairs = _lock_overrides(uow, _lock_calls(uow, blocked))
    for call, old in sorted(pairs, key=lambda pair: pair[0].created_at):
        if old is None:
            continue
        pending = old.status == BudgetOverrideRequest.Status.PENDING
        if _readmit(uow, call, None, now, keep_link=False) and pending:
            overrides_withdraw([old], reason="Its budget window ended before a decision: its call was admitted "
                                             "again in the new one.")


def _lock_overrides(uow, calls, *, also=None) -> list[tuple[AgentCallApproval, BudgetOverrideRequest | None]]:
    """The calls' overrides (and ``also``), locked: [(call, its override)]."""
    ids = {call.budget_override_id for call in calls} | ({also} if also else set())
    overrides = {o.pk: o for o in uow.lock_many("override", BudgetOverrideRequest.objects.filter(pk__in=ids))}
    return [(call, overrides.get(call.budget_override_id)) for call in calls]


def _size_again(uow, pairs, now, *, actor, reason: str, pending_only: bool = False) -> None:
    """Blocked calls admitted again, oldest first, each against the windows as the ones before it
    left them (the caller holds the project exclusively, so nothing else moves them meanwhile):
    - a call kept blocked although its override was approved (only the 1.5 x ceiling held it);
    - a call waiting for a pending override that no longer asks for what it needs now (not
      needed at all, or another amount or limit): it is reserved, or blocked behind a new override
      for what is missing, and only then is the old one withdrawn (a reserved call then names no
      override: none was needed). One that the 1.5 x ceiling now holds keeps its override, with
      a reason that says so; one whose override still asks for the right amount is left as it is."""
    for call, old in sorted(pairs, key=lambda pair: pair[0].created_at):
        if old is None or old.status not in (BudgetOverrideRequest.Status.APPROVED,
                                              BudgetOverrideRequest.Status.PENDING):
            continue
        if pending_only and old.status != BudgetOverrideRequest.Status.PENDING:
            continue  # held by the 1.5 x ceiling alone, which another override's approval does not lift
        if old.status == BudgetOverrideRequest.Status.PENDING and \
                budget_admission_preview(call, now) == (old.violation_type, old.requested_amount):
            continue  # it still asks for what the call needs
        pending = old.status == BudgetOverrideRequest.Status.PENDING
        if _readmit(uow, call, actor, now, keep_link=not pending) and pending:
            overrides_withdraw([old], reason=reason)
