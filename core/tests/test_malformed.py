"""Malformed input on every endpoint gets a documented 4xx in the JSON error shape and
changes nothing (API.md, "Errors": no request, however malformed, gets a 500).

Endpoints covered: GET/POST /api/v1/projects, GET /api/v1/projects/{id}, POST /api/v1/tasks,
GET /api/v1/tasks/{id}, POST /api/v1/tasks/{id}/status, GET /api/v1/events, GET /api/v1/health.
"""
import asyncio
import json
import uuid
from contextlib import contextmanager
from urllib.parse import urlencode

import pytest
from django.apps import apps
from rest_framework.test import APIClient

from access.services import api_key_create, api_key_revoke
from core.parsers import loads_strict
from projects.models import Project, Task
from projects.services import task_create

pytestmark = pytest.mark.django_db

# Every table a request could write to: none may change after a refused request.
WATCHED_APPS = ("auth", "guardian", "core", "projects", "access", "audit", "events",
                "approvals", "budgets", "emergency", "recovery")


def row_counts() -> dict[str, int]:
    return {model._meta.label: model._default_manager.count()
            for app in WATCHED_APPS for model in apps.get_app_config(app).get_models()}


@contextmanager
def nothing_changes(task=None):
    before = row_counts()
    task_before = (task.status, task.error, task.finished_at) if task else None
    yield
    assert row_counts() == before, "a refused request changed the database"
    if task is not None:
        task.refresh_from_db()
        assert (task.status, task.error, task.finished_at) == task_before


def assert_error(response, status: int, code: str, *fields: str) -> dict:
    """The documented error: status, JSON body {"error", "detail", ...}; for 400 a
    ``fields`` dict naming each offending field."""
    assert response.status_code == status, response.content[:2000]
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = json.loads(response.content)
    assert isinstance(body, dict), body
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"], body
    if status == 400:
        assert isinstance(body["fields"], dict) and body["fields"], body
        for field in fields:
            assert field in body["fields"], body
    return body


def assert_names(body: dict, field: str) -> None:
    """A body-level (parse) error names the offending field in its text."""
    assert "body" in body["fields"], body
    assert field in json.dumps(body), body


# --- fixtures ---------------------------------------------------------------------
@pytest.fixture
def task(project, agent):
    return task_create(actor=agent, project_id=project.pk, agent_type="coder", title="Write code")


def answering(client):
    """Behave like the real server: let a server error come back as the 500 response a user
    would see (the traceback is still logged), so a failing test shows the status and whether
    the database changed; and enforce CSRF as CsrfViewMiddleware does outside tests."""
    client.raise_request_exception = False
    client.handler.enforce_csrf_checks = True
    return client


@pytest.fixture
def clients(client_for, admin_user, agent):
    return {"admin": answering(client_for(admin_user)), "agent": answering(client_for(agent))}


@pytest.fixture
def targets(clients, project, task):
    """The three endpoints that take a body: (client, url, a valid body)."""
    return {
        "project_create": (clients["admin"], "/api/v1/projects", {"name": "New", "slug": "new"}),
        "task_create": (clients["agent"], "/api/v1/tasks",
                        {"project_id": str(project.pk), "agent_type": "coder", "title": "Do it",
                         "input_data": {"spec": "x"}}),
        "task_status": (clients["agent"], f"/api/v1/tasks/{task.pk}/status", {"status": "failed", "error": "boom"}),
    }


TARGETS = ["project_create", "task_create", "task_status"]
CREATES = ["project_create", "task_create"]  # the POSTs that take an Idempotency-Key
FIELDS = {"project_create": ["name", "slug", "timezone"],
          "task_create": ["project_id", "agent_type", "title", "input_data"],
          "task_status": ["status", "error"]}
TARGET_FIELDS = [(t, f) for t in TARGETS for f in FIELDS[t]]
SUCCESS = {"project_create": 201, "task_create": 201, "task_status": 200}


def send(client, url, raw, content_type="application/json", method="POST", **extra):
    return client.generic(method, url, raw, content_type=content_type, **extra)


def with_literal(valid: dict, field: str, literal: str) -> str:
    """``valid`` as JSON text with ``field``'s value replaced by a raw JSON literal."""
    return json.dumps({**valid, field: "@@X@@"}).replace('"@@X@@"', literal)


@pytest.mark.parametrize("target", TARGETS)
def test_the_valid_bodies_are_accepted(targets, target):
    """Sanity: every malformed variant below differs from an accepted request only in the flaw."""
    client, url, valid = targets[target]
    assert send(client, url, json.dumps(valid)).status_code == SUCCESS[target]


# --- bodies that are not a JSON object ------------------------------------------
UNPARSEABLE = [
    pytest.param("{", id="truncated"),
    pytest.param("not json", id="text"),
    pytest.param("{'name': 'x'}", id="single-quotes"),
    pytest.param('{"name": "x",}', id="trailing-comma"),
    pytest.param('{"name": "x"} {"name": "y"}', id="two-documents"),
    pytest.param('{"name": "x"]', id="mismatched-bracket"),
    pytest.param('{"name": "a\nb"}', id="raw-control-char-in-string"),
    pytest.param('{"name": "\x00"}', id="raw-nul-byte"),
    pytest.param(b"\xff\xfe\x00{", id="invalid-utf8"),
    pytest.param(b'{"name": "\xc3\x28"}', id="invalid-utf8-in-string"),
    pytest.param("\ufeff{}", id="bom"),
    pytest.param("NaN", id="bare-nan"),
    pytest.param("1" * 5000, id="int-over-4300-digits"),
]


