import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from access.models import ApiKey
from access.services import api_key_create, api_key_revoke, role_grant

pytestmark = pytest.mark.django_db


def bearer(raw):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_good_key_authenticates_and_records_last_use(agent, project):
    key, raw = api_key_create(user=agent)
    assert key.last_used_at is None
    r = bearer(raw).get(f"/api/v1/projects/{project.pk}")
    assert r.status_code == 200 and r.json()["slug"] == "demo"
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_key_is_stored_only_as_a_hash(agent):
    key, raw = api_key_create(user=agent)
    assert raw.startswith(f"hitl_{key.prefix}_")
    stored = ApiKey.objects.filter(pk=key.pk).values()[0]
    assert all(raw not in str(value) for value in stored.values())


@pytest.mark.parametrize("header", [
    "Bearer hitl_000000000000_wrong",            # unknown prefix
    "Bearer not-a-key",                          # wrong shape
    "Bearer",                                    # no key
    "Bearer a b",                                # too many parts
])
def test_bad_key_is_401(project, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    r = client.get(f"/api/v1/projects/{project.pk}")
    assert r.status_code == 401
    assert r.json()["error"] == "unauthenticated"
    assert r["WWW-Authenticate"].startswith("Bearer")


def test_right_prefix_wrong_secret_is_401(agent, project):
    key, raw = api_key_create(user=agent)
    r = bearer(raw[:-4] + "AAAA").get(f"/api/v1/projects/{project.pk}")
    assert r.status_code == 401


def test_no_credentials_is_401(project):
    r = APIClient().get(f"/api/v1/projects/{project.pk}")
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"


def test_revoked_key_is_401(agent, project):
    key, raw = api_key_create(user=agent)
    assert bearer(raw).get(f"/api/v1/projects/{project.pk}").status_code == 200
    api_key_revoke(key_id=key.pk)
    r = bearer(raw).get(f"/api/v1/projects/{project.pk}")
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_key_of_inactive_user_is_401(agent, project):
    _, raw = api_key_create(user=agent)
    agent.is_active = False
    agent.save()
    assert bearer(raw).get(f"/api/v1/projects/{project.pk}").status_code == 401


def test_key_of_user_without_access_to_the_project_is_404(outsider, project):
    _, raw = api_key_create(user=outsider)
    r = bearer(raw).get(f"/api/v1/projects/{project.pk}")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_revoking_twice_changes_nothing(agent):
    key, _ = api_key_create(user=agent)
    first = api_key_revoke(key_id=key.pk).revoked_at
    assert api_key_revoke(key_id=key.pk).revoked_at == first
    assert first <= timezone.now()


def test_session_auth_enforces_csrf(agent, project):
    role_grant(user=agent, project=project, role="reviewer")  # a session is staff's (the admin's login)
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(agent)
    assert client.get(f"/api/v1/projects/{project.pk}").status_code == 200
    body = {"project_id": str(project.pk), "agent_type": "coder", "title": "t"}
    r = client.post("/api/v1/tasks", body, format="json")
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    client.get("/review/")  # a page with forms sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    r = client.post("/api/v1/tasks", body, format="json", HTTP_X_CSRFTOKEN=token)
    assert r.status_code == 201
