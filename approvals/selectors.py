from projects.permissions import project_visible_to
from approvals.models import AgentCallApproval


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
