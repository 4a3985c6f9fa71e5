"""core/asgi.py: an API request that authenticates with a Bearer key runs through
HITL_API_MIDDLEWARE (no sessions, CSRF, session user, messages, framing or htmx middleware);
pages, the admin and API calls made with a session cookie keep the full MIDDLEWARE. Driven
through the real ASGI application, in process."""
import json

import pytest
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator
from django.test import Client

from access.services import api_key_create
from core.asgi import bearer_api_request

pytestmark = pytest.mark.django_db(transaction=True)


def call(path, headers=()):
    from botarmy_hitl.asgi import application

    async def go():
        comm = HttpCommunicator(application, "GET", path, headers=[(b"host", b"localhost"), *headers])
        response = await comm.get_response(timeout=10)
        await comm.wait(timeout=10)
        return response

    response = async_to_sync(go)()
    return response["status"], {k.decode().lower(): v.decode() for k, v in response["headers"]}, response["body"]


def test_only_bearer_api_requests_take_the_short_chain():
    def scope(path, auth=None):
        return {"path": path, "headers": [(b"authorization", auth)] if auth else []}

    assert bearer_api_request(scope("/api/v1/tasks/x", b"Bearer hitl_ab_cd"))
    assert bearer_api_request(scope("/api/v1/tasks/x", b"bearer hitl_ab_cd"))
    assert not bearer_api_request(scope("/api/v1/tasks/x"))  # a browser's session
    assert not bearer_api_request(scope("/api/v1/tasks/x", b"Basic Zm9vOmJhcg=="))
    assert not bearer_api_request(scope("/review/", b"Bearer hitl_ab_cd"))  # pages keep the full chain


def test_an_agent_gets_its_answer_without_the_browser_middleware(agent, project):
    key = api_key_create(user=agent)[1]
    status, headers, body = call(f"/api/v1/projects/{project.pk}", [(b"authorization", f"Bearer {key}".encode())])
    assert status == 200 and json.loads(body)["slug"] == "demo"
    assert "x-frame-options" not in headers and "set-cookie" not in headers  # no framing, session or CSRF work
    assert headers["x-content-type-options"] == "nosniff"  # SecurityMiddleware still runs
    # A bad key is still refused in the API's error shape.
    status, _, body = call(f"/api/v1/projects/{project.pk}", [(b"authorization", b"Bearer hitl_00_nope")])
    assert status == 401 and json.loads(body)["error"] == "unauthenticated"


def test_a_reviewer_with_a_session_cookie_keeps_the_full_chain(reviewer, project):
    browser = Client()
    browser.force_login(reviewer)
    cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()
    status, headers, body = call(f"/api/v1/projects/{project.pk}", [(b"cookie", cookie)])
    assert status == 200 and json.loads(body)["slug"] == "demo"
    assert headers["x-frame-options"] == "DENY"  # the full chain ran, and its session user is the reviewer
    status, headers, _ = call("/admin/login/")
    assert status == 200 and headers["x-frame-options"] == "DENY" and "csrftoken" in headers.get("set-cookie", "")


@pytest.mark.parametrize("path", ["/api/docs/", "/api/schema/", "/api/v1/health", "/api/v1/nothing-here"])
def test_every_api_page_answers_a_bearer_request_without_the_browser_middleware(agent, path):
    key = api_key_create(user=agent)[1]
    status, headers, body = call(path, [(b"authorization", f"Bearer {key}".encode())])
    assert status == (404 if "nothing" in path else 200), body[:300]


def test_a_middleware_added_to_middleware_alone_fails_the_system_check(settings):
    """A middleware in MIDDLEWARE that the Bearer chain skips must be named browser-only, else
    ``manage.py check`` (make check, CI) fails: it would never see an agent's request."""
    from django.core.checks import run_checks

    def ids():
        return [m.id for m in run_checks() if m.id.startswith("core.")]

    assert ids() == []  # the settings as shipped
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "botarmy_hitl.example.RateLimitMiddleware"]
    assert ids() == ["core.E003"]
    settings.HITL_API_MIDDLEWARE = [*settings.HITL_API_MIDDLEWARE, "botarmy_hitl.example.RateLimitMiddleware"]
    assert ids() == []
    settings.HITL_API_MIDDLEWARE = ["django.middleware.common.CommonMiddleware",
                                    "django.middleware.security.SecurityMiddleware",
                                    "core.middleware.request_middleware", "botarmy_hitl.example.RateLimitMiddleware"]
    assert ids() == ["core.E002"]
    settings.HITL_API_MIDDLEWARE = [*settings.HITL_API_MIDDLEWARE, "botarmy_hitl.example.Other"]
    assert ids() == ["core.E001"]
