from celery import shared_task

from budgets.services import budget_close_past_windows


@shared_task(name="budgets.close_past_windows", acks_late=True, soft_time_limit=50, time_limit=60)
def budget_close_past_windows_task(**kwargs):
    return budget_close_past_windows()
