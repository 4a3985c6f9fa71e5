"""Reads of questions and checkpoints, filtered by what the user may see or decide."""
from django.db.models import Q
from django.utils import timezone

from hitl.models import HitlRequest
from projects import roles
from projects.permissions import in_visible_projects, project_perms, visible_or_404


def hitl_request_visible_to(*, user):
    """The requests of the projects the user may see."""
    return HitlRequest.objects.filter(in_visible_projects(user)).select_related(
        "project", "asked_by", "responded_by")


def hitl_request_for(*, user, request_id) -> HitlRequest:
    """The request the user may see, or 404 (also for a malformed id)."""
    return visible_or_404(user, HitlRequest, request_id, related=("asked_by", "responded_by"))


def hitl_request_list(*, project, status: str | None = None):
    qs = HitlRequest.objects.filter(project=project).select_related("asked_by", "responded_by")
    if status:
        qs = qs.filter(status=status)
    return qs.order_by("-created_at", "-id")


def _reviewed_projects(user) -> Q:
    if not user.is_authenticated or not user.is_active:
        return Q(pk__in=[])
    if user.is_superuser:
        return Q()
    return Q(project_id__in=[pk for pk, perms in project_perms(user).items() if roles.REVIEW in perms])


def pending_for_reviewer(user):
    """The pending, not yet expired requests ``user`` may decide (reviewer or manager of their
    project, and not asked by them), the soonest to expire first: the reviewer inbox's rows."""
    return (HitlRequest.objects.filter(_reviewed_projects(user), status=HitlRequest.Status.PENDING,
                                       expires_at__gt=timezone.now())
            .exclude(asked_by_id=user.pk)
            .select_related("project", "task", "asked_by")
            .order_by("expires_at", "created_at"))
