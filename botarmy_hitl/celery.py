"""The Celery app: configuration from Django settings (CELERY_*), tasks from every app."""
import os

from celery import Celery

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