@pytest.mark.parametrize("raw", UNPARSEABLE)
@pytest.mark.parametrize("target", TARGETS)
def test_invalid_json_is_400(targets, task, target, raw):
    client, url, _ = targets[target]
    with nothing_changes(task):
        r = send(client, url, raw)
        assert_error(r, 400, "invalid", "body")


@pytest.mark.parametrize("raw", ["[]", '[{"name": "x", "slug": "x"}]', '"a string"', "42", "4.2", "true", "null"])
@pytest.mark.parametrize("target", TARGETS)
def test_json_that_is_not_an_object_is_400(targets, task, target, raw):
    client, url, _ = targets[target]
    with nothing_changes(task):
        r = send(client, url, raw)
        assert_error(r, 400, "invalid")


@pytest.mark.parametrize("target", TARGETS)
def test_empty_body_is_400_naming_the_required_fields(targets, task, target):
    client, url, _ = targets[target]
    required = {"project_create": ["name", "slug"], "task_create": ["project_id", "agent_type", "title"],
                "task_status": ["status"]}[target]
    with nothing_changes(task):
        r = send(client, url, "")
        assert_error(r, 400, "invalid", *required)


# --- NaN, Infinity and numbers that overflow to infinity ---------------------------
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("target,field", TARGET_FIELDS)
def test_nan_and_infinity_literals_are_400(targets, task, target, field, literal):
    client, url, valid = targets[target]
    with nothing_changes(task):
        r = send(client, url, with_literal(valid, field, literal))
        assert_error(r, 400, "invalid", "body")


@pytest.mark.parametrize("literal", ["1e400", "-1e400", '{"x": 1e999}', '[1E+999]'])
def test_numbers_that_overflow_to_infinity_are_400(targets, literal):
    """json.loads turns 1e400 into float('inf'), which is not JSON: it can be neither
    stored in jsonb nor rendered back (DRF's strict JSON renderer)."""
    client, url, valid = targets["task_create"]
    with nothing_changes():
        r = send(client, url, with_literal(valid, "input_data", '{"n": %s}' % literal))
        assert_error(r, 400, "invalid")


# --- a key twice in one object ------------------------------------------------------
@pytest.mark.parametrize("where", ["top-level", "nested"])
@pytest.mark.parametrize("target", TARGETS)
def test_a_key_twice_in_one_object_is_400(targets, task, target, where):
    """Parsers disagree on a repeated key (Python keeps the last, many the first): a proxy or a
    log could read a rejection where the server approved. Refused, naming the key."""
    client, url, valid = targets[target]
    body = json.dumps(valid)
    raw = (body[:-1] + ', "zz": 1, "zz": 2}') if where == "top-level" else \
        body[:-1] + ', "input_data": {"a": {"k": 1, "k": 2}}}'
    with nothing_changes(task):
        r = send(client, url, raw)
        named = '"zz"' if where == "top-level" else '"k"'
        assert f"the key {named} appears more than once" in assert_error(r, 400, "invalid", "body")["detail"]


def test_a_repeated_key_that_is_no_text_is_named_safely(targets):
    """A lone surrogate as the repeated key, echoed into the message as it was, made the 400 a 500
    (the answer could not be encoded)."""
    client, url, _ = targets["task_create"]
    with nothing_changes():
        r = send(client, url, '{"\\ud800": 1, "\\ud800": 2}')
        assert 'the key "\\ud800" appears more than once' in assert_error(r, 400, "invalid", "body")["detail"]


def test_a_decision_named_twice_decides_nothing(project, agent, reviewer, client_for):
    from approvals.models import AgentCallApproval
    from approvals.services import agent_approval_request

    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="twice")
    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="x", input_data={})
    r = client_for(reviewer).post(f"/api/v1/agent-approvals/{call.pk}/respond",
                                  '{"decision": "reject", "reason": "no", "decision": "approve"}',
                                  content_type="application/json")
    assert_error(r, 400, "invalid", "body")
    assert AgentCallApproval.objects.get(pk=call.pk).status == "pending"
    with pytest.raises(ValueError, match='the key "a" appears more than once'):
        loads_strict('{"a": 1, "b": {}, "a": 2}')


# --- NUL characters and lone surrogates ---------------------------------------------
@pytest.mark.parametrize("target,field", TARGET_FIELDS)
def test_nul_in_a_string_value_is_400(targets, task, target, field):
    client, url, valid = targets[target]
    value = {"input_data": {"k": "a\u0000b"}}.get(field, "a\u0000b")
    with nothing_changes(task):
        r = send(client, url, json.dumps({**valid, field: value}))
        assert_names(assert_error(r, 400, "invalid", "body"), field)


@pytest.mark.parametrize("where", ["top-level", "nested"])
@pytest.mark.parametrize("target", TARGETS)
def test_nul_in_a_json_key_is_400(targets, task, target, where):
    client, url, valid = targets[target]
    body = {**valid, "bad\u0000key": 1} if where == "top-level" else {**valid, "input_data": {"a": {"k\u0000": 1}}}
    with nothing_changes(task):
        r = send(client, url, json.dumps(body))
        assert_error(r, 400, "invalid", "body")


