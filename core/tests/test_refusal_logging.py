"""A refused request logs one warning line without traceback; a server error keeps its
traceback (issue 11: a 403 in the admin wrote a whole traceback into the log). Checked on the
console handler settings.LOGGING installs, as it writes."""
import io
import logging

import pytest
from django.core.exceptions import PermissionDenied, SuspiciousOperation
from django.http import Http404
from django.test import override_settings
from django.urls import path, reverse

from core.errors import OneLineRefusals


def forbidden(request):
    raise PermissionDenied("not yours")


def missing(request):
    raise Http404("no such thing")


def suspicious(request):
    raise SuspiciousOperation("odd\nrequest")


def broken(request):
    raise RuntimeError("a real bug")


urlpatterns = [path("forbidden/", forbidden), path("missing/", missing), path("suspicious/", suspicious),
               path("broken/", broken)]


@pytest.fixture
def console():
    """What the configured console handler writes, as text."""
    handlers = [h for h in logging.getLogger("django").handlers
                if any(isinstance(f, OneLineRefusals) for f in h.filters)]
    assert handlers, "settings.LOGGING installs OneLineRefusals on the console handler"
    buffer = io.StringIO()
    previous = handlers[0].setStream(buffer)
    try:
        yield buffer
    finally:
        handlers[0].setStream(previous)


@pytest.fixture
def browser(client):
    client.raise_request_exception = False
    return client


@override_settings(ROOT_URLCONF=__name__, DEBUG=False)
@pytest.mark.parametrize("url, status, words", [
    ("/forbidden/", 403, "Forbidden (Permission denied): /forbidden/"),
    ("/missing/", 404, "Not Found: /missing/"),
    ("/suspicious/", 400, "odd request"),
])
def test_a_refusal_is_one_warning_line_without_traceback(browser, console, url, status, words):
    assert browser.get(url).status_code == status
    lines = console.getvalue().splitlines()
    assert lines == [words]
    assert "Traceback" not in console.getvalue()


@override_settings(ROOT_URLCONF=__name__, DEBUG=False)
def test_a_server_error_keeps_its_traceback(browser, console):
    assert browser.get("/broken/").status_code == 500
    text = console.getvalue()
    assert "Internal Server Error: /broken/" in text
    assert "Traceback" in text and "RuntimeError: a real bug" in text


def test_the_filter_lowers_a_4xx_error_record_to_a_warning():
    try:
        raise SuspiciousOperation("bad")
    except SuspiciousOperation as exc:
        record = logging.LogRecord("django.security.SuspiciousOperation", logging.ERROR, __file__, 1, "bad %s",
                                   ("host",), (type(exc), exc, exc.__traceback__))
    record.status_code = 400
    assert OneLineRefusals().filter(record) is True
    assert (record.levelno, record.levelname, record.exc_info) == (logging.WARNING, "WARNING", None)
    server = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "boom", (), None)
    server.status_code = 500
    OneLineRefusals().filter(server)
    assert server.levelno == logging.ERROR


@pytest.mark.django_db
def test_a_403_in_the_admin_logs_one_line(client, console, make_user, project):
    reviewer = make_user("r", role="reviewer", project=project)
    client.force_login(reviewer)
    r = client.post(reverse("admin:projects_project_add"), {})
    assert r.status_code == 403
    lines = [line for line in console.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Forbidden (Permission denied)")
