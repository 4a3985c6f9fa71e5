from celery import shared_task


@shared_task(name="approvals.expire_overdue", acks_late=True, soft_time_limit=50, time_limit=60)
def approval_expire_overdue_task(**kwargs):
    from approvals.services import agent_approval_expire_overdue

    return agent_approval_expire_overdue()


@shared_task(name="approvals.warn_due", acks_late=True, soft_time_limit=50, time_limit=60)
def approval_warn_due_task(**kwargs):
    from approvals.services import agent_approval_warn_due

    return agent_approval_warn_due()