@pytest.mark.parametrize("value", [pytest.param("\ud800", id="high"), pytest.param("x\udfffy", id="low")])
@pytest.mark.parametrize("target,field", TARGET_FIELDS)
def test_lone_surrogate_in_a_string_is_400(targets, task, target, field, value):
    r"""JSON "\ud800" decodes to a str that cannot be encoded as UTF-8: it can be neither
    stored (SQLite, PostgreSQL) nor rendered in an error message."""
    client, url, valid = targets[target]
    value = {"input_data": {"k": value}}.get(field, value)
    with nothing_changes(task):
        r = send(client, url, json.dumps({**valid, field: value}))
        body = assert_error(r, 400, "invalid")
    assert field in body["fields"] or "body" in body["fields"], body


def test_lone_surrogate_in_a_key_is_400(targets):
    client, url, valid = targets["task_create"]
    with nothing_changes():
        r = send(client, url, json.dumps({**valid, "input_data": {"\ud800": 1}}))
        assert_error(r, 400, "invalid")


# --- deep nesting -------------------------------------------------------------------
def nested(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [100, 1000, 100_000])
@pytest.mark.parametrize("kind", ["list", "object"])
@pytest.mark.parametrize("target", TARGETS)
def test_deep_nesting_is_400(targets, task, target, kind, depth):
    client, url, valid = targets[target]
    with nothing_changes(task):
        r = send(client, url, with_literal(valid, FIELDS[target][-1], nested(depth, kind)))
        assert_error(r, 400, "invalid", "body")
    with nothing_changes(task):
        r = send(client, url, nested(depth, kind))  # the whole body
        assert_error(r, 400, "invalid", "body")


def test_nesting_within_the_limit_is_accepted(targets):
    client, url, valid = targets["task_create"]
    r = send(client, url, with_literal(valid, "input_data", nested(30, "object")))
    assert r.status_code == 201, r.content


# --- size ---------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_body_over_the_size_limit_is_400(settings, targets, task, target):
    client, url, valid = targets[target]
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 300
    small = json.dumps(valid)
    big = json.dumps({**valid, "padding": "x" * 400})
    assert len(small) < 300 < len(big)
    with nothing_changes(task):
        r = send(client, url, big)
        assert_error(r, 400, "invalid", "body")
    r = send(client, url, small)  # just under the limit
    assert r.status_code == SUCCESS[target], r.content


@pytest.mark.parametrize("target,field,limit", [("project_create", "name", 200), ("project_create", "slug", 64),
                                                ("task_create", "title", 500), ("task_status", "error", 20000)])
def test_strings_over_max_length_are_400_and_at_max_length_accepted(targets, task, target, field, limit):
    client, url, valid = targets[target]
    with nothing_changes(task):
        r = send(client, url, json.dumps({**valid, field: "x" * (limit + 1)}))
        assert_error(r, 400, "invalid", field)
    r = send(client, url, json.dumps({**valid, field: "x" * limit}))
    assert r.status_code == SUCCESS[target], r.content


# --- content type -------------------------------------------------------------------
@pytest.mark.parametrize("content_type", [
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/xml",
    "application/octet-stream",
    "application/jsonx",
    "",
])
@pytest.mark.parametrize("target", TARGETS)
def test_a_body_that_is_not_declared_json_is_400(targets, task, target, content_type):
    client, url, valid = targets[target]
    with nothing_changes(task):
        r = send(client, url, json.dumps(valid), content_type=content_type)
        assert_error(r, 400, "invalid", "body")


@pytest.mark.parametrize("target", TARGETS)
def test_form_data_is_400(targets, task, target):
    client, url, valid = targets[target]
    form = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in valid.items()}
    with nothing_changes(task):
        r = client.post(url, form)  # multipart/form-data
        assert_error(r, 400, "invalid", "body")
    with nothing_changes(task):
        r = send(client, url, urlencode(form), content_type="application/x-www-form-urlencoded")
        assert_error(r, 400, "invalid", "body")


@pytest.mark.parametrize("charset", ["utf-16", "utf-32", "rot13", "hex", "base64", "zlib", "uu", "bz2", "undefined"])
@pytest.mark.parametrize("target", TARGETS)
def test_a_wrong_or_bogus_charset_is_400(targets, task, target, charset):
    """A UTF-8 body declared in another charset, or in a codec that is not a text
    encoding at all (rot13, hex, base64, zlib, ...) or decodes nothing (undefined: it was a 500):
    400, never a 500."""
    client, url, valid = targets[target]
    with nothing_changes(task):
        r = send(client, url, json.dumps({**valid, "x": "é"}), content_type=f"application/json; charset={charset}")
        assert_error(r, 400, "invalid", "body")


@pytest.mark.parametrize("target", TARGETS)
def test_an_unknown_charset_is_ignored(targets, target):
    """Django ignores a charset it does not know and reads UTF-8."""
    client, url, valid = targets[target]
    r = send(client, url, json.dumps(valid), content_type="application/json; charset=no-such-charset")
    assert r.status_code == SUCCESS[target], r.content


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("charset", ["utf-16", "latin-1"])
def test_a_body_in_the_charset_it_declares_is_read_in_it(targets, target, charset):
    """RFC 8259 asks for UTF-8, but a body that says its charset and is written in it is read as such."""
    client, url, valid = targets[target]
    r = send(client, url, json.dumps(valid, ensure_ascii=False).encode(charset),
             content_type=f"application/json; charset={charset}")
    assert r.status_code == SUCCESS[target], r.content


