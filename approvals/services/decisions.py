"""A person decides a call; the agent starts or cancels it; beat times it out. Each in the
call's unit of work (common.call_uow), each status move through common.close_call."""
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from approvals.analyzers import RiskContext, assess
from approvals.estimation import estimate
from approvals.models import AgentCallApproval
from approvals.services.calibration import project_rules
from approvals.services.common import (
    BudgetState,
    Status,
    approval_event_data,
    call_uow,
    close_call,
    input_digest_holds,
    snapshot,
)
from audit.services import audit_record
from budgets.services import budget_reserve_more
from core import rawrows
from core.errors import AlreadyDecided, Expired, Forbidden, InvalidInput, TransitionError
from core.sweeps import each, timeout_warning_due, timeout_warnings_due
from core.text import visible_text
from core.times import iso_utc
from core.uow import retry_transient
from events.services import event_emit
from projects import roles
from projects.models import Task
from projects.permissions import has_project_perm, require_not_requester, require_project_perm
from projects.services import agent_state_refresh, task_move
from projects.uow import project_uow


def _amendment_assessed(approval_id, decider, amended_input_data: dict):
    """(tokens, cost, risk) of an amended input, estimated and assessed like a new request before
    the decision's unit of work: a large input's analysis (seconds) would hold the project's lock,
    and an emergency stop waits for that lock. The fields it reads never change after a call is
    made. None when there is no such call or the decider may not review it (the unit of work
    refuses it)."""
    row = (AgentCallApproval.objects.filter(pk=approval_id)
           .values("project_id", "model", "proposed_action", "context_summary", "agent_type").first())
    if row is None or not has_project_perm(decider, roles.REVIEW, row["project_id"]):
        return None
    tokens, cost = estimate(model=row["model"], proposed_action=row["proposed_action"],
                            input_data=amended_input_data, context_summary=row["context_summary"],
                            estimated_tokens=None, estimated_cost=None if row["model"] else Decimal(0))
    risk = assess(RiskContext(agent_type=row["agent_type"], proposed_action=row["proposed_action"],
                              input_data=amended_input_data, estimated_cost=cost, budget_remaining=None),
                  project_rules(row["project_id"]))
    return tokens, cost, risk


def _check_amendment(uow, approval: AgentCallApproval, assessed) -> None:
    """An amended input (``assessed``: ``_amendment_assessed``) is admitted like a new request.
    When it needs more than the call reserved, the reservation grows by the difference (admitted
    against the budget like a new request: a limit it would pass is a 409, reject the call and let
    the agent request it with that input) and the call's estimate becomes the amended one. It must
    carry no critical risk flag. Its assessment is kept next to the original one."""
    tokens, cost, risk = assessed
    if risk["level"] == "critical":
        raise TransitionError("The amended input has a critical risk flag: "
                              f"{', '.join(sorted({f['code'] for f in risk['flags'] if f['severity'] == 'critical'}))}.",
                              current_status=approval.status)
    fields = ["risk_assessment", "updated_at"]
    more_tokens = max(tokens - approval.estimated_tokens, 0)
    more_cost = max(cost - approval.estimated_cost, Decimal(0))
    if more_tokens or more_cost:
        refused = budget_reserve_more(uow=uow, call=approval, tokens=more_tokens, cost=more_cost)
        if refused:
            raise TransitionError(
                f"The amended input needs {tokens:,} tokens / {cost:.4f}, more than the call reserved "
                f"({approval.estimated_tokens:,} / {approval.estimated_cost:.4f}), and the budget cannot hold the "
                f"difference: {refused} Reject the call and let the agent request it with that input.",
                current_status=approval.status)
        approval.estimated_tokens += more_tokens
        approval.estimated_cost += more_cost
        fields += ["estimated_tokens", "estimated_cost"]
    approval.risk_assessment = {**approval.risk_assessment, "amended": risk}
    approval.save(update_fields=fields)


