from celery import shared_task


@shared_task(name="emergency.check_conditions", acks_late=True, soft_time_limit=20, time_limit=30)
def emergency_check_conditions_task(**kwargs):
    from emergency.conditions import conditions_check_all

    return conditions_check_all()