def test_typed_json_is_held_to_the_same_number_rules():
    """What a reviewer types into a form (an amended input, an answer) is refused as the API refuses it."""
    with pytest.raises(ValueError, match=r"^the number 1e999 is out of range"):
        loads_strict('{"n": 1e999}')
    with pytest.raises(ValueError, match=r"^a number has 4301 digits, more than 4300"):
        loads_strict("[" + "7" * 4301 + "]")
    with pytest.raises(ValueError, match=r"^the number -2.5e-400 is too small for a 64-bit float to hold as written"):
        loads_strict('{"m": -2.5e-400}')  # it was read as -0.0
    with pytest.raises(ValueError, match=r"^the number 2.5e-324 is too small .* \(it would be read as 5e-324;"):
        loads_strict('{"m": 2.5e-324}')  # it was taken, and doubled
    # below the smallest normal double, what a double holds as printed (shortest, or C's 17 digits) is taken
    assert loads_strict("[5e-324, 4.9406564584124654e-324, 1e-310, 1.23456789e-310, 2.2250738585072011e-308]") == [
        5e-324, 5e-324, 1e-310, 1.23456789e-310, 2.225073858507201e-308]
    # what a double holds as written is taken, however it is written
    assert loads_strict('{"n": 1e308, "a": 0.1, "b": 1.10, "c": -0.0, "d": 2.5E-3, "e": 0.30000000000000004, '
                        '"f": 12345678901234567890123}') == {"n": 1e308, "a": 0.1, "b": 1.1, "c": -0.0, "d": 0.0025,
                                                             "e": 0.30000000000000004, "f": 12345678901234567890123}
    # 17 significant digits (C's %.17g, PHP, older Java), or more that are exactly a double, are taken
    assert loads_strict("[0.10000000000000001, 9.999999999999999e22, 2.82879384806159008E17, 1.000000000000000000000]"
                        ) == [0.1, 1e23, 2.82879384806159008e17, 1.0]
    with pytest.raises(ValueError, match=r"has more digits than a 64-bit float holds"):
        loads_strict("3.14159265358979323846")
    for refused in ("1e-9999999999999999999", "1.2345678901234567891e-400"):
        with pytest.raises(ValueError, match=r"is too small for a 64-bit float to hold as written"):
            loads_strict(refused)  # the first was a 500 (Decimal's InvalidOperation)


# --- wrong types, bad values, missing fields ----------------------------------------
BAD_VALUES = [
    ("project_create", "name", [123, 1.5, True, None, "", "   ", {"text": "x"}, ["x"]]),
    ("project_create", "slug", ["has space", "ünïcode", "a/b", "", None, 42, {"a": 1}, ["x"]]),
    ("project_create", "timezone", ["Mars/Olympus_Mons", "utc ", "", None, 0, ["UTC"], {"tz": "UTC"}]),
    ("task_create", "project_id", ["not-a-uuid", "", None, 12345, "1234", {"id": "x"}, [], True,
                                   "00000000-0000-0000-0000-00000000000g", "00000000-0000-0000-0000-0000000000000"]),
    ("task_create", "agent_type", ["wizard", "", "CODER", " coder", None, 1, ["coder"], {"coder": True}]),
    ("task_create", "title", [123, 1.5, False, None, "", "   ", {"text": "x"}, ["x"]]),
    ("task_create", "input_data", [[1, 2], [], "text", 5, 1.5, True, None]),
    ("task_status", "status", ["unknown", "pending", "running", "halted", "COMPLETED", "",
                               None, 1, ["completed"], {"status": "completed"}]),
    ("task_status", "error", [123, None, {"a": 1}, ["x"]]),
]
BAD_FIELD_CASES = [pytest.param(t, f, v, id=f"{t}-{f}-{json.dumps(v, ensure_ascii=True)}")
                   for t, f, values in BAD_VALUES for v in values]


@pytest.mark.parametrize("target,field,value", BAD_FIELD_CASES)
def test_a_wrong_type_or_value_is_400_naming_the_field(targets, task, target, field, value):
    client, url, valid = targets[target]
    with nothing_changes(task):
        r = send(client, url, json.dumps({**valid, field: value}))
        body = assert_error(r, 400, "invalid", field)
    assert set(body["fields"]) == {field}, body  # only the bad field is blamed


MISSING = [("project_create", ["name"]), ("project_create", ["slug"]), ("project_create", ["name", "slug"]),
           ("task_create", ["project_id"]), ("task_create", ["agent_type"]), ("task_create", ["title"]),
           ("task_create", ["project_id", "agent_type", "title"]), ("task_status", ["status"])]


@pytest.mark.parametrize("target,missing", MISSING)
def test_missing_required_fields_are_400_naming_each(targets, task, target, missing):
    client, url, valid = targets[target]
    body = {k: v for k, v in valid.items() if k not in missing}
    with nothing_changes(task):
        r = send(client, url, json.dumps(body))
        assert set(assert_error(r, 400, "invalid", *missing)["fields"]) == set(missing)


def test_an_unknown_project_in_the_body_is_404(targets, other_project):
    client, url, valid = targets["task_create"]
    for project_id in (str(uuid.uuid4()), str(other_project.pk), "00000000-0000-0000-0000-000000000000"):
        with nothing_changes():
            r = send(client, url, json.dumps({**valid, "project_id": project_id}))
            assert_error(r, 404, "not_found")


def test_a_duplicate_slug_is_400(targets, project):
    client, url, valid = targets["project_create"]
    with nothing_changes():
        r = send(client, url, json.dumps({**valid, "slug": project.slug}))
        assert_error(r, 400, "invalid", "slug")


