"""Agent call approvals: one service per transition, each in a transaction that locks the
project (the emergency gate) and then the approval row, writes the audit row and outbox event,
and wakes waiting agents after commit."""
import hashlib
import json
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from access import roles
from access.permissions import (
    require_not_requester,
    require_project_perm,
)
from approvals.estimation import estimate
from approvals.models import AgentCallApproval
from approvals.risk import RiskContext, assess
from audit.services import audit_record
from budgets.models import BudgetOverrideRequest
from budgets.services import (
    BudgetCritical,
    budget_override_withdraw,
    budget_release,
    budget_remaining,
    budget_reserve,
)
from core.errors import (
    EmergencyStopActive,
    Expired,
    Forbidden,
    InvalidInput,
    NotFoundError,
    TransitionError,
)
from core.wakeup import wakeup_on_commit
from events.services import event_emit
from projects.models import Project, Task
from projects.services import agent_state_refresh, project_lock_for_admission, task_move

Status = AgentCallApproval.Status
OPEN_TASK_STATUSES = (Task.Status.PENDING, Task.Status.RUNNING, Task.Status.WAITING_FOR_HITL)


def input_digest(data) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def approval_group(approval_id) -> str:
    """Channel-layer group that agents waiting on this approval listen to."""
    return f"approvals.agent.{approval_id}"


def project_stop_group(project_id) -> str:
    """Channel-layer group that every agent waiting on a call of the project listens to too:
    an emergency stop wakes them all with one message."""
    return f"approvals.project.{project_id}"


def approval_event_data(approval: AgentCallApproval) -> dict:
    return {
        "approval_id": str(approval.pk),
        "agent_type": approval.agent_type,
        "proposed_action": approval.proposed_action[:500],
        "status": approval.status,
        "estimated_tokens": approval.estimated_tokens,
        "estimated_cost": f"{approval.estimated_cost:.4f}",
        "risk_level": (approval.risk_assessment or {}).get("level"),
        "expires_at": approval.expires_at.isoformat(),
        "approved_by": approval.approved_by.get_username() if approval.approved_by_id else None,
    }


def _snapshot(approval: AgentCallApproval) -> dict:
    return {"status": approval.status, "approved_by": approval.approved_by_id,
            "rejection_reason": approval.rejection_reason, "started_at": approval.started_at}


def _close(approval: AgentCallApproval, *, actor, to: str, now, reason: str = "", event_type: str,
           action: str, task_to: str = Task.Status.PENDING) -> None:
    """Move a locked approval out of pending (or approved) and its task back to pending."""
    before = _snapshot(approval)
    approval.status = to
    fields = ["status", "updated_at"]
    if to in (Status.APPROVED, Status.REJECTED):
        approval.responded_at, approval.approved_by = now, actor
        fields += ["responded_at", "approved_by"]
    if to == Status.REJECTED:
        approval.rejection_reason = reason
        fields.append("rejection_reason")
    if to == Status.APPROVED:
        approval.input_digest = input_digest(approval.input_to_run)
        fields += ["amended_input_data", "input_digest"]
    approval.save(update_fields=fields)
    if to in (Status.REJECTED, Status.CANCELLED, Status.TIMED_OUT):
        budget_release(approval_id=approval.pk)  # the call will not run: give its reservation back
        budget_override_withdraw(approval_ids=[approval.pk], reason=f"Its call ended ({to}) before a decision.")
    task = Task.objects.select_for_update().get(pk=approval.task_id)
    task_move(task=task, to=task_to)
    agent_state_refresh(project_id=approval.project_id, agent_type=task.agent_type)
    audit_record(actor=actor, action=action, obj=approval, before=before, after=_snapshot(approval), reason=reason)
    event_emit(project_id=approval.project_id, task_id=approval.task_id, event_type=event_type,
               data=approval_event_data(approval))
    wakeup_on_commit(approval_group(approval.pk), status=approval.status)  # waiters also poll the DB


