"""Every API error is JSON in API.md's shape whatever the request's ``Accept`` header says
(HTML for a browser, XML, ``*/*``, none), and however malformed the body or the request head is,
through Django's test client, through the real ASGI application and through daphne itself.
Successful answers still negotiate as before (the browsable API for ``text/html``).
"""
import io
import json
import os
import socket
import subprocess
import sys
from http.client import HTTPConnection, HTTPResponse

import pytest
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator
from django.conf import settings
from django.middleware.csrf import _get_new_csrf_string, _mask_cipher_secret
from django.test import Client
from rest_framework.test import APIClient

from core.middleware import ApiErrorGuard, disable_server_form_parsing, origin_form, request_head_problem
from core.tests.daphne import free_port, stop, wait_until_listening

pytestmark = pytest.mark.django_db

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
# Accept headers the API can satisfy (JSON, or the browsable API), and ones it cannot (406).
ACCEPTS = [None, "application/json", "*/*", "text/html", BROWSER, "application/json; indent=2"]
UNSATISFIABLE = ["application/xml", "text/plain", "image/png"]

MULTIPART = [
    pytest.param("multipart/form-data; boundary=x", b"garbage\r\n--x\r\nno headers", id="garbage-with-boundary"),
    pytest.param("multipart/form-data", b"garbage", id="no-boundary"),
    pytest.param('multipart/form-data; boundary="x', b"garbage", id="unterminated-quote"),
    pytest.param("multipart/form-data;;;==", b"garbage", id="empty-params"),
    pytest.param("multipart/form-data; boundary=", b"--\r\n\r\n--", id="empty-boundary"),
    pytest.param("multipart/form-data; boundary=" + "b" * 300, b"garbage", id="overlong-boundary"),
    pytest.param("multipart/form-data; boundary=x",
                 b'--x\r\nContent-Disposition: form-data; name="title"\r\n\r\nT\r\n--x--\r\n', id="well-formed"),
]


def assert_json_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].split(";")[0] == "application/json", response["Content-Type"]
    body = json.loads(response.content)
    assert body["error"] == code and isinstance(body["detail"], str) and body["detail"], body
    if status == 400:
        assert isinstance(body.get("fields"), dict) and body["fields"], body
    return body


def accept_kw(accept):
    return {"HTTP_ACCEPT": accept} if accept is not None else {}


@pytest.fixture
def task(project, agent):
    from projects.services import task_create

    return task_create(actor=agent, project_id=project.pk, agent_type="coder", title="Write code")


@pytest.fixture
def agent_client(client_for, agent):
    client = client_for(agent)
    client.raise_request_exception = False
    return client


# --- the Accept header does not change an error's format ---------------------------------
@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("url", ["/api/v1/tasks", "/api/v1/agent-approvals"])
def test_a_bad_json_body_is_a_json_400_whatever_the_accept(agent_client, url, accept):
    r = agent_client.generic("POST", url, "{", content_type="application/json", **accept_kw(accept))
    assert "body" in assert_json_error(r, 400, "invalid")["fields"]


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("url", ["/api/v1/tasks", "/api/v1/agent-approvals"])
def test_missing_fields_are_a_json_400_whatever_the_accept(agent_client, url, accept):
    r = agent_client.post(url, {}, format="json", **accept_kw(accept))
    assert "project_id" in assert_json_error(r, 400, "invalid")["fields"]


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("content_type, raw", MULTIPART)
@pytest.mark.parametrize("url", ["/api/v1/tasks", "/api/v1/agent-approvals"])
def test_a_multipart_body_is_a_json_400_whatever_the_accept(agent_client, url, content_type, raw, accept):
    r = agent_client.generic("POST", url, raw, content_type=content_type, **accept_kw(accept))
    assert "body" in assert_json_error(r, 400, "invalid")["fields"]


