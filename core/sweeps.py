"""Beat's sweeps over pending requests (calls, response approvals, questions and checkpoints)."""
from datetime import timedelta

from django.utils import timezone


def warn_at_for(created, timeout_minutes: int):
    """When a request made at ``created`` is warned of its time-out: a fifth of its time left."""
    return created + timedelta(minutes=timeout_minutes) * 4 / 5


def timeout_warning_due(row, now) -> bool:
    """Whether ``row`` (locked by its service) is due its one time-out warning at ``now``: still
    pending, not warned yet, past its ``warn_at`` and not past its ``expires_at``."""
    return (row.status == "pending" and row.timeout_warning_sent_at is None and row.warn_at is not None
            and row.warn_at <= now < row.expires_at)


def timeout_warnings_due(model, warn, *, now=None, batch: int = 1000) -> int:
    """Every pending ``model`` row (with ``status``, ``warn_at``, ``timeout_warning_sent_at`` and
    ``expires_at``) whose time-out warning is due and not sent goes through ``warn(pk, now)``,
    its service, which takes the row's lock and checks again. Returns how many it warned."""
    now = now or timezone.now()
    due = model.objects.filter(status="pending", timeout_warning_sent_at__isnull=True, warn_at__lte=now,
                               expires_at__gt=now).values_list("pk", flat=True)
    return sum(warn(pk, now) for pk in list(due[:batch]))