def agent_approval_request(*, requester, project_id, task_id, agent_type: str, proposed_action: str,
                           input_data: dict, context_summary: str = "", estimated_tokens: int | None = None,
                           estimated_cost=None, timeout_minutes: int | None = None,
                           model: str = "") -> AgentCallApproval:
    """An agent asks to run one call. Refused with 423 while the project is stopped."""
    tokens, cost = estimate(model=model, proposed_action=proposed_action, input_data=input_data,
                            context_summary=context_summary, estimated_tokens=estimated_tokens,
                            estimated_cost=estimated_cost)
    risk = assess(RiskContext(agent_type=agent_type, proposed_action=proposed_action, input_data=input_data,
                              estimated_cost=cost, budget_remaining=_budget_remaining(project_id)))
    timeout_minutes = timeout_minutes or settings.HITL_APPROVAL_TIMEOUT_MINUTES
    try:
        approval = _request_locked(requester=requester, project_id=project_id, task_id=task_id,
                                   agent_type=agent_type, proposed_action=proposed_action, input_data=input_data,
                                   context_summary=context_summary, model=model, tokens=tokens, cost=cost,
                                   risk=risk, timeout_minutes=timeout_minutes)
    except BudgetCritical as critical:  # the request was rolled back; now stop the project
        _stop_for_budget(project_id=project_id, requester=requester, critical=critical, estimated_cost=cost)
    if approval.risk_assessment["level"] == "critical":
        _stop_for_critical_risk(approval)
    return approval


def _budget_remaining(project_id):
    project = Project.objects.filter(pk=project_id).first()
    return budget_remaining(project) if project is not None else None


@transaction.atomic
def _request_locked(*, requester, project_id, task_id, agent_type, proposed_action, input_data, context_summary,
                    model, tokens, cost, risk, timeout_minutes) -> AgentCallApproval:
    project = project_lock_for_admission(project_id)
    require_project_perm(requester, roles.ACT_AS_AGENT, project, "request agent calls")
    task = Task.objects.select_for_update().filter(pk=task_id, project=project).first()
    if task is None:
        raise NotFoundError("No such task in this project.")
    if task.agent_type != agent_type:
        raise InvalidInput(fields={"agent_type": [f"The task belongs to the {task.agent_type} agent."]})
    if task.status not in OPEN_TASK_STATUSES:
        raise TransitionError(f"The task is {task.status}.", current_status=task.status)
    now = timezone.now()
    approval = AgentCallApproval(
        project=project, task=task, agent_type=agent_type, proposed_action=proposed_action,
        input_data=input_data, context_summary=context_summary, model=model, estimated_tokens=tokens,
        estimated_cost=cost, risk_assessment=risk, timeout_minutes=timeout_minutes, requested_by=requester,
        expires_at=now + timedelta(minutes=timeout_minutes),
        warn_at=now + timedelta(minutes=timeout_minutes) * 4 / 5,
    )
    try:
        with transaction.atomic():
            approval.save(force_insert=True)
    except IntegrityError:
        pending = AgentCallApproval.objects.filter(task=task, status=Status.PENDING).first()
        raise TransitionError("This task already has a pending approval.", current_status=Status.PENDING,
                              approval_id=str(pending.pk) if pending else None) from None
    budget_reserve(approval=approval, now=now)  # or blocks it behind an override; BudgetCritical
    task_move(task=task, to=Task.Status.WAITING_FOR_HITL)
    agent_state_refresh(project_id=project.pk, agent_type=agent_type)
    audit_record(actor=requester, action="agent_approval.request", obj=approval,
                 after={"status": approval.status, "proposed_action": proposed_action[:500],
                        "estimated_tokens": tokens, "estimated_cost": cost, "risk_level": risk["level"],
                        "expires_at": approval.expires_at})
    event_emit(project_id=project.pk, task_id=task.pk, event_type="agent_approval_requested",
               data={**approval_event_data(approval), "risk_assessment": risk})
    return approval


def _stop_for_budget(*, project_id, requester, critical, estimated_cost) -> None:
    """budget_critical: the projected daily cost passes 1.5 x the limit. Stop, then 423."""
    from emergency.models import Condition, Severity
    from emergency.services import emergency_stop_trigger

    stop, _ = emergency_stop_trigger(
        project_id=project_id, condition=Condition.BUDGET_CRITICAL, severity=Severity.CRITICAL,
        reason=f"Projected daily cost {critical.projected:.4f} passes 1.5 x the daily limit {critical.limit:.4f}",
        data={"projected_daily_cost": f"{critical.projected:.4f}", "daily_cost_limit": f"{critical.limit:.4f}",
              "estimated_cost": f"{estimated_cost:.4f}", "requested_by": requester.get_username()})
    raise EmergencyStopActive("This call would push the projected daily cost past 1.5 x the limit: the project "
                              "is emergency-stopped.", emergency_stop_id=stop.pk)


