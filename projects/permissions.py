"""Who may see and do what on a project. Visibility failures are 404, actions 403."""
from guardian.shortcuts import get_objects_for_user
from rest_framework.exceptions import NotFound

from projects import roles
from core.api import parse_uuid
from core.errors import Forbidden
from projects.models import Project


def project_visible_to(*, user):
    """Projects the user may see: any role on it, or admin."""
    if not user.is_authenticated or not user.is_active:
        return Project.objects.none()
    if user.is_superuser:
        return Project.objects.all()
    return get_objects_for_user(user, f"projects.{roles.VIEW}", klass=Project)


def has_project_perm(user, perm: str, project) -> bool:
    return user.is_active and user.has_perm(f"projects.{perm}", project)


def require_project_perm(user, perm: str, project, action: str) -> None:
    if not has_project_perm(user, perm, project):
        raise Forbidden(f"You may not {action} in project {project.slug}.")


def project_for_user(*, user, project_id, field: str | None = None) -> Project:
    """The visible project, or 404 (also for a malformed or unknown id)."""
    pk = parse_uuid(project_id, field=field)
    project = project_visible_to(user=user).filter(pk=pk).first()
    if project is None:
        raise NotFound()
    return project


def require_not_requester(*, decider, requester_id) -> None:
    """Nobody decides a request they made themselves (approvals, overrides, recovery steps),
    whatever roles they hold, admins included."""
    if requester_id is not None and decider.pk == requester_id:
        raise Forbidden("You cannot decide a request that you made yourself.")
