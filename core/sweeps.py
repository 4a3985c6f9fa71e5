"""Beat's sweeps over pending requests (calls, response approvals, questions and checkpoints)."""
import logging
from datetime import timedelta

from django.db import OperationalError
from django.utils import timezone

from core.errors import transient_db_error_kind

log = logging.getLogger(__name__)


def each(pks, run) -> int:
    """``run(pk)`` for every row of a sweep, each in its own service and unit of work; how many it
    changed. A row whose database work is held up (its project locked past HITL_DB_LOCK_TIMEOUT, a
    lost connection) is left for the next sweep: the others are not held up behind it."""
    changed = 0
    for pk in list(pks):
        try:
            changed += bool(run(pk))
        except OperationalError as exc:
            kind = transient_db_error_kind(exc)
            if kind is None:
                raise
            log.warning("sweep: %s left for the next sweep (%s)", pk, kind)
    return changed


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
                               expires_at__gt=now).order_by("warn_at").values_list("pk", flat=True)
    return each(due[:batch], lambda pk: warn(pk, now))
