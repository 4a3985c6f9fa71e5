"""projects/permissions.py: a user's project roles (per-user guardian object permissions and
those of their groups) are read in one statement and kept for the rest of the request
(core.request_cache), never longer: a change is seen by the next request, and a grant or
revocation made through access.services within a request is seen by its next check.
"""
import pytest
from django.contrib.auth.models import AnonymousUser, Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test.utils import CaptureQueriesContext
from guardian.models import GroupObjectPermission
from guardian.shortcuts import assign_perm, remove_perm

from access.services import role_grant, role_revoke_all
from core.request_cache import request_scope
from projects import roles
from projects.models import Project
from projects.permissions import has_project_perm, project_perms, project_visible_to

pytestmark = pytest.mark.django_db

GROUP_PERMS_TABLE = GroupObjectPermission._meta.db_table


def task_body(project, title="T"):
    return {"project_id": str(project.pk), "agent_type": "coder", "title": title}


def visible_ids(client) -> set[str]:
    r = client.get("/api/v1/projects")
    assert r.status_code == 200, r.content
    return {row["id"] for row in r.json()["results"]}


@pytest.fixture
def warm_content_types():
    """The Project content type in ContentType's cache (the loader reads it from there), so
    that the query counts below count the roles' statement only."""
    ContentType.objects.get_for_model(Project)


def store_raw(row: GroupObjectPermission) -> None:
    """The row as it is, without guardian's save() (which looks the object up, and so refuses
    an id that is not one): what a data import or raw SQL can leave behind."""
    GroupObjectPermission.objects.bulk_create([row])
    assert GroupObjectPermission.objects.filter(group=row.group, object_pk=row.object_pk).exists()


def role_queries(queries) -> list[str]:
    """The statements that loaded roles (the one that reads the group object permissions)."""
    return [q["sql"] for q in queries if GROUP_PERMS_TABLE in q["sql"]]


# --- between requests: nothing is kept ----------------------------------------------------
def test_a_revoked_role_is_enforced_on_the_next_request(client_for, agent, project):
    client = client_for(agent)
    assert client.get(f"/api/v1/projects/{project.pk}").status_code == 200
    assert client.post("/api/v1/tasks", task_body(project, "before"), format="json").status_code == 201
    assert str(project.pk) in visible_ids(client)

    role_revoke_all(user=agent, project=project)

    # The same key, the next request: the project is gone (404), acting on it too.
    r = client.get(f"/api/v1/projects/{project.pk}")
    assert r.status_code == 404 and r.json()["error"] == "not_found", r.content
    r = client.post("/api/v1/tasks", task_body(project, "after"), format="json")
    assert r.status_code == 404 and r.json()["error"] == "not_found", r.content
    assert visible_ids(client) == set()


def test_a_downgraded_role_loses_its_actions_on_the_next_request(client_for, manager, project):
    client = client_for(manager)
    assert client.patch(f"/api/v1/projects/{project.pk}", {"name": "Renamed"}, format="json").status_code == 200

    role_revoke_all(user=manager, project=project)
    role_grant(user=manager, project=project, role="reviewer")

    assert client.get(f"/api/v1/projects/{project.pk}").status_code == 200  # still sees it
    r = client.patch(f"/api/v1/projects/{project.pk}", {"name": "Again"}, format="json")
    assert r.status_code == 403 and r.json()["error"] == "forbidden", r.content
    project.refresh_from_db()
    assert project.name == "Renamed"


def test_a_role_granted_between_requests_is_honoured_on_the_next(client_for, make_user, project):
    user = make_user("newcomer")
    client = client_for(user)
    assert client.get(f"/api/v1/projects/{project.pk}").status_code == 404
    role_grant(user=user, project=project, role="agent")
    assert client.get(f"/api/v1/projects/{project.pk}").status_code == 200
    assert client.post("/api/v1/tasks", task_body(project), format="json").status_code == 201


