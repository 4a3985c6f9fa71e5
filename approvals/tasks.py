from datetime import timedelta

from celery import shared_task
from django.conf import settings

from approvals.services import (
    agent_approval_expire_overdue,
    agent_approval_warn_due,
    budget_release_stale,
    response_approval_expire_overdue,
    response_approval_warn_due,
)


@shared_task(name="approvals.expire_overdue", acks_late=True, soft_time_limit=50, time_limit=60)
def approval_expire_overdue_task(**kwargs):
    return agent_approval_expire_overdue() + response_approval_expire_overdue()


@shared_task(name="approvals.warn_due", acks_late=True, soft_time_limit=50, time_limit=60)
def approval_warn_due_task(**kwargs):
    return agent_approval_warn_due() + response_approval_warn_due()


# Kept under its old name: beat schedules and queued messages of a rolling deploy still match.
@shared_task(name="budgets.release_stale", acks_late=True, soft_time_limit=50, time_limit=60)
def budget_release_stale_task(**kwargs):
    return budget_release_stale(older_than=timedelta(hours=settings.HITL_BUDGET_STALE_RESERVATION_HOURS))
