from celery import shared_task


@shared_task(name="hitl.expire_overdue", acks_late=True, soft_time_limit=50, time_limit=60)
def hitl_expire_overdue_task(**kwargs):
    from hitl.services import hitl_request_expire_overdue

    return hitl_request_expire_overdue()


@shared_task(name="hitl.warn_due", acks_late=True, soft_time_limit=50, time_limit=60)
def hitl_warn_due_task(**kwargs):
    from hitl.services import hitl_request_warn_due

    return hitl_request_warn_due()