# --- ids in paths and query strings ------------------------------------------------
BAD_IDS = [
    pytest.param("not-a-uuid", id="word"),
    pytest.param("123", id="number"),
    pytest.param("00000000-0000-0000-0000-000000000000", id="nil-uuid"),
    pytest.param("RANDOM", id="unknown-uuid"),
    pytest.param("%00", id="nul"),
    pytest.param("abc%00def", id="nul-inside"),
    pytest.param("%FF%FE", id="invalid-utf8"),
    pytest.param("%ED%A0%80", id="encoded-surrogate"),
    pytest.param("%E2%80%8B", id="zero-width-space"),
    pytest.param("x" * 5000, id="very-long"),
    pytest.param("1' OR '1'='1", id="sql"),
    pytest.param("..%2F..%2Fetc%2Fpasswd", id="traversal"),
    pytest.param("OTHER", id="id-of-another-kind"),
]


def path_id(raw: str, project) -> str:
    return {"RANDOM": str(uuid.uuid4()), "OTHER": str(project.pk)}.get(raw, raw)


@pytest.mark.parametrize("raw_id", BAD_IDS)
@pytest.mark.parametrize("method,template", [("GET", "/api/v1/projects/{}"), ("GET", "/api/v1/tasks/{}"),
                                             ("POST", "/api/v1/tasks/{}/status")])
def test_a_malformed_or_unknown_id_in_the_path_is_404(clients, project, task, method, template, raw_id):
    pid = path_id(raw_id, project)
    if template.startswith("/api/v1/projects/") and raw_id == "OTHER":
        pid = str(task.pk)  # a task's id is not a project's
    with nothing_changes(task):
        r = send(clients["admin"], template.format(pid), json.dumps({"status": "completed"}), method=method)
        assert_error(r, 404, "not_found")


def test_a_project_the_caller_cannot_see_is_404(clients, other_project, agent):
    r = clients["agent"].get(f"/api/v1/projects/{other_project.pk}")
    assert_error(r, 404, "not_found")


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", ["/api/v1/projects/", "/api/v1/tasks/", "/api/v1/tasks//status",
                                  "/api/v1/nope", "/api/v1/projects/{p}/tasks", "/api/v1/tasks/{t}/status/x",
                                  "/api/v2/projects", "/api/"])
def test_unknown_api_paths_are_json_404(clients, project, task, path, method):
    """Whatever the method: a POST to an unknown path must not meet CSRF's HTML 403 page."""
    with nothing_changes(task):
        r = send(clients["admin"], path.format(p=project.pk, t=task.pk), json.dumps({"name": "X", "slug": "x"}),
                 method=method)
        assert_error(r, 404, "not_found")


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("path", ["/api/v1/projects", "/api/v1/health", "/api/v1/nope"])
def test_a_disallowed_host_on_an_api_path_is_json_400(clients, path, debug, settings):
    """Also under DEBUG (``make run``), where Django's own answer is a text/plain debug page."""
    settings.DEBUG = debug
    r = clients["admin"].get(path, HTTP_HOST="evil.example")
    assert_error(r, 400, "invalid")
    assert "host" in r.json()["fields"]


EVENT_QUERIES = [
    # (query string, offending field); PROJECT is replaced by a visible project's id
    ("", "project_id"),
    ("project_id=", "project_id"),
    ("project_id=not-a-uuid", "project_id"),
    ("project_id=%00", "project_id"),
    ("project_id=PROJECT%00", "project_id"),
    ("project_id=%FF", "project_id"),
    ("project_id=" + "a" * 5000, "project_id"),
    ("project_id=PROJECT&after=abc", "after"),
    ("project_id=PROJECT&after=-1", "after"),
    ("project_id=PROJECT&after=1.5", "after"),
    ("project_id=PROJECT&after=%00", "after"),
    ("project_id=PROJECT&after=1e3", "after"),
    ("project_id=PROJECT&after=0x10", "after"),
    ("project_id=PROJECT&after=NaN", "after"),
    ("project_id=PROJECT&after=Infinity", "after"),
    ("project_id=PROJECT&after=9223372036854775808", "after"),
    ("project_id=PROJECT&after=" + "9" * 5000, "after"),
    ("project_id=PROJECT&limit=0", "limit"),
    ("project_id=PROJECT&limit=-1", "limit"),
    ("project_id=PROJECT&limit=1001", "limit"),
    ("project_id=PROJECT&limit=abc", "limit"),
    ("project_id=PROJECT&limit=%00", "limit"),
    ("project_id=PROJECT&limit=99999999999999999999999", "limit"),
]


@pytest.mark.parametrize("query,field", EVENT_QUERIES)
def test_bad_event_query_is_400_naming_the_parameter(clients, project, query, field):
    r = clients["agent"].get("/api/v1/events?" + query.replace("PROJECT", str(project.pk)))
    assert_error(r, 400, "invalid", field)


@pytest.mark.parametrize("project_id", ["RANDOM", "OTHER", "00000000-0000-0000-0000-000000000000"])
def test_events_of_an_unknown_or_invisible_project_are_404(clients, other_project, project_id):
    project_id = {"RANDOM": str(uuid.uuid4()), "OTHER": str(other_project.pk)}.get(project_id, project_id)
    assert_error(clients["agent"].get(f"/api/v1/events?project_id={project_id}"), 404, "not_found")


@pytest.mark.parametrize("query", ["after=9223372036854775807", "after=0&limit=1", "after=0&limit=1000",
                                  "after=&limit=", "after=5&after=abc&limit=3"])
