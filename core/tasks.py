from celery import shared_task
from django.conf import settings
from django.utils import timezone


@shared_task(name="core.heartbeat", acks_late=True, soft_time_limit=20, time_limit=30)
def heartbeat_task(name: str = "beat", **kwargs):
    """Run by beat every HITL_HEARTBEAT_SECONDS on each queue: proves beat and a worker of that
    queue are alive ("beat": the default queue; "emergency": the condition checks' queue)."""
    from core.models import Heartbeat

    Heartbeat.objects.update_or_create(name=name, defaults={"last_seen": timezone.now()})


@shared_task(name="core.purge_idempotency_keys", acks_late=True, soft_time_limit=50, time_limit=60)
def purge_idempotency_keys_task(**kwargs):
    from core.models import IdempotencyRecord

    IdempotencyRecord.objects.filter(created_at__lt=timezone.now() - settings.HITL_IDEMPOTENCY_TTL).delete()
