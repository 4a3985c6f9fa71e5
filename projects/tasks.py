import logging

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task(name="projects.deliver_notification", bind=True, acks_late=True, max_retries=5,
             soft_time_limit=20, time_limit=30)
def deliver_notification_task(self, *, notifier_id, event_type, subject, payload, delivery_id=None, queued_id=None,
                              **kwargs):
    """Send one alert to one notifier (queued by notify_project_on_commit). A notifier deleted
    or deactivated meanwhile is skipped; a failed delivery is retried after 5, 10, 20, 40, 80 s
    (each attempt with the same ``delivery_id``). Its queued row (``queued_id``) is deleted once
    the delivery is over, whatever the outcome; a copy of the task whose row is gone (queued again
    by the sweep, the first one done meanwhile) sends nothing."""
    from projects.models import QueuedNotification
    from projects.notifications import NotificationRefused, deliver

    def over(result):
        if queued_id is not None:
            QueuedNotification.objects.filter(pk=queued_id).delete()
        return result

    if queued_id is not None and not QueuedNotification.objects.filter(pk=queued_id).exists():
        return {"notifier_id": notifier_id, "status": "skipped", "reason": "delivered already"}
    try:
        result = deliver(notifier_id=notifier_id, event_type=event_type, subject=subject, payload=payload,
                         delivery_id=delivery_id)
    except NotificationRefused as exc:  # misconfigured target: retrying cannot help
        log.error("notification %s refused for notifier %s: %s", event_type, notifier_id, exc)
        return over({"notifier_id": notifier_id, "status": "refused", "reason": str(exc)})
    except Exception as exc:
        attempt, attempts = self.request.retries + 1, self.max_retries + 1
        if self.request.retries >= self.max_retries:
            log.error("notification %s to notifier %s failed for good (attempt %s/%s): %s",
                      event_type, notifier_id, attempt, attempts, exc)
            over(None)
            raise
        log.warning("notification %s to notifier %s failed (attempt %s/%s), retrying: %s",
                    event_type, notifier_id, attempt, attempts, exc)
        raise self.retry(exc=exc, countdown=min(2 ** self.request.retries * 5, 80))
    if result.get("status") == "skipped":
        log.info("notification %s to notifier %s skipped: %s", event_type, notifier_id, result.get("reason"))
    return over(result)


@shared_task(name="projects.requeue_notifications", acks_late=True, soft_time_limit=50, time_limit=60)
def requeue_notifications_task(**kwargs):
    """Run by beat: queue again the alerts the broker did not take when their change committed
    (older than a minute, so a commit's own hand-over is not raced), and those handed over
    HITL_NOTIFICATION_REQUEUE_MINUTES ago whose delivery is not over (the broker lost the task:
    a Redis restarted without persistence; a copy of one still under way sends nothing once the
    first is done, and a receiver drops a second copy by its X-HITL-Delivery)."""
    from datetime import timedelta

    from django.conf import settings
    from django.db.models import Q
    from django.utils import timezone

    from projects.models import QueuedNotification
    from projects.notifications import queue_notifications

    now = timezone.now()
    due = QueuedNotification.objects.filter(
        Q(handed_over_at__isnull=True, created_at__lt=now - timedelta(minutes=1))
        | Q(handed_over_at__lt=now - timedelta(minutes=settings.HITL_NOTIFICATION_REQUEUE_MINUTES))).order_by("pk")
    return queue_notifications(list(due[:500]))