def test_event_query_edges_that_are_valid(clients, project, query):
    """The largest bigint is read as a number (no database overflow), and refused as past every
    event so far; an empty parameter means its default."""
    r = clients["agent"].get(f"/api/v1/events?project_id={project.pk}&{query}")
    if "abc" in query:  # the last of repeated parameters wins
        assert_error(r, 400, "invalid", "after")
    elif "922337" in query:
        assert "No event has had the id 9223372036854775807" in assert_error(r, 400, "invalid", "after")["detail"]
    else:
        assert r.status_code == 200, r.content
        assert r.json()["results"] == []


LISTS = ["/api/v1/projects", "/api/v1/agent-approvals/project/{p}", "/api/v1/response-approvals/project/{p}",
         "/api/v1/budget-overrides/project/{p}", "/api/v1/hitl/project/{p}"]


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("page", ["0", "-1", "abc", "", "%00", "99999", "9" * 5000, "1.5", "000", "2", "last"])
def test_a_bad_page_is_json_400_and_a_page_past_the_last_404(clients, project, page, path):
    """A page that is not a whole number from 1 is malformed input (400 ``fields.page``); a
    whole number past the last page names no page (404, saying which is the last)."""
    r = clients["admin"].get(f"{path.format(p=project.pk)}?page={page}")
    if page in ("", "last"):
        assert r.status_code == 200 and "results" in r.json()  # empty: the first page; "last": DRF's last
    elif page in ("99999", "9" * 5000, "2"):
        detail = assert_error(r, 404, "not_found")["detail"]
        assert "the last page is 1" in detail
        assert detail.startswith(f"No page {page}:" if len(page) < 20 else "No such page:")  # never a cut number
    else:
        assert_error(r, 400, "invalid", "page")


# every list takes page_size (the projects' and the overrides' ignored it, even -1)
SIZED_LISTS = [*LISTS, "/api/v1/flag-suppressions/project/{p}"]


@pytest.mark.parametrize("path", SIZED_LISTS)
@pytest.mark.parametrize("size", ["0", "-1", "abc", "1.5", "%00", "000"])
def test_a_bad_page_size_is_json_400(clients, project, size, path):
    """DRF ignored a page_size it could not read and answered its default size."""
    r = clients["admin"].get(f"{path.format(p=project.pk)}?page_size={size}")
    assert_error(r, 400, "invalid", "page_size")


@pytest.mark.parametrize("path", SIZED_LISTS)
@pytest.mark.parametrize("size", ["", "1", "200", "9" * 50])
def test_a_page_size_from_1_is_served_up_to_the_maximum(clients, project, other_project, size, path):
    r = clients["admin"].get(f"{path.format(p=project.pk)}?page_size={size}")
    assert r.status_code == 200 and "results" in r.json(), r.content
    if size == "1" and path == "/api/v1/projects":  # two projects: one a page
        assert len(r.json()["results"]) == 1 and r.json()["count"] == 2 and r.json()["next"]


# --- methods ------------------------------------------------------------------------
UNSUPPORTED = [
    ("PUT", "/api/v1/projects"), ("PATCH", "/api/v1/projects"), ("DELETE", "/api/v1/projects"),
    ("POST", "/api/v1/projects/{p}"), ("PUT", "/api/v1/projects/{p}"),
    ("DELETE", "/api/v1/projects/{p}"),
    ("GET", "/api/v1/tasks"), ("PUT", "/api/v1/tasks"), ("PATCH", "/api/v1/tasks"), ("DELETE", "/api/v1/tasks"),
    ("POST", "/api/v1/tasks/{t}"), ("PUT", "/api/v1/tasks/{t}"), ("PATCH", "/api/v1/tasks/{t}"),
    ("DELETE", "/api/v1/tasks/{t}"),
    ("GET", "/api/v1/tasks/{t}/status"), ("PUT", "/api/v1/tasks/{t}/status"),
    ("PATCH", "/api/v1/tasks/{t}/status"), ("DELETE", "/api/v1/tasks/{t}/status"),
    ("POST", "/api/v1/events"), ("PUT", "/api/v1/events"), ("DELETE", "/api/v1/events"),
    ("POST", "/api/v1/health"), ("PUT", "/api/v1/health"), ("DELETE", "/api/v1/health"),
    ("TRACE", "/api/v1/projects"), ("PROPFIND", "/api/v1/tasks/{t}"), ("FOO", "/api/v1/events"),
]


@pytest.mark.parametrize("method,template", UNSUPPORTED)
def test_unsupported_methods_are_json_405(clients, project, task, method, template):
    url = template.format(p=project.pk, t=task.pk)
    body = json.dumps({"name": "X", "slug": "x", "status": "completed", "project_id": str(project.pk),
                       "agent_type": "coder", "title": "T"})
    with nothing_changes(task):
        r = send(clients["admin"], url + ("?project_id=%s" % project.pk if "events" in url else ""), body,
                 method=method)
        assert_error(r, 405, "method_not_allowed")
    assert method not in r["Allow"].split(", ")


# --- Idempotency-Key ----------------------------------------------------------------
@pytest.mark.parametrize("key", [pytest.param("k" * 256, id="256-chars"), pytest.param("k" * 10_000, id="10000-chars"),
                                 pytest.param("", id="empty")])
@pytest.mark.parametrize("target", CREATES)
def test_a_bad_idempotency_key_is_400(targets, target, key):
    client, url, valid = targets[target]
    with nothing_changes():
        r = send(client, url, json.dumps(valid), HTTP_IDEMPOTENCY_KEY=key)
        assert_error(r, 400, "invalid", "Idempotency-Key")