def _stop_for_critical_risk(approval: AgentCallApproval) -> None:
    """security_threat: a call with a critical flag (a live secret, a catastrophic command)
    stops the project. The request stays on record (cancelled by the stop); the agent gets 423."""
    from emergency.models import Condition, Severity
    from emergency.services import emergency_settings_for, emergency_stop_trigger

    if not emergency_settings_for(approval.project_id).stop_on_critical_risk:
        return
    critical = [f for f in approval.risk_assessment.get("flags", []) if f.get("severity") == "critical"]
    stop, _ = emergency_stop_trigger(
        project_id=approval.project_id, condition=Condition.SECURITY_THREAT, severity=Severity.CRITICAL,
        reason=f"Critical risk in a requested {approval.agent_type} call: "
               f"{', '.join(sorted({f['code'] for f in critical}))}",
        data={"approval_id": str(approval.pk), "flags": critical[:10]})
    raise EmergencyStopActive("The requested call has a critical risk flag: the project is emergency-stopped.",
                              emergency_stop_id=stop.pk)


def _lock(approval_id, *, gate: bool) -> AgentCallApproval:
    """Lock the project (refusing with 423 when ``gate`` and stopped), then the approval. Every
    service takes the project first, so tasks, approvals and budget windows are always locked
    in the same order and no two services can deadlock."""
    project_id = AgentCallApproval.objects.values_list("project_id", flat=True).get(pk=approval_id)
    if gate:
        project_lock_for_admission(project_id)
    else:
        Project.objects.select_for_update().filter(pk=project_id).first()
    return AgentCallApproval.objects.select_for_update(of=("self",)).select_related("project", "task").get(
        pk=approval_id)


def _time_out_locked(approval: AgentCallApproval, now) -> None:
    _close(approval, actor=None, to=Status.TIMED_OUT, now=now, event_type="approval_timed_out",
           action="agent_approval.time_out")


def agent_approval_decide(*, approval_id, decider, decision: str, reason: str = "",
                          amended_input_data=None) -> AgentCallApproval:
    """A reviewer approves (optionally with amended input) or rejects. Exactly one decision
    wins (409 for the rest); at or after ``expires_at`` the approval times out instead (410)."""
    if decision not in ("approve", "reject"):
        raise InvalidInput(fields={"decision": ["Must be approve or reject."]})
    if decision == "reject" and not (reason or "").strip():
        raise InvalidInput(fields={"reason": ["A rejection needs a reason."]})
    if decision == "reject" and amended_input_data is not None:
        raise InvalidInput(fields={"amended_input_data": ["Only an approval can amend the input."]})
    if amended_input_data is not None and not isinstance(amended_input_data, dict):
        raise InvalidInput(fields={"amended_input_data": ["Must be a JSON object."]})
    expired = False
    with transaction.atomic():
        approval = _lock(approval_id, gate=True)
        require_project_perm(decider, roles.REVIEW, approval.project, "decide agent calls")
        require_not_requester(decider=decider, requester_id=approval.requested_by_id)
        if approval.status == Status.TIMED_OUT:
            raise Expired("The approval timed out before this decision.", status=approval.status)
        if approval.status != Status.PENDING:
            raise TransitionError(f"The approval is already {approval.status}.", current_status=approval.status)
        if approval.task.status not in OPEN_TASK_STATUSES:
            raise TransitionError(f"Its task is {approval.task.status}.", current_status=approval.status,
                                  task_status=approval.task.status)
        if approval.budget_override_id is not None and not BudgetOverrideRequest.objects.filter(
                pk=approval.budget_override_id, status=BudgetOverrideRequest.Status.APPROVED).exists():
            raise TransitionError("A budget override must be approved first.", current_status=approval.status,
                                  budget_override_id=str(approval.budget_override_id))
        now = timezone.now()
        if now >= approval.expires_at:
            _time_out_locked(approval, now)
            expired = True
        elif decision == "approve":
            approval.amended_input_data = amended_input_data
            amended = amended_input_data is not None
            _close(approval, actor=decider, to=Status.APPROVED, now=now, reason=(reason or "").strip(),
                   event_type="agent_approval_decided",
                   action="agent_approval.approve_amended" if amended else "agent_approval.approve")
        else:
            _close(approval, actor=decider, to=Status.REJECTED, now=now, reason=reason.strip(),
                   event_type="agent_approval_decided", action="agent_approval.reject")
    if expired:  # the time-out is committed; the decision is refused
        raise Expired("The approval timed out before this decision.", status=Status.TIMED_OUT)
    return approval


