"""The admin's user pages tell the trail what they change, and a session holds only while its
user is staff (the admin's login lets only staff in)."""
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from guardian.shortcuts import get_perms

from audit.models import AuditEvent
from audit.services import audit_verify

pytestmark = pytest.mark.django_db


def signed_in(user):
    client = Client()
    client.force_login(user)
    return client


def test_deleting_a_user_in_the_admin_revokes_their_roles_on_the_trail_first(admin_user, make_user, project):
    gone = make_user("rev3", role="reviewer", project=project)
    r = signed_in(admin_user).post(f"/admin/auth/user/{gone.pk}/delete/", {"post": "yes"})
    assert r.status_code == 302
    assert not get_user_model().objects.filter(username="rev3").exists()
    revoked = AuditEvent.objects.get(action="role.revoke_all")
    assert revoked.project_id == project.pk and revoked.after == {"user": "rev3"} and revoked.actor == admin_user
    deleted = AuditEvent.objects.get(action="user.delete")
    assert deleted.before["username"] == "rev3" and deleted.object_id == str(gone.pk)
    assert audit_verify() == []


def test_the_bulk_delete_does_the_same(admin_user, make_user, project):
    users = [make_user(name, role="reviewer", project=project) for name in ("ann", "bob")]
    r = signed_in(admin_user).post("/admin/auth/user/", {"action": "delete_selected", "post": "yes",
                                                         "_selected_action": [u.pk for u in users]})
    assert r.status_code == 302
    assert sorted(e.after["user"] for e in AuditEvent.objects.filter(action="role.revoke_all")) == ["ann", "bob"]
    assert AuditEvent.objects.filter(action="user.delete").count() == 2


def test_privileges_changed_on_the_admins_user_form_are_audited(admin_user, make_user, project):
    rev = make_user("rev1", role="reviewer", project=project)
    client = signed_in(admin_user)
    form = {"username": "rev1", "is_active": "on", "is_staff": "on", "is_superuser": "on",
            "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00", "initial-date_joined_0": "2026-01-01",
            "initial-date_joined_1": "00:00:00"}
    r = client.post(f"/admin/auth/user/{rev.pk}/change/", form)
    assert r.status_code == 302, r.content.decode()[:2000]
    row = AuditEvent.objects.get(action="user.change")
    assert row.before == {"is_superuser": False} and row.after == {"is_superuser": True}
    assert row.actor == admin_user and row.object_id == str(rev.pk)
    client.post(f"/admin/auth/user/{rev.pk}/change/", form)          # saved again unchanged: no row
    assert AuditEvent.objects.filter(action="user.change").count() == 1
    r = client.post(f"/admin/auth/user/{rev.pk}/password/", {"password1": "An0ther-long-pw", "password2": "An0ther-long-pw",
                                                              "usable_password": "true"})
    assert r.status_code == 302
    assert AuditEvent.objects.get(action="user.password_change").after == {"user": "rev1"}


def test_a_user_no_longer_staff_is_signed_out_of_the_pages_and_decides_nothing(make_user, project, agent):
    from review.tests.test_decisions import decide_url, make_call

    call = make_call(project, agent)
    rev = make_user("rev1x", role="reviewer", project=project)
    client = signed_in(rev)
    assert client.get("/review/").status_code == 200
    rev.is_staff = False
    rev.save(update_fields=["is_staff"])
    assert client.get("/review/").status_code == 302                                  # to the login page
    assert client.post(decide_url(call), {"decision": "approve"}, HTTP_HX_REQUEST="true").status_code == 401
    assert client.get(f"/api/v1/agent-approvals/{call.pk}").status_code in (401, 403)  # the API's session too
    call.refresh_from_db()
    assert call.status == "pending" and "review_project" in get_perms(rev, project)