@pytest.mark.parametrize("target", CREATES)
def test_an_idempotency_key_with_a_nul_is_400(targets, target):
    client, url, valid = targets[target]
    with nothing_changes():
        r = send(client, url, json.dumps(valid), HTTP_IDEMPOTENCY_KEY="key\x00nul")
        assert_error(r, 400, "invalid", "Idempotency-Key")


@pytest.mark.parametrize("target", CREATES)
def test_an_idempotency_key_of_255_chars_is_accepted(targets, target):
    client, url, valid = targets[target]
    r = send(client, url, json.dumps(valid), HTTP_IDEMPOTENCY_KEY="k" * 255)
    assert r.status_code == 201, r.content


@pytest.mark.parametrize("target", CREATES)
def test_a_malformed_body_with_an_idempotency_key_is_400_and_not_remembered(targets, target):
    client, url, valid = targets[target]
    with nothing_changes():
        r = send(client, url, "{", HTTP_IDEMPOTENCY_KEY="k1")
        assert_error(r, 400, "invalid", "body")
    with nothing_changes():
        r = send(client, url, json.dumps({**valid, FIELDS[target][0]: None}), HTTP_IDEMPOTENCY_KEY="k1")
        assert_error(r, 400, "invalid", FIELDS[target][0])
    r = send(client, url, json.dumps(valid), HTTP_IDEMPOTENCY_KEY="k1")  # the key is still free
    assert r.status_code == 201, r.content


@pytest.mark.parametrize("target", CREATES)
def test_a_reused_idempotency_key_with_another_body_is_400(targets, target):
    client, url, valid = targets[target]
    assert send(client, url, json.dumps(valid), HTTP_IDEMPOTENCY_KEY="k2").status_code == 201
    other = {**valid, "name": "Other", "slug": "other-slug"} if target == "project_create" else {**valid, "title": "Z"}
    with nothing_changes():
        r = send(client, url, json.dumps(other), HTTP_IDEMPOTENCY_KEY="k2")
        assert_error(r, 400, "invalid", "Idempotency-Key")


# --- credentials --------------------------------------------------------------------
BAD_AUTH = [
    pytest.param(None, id="none"),
    pytest.param("", id="empty"),
    pytest.param("Bearer", id="bearer-alone"),
    pytest.param("Bearer ", id="bearer-space"),
    pytest.param("Bearer a b", id="three-words"),
    pytest.param("Bearer garbage", id="garbage"),
    pytest.param("Bearer hitl_", id="prefix-only"),
    pytest.param("Bearer hitl__secret", id="empty-prefix"),
    pytest.param("Bearer hitl_000000000000_secret", id="unknown-prefix"),
    pytest.param("Bearer WRONG_SECRET", id="right-prefix-wrong-secret"),
    pytest.param("Bearer REVOKED", id="revoked"),
    pytest.param("Bearer INACTIVE", id="inactive-user"),
    pytest.param("Bearer hitl_\x00_x", id="nul"),
    pytest.param("Bearer hitl_é_x", id="non-ascii"),
    pytest.param("Bearer " + "x" * 10_000, id="very-long"),
    pytest.param("Basic YWRtaW46cHc=", id="basic-with-a-real-password"),
    pytest.param("Token abc", id="token-scheme"),
]
ENDPOINTS = [("GET", "/api/v1/projects"), ("POST", "/api/v1/projects"), ("GET", "/api/v1/projects/{p}"),
             ("POST", "/api/v1/tasks"), ("GET", "/api/v1/tasks/{t}"), ("POST", "/api/v1/tasks/{t}/status"),
             ("GET", "/api/v1/events?project_id={p}"), ("DELETE", "/api/v1/tasks/{t}")]


@pytest.fixture
def bad_authorization(admin_user, make_user):
    def resolve(header):
        if header in ("Bearer WRONG_SECRET", "Bearer REVOKED"):
            key, raw = api_key_create(user=admin_user)
            if header == "Bearer REVOKED":
                api_key_revoke(key_id=key.pk)
                return f"Bearer {raw}"
            return f"Bearer hitl_{key.prefix}_wrong"
        if header == "Bearer INACTIVE":
            user = make_user("inactive", superuser=True)
            _, raw = api_key_create(user=user)
            user.is_active = False
            user.save()
            return f"Bearer {raw}"
        return header

    return resolve


@pytest.mark.parametrize("header", BAD_AUTH)
@pytest.mark.parametrize("method,template", ENDPOINTS)
def test_no_or_bad_credentials_are_401(project, task, bad_authorization, method, template, header):
    client = answering(APIClient())
    header = bad_authorization(header)
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)
    body = json.dumps({"name": "X", "slug": "x", "status": "completed", "project_id": str(project.pk),
                       "agent_type": "coder", "title": "T"})
    with nothing_changes(task):
        r = send(client, template.format(p=project.pk, t=task.pk), body, method=method)
        assert_error(r, 401, "unauthenticated")
    assert r["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", [None, "Bearer garbage", "Bearer hitl_\x00_x"])
def test_health_is_public_and_ignores_credentials(header):
    client = answering(APIClient())
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)
    r = client.get("/api/v1/health")
    assert r.status_code == 200 and r.json()["database"]


def test_a_session_without_csrf_token_cannot_post(client, admin_user):
    """Session auth enforces CSRF: 403 in the error shape, nothing created."""
    client.force_login(admin_user)
    answering(client)
    with nothing_changes():
        r = client.post("/api/v1/projects", json.dumps({"name": "X", "slug": "x"}), content_type="application/json")
        assert_error(r, 403, "forbidden")