def agent_approval_cancel(*, approval_id, actor, reason: str = "") -> AgentCallApproval:
    """The requesting agent withdraws its call (pending, or approved but not started).
    Cancelling again changes nothing."""
    with transaction.atomic():
        approval = _lock(approval_id, gate=False)
        if actor.pk != approval.requested_by_id and not actor.is_superuser:
            raise Forbidden("Only the agent that requested this call may cancel it.")
        if approval.status == Status.CANCELLED:
            return approval
        if approval.status not in (Status.PENDING, Status.APPROVED) or approval.started_at is not None:
            raise TransitionError(f"The approval is {approval.status}"
                                  f"{' and started' if approval.started_at else ''}.", current_status=approval.status)
        _close(approval, actor=actor, to=Status.CANCELLED, now=timezone.now(), reason=reason,
               event_type="agent_approval_decided", action="agent_approval.cancel")
    return approval


def agent_approval_start(*, approval_id, actor) -> AgentCallApproval:
    """The single-use execution grant: an approved call is started exactly once, by the agent
    that requested it, within HITL_START_WITHIN_MINUTES of the approval (later: 410, and the
    grant is cancelled); the answer carries the input to run (amended if amended)."""
    stale = False
    with transaction.atomic():
        approval = _lock(approval_id, gate=True)
        if actor.pk != approval.requested_by_id:
            raise Forbidden("Only the agent that requested this call may start it.")
        if approval.status != Status.APPROVED:
            raise TransitionError(f"The approval is {approval.status}, not approved.",
                                  current_status=approval.status)
        if approval.started_at is not None:
            raise TransitionError("This approved call was already started.", current_status=approval.status,
                                  started_at=approval.started_at.isoformat())
        if approval.task.status not in (Task.Status.PENDING, Task.Status.WAITING_FOR_HITL):
            raise TransitionError(f"Its task is {approval.task.status}.", current_status=approval.status,
                                  task_status=approval.task.status)
        if input_digest(approval.input_to_run) != approval.input_digest:
            raise TransitionError("The input changed after it was approved.", current_status=approval.status)
        now = timezone.now()
        if now > approval.responded_at + timedelta(minutes=settings.HITL_START_WITHIN_MINUTES):
            _close(approval, actor=None, to=Status.CANCELLED, now=now, reason="approved but not started in time",
                   event_type="agent_approval_decided", action="agent_approval.grant_expired")
            stale = True
        else:
            before = _snapshot(approval)
            approval.started_at = now
            approval.save(update_fields=["started_at", "updated_at"])
            task = Task.objects.select_for_update().get(pk=approval.task_id)
            task_move(task=task, to=Task.Status.RUNNING)
            agent_state_refresh(project_id=approval.project_id, agent_type=approval.agent_type)
            audit_record(actor=actor, action="agent_approval.start", obj=approval, before=before,
                         after=_snapshot(approval))
    if stale:  # the cancellation is committed; the start is refused
        raise Expired(f"The approval was not started within {settings.HITL_START_WITHIN_MINUTES} minutes: "
                      f"request the call again.", status=Status.CANCELLED)
    return approval


