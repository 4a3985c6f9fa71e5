from approvals.models import AgentCallApproval
from core.api import get_or_404
from core.request_cache import memo
from projects.permissions import project_visible_to


def call_route_key(approval_id) -> tuple:
    return ("approval_route", str(approval_id))


def agent_approval_for(*, user, approval_id) -> AgentCallApproval:
    """The call the user may see, or 404; its project and task (which never change) are kept
    for the rest of the request, so the service's unit of work need not look them up again."""
    approval = get_or_404(agent_approval_visible_to(user=user), approval_id)
    memo(call_route_key(approval.pk), lambda: {"project_id": approval.project_id, "task_id": approval.task_id})
    return approval


def agent_approval_visible_to(*, user):
    return AgentCallApproval.objects.filter(project__in=project_visible_to(user=user)).select_related(
        "project", "approved_by", "requested_by")


def agent_approval_list(*, project, status: str | None = None, agent_type: str | None = None):
    qs = AgentCallApproval.objects.filter(project=project).select_related("approved_by", "requested_by")
    if status:
        qs = qs.filter(status=status)
    if agent_type:
        qs = qs.filter(agent_type=agent_type)
    return qs.order_by("-created_at", "-id")
