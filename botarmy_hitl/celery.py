"""The Celery app: configuration from Django settings (CELERY_*), tasks from every app."""
import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botarmy_hitl.settings")

app = Celery("botarmy_hitl")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Defaults that settings (CELERY_*) may override:
app.add_defaults({
    # A broker connection lost while acks_late tasks run: cancel them (the broker redelivers them;
    # the tasks are idempotent) instead of letting them run on unacknowledged, which also holds up a
    # shutdown. Celery 6's default; without it Celery 5 warns about the coming change.
    "worker_cancel_long_running_tasks_on_connection_loss": True,
})
app.autodiscover_tasks()


@signals.worker_init.connect
@signals.beat_init.connect
def _checked(**kwargs):
    """A worker or beat with a setting the system checks refuse (audit keys, analyzers) stops
    at once, naming it, instead of failing each task that needs it."""
    from django.core.exceptions import ImproperlyConfigured

    from core.checks import refuse_to_start_on_errors

    try:
        refuse_to_start_on_errors("Celery")
    except ImproperlyConfigured as exc:
        raise SystemExit(str(exc)) from None  # Celery only logs an exception a signal handler raises