def _time_out(uow, approval: AgentCallApproval, now) -> None:
    close_call(uow, approval, actor=None, to=Status.TIMED_OUT, now=now, event_type="approval_timed_out",
               action="agent_approval.time_out")


@retry_transient
def agent_approval_decide(*, approval_id, decider, decision: str, reason: str = "",
                          amended_input_data=None) -> AgentCallApproval:
    """A reviewer approves (optionally with amended input) or rejects. Exactly one decision
    wins (409 for the rest); at or after ``expires_at`` the approval times out instead (410),
    whatever else would refuse it (blocked by its budget, task closed). A call blocked by its
    budget cannot be approved (409, with the override that unblocks it); it can be rejected."""
    if decision not in ("approve", "reject"):
        raise InvalidInput(fields={"decision": ["Must be approve or reject."]})
    if decision == "reject" and not visible_text(reason):
        raise InvalidInput(fields={"reason": ["A rejection needs a reason."]})
    if decision == "reject" and amended_input_data is not None:
        raise InvalidInput(fields={"amended_input_data": ["Only an approval can amend the input."]})
    if amended_input_data is not None and not isinstance(amended_input_data, dict):
        raise InvalidInput(fields={"amended_input_data": ["Must be a JSON object."]})
    assessed = None
    if decision == "approve" and amended_input_data is not None:
        assessed = _amendment_assessed(approval_id, decider, amended_input_data)
    expired = False
    with call_uow(approval_id, gate=True) as (uow, approval):
        require_project_perm(decider, roles.REVIEW, approval.project, "decide agent calls")
        require_not_requester(decider=decider, requester_id=approval.requested_by_id)
        if approval.status == Status.TIMED_OUT:
            raise Expired("The approval timed out before this decision.", status=approval.status)
        if approval.status != Status.PENDING:
            raise AlreadyDecided(f"The approval is already {approval.status}.", current_status=approval.status,
                                 decider_id=approval.approved_by_id, decided_at=approval.responded_at)
        now = timezone.now()
        if now >= approval.expires_at:
            _time_out(uow, approval, now)
            expired = True
        elif approval.task.status not in Task.OPEN_STATUSES:
            raise TransitionError(f"Its task is {approval.task.status}.", current_status=approval.status,
                                  task_status=approval.task.status)
        elif decision == "approve" and approval.budget_state == BudgetState.BLOCKED:
            raise TransitionError(approval.budget_blocked_reason or "A budget override must be approved first.",
                                  current_status=approval.status, budget_state=approval.budget_state,
                                  budget_override_id=str(approval.budget_override_id)
                                  if approval.budget_override_id else None)
        elif decision == "approve":
            before = snapshot(approval)  # the estimate an amendment may raise
            if amended_input_data is not None:  # (assessed before: only a role granted meanwhile is None)
                _check_amendment(uow, approval, assessed or _amendment_assessed(approval.pk, decider,
                                                                                amended_input_data))
            approval.amended_input_data = amended_input_data
            amended = amended_input_data is not None
            close_call(uow, approval, actor=decider, to=Status.APPROVED, now=now, reason=(reason or "").strip(),
                       event_type="agent_approval_decided", before=before,
                       action="agent_approval.approve_amended" if amended else "agent_approval.approve")
        else:
            close_call(uow, approval, actor=decider, to=Status.REJECTED, now=now, reason=reason.strip(),
                       event_type="agent_approval_decided", action="agent_approval.reject")
    if expired:  # the time-out is committed; the decision is refused
        raise Expired("The approval timed out before this decision.", status=Status.TIMED_OUT)
    return approval


@retry_transient
def agent_approval_cancel(*, approval_id, actor, reason: str = "") -> AgentCallApproval:
    """The requesting agent withdraws its call (pending, or approved but not started).
    Cancelling again changes nothing."""
    with call_uow(approval_id, gate=False) as (uow, approval):
        if actor.pk != approval.requested_by_id and not actor.is_superuser:
            raise Forbidden("Only the agent that requested this call may cancel it.")
        if approval.status == Status.CANCELLED:
            return approval
        if approval.status not in (Status.PENDING, Status.APPROVED) or approval.started_at is not None:
            raise TransitionError(f"The approval is {approval.status}"
                                  f"{' and started' if approval.started_at else ''}.", current_status=approval.status)
        close_call(uow, approval, actor=actor, to=Status.CANCELLED, now=timezone.now(), reason=reason,
                   event_type="agent_approval_decided", action="agent_approval.cancel")
    return approval


