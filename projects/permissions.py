"""Who may see and do what on a project. Visibility failures are 404, actions 403.

A user's roles on every project are read in one query (their per-user object permissions and
those of their groups, as django-guardian stores them) and kept for the rest of the request
(core.request_cache), so every check of a request after the first costs no query. Superusers
may do everything; an inactive user nothing."""
import uuid

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db.models import Q
from guardian.models import GroupObjectPermission
from rest_framework.exceptions import NotFound

from core.api import parse_uuid
from core.errors import Forbidden
from core.rawrows import by_pk, by_pk_with, kept_cursor
from core.request_cache import forget, memo
from projects import roles
from projects.models import Project, ProjectUserObjectPermission

User = get_user_model()


def _perms_sql(user: str = "%s", content_type: str = "%s") -> str:
    """One indexed statement (user object permissions by user, group ones by the user's groups);
    written out so that a request does not pay for compiling a union on every call. ``user`` and
    ``content_type``: SQL for the user's id (twice) and the project content type's id, parameters
    by default."""
    perm = Permission._meta.db_table
    direct = ProjectUserObjectPermission._meta
    grouped = GroupObjectPermission._meta
    membership = User.groups.through._meta.db_table
    return (
        f"SELECT CAST(d.{direct.get_field('content_object').column} AS TEXT), p.codename "
        f"FROM {direct.db_table} d JOIN {perm} p ON p.id = d.permission_id WHERE d.user_id = {user} "
        f"UNION ALL "
        f"SELECT g.object_pk, p.codename FROM {grouped.db_table} g JOIN {perm} p ON p.id = g.permission_id "
        f"JOIN {membership} m ON m.group_id = g.group_id WHERE m.user_id = {user} "
        f"AND g.content_type_id = {content_type}")


def project_perms_sql(user: str) -> str:
    """The statement of a user's (project id as text, codename) rows with ``user`` (SQL for the
    user's id, e.g. a subquery) in it and one parameter left, ``project_content_type_id()``, for
    a caller that reads them in the same statement as something else: the API key's lookup
    (access.authentication) reads the key, its user and the user's roles in one trip, and hands
    the rows to ``remember_project_perms``."""
    return _perms_sql(user, "%s")


def project_content_type_id() -> int:
    return ContentType.objects.get_for_model(Project).pk  # cached after the first call


def remember_project_perms(user_id, rows) -> None:
    """The roles of ``user_id`` read by the caller (rows of ``project_perms_sql``), kept for the
    rest of the request as ``project_perms`` would load them."""
    memo(("project_perms", user_id), lambda: _perms_from_rows(rows))


def _load_project_perms(user_id) -> dict[uuid.UUID, frozenset[str]]:
    global _PERMS_SQL
    if _PERMS_SQL is None:
        _PERMS_SQL = _perms_sql()
    with kept_cursor() as cursor:
        cursor.execute(_PERMS_SQL, [user_id, user_id, project_content_type_id()])
        rows = cursor.fetchall()
    return _perms_from_rows(rows)


def _perms_from_rows(rows) -> dict[uuid.UUID, frozenset[str]]:
    perms: dict[uuid.UUID, set[str]] = {}
    for project_id, codename in rows:
        try:
            perms.setdefault(uuid.UUID(str(project_id)), set()).add(codename)
        except ValueError:  # a group permission on a malformed object id grants nothing
            continue
    return {pk: frozenset(codenames) for pk, codenames in perms.items()}


_PERMS_SQL: str | None = None


def project_perms(user) -> dict[uuid.UUID, frozenset[str]]:
    """{project id: the permission codenames the user holds on it}, once per request."""
    if not user.is_authenticated or not user.is_active:
        return {}
    return memo(("project_perms", user.pk), lambda: _load_project_perms(user.pk))


def project_perms_changed(user) -> None:
    """A role of ``user`` was granted or revoked in this request: read them again."""
    forget(("project_perms", user.pk))


def visible_project_ids(user) -> list[uuid.UUID]:
    """Ids of the projects a (non-superuser) user may see, from this request's roles."""
    return [pk for pk, perms in project_perms(user).items() if roles.VIEW in perms]


def may_see(user, project_id) -> bool:
    """Whether ``user`` may see the project ``project_id`` (from this request's roles)."""
    if not user.is_authenticated or not user.is_active:
        return False
    return user.is_superuser or roles.VIEW in project_perms(user).get(project_id, ())


def visible_or_404(user, model, pk, names: tuple[str, ...] | None = None, related: tuple[str, ...] = ()):
    """The ``model`` row ``pk`` (only ``names`` when given; they must include ``project``'s
    column; or with the rows of its foreign keys ``related``, as select_related reads them) of a
    project the user may see, else 404: one hand-written statement, the roles from this
    request's cache."""
    obj = by_pk_with(model, parse_uuid(pk), related) if related else by_pk(model, parse_uuid(pk), names)
    if obj is None or not may_see(user, obj.project_id):
        raise NotFound()
    return obj


def in_visible_projects(user, field: str = "project") -> Q:
    """A filter on ``<field>_id`` for the rows of projects the user may see (no subquery: the ids
    come from this request's roles)."""
    if not user.is_authenticated or not user.is_active:
        return Q(pk__in=[])
    if user.is_superuser:
        return Q()
    return Q(**{f"{field}_id__in": visible_project_ids(user)})


def project_visible_to(*, user):
    """Projects the user may see: any role on it, or admin."""
    if not user.is_authenticated or not user.is_active:
        return Project.objects.none()
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(pk__in=visible_project_ids(user))


def has_project_perm(user, perm: str, project) -> bool:
    if not user.is_active:
        return False
    if user.is_superuser:
        return True
    project_id = project.pk if isinstance(project, Project) else project
    return perm in project_perms(user).get(parse_uuid(project_id), frozenset())


def require_project_perm(user, perm: str, project, action: str) -> None:
    if not has_project_perm(user, perm, project):
        raise Forbidden(f"You may not {action} in project {project.slug}.")


def require_project_perm_by_id(user, perm: str, project_id, action: str, field: str | None = None) -> uuid.UUID:
    """``require_project_perm`` for a project known by its id only, without reading its row:
    404 when the user cannot see it (or the id is malformed), 403 when they can but may not act.
    Returns the id (a superuser passes; the service's unit of work then 404s an unknown one)."""
    pk = parse_uuid(project_id, field=field)
    if has_project_perm(user, perm, pk):
        return pk
    if has_project_perm(user, roles.VIEW, pk):
        raise Forbidden(f"You may not {action} in this project.")
    raise NotFound()


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