@pytest.mark.parametrize("accept", ACCEPTS)
def test_other_errors_are_json_whatever_the_accept(agent_client, task, project, accept):
    kw = accept_kw(accept)
    anonymous = APIClient()
    assert_json_error(anonymous.post("/api/v1/tasks", {}, format="json", **kw), 401, "unauthenticated")
    assert_json_error(agent_client.post("/api/v1/projects", {"name": "X", "slug": "x"}, format="json", **kw),
                      403, "forbidden")
    assert_json_error(agent_client.get("/api/v1/tasks/00000000-0000-0000-0000-000000000000", **kw), 404, "not_found")
    assert_json_error(agent_client.get("/api/v1/tasks/not-a-uuid", **kw), 404, "not_found")
    assert_json_error(agent_client.delete(f"/api/v1/tasks/{task.pk}", **kw), 405, "method_not_allowed")
    assert_json_error(agent_client.get("/api/v1/no-such-endpoint", **kw), 404, "not_found")


@pytest.mark.parametrize("accept", UNSATISFIABLE)
def test_an_unsatisfiable_accept_is_a_json_406_before_anything_else(agent_client, project, accept):
    """Content negotiation comes first (nothing runs for a client that cannot read the
    answer): a malformed body or a missing key is then still a JSON 406."""
    for r in [agent_client.generic("POST", "/api/v1/tasks", "{", content_type="application/json", HTTP_ACCEPT=accept),
              agent_client.generic("POST", "/api/v1/tasks", b"garbage", content_type="multipart/form-data",
                                   HTTP_ACCEPT=accept),
              agent_client.get(f"/api/v1/projects/{project.pk}", HTTP_ACCEPT=accept),
              APIClient().post("/api/v1/tasks", {}, format="json", HTTP_ACCEPT=accept)]:
        assert_json_error(r, 406, "not_acceptable")


def test_a_browser_session_gets_json_errors_too(agent, project):
    """A logged-in browser (session cookie, CSRF, Accept: text/html) posting garbage."""
    agent.is_staff = True  # a session is staff's (the admin's login lets only staff in)
    agent.save(update_fields=["is_staff"])
    client = Client(enforce_csrf_checks=True, raise_request_exception=False)
    client.force_login(agent)
    secret = _get_new_csrf_string()
    client.cookies[settings.CSRF_COOKIE_NAME] = secret
    token = {"HTTP_X_CSRFTOKEN": _mask_cipher_secret(secret)}
    for content_type, raw in [("multipart/form-data", b"garbage"), ("multipart/form-data; boundary=x", b"x"),
                              ("application/json", b"{")]:
        r = client.generic("POST", "/api/v1/tasks", raw, content_type=content_type, HTTP_ACCEPT=BROWSER, **token)
        assert_json_error(r, 400, "invalid")
    r = client.generic("POST", "/api/v1/tasks", b"{}", content_type="application/json", HTTP_ACCEPT=BROWSER)
    assert "CSRF" in assert_json_error(r, 403, "forbidden")["detail"]  # no token


@pytest.mark.parametrize("accept, content_type", [(None, "application/json"), ("*/*", "application/json"),
                                                  ("application/json", "application/json"),
                                                  ("text/html", "text/html"), (BROWSER, "text/html")])
def test_successful_answers_still_negotiate(agent_client, project, accept, content_type):
    r = agent_client.get(f"/api/v1/projects/{project.pk}", **accept_kw(accept))
    assert r.status_code == 200 and r["Content-Type"].split(";")[0] == content_type


# --- through the real ASGI application ----------------------------------------------------
def guarded_application():
    """botarmy_hitl.asgi.application, behind ApiErrorGuard (if asgi.py does not already put it there)."""
    from botarmy_hitl.asgi import application

    return application if isinstance(application, ApiErrorGuard) else ApiErrorGuard(application)