GRANT_LAPSED = "approved but not started in time"  # the reason of a lapsed grant's cancellation


@retry_transient
def agent_approval_start(*, approval_id, actor) -> AgentCallApproval:
    """The single-use execution grant: an approved call is started exactly once, by the agent
    that requested it, within HITL_START_WITHIN_MINUTES of the approval (later: 410, and the
    grant is cancelled); the answer carries the input to run (amended if amended)."""
    stale = False
    with call_uow(approval_id, gate=True) as (uow, approval):
        if actor.pk != approval.requested_by_id:
            raise Forbidden("Only the agent that requested this call may start it.")
        if approval.status == Status.CANCELLED and approval.rejection_reason == GRANT_LAPSED:
            # beat lapsed it first: the same 410 as when this start finds it due (it was a 409)
            raise Expired(f"The approval was not started within {settings.HITL_START_WITHIN_MINUTES} minutes: "
                          f"request the call again.", status=Status.CANCELLED)
        if approval.status != Status.APPROVED:
            why = f" ({approval.rejection_reason})" if approval.rejection_reason else ""
            raise TransitionError(f"The approval is {approval.status}{why}, not approved.",
                                  current_status=approval.status)
        if approval.started_at is not None:
            raise TransitionError("This approved call was already started.", current_status=approval.status,
                                  started_at=iso_utc(approval.started_at))
        now = timezone.now()
        if _grant_expired(approval, now):
            _expire_grant(uow, approval, now)
            stale = True
        elif approval.task.status not in (Task.Status.PENDING, Task.Status.WAITING_FOR_HITL, Task.Status.RUNNING):
            # running: another of its calls runs (a second call approved meanwhile starts beside it)
            raise TransitionError(f"Its task is {approval.task.status}.", current_status=approval.status,
                                  task_status=approval.task.status)
        elif not input_digest_holds(approval.input_to_run, approval.input_digest):
            raise TransitionError("The input changed after it was approved.", current_status=approval.status)
        elif approval.budget_state != BudgetState.RESERVED:  # nothing runs without budget held for it
            raise TransitionError("The call holds no budget reservation any more: request it again.",
                                  current_status=approval.status, budget_state=approval.budget_state)
        else:
            before = snapshot(approval)
            approval.started_at = now
            rawrows.update_fields(approval, ["started_at", "updated_at"])
            task_move(task=approval.task, to=Task.Status.RUNNING)
            agent_state_refresh(project_id=approval.project_id, agent_type=approval.agent_type)
            audit_record(actor=actor, action="agent_approval.start", obj=approval, before=before,
                         after=snapshot(approval))
    if stale:  # the cancellation is committed; the start is refused
        raise Expired(f"The approval was not started within {settings.HITL_START_WITHIN_MINUTES} minutes: "
                      f"request the call again.", status=Status.CANCELLED)
    return approval


def _grant_expired(approval: AgentCallApproval, now) -> bool:
    return now > approval.responded_at + timedelta(minutes=settings.HITL_START_WITHIN_MINUTES)


def _expire_grant(uow, approval: AgentCallApproval, now) -> None:
    close_call(uow, approval, actor=None, to=Status.CANCELLED, now=now, reason=GRANT_LAPSED,
               event_type="agent_approval_decided", action="agent_approval.grant_expired")


@retry_transient
def agent_approval_expire_grant(*, approval_id, now=None) -> bool:
    """Cancel an approved call not started within HITL_START_WITHIN_MINUTES: its grant lapses
    and its reservation goes back at once (not a day later). Safe to run any number of times."""
    now = now or timezone.now()
    with call_uow(approval_id, gate=False) as (uow, approval):
        if approval.status != Status.APPROVED or approval.started_at is not None or not _grant_expired(approval, now):
            return False
        _expire_grant(uow, approval, now)
        return True


