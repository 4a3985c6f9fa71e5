"""A user who is not an admin but was given Django's "add project" permission (the API and the admin
both let them create projects) manages what they create: they were given no role, so the project
they had just made was 404 to them, missing from their list, and its budgets theirs to set by nobody
but an admin."""
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse

from audit.models import AuditEvent
from projects import roles
from projects.models import Project
from projects.permissions import has_project_perm
from projects.tests.test_admin_audit import form_data

pytestmark = pytest.mark.django_db


def delegated(make_user, username="lead", *, staff=False):
    user = make_user(username)
    user.user_permissions.add(Permission.objects.get(codename="add_project"))
    if staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    return get_user_model().objects.get(pk=user.pk)  # no cached permissions


def test_a_project_created_through_the_api_by_a_delegated_creator_is_theirs_to_manage(make_user, client_for):
    creator = delegated(make_user)
    client = client_for(creator)
    r = client.post("/api/v1/projects", {"name": "Fleet", "slug": "fleet"}, format="json")
    assert r.status_code == 201, r.content
    pid = r.json()["id"]
    assert client.get(f"/api/v1/projects/{pid}").status_code == 200
    assert [p["id"] for p in client.get("/api/v1/projects").json()["results"]] == [pid]
    assert client.patch(f"/api/v1/projects/{pid}", {"name": "Fleet 2"}, format="json").status_code == 200
    grant = AuditEvent.objects.get(action="role.grant", object_id=pid)
    assert grant.actor_id == creator.pk
    assert grant.after["user"] == "lead" and grant.after["role"] == "manager" and grant.after["made_staff"] is True
    creator.refresh_from_db()
    assert creator.is_staff  # as every manager is (role_grant)


def test_an_admin_creating_a_project_is_given_no_role(admin_user, client_for):
    r = client_for(admin_user).post("/api/v1/projects", {"name": "Fleet", "slug": "fleet"}, format="json")
    assert r.status_code == 201, r.content
    assert not AuditEvent.objects.filter(action="role.grant").exists()
    assert not admin_user.projectuserobjectpermission_set.exists()


def test_a_refused_creation_grants_nothing(make_user, client_for, project):
    creator = delegated(make_user)
    r = client_for(creator).post("/api/v1/projects", {"name": "Clash", "slug": project.slug.upper()}, format="json")
    assert r.status_code == 400, r.content
    assert not has_project_perm(creator, roles.VIEW, project)
    assert not AuditEvent.objects.filter(action="role.grant").exists()
    assert Project.objects.count() == 1


def test_a_project_added_in_the_admin_by_a_delegated_creator_is_theirs_to_manage(client, make_user):
    creator = delegated(make_user, staff=True)
    client.force_login(creator)
    url = reverse("admin:projects_project_add")
    page = client.get(url)
    assert page.status_code == 200
    r = client.post(url, {**form_data(page), "name": "Zeta", "slug": "zeta", "timezone": "UTC"})
    assert r.status_code == 302, r.content
    project = Project.objects.get(slug="zeta")
    follow = client.get(r["Location"])
    assert follow.status_code == 200
    assert "lead (manager)" in client.get(reverse("admin:projects_project_change", args=[project.pk])).content.decode()
    assert has_project_perm(get_user_model().objects.get(pk=creator.pk), roles.MANAGE, project)
