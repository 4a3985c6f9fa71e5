"""An agent asks to run one call: estimate (the server's count is the floor), assess the risk,
admit it against the budget (reserved, or blocked behind an override), all in one unit of
work. A critical risk or a projected daily cost past 1.5 x the limit stops the project in that
same unit of work: the request stays on record, cancelled by the stop, and the agent gets 423.
Admissions take the project's lock in shared mode: they do not queue behind one another, only
behind a stop (or another exclusive writer), which waits for them in turn."""
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from approvals.analyzers import RiskContext, assess
from approvals.estimation import estimate
from approvals.models import AgentCallApproval
from approvals.services.calibration import project_rules
from approvals.services.common import BudgetState, Status, approval_event_data
from audit.services import audit_record
from budgets.services import BUDGET_RELATED, BudgetCritical, budget_admit, budget_remaining
from core import rawrows
from core.errors import EmergencyStopActive, InvalidInput, NotFoundError, TransitionError
from core.sweeps import warn_at_for
from core.uow import retry_transient
from emergency.models import Condition, Severity
from emergency.services import emergency_settings_for, emergency_stop_trigger
from events.services import event_emit
from projects import roles
from projects.models import Task
from projects.permissions import require_project_perm
from projects.services import agent_state_refresh, task_move
from projects.uow import project_uow


def admission_apply(approval: AgentCallApproval, admission) -> None:
    """Record a budget admission on the call (the only writer of budget_state besides the close
    and settle paths): reserved, or blocked with its override and what unblocks it."""
    if admission.reserved:
        approval.budget_state, approval.budget_blocked_reason = BudgetState.RESERVED, ""
    else:
        approval.budget_state, approval.budget_blocked_reason = BudgetState.BLOCKED, admission.reason
        approval.budget_override_id = admission.override.pk if admission.override else approval.budget_override_id
    rawrows.update_fields(approval, ["budget_state", "budget_blocked_reason", "budget_override_id", "updated_at"])