@retry_transient
def agent_approval_time_out(*, approval_id, now=None) -> bool:
    """Time out one approval if it is still pending and due. Safe to run any number of times."""
    now = now or timezone.now()
    if not AgentCallApproval.objects.filter(pk=approval_id, status=Status.PENDING, expires_at__lte=now).exists():
        return False
    with call_uow(approval_id, gate=False) as (uow, approval):
        if approval.status != Status.PENDING or approval.expires_at > now:
            return False
        _time_out(uow, approval, now)
        return True


def agent_approval_settle_due(approval: AgentCallApproval, now=None) -> bool:
    """A call read (by the API or a page) past its deadline, or its grant's, that beat has not
    settled yet (late or down) is timed out, or its grant lapsed, now: True when the copy read is
    stale (read it again), whether this call changed it or another reader, a decision or beat did
    first (it said False then, and the read served the call as pending past its deadline). Nothing
    is written for a call that is not due."""
    now = now or timezone.now()
    if approval.status == Status.PENDING and approval.expires_at <= now:
        agent_approval_time_out(approval_id=approval.pk, now=now)
        return True
    if approval.status == Status.APPROVED and approval.started_at is None and approval.responded_at is not None \
            and _grant_expired(approval, now):
        agent_approval_expire_grant(approval_id=approval.pk, now=now)
        return True
    return False


def agent_approval_expire_overdue(*, now=None, project_id=None) -> int:
    """Beat sweep: every due pending approval goes through the time-out service, and every
    lapsed execution grant (approved, not started in time) through agent_approval_expire_grant.
    With ``project_id``, that project's only: the API's reads run it first, so that no answer shows
    a call pending past its deadline while beat is late or down."""
    now = now or timezone.now()
    calls = AgentCallApproval.objects.filter(project_id=project_id) if project_id else AgentCallApproval.objects
    # oldest first, each by its partial index (the model's order, newest created first, walked the
    # whole table's history backwards on PostgreSQL: 0.3 s a query at 100,000 calls)
    due = calls.filter(status=Status.PENDING, expires_at__lte=now).order_by("expires_at").values_list("pk", flat=True)
    lapsed = calls.filter(
        status=Status.APPROVED, started_at__isnull=True,
        responded_at__lt=now - timedelta(minutes=settings.HITL_START_WITHIN_MINUTES)).order_by(
        "responded_at").values_list("pk", flat=True)
    return (each(due[:1000], lambda pk: agent_approval_time_out(approval_id=pk, now=now))
            + each(lapsed[:1000], lambda pk: agent_approval_expire_grant(approval_id=pk, now=now)))


@retry_transient
def agent_approval_warn(*, approval_id, now=None) -> bool:
    """``approval_timeout_warning`` once, when a fifth of the call's time is left."""
    now = now or timezone.now()
    project_id = AgentCallApproval.objects.values_list("project_id", flat=True).get(pk=approval_id)
    with project_uow(project_id) as uow:
        approval = uow.lock("approval", AgentCallApproval.objects, pk=approval_id)
        if not timeout_warning_due(approval, now):
            return False
        approval.timeout_warning_sent_at = now
        approval.save(update_fields=["timeout_warning_sent_at", "updated_at"])
        event_emit(project_id=approval.project_id, task_id=approval.task_id, event_type="approval_timeout_warning",
                   data={**approval_event_data(approval), "kind": "agent_approval",
                         "seconds_left": int((approval.expires_at - now).total_seconds())})
    return True


def agent_approval_warn_due(*, now=None) -> int:
    """Beat sweep: every call due a warning goes through agent_approval_warn."""
    return timeout_warnings_due(AgentCallApproval, lambda pk, at: agent_approval_warn(approval_id=pk, now=at),
                                now=now)