def asgi_call(app, method, path, *, body=b"", headers=(), query_string=b"", timeout=20, host=b"localhost"):
    async def call():
        comm = HttpCommunicator(app, method, path, body=body, headers=[(b"host", host), *headers])
        comm.scope["query_string"] = query_string
        response = await comm.get_response(timeout=timeout)
        await comm.wait(timeout=timeout)  # let Django close the request (and give its connection back)
        return response

    response = async_to_sync(call)()
    response_headers = {k.decode().lower(): v.decode("latin-1") for k, v in response["headers"]}
    return response["status"], response_headers, response["body"]


def assert_asgi_json_error(result, status, code):
    got_status, headers, body = result
    assert got_status == status, (got_status, body[:300])
    assert headers.get("content-type", "").split(";")[0] == "application/json", headers
    body = json.loads(body)
    assert body["error"] == code and body["detail"], body
    return body


@pytest.fixture
def bearer(agent):
    from access.services import api_key_create

    return (b"authorization", f"Bearer {api_key_create(user=agent)[1]}".encode())


BAD_HEADS = [
    pytest.param("multipart/form-data; boundary*=nosuch''x", b"", id="rfc2231-unknown-charset"),
    pytest.param("application/json; charset*=nosuch''x", b"", id="rfc2231-unknown-charset-json"),
    pytest.param("multipart/form-data; boundary*=idna''%ff", b"", id="rfc2231-undecodable"),
    pytest.param("application/json", b"a=\xff\xfe", id="query-not-utf8"),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("accept", [None, "text/html", "*/*"])
@pytest.mark.parametrize("content_type, raw", MULTIPART)
def test_a_multipart_body_is_a_json_400_through_asgi(bearer, project, content_type, raw, accept):
    headers = [bearer, (b"content-type", content_type.encode()), (b"content-length", str(len(raw)).encode())]
    if accept:
        headers.append((b"accept", accept.encode()))
    for path in ("/api/v1/tasks", "/api/v1/agent-approvals"):
        result = asgi_call(guarded_application(), "POST", path, body=raw, headers=headers)
        assert "body" in assert_asgi_json_error(result, 400, "invalid")["fields"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("accept", [None, "text/html"])
@pytest.mark.parametrize("content_type, query", BAD_HEADS)
def test_a_request_head_django_cannot_parse_is_a_json_400(bearer, content_type, query, accept):
    """Without the guard: an exception inside the application (daphne's HTML 500) for the
    Content-Type cases, an empty 400 for the query string."""
    assert request_head_problem({"query_string": query, "headers": [(b"content-type", content_type.encode())]})
    headers = [bearer, (b"content-type", content_type.encode()), (b"content-length", b"2")]
    if accept:
        headers.append((b"accept", accept.encode()))
    for method, path in [("POST", "/api/v1/tasks"), ("GET", "/api/v1/agent-approvals/x/wait"),
                         ("POST", "/api/v1/no-such-endpoint")]:
        result = asgi_call(guarded_application(), method, path, body=b"{}", headers=headers, query_string=query)
        assert_asgi_json_error(result, 400, "invalid")
    status, _, _ = asgi_call(guarded_application(), "POST", "/admin/login/", body=b"{}", headers=headers,
                             query_string=query)
    assert status == 400  # not an API path: a plain 400, still not a crash


@pytest.mark.django_db(transaction=True)
def test_the_guard_turns_an_escaped_exception_into_json(monkeypatch):
    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    assert_asgi_json_error(asgi_call(ApiErrorGuard(broken), "GET", "/api/v1/x"), 500, "server_error")
    with pytest.raises(RuntimeError):
        # not the API's business; the communicator re-raises the app's exception at its time-out
        asgi_call(ApiErrorGuard(broken), "GET", "/admin/", timeout=1)

    from psycopg import errors as pg_errors

    async def deadlocked(scope, receive, send):
        raise pg_errors.DeadlockDetected("deadlock detected")

    status, headers, _ = asgi_call(ApiErrorGuard(deadlocked), "GET", "/api/v1/x")
    assert status == 503 and headers["retry-after"] == "1"


def test_the_served_asgi_application_is_guarded():
    from botarmy_hitl.asgi import application

    assert isinstance(application, ApiErrorGuard)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("accept", [None, "text/html"])
def test_wait_errors_are_json(bearer, accept):
    headers = [bearer] + ([(b"accept", accept.encode())] if accept else [])
    assert_asgi_json_error(asgi_call(guarded_application(), "GET", "/api/v1/agent-approvals/nope/wait",
                                     headers=headers), 404, "not_found")
    assert_asgi_json_error(asgi_call(guarded_application(), "POST", "/api/v1/agent-approvals/nope/wait",
                                     headers=headers), 405, "method_not_allowed")
    assert_asgi_json_error(asgi_call(guarded_application(), "GET",
                                     "/api/v1/agent-approvals/00000000-0000-0000-0000-000000000000/wait"),
                           401, "unauthenticated")


# --- through daphne itself ----------------------------------------------------------------
@pytest.fixture
def daphne_server(tmp_path):
    """A real daphne serving botarmy_hitl.asgi:application (SQLite under tmp_path, in-process
    channel layer); the requests below need no database row."""
    yield from _daphne(tmp_path)


@pytest.fixture
def daphne_quick_idle(tmp_path):
    """The same, timing idle connections out after 1 s instead of 60."""
    yield from _daphne(tmp_path, HITL_HTTP_IDLE_TIMEOUT="1")


def _daphne(tmp_path, **extra_env):
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "botarmy_hitl.settings", "DATABASE_URL": "", "REDIS_URL": "",
           "HITL_VAR_DIR": str(tmp_path), "DJANGO_SECRET_KEY": "daphne-test", "DJANGO_DEBUG": "0",
           "DJANGO_ALLOWED_HOSTS": "127.0.0.1", **extra_env}
    proc = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                             "botarmy_hitl.asgi:application"], cwd=settings.BASE_DIR, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until_listening(proc, port, lambda: proc.stdout.read().decode()[-2000:])
        yield port
    finally:
        stop(proc)