def agent_approval_report_usage(*, approval_id, actor, tokens_used: int, actual_cost=None) -> tuple[AgentCallApproval, bool]:
    """The requesting agent reports what a started call really used; that settles its budget
    reservation exactly once (a retried report changes nothing). Without ``actual_cost`` the
    cost comes from the price table of the call's model. Returns (approval, settled now)."""
    from approvals.estimation import count_tokens, money, prompt_text
    from approvals.models import ModelPrice
    from budgets.services import budget_settle

    with transaction.atomic():
        approval = _lock(approval_id, gate=False)
        if actor.pk != approval.requested_by_id:
            raise Forbidden("Only the agent that requested this call may report its usage.")
        if approval.status != Status.APPROVED or approval.started_at is None:
            raise TransitionError("Only a started call has usage to report.", current_status=approval.status)
        if actual_cost is None:
            price = ModelPrice.objects.filter(model=approval.model).first() if approval.model else None
            if price is None:
                raise InvalidInput(fields={"actual_cost": ["Give actual_cost: the call has no priced model."]})
            prompt = min(tokens_used, count_tokens(prompt_text(
                proposed_action=approval.proposed_action, input_data=approval.input_to_run,
                context_summary=approval.context_summary)))
            actual_cost = money((Decimal(prompt) * price.input_per_million
                                 + Decimal(tokens_used - prompt) * price.output_per_million) / Decimal(1_000_000))
        settled = budget_settle(approval=approval, tokens_used=tokens_used, actual_cost=actual_cost)
    return approval, settled


def agent_approval_time_out(*, approval_id, now=None) -> bool:
    """Time out one approval if it is still pending and due. Safe to run any number of times."""
    now = now or timezone.now()
    with transaction.atomic():
        if not AgentCallApproval.objects.filter(pk=approval_id).exists():
            return False
        approval = _lock(approval_id, gate=False)
        if approval.status != Status.PENDING or approval.expires_at > now:
            return False
        _time_out_locked(approval, now)
        return True


def agent_approval_expire_overdue(*, now=None) -> int:
    """Beat sweep: every due pending approval goes through the time-out service."""
    now = now or timezone.now()
    due = AgentCallApproval.objects.filter(status=Status.PENDING, expires_at__lte=now).values_list("pk", flat=True)
    return sum(agent_approval_time_out(approval_id=pk, now=now) for pk in list(due[:1000]))


def agent_approval_warn_due(*, now=None) -> int:
    """Beat sweep: ``approval_timeout_warning`` once per approval when a fifth of its time is left."""
    now = now or timezone.now()
    sent = 0
    due = AgentCallApproval.objects.filter(status=Status.PENDING, timeout_warning_sent_at__isnull=True,
                                           warn_at__lte=now, expires_at__gt=now).values_list("pk", flat=True)
    for pk in list(due[:1000]):
        with transaction.atomic():
            approval = AgentCallApproval.objects.select_for_update().get(pk=pk)
            if approval.status != Status.PENDING or approval.timeout_warning_sent_at is not None:
                continue
            approval.timeout_warning_sent_at = now
            approval.save(update_fields=["timeout_warning_sent_at", "updated_at"])
            event_emit(project_id=approval.project_id, task_id=approval.task_id,
                       event_type="approval_timeout_warning",
                       data={**approval_event_data(approval),
                             "seconds_left": int((approval.expires_at - now).total_seconds())})
            sent += 1
    return sent


def budget_unblock_or_reject(*, approval_id, override, actor) -> None:
    """A blocked call's override was decided (inside that decision's transaction): rejected
    rejects the call; approved reserves it now (or blocks it behind a new override if another
    limit is still passed)."""
    approval = AgentCallApproval.objects.select_for_update().select_related("project").get(pk=approval_id)
    if approval.status != Status.PENDING or approval.budget_override_id != override.pk:
        return
    if override.status == override.Status.REJECTED:
        _close(approval, actor=actor, to=Status.REJECTED, now=timezone.now(),
               reason=f"Budget override rejected: {override.rejection_reason}", event_type="agent_approval_decided",
               action="agent_approval.reject_budget")
        return
    try:
        with transaction.atomic():
            # reserves it now (the link to the approved override stays), or links a new override
            budget_reserve(approval=approval)
    except BudgetCritical:
        return  # still over 1.5 x the limit: it stays blocked behind an override that cannot help
    audit_record(actor=actor, action="agent_approval.unblock", obj=approval,
                 after={"budget_override_id": str(approval.budget_override_id) if approval.budget_override_id else None})
    wakeup_on_commit(approval_group(approval.pk), status=approval.status)
