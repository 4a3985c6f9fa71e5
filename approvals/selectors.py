from approvals.models import AgentCallApproval, FlagSuppression, ResponseApproval
from rest_framework.exceptions import NotFound

from core.api import get_or_404, parse_uuid
from core.request_cache import memo
from projects.permissions import in_visible_projects


def call_route_key(approval_id) -> tuple:
    return ("approval_route", str(approval_id))


def agent_approval_for(*, user, approval_id) -> AgentCallApproval:
    """The call the user may see, or 404, with its project and users."""
    return get_or_404(agent_approval_visible_to(user=user), approval_id)


def agent_approval_route(*, user, approval_id) -> dict:
    """What a write on a call needs before its unit of work: {"id", "project_id", "task_id",
    "requested_by_id"} of a call the user may see, or 404, in one light query. Its project and
    task (which never change) are kept for the rest of the request, so the service's unit of
    work need not look them up again."""
    pk = parse_uuid(approval_id)
    route = AgentCallApproval.objects.filter(in_visible_projects(user), pk=pk).values(
        "id", "project_id", "task_id", "requested_by_id").first()
    if route is None:
        raise NotFound()
    memo(call_route_key(pk), lambda: {"project_id": route["project_id"], "task_id": route["task_id"]})
    return route


def agent_approval_visible_to(*, user):
    return AgentCallApproval.objects.filter(in_visible_projects(user)).select_related(
        "project", "approved_by", "requested_by")


def agent_approval_list(*, project, status: str | None = None, agent_type: str | None = None):
    qs = AgentCallApproval.objects.filter(project=project).select_related("approved_by", "requested_by")
    if status:
        qs = qs.filter(status=status)
    if agent_type:
        qs = qs.filter(agent_type=agent_type)
    return qs.order_by("-created_at", "-id")


def response_approval_visible_to(*, user):
    return ResponseApproval.objects.filter(in_visible_projects(user)).select_related(
        "project", "approved_by", "submitted_by")


def response_approval_for(*, user, approval_id) -> ResponseApproval:
    """The response approval the user may see, or 404."""
    return get_or_404(response_approval_visible_to(user=user), approval_id)


def response_approval_list(*, project, status: str | None = None, agent_type: str | None = None):
    qs = ResponseApproval.objects.filter(project=project).select_related("approved_by", "submitted_by")
    if status:
        qs = qs.filter(status=status)
    if agent_type:
        qs = qs.filter(agent_type=agent_type)
    return qs.order_by("-created_at", "-id")


def flag_suppression_list(*, project):
    return FlagSuppression.objects.filter(project=project).select_related("created_by")