def _post(port, path, content_type, body, accept=None):
    conn = HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
    if accept:
        headers["Accept"] = accept
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    result = response.status, response.getheader("Content-Type") or "", response.read()
    conn.close()
    return result


@pytest.mark.django_db(transaction=True)
def test_daphne_hands_a_malformed_multipart_body_to_the_application(daphne_server):
    """Twisted (under daphne) parses multipart bodies itself and answered one it could not parse
    with a bare empty 400 before Django saw it. No credentials here: the answer is Django's
    JSON 401, which proves the request reached the application."""
    assert disable_server_form_parsing()
    for content_type in ["multipart/form-data", 'multipart/form-data; boundary="x', "multipart/form-data;;;==",
                         "multipart/form-data; boundary=x"]:
        for accept in (None, "text/html"):
            status, got_type, body = _post(daphne_server, "/api/v1/tasks", content_type, b"garbage", accept)
            assert (status, got_type.split(";")[0]) == (401, "application/json"), (content_type, status, body)
            assert json.loads(body)["error"] == "unauthenticated"


def _raw(port, head: bytes) -> bytes:
    """Send a raw request head; everything daphne answers before it closes the socket."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("head, status", [
    (b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n", 400),
    (b"GET /api/v1/tasks?q=" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414),
    (b"GET /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    (b"GET /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
     + b"".join(b"X-Part-%d: %s\r\n" % (i, b"a" * 1000) for i in range(20)) + b"\r\n", 431),
])
def test_daphne_answers_an_oversized_request_head_with_a_json_error(daphne_server, head, status):
    """Twisted closed the socket without a word for a line over 16 KB (and answered a bare 400
    for headers over 16 KB in all): a client saw a dropped connection."""
    answer = _raw(daphne_server, head)
    head_out, _, body = answer.partition(b"\r\n\r\n")
    assert head_out.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert b"content-type: application/json" in head_out.lower()
    answer = json.loads(body)
    assert answer["error"] == "invalid" and answer["fields"] == {"request": [answer["detail"]]}, answer


def test_every_status_the_api_answers_has_its_reason_phrase_under_daphne():
    from twisted.web.http import RESPONSES

    from core.middleware import name_every_status

    assert name_every_status()
    for status in (400, 401, 403, 404, 405, 406, 408, 409, 410, 413, 414, 423, 429, 431, 500, 503):
        assert RESPONSES[status] != b"Unknown Status", status
    assert (RESPONSES[423], RESPONSES[429]) == (b"Locked", b"Too Many Requests")


@pytest.mark.django_db(transaction=True)
def test_daphne_still_serves_a_request_head_just_under_the_limit(daphne_server):
    answer = _raw(daphne_server, b"GET /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Big: "
                  + b"a" * 15_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stalled", [
    b"GET /api/v1/ta",                                                     # in the request line
    b"GET /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n",                   # in the headers
    b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n{\"title\": ",                               # in the body
    b"GET /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /api/v1/tas",     # in the second request
])
def test_daphne_answers_a_client_that_stalls_mid_request_with_a_json_408(daphne_quick_idle, stalled):
    """Twisted timed such a connection out (after 60 s) and closed it without a word: the client
    saw a dropped connection. The answers before it (the first request's 401) are kept."""
    answers = _raw(daphne_quick_idle, stalled)
    last = answers[answers.rindex(b"HTTP/1.1 "):]
    assert answers.count(b"HTTP/1.1 ") == stalled.count(b"\r\n\r\nGET") + 1, answers[:600]
    status, content_type, body = _parsed(last)
    assert (status, content_type) == (408, "application/json"), last[:300]
    assert json.loads(body)["error"] == "request_timeout"


@pytest.mark.django_db(transaction=True)
def test_daphne_closes_an_idle_connection_without_an_answer(daphne_quick_idle):
    """Between requests there is nothing to answer: an unasked-for 408 would be read as the
    answer to the client's next request. A new connection that sends nothing, and a keep-alive
    one after its answer, are closed with no more bytes."""
    assert _raw(daphne_quick_idle, b"") == b""
    answers = _raw(daphne_quick_idle, b"GET /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answers.count(b"HTTP/1.1 ") == 1 and _parsed(answers)[0] == 401, answers[:300]


def _parsed(answer: bytes):
    """(status, content type, body) of a raw HTTP answer, chunked or not."""
    class Answer:
        def makefile(self, mode):
            return io.BytesIO(answer)
    response = HTTPResponse(Answer())
    response.begin()
    return response.status, response.getheader("Content-Type") or "", response.read()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("target, host, status, error", [
    (b"http://127.0.0.1:{port}/api/v1/tasks", b"127.0.0.1", 401, "unauthenticated"),  # routed: DRF's answer
    (b"HTTP://127.0.0.1:{port}/api/v1/tasks?page=1", b"elsewhere.example", 401, "unauthenticated"),  # its authority wins
    (b"http://127.0.0.1:{port}/api/v1/nowhere", b"127.0.0.1", 404, "not_found"),
    (b"http://127.0.0.1:{port}", b"127.0.0.1", 302, None),  # no path: served as "/" (its redirect)
    (b"http://evil.example/api/v1/tasks", b"127.0.0.1", 400, "invalid"),  # checked as the Host it is
    (b"http://127.0.0.1%40evil.example/api/v1/tasks", b"127.0.0.1", 400, "invalid"),  # never decoded into a host
    (b"http://user:secret@127.0.0.1:{port}/api/v1/tasks", b"127.0.0.1", 400, "invalid"),  # user info: refused
    (b"http:///api/v1/tasks", b"127.0.0.1", 400, "invalid"),  # no host
    (b"http://[::1/api/v1/tasks", b"127.0.0.1", 400, "invalid"),  # malformed: urlsplit raises
    (b"http://127.0.0.1:port/api/v1/tasks", b"127.0.0.1", 400, "invalid"),  # a port that is not a number
])
def test_daphne_serves_a_request_target_in_absolute_form(daphne_server, target, host, status, error):
    """RFC 9112 3.2.2: a server must accept ``GET http://host/path`` (what a client sends to a
    proxy, and some send to any server), with the target's authority as the Host. Daphne handed
    the whole URL to Django as the path: an HTML 404 page, even for /api/ paths."""
    target = target.replace(b"{port}", str(daphne_server).encode())
    answer = _raw(daphne_server, b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
    got_status, content_type, body = _parsed(answer)
    assert got_status == status, answer[:300]
    if error is not None:
        assert content_type.split(";")[0] == "application/json", answer[:300]
        assert json.loads(body)["error"] == error


@pytest.mark.parametrize("target, path, raw_path, host", [
    (b"http://h:8000/api/v1/tasks", "/api/v1/tasks", b"/api/v1/tasks", b"h:8000"),
    (b"https://[::1]:8000/api/v1/tasks", "/api/v1/tasks", b"/api/v1/tasks", b"[::1]:8000"),
    # encoded delimiters stay in the path; an encoded slash does not end the authority
    (b"http://h/api/v1/tasks/a%3Fb%23c", "/api/v1/tasks/a?b#c", b"/api/v1/tasks/a%3Fb%23c", b"h"),
    (b"http://h/a%2F@x/api", "/a/@x/api", b"/a%2F@x/api", b"h"),
    (b"http://h/caf%C3%A9", "/caf\u00e9", b"/caf%C3%A9", b"h"),
    (b"http://h", "/", b"/", b"h"),
])
def test_origin_form_parses_the_raw_target(target, path, raw_path, host):
    scope = {"type": "http", "path": "ignored", "raw_path": target, "headers": [(b"host", b"other"), (b"accept", b"*/*")]}
    got, problem = origin_form(scope)
    assert problem is None
    assert (got["path"], got["raw_path"]) == (path, raw_path)
    assert got["headers"] == [(b"accept", b"*/*"), (b"host", host)]


@pytest.mark.parametrize("scope", [
    {"type": "http", "path": "/api/v1/tasks", "raw_path": b"/api/v1/tasks", "headers": [(b"host", b"h")]},
    {"type": "http", "path": "/http://x/", "raw_path": b"/http://x/", "headers": []},  # origin form: left alone
    {"type": "http", "path": "http://x/api", "raw_path": b"http%3A%2F%2Fx%2Fapi", "headers": []},  # not a URL: left alone
])
def test_origin_form_leaves_other_targets_alone(scope):
    assert origin_form(scope) == (scope, None)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path, query", [
    ("/admin/approvals/agentcallapproval/", b"status__exact=%00"),
    ("/admin/audit/auditevent/", b"action=a%00b"),
    ("/review/", b"q=%00"),
])
def test_a_nul_in_a_pages_query_is_a_400_not_a_database_error(path, query):
    """A page's list filter would hand a NUL to the database, which cannot store one (the admin
    answered 500): the query is refused before any view runs."""
    status, headers, body = asgi_call(guarded_application(), "GET", path, query_string=query)
    assert status == 400 and body == b"Bad Request", (status, body[:300])
    status, _, _ = asgi_call(guarded_application(), "GET", path, query_string=query.replace(b"%00", b"x"))
    assert status in (200, 302), status  # the same query without it is served (a login redirect here)


@pytest.mark.django_db(transaction=True)
def test_a_nul_in_an_api_query_is_left_to_the_apis_own_validation(bearer):
    body = assert_asgi_json_error(asgi_call(guarded_application(), "GET", "/api/v1/events", headers=[bearer],
                                            query_string=b"project_id=%00"), 400, "invalid")
    assert list(body["fields"]) == ["project_id"], body


@pytest.fixture
def consumer_paths(project, task, agent):
    """The API paths Channels consumers serve (approvals.consumers), not Django's views, each
    with a query it would answer, and a path a Django view serves, for comparison."""
    from approvals.services import agent_approval_request
    from hitl.services import hitl_request_create

    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="write code", input_data={}, model="gpt-4o-mini")
    question = hitl_request_create(asker=agent, project_id=project.pk, task_id=task.pk, request_type="question",
                                   question="Which one?")
    return [("/api/v1/events", f"project_id={project.pk}"),
            (f"/api/v1/agent-approvals/{call.pk}/wait", "timeout=0"),
            (f"/api/v1/hitl/{question.pk}/wait", "timeout=0"),
            (f"/api/v1/projects/{project.pk}", "")]


