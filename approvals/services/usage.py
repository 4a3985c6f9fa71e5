"""What a started call used lands in the ledger, exactly once; stale reservations go back."""
from datetime import timedelta
from decimal import Decimal

from django.utils import timezone

from approvals.estimation import count_tokens, money, prompt_text, usage_price
from approvals.models import AgentCallApproval
from approvals.services.common import BudgetState, Status, approval_event_data, call_uow
from audit.services import audit_record
from budgets.models import UsageEntry
from budgets.services import budget_release, budget_settle
from core import rawrows
from core.errors import EmergencyStopActive, Forbidden, InvalidInput, TransitionError
from core.times import iso_utc
from core.uow import retry_transient
from emergency.models import Condition, EmergencyStop, Severity
from emergency.services import emergency_stop_trigger
from events.services import event_emit
from projects.models import Project


def priced_cost(approval: AgentCallApproval, tokens_used: int) -> Decimal:
    """The cost of ``tokens_used`` (the prompt's share at the input price, the rest at the output
    price) at the call's model's price, or at the floor estimate's price when it names none."""
    price = usage_price(approval.model)
    if price is None:
        raise InvalidInput(fields={"actual_cost": ["Give actual_cost: no model prices are configured."]})
    prompt = min(tokens_used, count_tokens(prompt_text(
        proposed_action=approval.proposed_action, input_data=approval.input_to_run,
        context_summary=approval.context_summary)))
    return money((Decimal(prompt) * price.input_per_million
                  + Decimal(tokens_used - prompt) * price.output_per_million) / Decimal(1_000_000))


@retry_transient
def agent_approval_report_usage(*, approval_id, actor, tokens_used: int,
                                actual_cost=None) -> tuple[AgentCallApproval, bool]:
    """The requesting agent reports what a started call really used (its totals so far); that
    settles its budget reservation exactly once, and lands in the ledger even when the
    reservation was released meanwhile. A later report with the same totals (a retry) changes
    nothing; one above them lands the difference; one below them is refused (409: spend never
    goes back). Usage far above the estimate raises a
    ``usage_overrun`` flag (a safety_alert event); a day's cost past 1.5 x the daily limit
    stops the project (budget_critical). Returns (approval, settled now). Under an emergency stop
    (before the report, or tripped by it) the usage is recorded all the same and the agent is told
    to stop: 423 after the commit, as for a response submitted then."""
    with call_uow(approval_id, gate=False) as (uow, approval):
        if actor.pk != approval.requested_by_id:
            raise Forbidden("Only the agent that requested this call may report its usage.")
        if approval.status != Status.APPROVED or approval.started_at is None:
            raise TransitionError("Only a started call has usage to report.", current_status=approval.status)
        # no cost given: the model's prices (and only the new tokens of a later report, at today's)
        price = (lambda tokens: priced_cost(approval, tokens)) if actual_cost is None else None
        if price is not None:
            actual_cost = price(tokens_used)
        settlement = budget_settle(uow=uow, call=approval, tokens_used=tokens_used, actual_cost=actual_cost,
                                   price=price)
        refuse_lower_totals(settlement, current_status=approval.status)
        record_settlement(uow, approval, settlement, tokens_used=tokens_used, actual_cost=actual_cost)
        stopped = uow.project.status == Project.Status.EMERGENCY_STOPPED
        active_stop_id = uow.project.active_stop_id
    if stopped:
        raise EmergencyStopActive("The project is under an emergency stop: the usage was recorded.",
                                  emergency_stop_id=active_stop_id)
    return approval, settlement.settled


def refuse_lower_totals(settlement, *, current_status: str) -> None:
    """409 for a report below the call's totals on record (a usage report or a response's
    ``tokens_used`` / ``actual_cost``): a report gives the call's total usage, which only grows."""
    if settlement.below:
        tokens, cost = settlement.recorded
        raise TransitionError(
            f"This call's usage is already reported as {tokens:,} tokens and {cost:.4f}: a report gives the "
            f"call's total usage, which can only grow.", current_status=current_status,
            tokens_used=tokens, actual_cost=f"{cost:.4f}")


