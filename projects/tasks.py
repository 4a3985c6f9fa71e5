import logging

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task(name="projects.deliver_notification", bind=True, acks_late=True, max_retries=5,
             soft_time_limit=20, time_limit=30)
def deliver_notification_task(self, *, notifier_id, event_type, subject, payload, delivery_id=None, **kwargs):
    """Send one alert to one notifier (queued by notify_project_on_commit). A notifier deleted
    or deactivated meanwhile is skipped; a failed delivery is retried after 5, 10, 20, 40, 80 s
    (each attempt with the same ``delivery_id``)."""
    from projects.notifications import NotificationRefused, deliver

    try:
        result = deliver(notifier_id=notifier_id, event_type=event_type, subject=subject, payload=payload,
                         delivery_id=delivery_id)
    except NotificationRefused as exc:  # misconfigured target: retrying cannot help
        log.error("notification %s refused for notifier %s: %s", event_type, notifier_id, exc)
        return {"notifier_id": notifier_id, "status": "refused", "reason": str(exc)}
    except Exception as exc:
        attempt, attempts = self.request.retries + 1, self.max_retries + 1
        if self.request.retries >= self.max_retries:
            log.error("notification %s to notifier %s failed for good (attempt %s/%s): %s",
                      event_type, notifier_id, attempt, attempts, exc)
        else:
            log.warning("notification %s to notifier %s failed (attempt %s/%s), retrying: %s",
                        event_type, notifier_id, attempt, attempts, exc)
        raise self.retry(exc=exc, countdown=min(2 ** self.request.retries * 5, 80))
    if result.get("status") == "skipped":
        log.info("notification %s to notifier %s skipped: %s", event_type, notifier_id, result.get("reason"))
    return result


@shared_task(name="projects.requeue_notifications", acks_late=True, soft_time_limit=50, time_limit=60)
def requeue_notifications_task(**kwargs):
    """Run by beat: queue again the alerts the broker did not take when their change committed
    (older than a minute, so a commit's own hand-over is not raced)."""
    from datetime import timedelta

    from django.utils import timezone

    from projects.models import QueuedNotification
    from projects.notifications import queue_notifications

    due = QueuedNotification.objects.filter(created_at__lt=timezone.now() - timedelta(minutes=1)).order_by("pk")
    return queue_notifications(list(due[:500]))