@retry_transient
def agent_approval_request(*, requester, project_id, task_id, agent_type: str, proposed_action: str,
                           input_data: dict, context_summary: str = "", estimated_tokens: int | None = None,
                           estimated_cost=None, timeout_minutes: int | None = None,
                           model: str = "") -> AgentCallApproval:
    """An agent asks to run one call. Refused with 423 while the project is stopped."""
    tokens, cost = estimate(model=model, proposed_action=proposed_action, input_data=input_data,
                            context_summary=context_summary, estimated_tokens=estimated_tokens,
                            estimated_cost=estimated_cost)
    risk = assess(RiskContext(agent_type=agent_type, proposed_action=proposed_action, input_data=input_data,
                              estimated_cost=cost, budget_remaining=budget_remaining(project_id)),
                  project_rules(project_id))
    timeout_minutes = timeout_minutes or settings.HITL_APPROVAL_TIMEOUT_MINUTES
    stop = None
    # Shared: admissions of one project run side by side (projects/uow.py); the budget windows,
    # locked late in the transaction, and the rows the flush writes last (agent state, outbox,
    # audit chain head) are all they queue for.
    with project_uow(project_id, gate=True, related=BUDGET_RELATED, shared=True) as uow:
        require_project_perm(requester, roles.ACT_AS_AGENT, uow.project, "request agent calls")
        uow.enter_stage("task")
        task = rawrows.by_pk(Task, task_id, lock=True, project_id=uow.project.pk)
        if task is None:
            raise NotFoundError("No such task in this project.")
        if task.agent_type != agent_type:
            raise InvalidInput(fields={"agent_type": [f"The task belongs to the {task.agent_type} agent."]})
        if task.status not in Task.OPEN_STATUSES:
            raise TransitionError(f"The task is {task.status}.", current_status=task.status)
        now = timezone.now()
        approval = AgentCallApproval(
            project=uow.project, task=task, agent_type=agent_type, proposed_action=proposed_action,
            input_data=input_data, context_summary=context_summary, model=model, estimated_tokens=tokens,
            estimated_cost=cost, risk_assessment=risk, timeout_minutes=timeout_minutes, requested_by=requester,
            expires_at=now + timedelta(minutes=timeout_minutes),
            warn_at=warn_at_for(now, timeout_minutes), budget_state=BudgetState.BLOCKED,
        )
        uow.enter_stage("approval")
        if not rawrows.insert(approval, skip_if_duplicate=True):  # the one pending call per task
            pending = AgentCallApproval.objects.filter(task=task, status=Status.PENDING).first()
            raise TransitionError("This task already has a pending approval.", current_status=Status.PENDING,
                                  approval_id=str(pending.pk) if pending else None)
        task_move(task=task, to=Task.Status.WAITING_FOR_HITL)
        audit_record(actor=requester, action="agent_approval.request", obj=approval,
                     after={"status": approval.status, "proposed_action": proposed_action[:500],
                            "estimated_tokens": tokens, "estimated_cost": cost, "risk_level": risk["level"],
                            "expires_at": approval.expires_at})
        critical = None
        try:
            admission_apply(approval, budget_admit(uow=uow, call=approval, requested_by=requester, now=now))
        except BudgetCritical as exc:
            critical = exc
            approval.budget_blocked_reason = (f"The projected daily cost {critical.projected:.4f} passes 1.5 x the "
                                              f"daily limit {critical.limit:.4f}.")
            approval.save(update_fields=["budget_blocked_reason", "updated_at"])
        agent_state_refresh(project_id=uow.project.pk, agent_type=agent_type)
        event_emit(project_id=uow.project.pk, task_id=task.pk, event_type="agent_approval_requested",
                   data={**approval_event_data(approval), "risk_assessment": risk,
                         "budget_blocked_reason": approval.budget_blocked_reason})
        # Both conditions are recorded when both hold: recovery then plans the review of the call too.
        if risk["level"] == "critical" and emergency_settings_for(uow.project.pk).stop_on_critical_risk:
            stop = _stop_for_critical_risk(approval)
        if critical is not None:
            stop = _stop_for_budget(approval, critical)
        if stop is not None:
            approval.refresh_from_db(fields=["status", "budget_state", "rejection_reason"])
    if stop is not None:  # committed together with the request it refuses
        raise EmergencyStopActive(stop[1], emergency_stop_id=stop[0].pk)
    return approval


def _stop_for_budget(approval: AgentCallApproval, critical: BudgetCritical):
    """budget_critical: the projected daily cost passes 1.5 x the limit. Stop (in the request's
    unit of work), then 423."""
    stop, _ = emergency_stop_trigger(
        project_id=approval.project_id, condition=Condition.BUDGET_CRITICAL, severity=Severity.CRITICAL,
        reason=f"Projected daily cost {critical.projected:.4f} passes 1.5 x the daily limit {critical.limit:.4f}",
        data={"projected_daily_cost": f"{critical.projected:.4f}", "daily_cost_limit": f"{critical.limit:.4f}",
              "estimated_cost": f"{approval.estimated_cost:.4f}", "approval_id": str(approval.pk),
              "requested_by": approval.requested_by.get_username()})
    return stop, ("This call would push the projected daily cost past 1.5 x the limit: the project is "
                  "emergency-stopped.")


def _stop_for_critical_risk(approval: AgentCallApproval):
    """security_threat: a call with a critical flag (a live secret, a catastrophic command)
    stops the project in the request's unit of work; the request stays on record, cancelled."""
    critical = [f for f in approval.risk_assessment.get("flags", []) if f.get("severity") == "critical"]
    stop, _ = emergency_stop_trigger(
        project_id=approval.project_id, condition=Condition.SECURITY_THREAT, severity=Severity.CRITICAL,
        reason=f"Critical risk in a requested {approval.agent_type} call: "
               f"{', '.join(sorted({f['code'] for f in critical}))}",
        data={"approval_id": str(approval.pk), "flags": critical[:10]})
    return stop, "The requested call has a critical risk flag: the project is emergency-stopped."