def record_settlement(uow, approval: AgentCallApproval, settlement, *, tokens_used: int, actual_cost) -> None:
    """What a settlement means for its call: settled; a ``usage_overrun`` flag (and a
    safety_alert event) when far above the estimate; a day's cost past 1.5 x the daily limit
    stops the project (budget_critical). Nothing when the usage was already settled."""
    if not settlement.settled:
        return
    approval.budget_state = BudgetState.SETTLED
    fields = ["budget_state", "updated_at"]
    if settlement.flagged:
        flag = {"code": "usage_overrun", "severity": "high",
                "message": f"Reported usage ({tokens_used:,} tokens, {Decimal(actual_cost):.4f}) is far above "
                           f"the estimate ({approval.estimated_tokens:,} tokens, "
                           f"{approval.estimated_cost:.4f}).",
                "at": iso_utc(timezone.now())}
        approval.usage_flags = [*approval.usage_flags, flag]
        fields.append("usage_flags")
        event_emit(project_id=approval.project_id, task_id=approval.task_id, event_type="safety_alert",
                   data={**approval_event_data(approval), "flag": flag})
    rawrows.update_fields(approval, fields)
    if settlement.critical is not None and not _already_stopped_for_budget(uow.project):
        emergency_stop_trigger(
            project_id=approval.project_id, condition=Condition.BUDGET_CRITICAL, severity=Severity.CRITICAL,
            # a spend lands in the day its reservation was made in: name it (reported after the
            # project's midnight, the stop pointed at a day the budget page no longer shows)
            reason=f"The cost of the day from {iso_utc(settlement.critical.day_start)} (the day the call's cost was "
                   f"reserved in) {settlement.critical.projected:.4f} passes 1.5 x the daily limit "
                   f"{settlement.critical.limit:.4f}",
            data={"daily_cost": f"{settlement.critical.projected:.4f}", "day_start": iso_utc(settlement.critical.day_start),
                  "daily_cost_limit": f"{settlement.critical.limit:.4f}", "approval_id": str(approval.pk)})


def _already_stopped_for_budget(project) -> bool:
    stop = EmergencyStop.objects.filter(project=project, resolved_at__isnull=True).first()
    return stop is not None and Condition.BUDGET_CRITICAL in stop.triggered_conditions


def budget_release_stale(*, older_than: timedelta, now=None) -> int:
    """Beat: give back reservations of decided calls that never reported their usage after
    ``older_than``, so they stop holding budget. A report that comes later still counts its spend."""
    now = now or timezone.now()
    closed = UsageEntry.objects.filter(kind__in=(UsageEntry.Kind.SETTLE, UsageEntry.Kind.RELEASE)).values("approval_id")
    open_reserves = UsageEntry.objects.filter(kind=UsageEntry.Kind.RESERVE, created_at__lt=now - older_than).exclude(
        approval_id__in=closed)
    return sum(_release_stale_one(approval_id=approval_id, older_than=older_than)
               for approval_id in list(open_reserves.values_list("approval_id", flat=True)[:1000]))


@retry_transient
def _release_stale_one(*, approval_id, older_than: timedelta) -> bool:
    with call_uow(approval_id, gate=False) as (uow, approval):
        if approval.status == Status.PENDING:
            return False  # still waiting for a person: its own time-out releases it
        if approval.status == Status.APPROVED and (
                approval.started_at is None or approval.started_at > timezone.now() - older_than):
            return False  # not started: its grant lapses first; started: its own age counts
        if not budget_release(uow=uow, call_id=approval_id):
            return False
        if approval.budget_state == BudgetState.RESERVED:
            approval.budget_state = BudgetState.RELEASED
            approval.save(update_fields=["budget_state", "updated_at"])
        audit_record(actor=None, action="budget.release_stale", obj=approval,
                     after={"status": approval.status, "older_than_seconds": older_than.total_seconds()})
        return True
