from approvals.models import AgentCallApproval, FlagSuppression, ResponseApproval

from core.request_cache import memo
from projects.permissions import in_visible_projects, visible_or_404


def call_route_key(approval_id) -> tuple:
    return ("approval_route", str(approval_id))


def agent_approval_for(*, user, approval_id) -> AgentCallApproval:
    """The call the user may see, or 404, with the users it names (one hand-written statement)."""
    return visible_or_404(user, AgentCallApproval, approval_id, related=("approved_by", "requested_by"))


def agent_approval_route(*, user, approval_id) -> dict:
    """What a write on a call needs before its unit of work: {"id", "project_id", "task_id",
    "requested_by_id"} of a call the user may see, or 404, in one light query. Its project and
    task (which never change) are kept for the rest of the request, so the service's unit of
    work need not look them up again."""
    call = visible_or_404(user, AgentCallApproval, approval_id, ROUTE_FIELDS)
    route = {"id": call.pk, "project_id": call.project_id, "task_id": call.task_id,
             "requested_by_id": call.requested_by_id}
    memo(call_route_key(call.pk), lambda: {"project_id": route["project_id"], "task_id": route["task_id"]})
    return route


ROUTE_FIELDS = ("id", "project", "task", "requested_by")


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
    """The response approval the user may see, or 404, with the users it names (one statement)."""
    return visible_or_404(user, ResponseApproval, approval_id, related=("approved_by", "submitted_by"))


def response_approval_list(*, project, status: str | None = None, agent_type: str | None = None):
    qs = ResponseApproval.objects.filter(project=project).select_related("approved_by", "submitted_by")
    if status:
        qs = qs.filter(status=status)
    if agent_type:
        qs = qs.filter(agent_type=agent_type)
    return qs.order_by("-created_at", "-id")


def flag_suppression_list(*, project):
    return FlagSuppression.objects.filter(project=project).select_related("created_by").order_by("-created_at", "-id")
