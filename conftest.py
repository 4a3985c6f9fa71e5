"""Shared fixtures: users in each role on a project, and API clients that authenticate the
way agents do (a real API key in ``Authorization: Bearer``)."""
import json
import os
from pathlib import Path

import pytest
from django.db import connection
from rest_framework.test import APIClient

from access.services import api_key_create, role_grant
from projects.services import project_create


def _missing_browser() -> str | None:
    """Why the browser tests cannot run (None when they can): Debian's Chromium at
    /usr/bin/chromium, or the browser that HITL_CHROMIUM points at (review/tests/browser.py)."""
    path = os.environ.get("HITL_CHROMIUM") or "/usr/bin/chromium"
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return None
    return (f"needs Chromium: {path} is missing (apt-get install -y chromium, or set HITL_CHROMIUM to a "
            f"Chromium executable)")


def _fail_at_setup(item, message: str) -> None:
    def setup():  # before any fixture: no server is started, no browser launched
        pytest.fail(message, pytrace=False)

    item.setup = setup


def pytest_collection_modifyitems(config, items):
    on_postgres = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
    on_redis = bool(os.environ.get("REDIS_URL"))
    no_browser = _missing_browser() if any("browser" in item.keywords for item in items) else None
    require_browser = os.environ.get("HITL_REQUIRE_BROWSER") == "1"
    for item in items:
        if "postgres" in item.keywords and not on_postgres:
            item.add_marker(pytest.mark.skip(reason="needs PostgreSQL: set DATABASE_URL=postgres://..."))
        if "redis" in item.keywords and not on_redis:
            item.add_marker(pytest.mark.skip(reason="needs Redis: set REDIS_URL=redis://..."))
        if "browser" in item.keywords and no_browser:
            if require_browser:  # CI: a browser test must never be skipped silently
                _fail_at_setup(item, f"HITL_REQUIRE_BROWSER=1 but the browser tests cannot run: {no_browser}")
            else:
                item.add_marker(pytest.mark.skip(reason=no_browser))


@pytest.fixture(autouse=True)
def _in_memory_channel_layer(settings, request):
    if "redis" not in request.keywords:
        settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture(autouse=True)
def model_prices(request):
    """The seeded price table, for every database test (a transactional test flushes what the
    data migration wrote; the estimate's floor needs a price)."""
    marker = request.node.get_closest_marker("django_db")
    if marker is None:
        return
    request.getfixturevalue("transactional_db" if marker.kwargs.get("transaction") else "db")
    from approvals.models import ModelPrice

    if not ModelPrice.objects.exists():
        data = Path(__file__).resolve().parent / "approvals" / "data" / "model_prices.json"
        ModelPrice.objects.bulk_create(ModelPrice(**row) for row in json.loads(data.read_text()))


@pytest.fixture
def make_user(django_user_model):
    def make(username, *, role=None, project=None, superuser=False):
        if superuser:
            return django_user_model.objects.create_superuser(username=username, password="pw",
                                                              email=f"{username}@example.com")
        user = django_user_model.objects.create_user(username=username, password="pw")
        if role:
            role_grant(user=user, project=project, role=role)
        return user

    return make


@pytest.fixture
def admin_user(make_user):
    return make_user("admin", superuser=True)


@pytest.fixture
def project(admin_user):
    return project_create(actor=admin_user, name="Demo", slug="demo", timezone_name="UTC")


@pytest.fixture
def other_project(admin_user):
    return project_create(actor=admin_user, name="Other", slug="other")


@pytest.fixture
def agent(make_user, project):
    return make_user("agent", role="agent", project=project)


@pytest.fixture
def reviewer(make_user, project):
    return make_user("reviewer", role="reviewer", project=project)


@pytest.fixture
def manager(make_user, project):
    return make_user("manager", role="manager", project=project)


@pytest.fixture
def outsider(make_user, other_project):
    """Has a role, but on another project only."""
    return make_user("outsider", role="manager", project=other_project)


@pytest.fixture
def client_for():
    """An API client carrying a fresh API key of ``user``."""

    def make(user):
        _, raw = api_key_create(user=user, name="test")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make


@pytest.fixture
def users(admin_user, agent, reviewer, manager, outsider):
    return {"admin": admin_user, "agent": agent, "reviewer": reviewer, "manager": manager, "outsider": outsider}


def on_postgres() -> bool:
    return connection.vendor == "postgresql"
