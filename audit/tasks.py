from celery import shared_task
from django.conf import settings

from audit.services import audit_checkpoint_write


@shared_task(name="audit.checkpoint", acks_late=True, soft_time_limit=50, time_limit=60)
def audit_checkpoint_task(**kwargs):
    """Run by beat every HITL_AUDIT_CHECKPOINT_MINUTES: a signed copy of the chain heads outside the database."""
    audit_checkpoint_write(settings.HITL_AUDIT_CHECKPOINT_DIR)