# --- roles through groups (guardian's GroupObjectPermission) --------------------------------
def test_a_role_given_through_a_group_is_honoured(client_for, make_user, project, other_project):
    user = make_user("grouped")  # no role of its own
    group = Group.objects.create(name="agents-of-demo")
    for perm in roles.ROLES["agent"]:
        assign_perm(f"projects.{perm}", group, project)
    client = client_for(user)
    assert client.get(f"/api/v1/projects/{project.pk}").status_code == 404  # not a member yet

    user.groups.add(group)
    r = client.get(f"/api/v1/projects/{project.pk}")
    assert r.status_code == 200 and r.json()["id"] == str(project.pk), r.content
    assert visible_ids(client) == {str(project.pk)}  # the group's project only
    r = client.post("/api/v1/tasks", task_body(project, "by a group member"), format="json")
    assert r.status_code == 201, r.content
    assert client.get(f"/api/v1/projects/{other_project.pk}").status_code == 404
    assert has_project_perm(user, roles.ACT_AS_AGENT, project)
    assert not has_project_perm(user, roles.REVIEW, project)
    assert not has_project_perm(user, roles.VIEW, other_project)

    # A view-only group: sees the other project, may not act in it.
    viewers = Group.objects.create(name="viewers-of-other")
    assign_perm(f"projects.{roles.VIEW}", viewers, other_project)
    user.groups.add(viewers)
    assert visible_ids(client) == {str(project.pk), str(other_project.pk)}
    r = client.post("/api/v1/tasks", task_body(other_project), format="json")
    assert r.status_code == 403 and r.json()["error"] == "forbidden", r.content

    # Group and own permissions add up.
    assign_perm(f"projects.{roles.ACT_AS_AGENT}", user, other_project)
    assert client.post("/api/v1/tasks", task_body(other_project), format="json").status_code == 201

    # Leaving the group (or the group losing the permission) is enforced on the next request.
    user.groups.remove(group)
    assert client.get(f"/api/v1/projects/{project.pk}").status_code == 404
    user.groups.add(group)
    remove_perm(f"projects.{roles.VIEW}", group, project)
    remove_perm(f"projects.{roles.ACT_AS_AGENT}", group, project)
    assert client.get(f"/api/v1/projects/{project.pk}").status_code == 404


def test_a_group_permission_on_another_kind_of_object_grants_nothing(make_user, project):
    """Group object permissions are keyed by content type: the same id under another model
    (here a user-model permission stored with the project's id) is not a project role."""
    user = make_user("grouped")
    group = Group.objects.create(name="g")
    user.groups.add(group)
    user_ct = ContentType.objects.get_for_model(type(user))
    store_raw(GroupObjectPermission(group=group, content_type=user_ct, object_pk=str(project.pk),
                                    permission=Permission.objects.get(content_type=user_ct, codename="view_user")))
    assert project_perms(user) == {}
    assert not has_project_perm(user, roles.VIEW, project)


# --- within one request: read once, and fresh after a grant or revocation ------------------
def test_within_a_request_scope_the_roles_are_read_once(agent, project, django_assert_num_queries,
                                                        warm_content_types):
    with request_scope():
        with django_assert_num_queries(1):
            assert has_project_perm(agent, roles.ACT_AS_AGENT, project)
            assert not has_project_perm(agent, roles.REVIEW, project)
            assert has_project_perm(agent, roles.VIEW, project.pk)
            assert project_perms(agent) == {project.pk: frozenset(roles.ROLES["agent"])}


def test_outside_a_request_every_check_reads_the_roles(agent, project, django_assert_num_queries,
                                                       warm_content_types):
    with django_assert_num_queries(2):
        assert has_project_perm(agent, roles.ACT_AS_AGENT, project)
        assert not has_project_perm(agent, roles.REVIEW, project)


def test_the_cache_is_per_user_and_per_scope(agent, reviewer, project, django_assert_num_queries,
                                             warm_content_types):
    with request_scope():
        with django_assert_num_queries(2):  # one per user
            assert has_project_perm(agent, roles.ACT_AS_AGENT, project)
            assert has_project_perm(reviewer, roles.REVIEW, project)
            assert not has_project_perm(agent, roles.REVIEW, project)
            assert not has_project_perm(reviewer, roles.ACT_AS_AGENT, project)
    with request_scope():  # a new request reads again
        with django_assert_num_queries(1):
            assert has_project_perm(agent, roles.ACT_AS_AGENT, project)


