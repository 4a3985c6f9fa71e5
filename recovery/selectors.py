"""Reads of this layer that the pages above share (the admin here, the reviewer pages)."""
from django.db.models import Q

from approvals.models import AgentCallApproval, ResponseApproval
from core.text import plural
from hitl.models import HitlRequest
from recovery.models import RecoverySession


def open_work_a_stop_cancels(*, project) -> list[str]:
    """What an emergency stop of ``project`` will cancel in the layers below this one (calls,
    responses, HITL requests), counted now as the project_halting handlers select it
    (approvals.services.halting, responses, hitl), as short sentences. Read-only. Both
    confirmation pages show it: the admin's (emergency.admin's stop_preview hook) and the
    reviewer pages' (review.views_project)."""
    calls = AgentCallApproval.objects.filter(project=project).filter(
        Q(status=AgentCallApproval.Status.PENDING)
        | Q(status=AgentCallApproval.Status.APPROVED, started_at__isnull=True)).count()
    responses = ResponseApproval.objects.filter(project=project, status=ResponseApproval.Status.PENDING).count()
    requests = HitlRequest.objects.filter(project=project, status=HitlRequest.Status.PENDING).count()
    held = {0: "", 1: ", its budget reservation released"}.get(calls, ", their budget reservations released")
    lines = [f"{plural(calls, 'agent call')} will be cancelled (pending, or approved and not yet started){held}."]
    if responses:
        lines.append(f"{plural(responses, 'response')} awaiting review will be cancelled.")
    if requests:
        lines.append(f"{plural(requests, 'pending question or checkpoint', 'pending questions and checkpoints')}"
                     f" will be cancelled.")
    return lines


def lifted_later_by(*, session):
    """For a failed recovery whose stop was resolved since by another recovery (the one the stop
    records): that recovery, so its pages say the stop is lifted instead of "the stop stays";
    else None."""
    stop = session.emergency_stop
    if session.status != RecoverySession.Status.FAILED or stop.resolved_at is None \
            or stop.recovery_session_id in (None, session.pk):
        return None
    return RecoverySession.objects.select_related("created_by").filter(pk=stop.recovery_session_id).first()