# --- chunked bodies (no Content-Length) through the real ASGI handler ---------------
def asgi_post(path: str, chunks: list[bytes], authorization: str):
    """POST ``chunks`` as an HTTP/1.1 chunked body (no Content-Length), the way daphne hands
    it to Django, and return (status, body)."""
    from asgiref.sync import async_to_sync
    from django.core.handlers.asgi import ASGIHandler
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                         (b"transfer-encoding", b"chunked"), (b"authorization", authorization.encode())]}
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client stays connected until the response is sent

    async def send_(message):
        sent.append(message)

    # as Django's test client does: keep the test's transaction (and connection) open
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        async_to_sync(ASGIHandler())(scope, receive, send_)
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.fixture
def raw_admin_key(admin_user):
    return f"Bearer {api_key_create(user=admin_user)[1]}"


def test_a_chunked_body_is_read_not_silently_dropped(raw_admin_key):
    """A well-formed chunked request is either created, or refused for being chunked; never
    answered as if the body were empty ("This field is required")."""
    status, body = asgi_post("/api/v1/projects", [b'{"name": "Chun', b'ked", "slug": "chunked"}'], raw_admin_key)
    if status == 201:
        assert Project.objects.filter(slug="chunked", name="Chunked").exists()
    else:
        body = json.loads(body)
        assert status in (400, 411) and body["error"] == "invalid" and "body" in body["fields"], body


def test_a_chunked_body_over_the_size_limit_is_400(settings, raw_admin_key):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 300
    chunks = [b'{"name": "Big", "slug": "big", "pad": "', *[b"x" * 100] * 10, b'"}']
    with nothing_changes():
        status, body = asgi_post("/api/v1/projects", chunks, raw_admin_key)
        assert status == 400, body
        body = json.loads(body)
        assert body["error"] == "invalid" and "body" in body["fields"], body  # too large, not "required"


# --- a task's outcome is not changed by a refused report ---------------------------
def test_refused_status_reports_leave_the_task_pending(targets, task):
    client, url, _ = targets["task_status"]
    for raw in ("{", '{"status": "completed", "error": "\\u0000"}', '{"status": NaN}', '{"status": "done"}',
                "[]", nested(1000, "list")):
        send(client, url, raw)
    task.refresh_from_db()
    assert task.status == Task.Status.PENDING and task.error == "" and task.finished_at is None


# --- what a refused body's message says -------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_a_refused_body_says_what_to_send_in_the_clients_terms(settings, targets, task, target):
    """Not the server's internals: no Django setting, no Python codec or sys function."""
    client, url, valid = targets[target]
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 300
    with nothing_changes(task):
        cases = [(send(client, url, json.dumps({**valid, "padding": "x" * 400})), "Request body is larger than 300 bytes.")]
        settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
        cases += [
            (send(client, url, "1" * 5000), "JSON parse error - a number has 5000 digits, more than 4300: "
                                             "send at most 4300 digits, or the number as a string"),
            (send(client, url, "\ufeff" + json.dumps(valid)),
             "JSON parse error - the body starts with a byte order mark (U+FEFF): send the JSON without one."),
            (send(client, url, with_literal(valid, "x", "1e999")),
             "JSON parse error - the number 1e999 is out of range: send one between -1.7e308 and 1.7e308, "
             "or the number as a string"),
            (send(client, url, with_literal(valid, "x", "-" + "9" * 400 + ".5")),
             "JSON parse error - the number -9999999999999999999...99999999.5 is out of range: "
             "send one between -1.7e308 and 1.7e308, or the number as a string"),
            (send(client, url, with_literal(valid, "x", "123456789012345678901234567890.5")),
             "JSON parse error - the number 123456789012345678901234567890.5 has more digits than a 64-bit float "
             "holds (it would be read as 1.2345678901234568e+29): send at most 17 significant digits, or the "
             "number as a string"),
            (send(client, url, with_literal(valid, "x", "1e-400")),
             "JSON parse error - the number 1e-400 is too small for a 64-bit float to hold as written (it would be "
             "read as 0.0; below 2.2e-308 a double has fewer digits): send the number as a string"),
            (send(client, url, with_literal(valid, "x", "1e-9999999999999999999")),
             "JSON parse error - the number 1e-9999999999999999999 is too small for a 64-bit float to hold as "
             "written (it would be read as 0.0; below 2.2e-308 a double has fewer digits): send the number as a "
             "string"),
            (send(client, url, b"{}", content_type="application/json; charset=utf-16"),
             "JSON parse error - Expecting value: line 1 column 1 (char 0)"
             " (read as utf-16, the charset its Content-Type declares)"),
            (send(client, url, b"{} ", content_type="application/json; charset=utf-16"),
             "JSON parse error - the body is not valid utf-16, the charset its Content-Type declares: "
             "byte 0x20 at position 2. Send JSON in UTF-8."),
            (send(client, url, json.dumps(valid).encode("utf-16")),
             "JSON parse error - the body is not valid utf-8: byte 0xff at position 0. Send JSON in UTF-8."),
            (send(client, url, json.dumps(valid), content_type=""),
             "The body has no Content-Type: send it as JSON, with Content-Type: application/json."),
            (send(client, url, json.dumps(valid), content_type="text/plain; charset=utf-8"),
             "The body is text/plain: send it as JSON, with Content-Type: application/json."),
        ]
        for r, detail in cases:
            body = assert_error(r, 400, "invalid", "body")
            assert body["detail"] == detail and body["fields"]["body"] == [detail], body
            assert "settings." not in body["detail"] and "sys." not in body["detail"]