@pytest.mark.django_db(transaction=True)
def test_the_paths_consumers_serve_refuse_a_host_and_an_accept_as_django_does(bearer, consumer_paths):
    """The events feed and the long polls are served by Channels consumers: they skipped Django's
    Host check (any Host was answered) and the API's content negotiation (application/xml got
    JSON 200). They now answer as Django's views do."""
    app = guarded_application()
    for path, query in consumer_paths:
        q = query.encode()
        status, _, body = asgi_call(app, "GET", path, headers=[bearer], query_string=q)
        assert status == 200, (path, body[:300])
        for accept in [*ACCEPTS[1:], "application/json;q=0.5, application/xml"]:
            status, _, body = asgi_call(app, "GET", path, headers=[bearer, (b"accept", accept.encode())],
                                        query_string=q)
            assert status == 200, (path, accept, body[:300])
        body = assert_asgi_json_error(asgi_call(app, "GET", path, headers=[bearer], query_string=q,
                                                host=b"evil.example"), 400, "invalid")
        assert body["fields"] == {"host": ["Not an allowed host."]}, path
        for accept in UNSATISFIABLE:
            assert_asgi_json_error(asgi_call(app, "GET", path, headers=[bearer, (b"accept", accept.encode())],
                                             query_string=q), 406, "not_acceptable")