def test_a_grant_or_revocation_in_the_same_scope_is_seen_by_the_next_check(agent, project, other_project):
    with request_scope():
        assert not has_project_perm(agent, roles.REVIEW, project)
        role_grant(user=agent, project=project, role="reviewer")
        assert has_project_perm(agent, roles.REVIEW, project)
        assert has_project_perm(agent, roles.ACT_AS_AGENT, project)  # the agent role stays

        assert not has_project_perm(agent, roles.VIEW, other_project)
        role_grant(user=agent, project=other_project, role="manager")
        assert has_project_perm(agent, roles.MANAGE, other_project)
        assert set(project_visible_to(user=agent)) == {project, other_project}

        role_revoke_all(user=agent, project=project)
        assert not has_project_perm(agent, roles.VIEW, project)
        assert not has_project_perm(agent, roles.ACT_AS_AGENT, project)
        assert list(project_visible_to(user=agent)) == [other_project]


def test_one_request_loads_the_roles_once(client_for, agent, project, warm_content_types):
    """A task creation checks the roles twice (the project's visibility, then the agent
    permission) and reads them once."""
    client = client_for(agent)
    with CaptureQueriesContext(connection) as queries:
        r = client.post("/api/v1/tasks", task_body(project), format="json")
    assert r.status_code == 201, r.content
    assert len(role_queries(queries.captured_queries)) == 1, role_queries(queries.captured_queries)


# --- users who get nothing ------------------------------------------------------------------
def test_an_inactive_user_gets_no_project(client_for, agent, project, django_assert_num_queries):
    client = client_for(agent)
    assert client.get(f"/api/v1/projects/{project.pk}").status_code == 200
    agent.is_active = False
    agent.save(update_fields=["is_active"])

    with request_scope(), django_assert_num_queries(0):  # nothing to read for them
        assert project_perms(agent) == {}
        assert not has_project_perm(agent, roles.VIEW, project)
        assert not has_project_perm(agent, roles.ACT_AS_AGENT, project)
    assert list(project_visible_to(user=agent)) == []
    r = client.get(f"/api/v1/projects/{project.pk}")  # their key is refused
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated", r.content


def test_an_inactive_superuser_gets_no_project(make_user, project):
    boss = make_user("boss", superuser=True)
    assert has_project_perm(boss, roles.MANAGE, project) and list(project_visible_to(user=boss)) == [project]
    boss.is_active = False
    assert not has_project_perm(boss, roles.VIEW, project)
    assert list(project_visible_to(user=boss)) == []


def test_an_anonymous_user_gets_no_project(client, project, django_assert_num_queries):
    anonymous = AnonymousUser()
    with request_scope(), django_assert_num_queries(0):
        assert project_perms(anonymous) == {}
        assert not has_project_perm(anonymous, roles.VIEW, project)
    assert list(project_visible_to(user=anonymous)) == []
    for r in [client.get("/api/v1/projects"), client.get(f"/api/v1/projects/{project.pk}")]:
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated", r.content


# --- malformed rows -------------------------------------------------------------------------
@pytest.mark.parametrize("object_pk", ["not-a-uuid", "", "42", "0" * 40, "{" + "z" * 36 + "}"])
def test_a_malformed_group_object_pk_does_not_break_the_load(client_for, agent, project, other_project, object_pk):
    """A group object permission on a project id that is no UUID (guardian stores object ids
    as text) grants nothing, and the user's other roles still load."""
    group = Group.objects.create(name="broken")
    group.user_set.add(agent)
    store_raw(GroupObjectPermission(group=group, content_type=ContentType.objects.get_for_model(Project),
                                    object_pk=object_pk, permission=Permission.objects.get(codename=roles.VIEW)))
    assign_perm(f"projects.{roles.VIEW}", group, other_project)  # a well-formed one next to it

    assert project_perms(agent) == {project.pk: frozenset(roles.ROLES["agent"]),
                                    other_project.pk: frozenset({roles.VIEW})}
    client = client_for(agent)
    assert visible_ids(client) == {str(project.pk), str(other_project.pk)}
    assert client.get(f"/api/v1/projects/{project.pk}").status_code == 200
    assert client.post("/api/v1/tasks", task_body(project), format="json").status_code == 201
