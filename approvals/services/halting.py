"""What an emergency stop does to calls (emergency.hooks.project_halting, connected in
ApprovalsConfig.ready): cancel every pending and approved-not-started call, withdraw the
overrides they waited for, give their reservations back, and wake every waiting agent."""
from django.db.models import Q

from approvals.models import CANCELLED_BY_STOP, AgentCallApproval
from approvals.services.common import BudgetState, Status, project_stop_group, withdraw_orphaned_overrides
from budgets.services import budget_release_many
from core.wakeup import wakeup_on_commit


def cancel_open_calls(*, uow, project, now) -> list[str]:
    open_calls = AgentCallApproval.objects.filter(project=project).filter(
        Q(status=Status.PENDING) | Q(status=Status.APPROVED, started_at__isnull=True))
    ids = [call.pk for call in uow.lock_many("approval", open_calls.only("pk"))]
    AgentCallApproval.objects.filter(pk__in=ids).update(
        status=Status.CANCELLED, budget_state=BudgetState.RELEASED, rejection_reason=CANCELLED_BY_STOP, updated_at=now)
    withdraw_orphaned_overrides(uow, ids, "Its call was cancelled by an emergency stop.")
    budget_release_many(uow=uow, call_ids=ids)
    wakeup_on_commit(project_stop_group(project.pk), status="emergency_stopped")  # every waiting agent
    return [str(pk) for pk in ids]