@pytest.mark.django_db(transaction=True)
def test_daphne_answers_a_tls_handshake_at_once_saying_it_speaks_plain_http(daphne_server):
    """A client given https:// for this plain-HTTP server sent its TLS handshake and Twisted waited
    for a request line that never came: the client hung until the idle timeout (60 s a try). Now
    the handshake is answered at once, and a TLS client fails with its own "wrong version"."""
    import ssl

    answer = _raw(daphne_server, b"\x16\x03\x01\x00\x2a" + b"\x01" * 42)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"speaks plain HTTP" in answer, answer[:300]
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", daphne_server), timeout=10) as conn:
        with pytest.raises(ssl.SSLError, match="WRONG_VERSION_NUMBER|wrong version number"):
            context.wrap_socket(conn, server_hostname="127.0.0.1")
    # a plain request on the same server is served as before
    assert _raw(daphne_server, b"GET /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                ).startswith(b"HTTP/1.1 401 ")


@pytest.mark.django_db
@pytest.mark.parametrize("model", ["approvals/agentcallapproval", "access/apikey", "projects/task", "audit/auditevent",
                                   "emergency/emergencystop", "recovery/recoverysession"])
def test_an_admin_list_filtered_by_a_year_no_date_holds_is_a_400_not_a_500(client, admin_user, model):
    """Any lookup on a model's own field is taken from an admin list's query string; a year past
    9999 (or 0) raised when the list was rendered: a 500 on 17 lists."""
    client.force_login(admin_user)
    for lookup in ("created_at__year", "created_at__iso_year", "created_at__iso_year__gte"):
        for year in ("99999", "0", "-1"):
            r = client.get(f"/admin/{model}/", {lookup: year})
            assert r.status_code == 400 and "a year from 1 to 9999" in r.content.decode(), (model, lookup, year)
    assert client.get(f"/admin/{model}/", {"created_at__year": "2026"}).status_code == 200
    assert client.get(f"/admin/{model}/", {"created_at__year": "soon"}).status_code in (200, 302)  # Django's own ?e=1
