from datetime import timedelta

from celery import shared_task
from django.conf import settings


@shared_task(name="budgets.release_stale", acks_late=True, soft_time_limit=50, time_limit=60)
def budget_release_stale_task(**kwargs):
    from budgets.services import budget_release_stale

    return budget_release_stale(older_than=timedelta(hours=settings.HITL_BUDGET_STALE_RESERVATION_HOURS))


@shared_task(name="budgets.close_past_windows", acks_late=True, soft_time_limit=50, time_limit=60)
def budget_close_past_windows_task(**kwargs):
    from budgets.services import budget_close_past_windows

    return budget_close_past_windows()
