"""Beat's sweeps over pending requests (calls, response approvals, questions and checkpoints)."""
from django.utils import timezone


def timeout_warnings_due(model, warn, *, now=None, batch: int = 1000) -> int:
    """Every pending ``model`` row (with ``status``, ``warn_at``, ``timeout_warning_sent_at`` and
    ``expires_at``) whose time-out warning is due and not sent goes through ``warn(pk, now)``,
    its service, which takes the row's lock and checks again. Returns how many it warned."""
    now = now or timezone.now()
    due = model.objects.filter(status="pending", timeout_warning_sent_at__isnull=True, warn_at__lte=now,
                               expires_at__gt=now).values_list("pk", flat=True)
    return sum(warn(pk, now) for pk in list(due[:batch]))
