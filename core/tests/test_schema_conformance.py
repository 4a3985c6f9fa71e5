"""The OpenAPI schema (/api/schema/) against what the API really answers: a whole project's life
through the API (tasks, calls, outputs, questions, budgets and an override, a stop, its status and
its recovery, events, errors), each answer checked to be a documented status whose body the
schema's JSON Schema accepts. A client generated from the schema must be able to read every
answer (a field the schema calls non-null that is null, an undocumented 409, ... fail here)."""
from decimal import Decimal

import jsonschema
import pytest
from drf_spectacular.generators import SchemaGenerator

from budgets.models import ProjectBudget

pytestmark = pytest.mark.django_db


def _json_schema(node):
    """OpenAPI 3.0's dialect as JSON Schema: ``nullable`` becomes a null alternative, component
    references point into ``$defs``."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    if "$ref" in out:
        out["$ref"] = out["$ref"].replace("#/components/schemas/", "#/$defs/")
    if node.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


class Contract:
    def __init__(self):
        schema = SchemaGenerator().get_schema(request=None, public=True)
        self.paths = schema["paths"]
        self.defs = _json_schema(schema["components"]["schemas"])
        self.checked = []

    def check(self, response, method: str, template: str):
        """``response`` answered ``method template`` (a path of the schema): a documented status,
        a body the schema accepts. Returns the body."""
        operation = self.paths[template][method.lower()]
        status = str(response.status_code)
        assert status in operation["responses"], (
            f"{method} {template} answered {status}, undocumented (documented: {sorted(operation['responses'])}): "
            f"{response.content[:500]!r}")
        body = response.json()
        content = operation["responses"][status].get("content", {}).get("application/json")
        assert content is not None, f"{method} {template} {status}: the schema documents no JSON body"
        schema = {**_json_schema(content["schema"]), "$defs": self.defs}
        try:
            jsonschema.validate(body, schema)
        except jsonschema.ValidationError as exc:
            raise AssertionError(f"{method} {template} {status}: {exc.message} at {list(exc.absolute_path)}\n"
                                 f"{body}") from None
        self.checked.append((method, template, status))
        return body


@pytest.fixture(scope="module")
def contract():
    return Contract()


def test_every_answer_of_a_projects_life_is_one_the_schema_documents(contract, project, agent, reviewer, manager,
                                                                      client_for):
    a, r, m = client_for(agent), client_for(reviewer), client_for(manager)
    check = contract.check
    p = str(project.pk)

    task = check(a.post("/api/v1/tasks", {"project_id": p, "agent_type": "coder", "title": "Login form"},
                        format="json"), "POST", "/api/v1/tasks")
    check(a.get(f"/api/v1/tasks/{task['task_id']}"), "GET", "/api/v1/tasks/{task_id}")

    def call(task_id, **extra):
        return check(a.post("/api/v1/agent-approvals", {
            "project_id": p, "task_id": task_id, "agent_type": "coder", "proposed_action": "Write the form",
            "input_data": {"files": ["login.tsx"]}, "model": "gpt-4o-mini", **extra}, format="json"),
            "POST", "/api/v1/agent-approvals")

    first = call(task["task_id"])
    assert first["approved_by"] is None and first["responded_at"] is None  # nulls the schema must allow
    one = "/api/v1/agent-approvals/{approval_id}"
    check(a.get(f"/api/v1/agent-approvals/{first['approval_id']}"), "GET", one)
    check(a.get(f"/api/v1/agent-approvals/{first['approval_id']}/wait?timeout=0"), "GET", one + "/wait")
    check(a.post(f"/api/v1/agent-approvals/{first['approval_id']}/respond", {"decision": "approve"}, format="json"),
          "POST", one + "/respond")  # an agent may not decide
    check(r.post(f"/api/v1/agent-approvals/{first['approval_id']}/respond", {"decision": "approve"}, format="json"),
          "POST", one + "/respond")
    check(r.post(f"/api/v1/agent-approvals/{first['approval_id']}/respond", {"decision": "reject", "reason": "late"},
                 format="json"), "POST", one + "/respond")  # 409: decided
    check(a.post(f"/api/v1/agent-approvals/{first['approval_id']}/start"), "POST", one + "/start")
    check(a.post(f"/api/v1/agent-approvals/{first['approval_id']}/start"), "POST", one + "/start")  # 409
    response = check(a.post("/api/v1/response-approvals", {
        "project_id": p, "task_id": task["task_id"], "agent_type": "coder",
        "original_call_approval_id": first["approval_id"], "agent_response": {"files": {"login.tsx": "ok"}},
        "response_summary": "The form", "next_steps": [], "tokens_used": 900}, format="json"),
        "POST", "/api/v1/response-approvals")
    one_response = "/api/v1/response-approvals/{approval_id}"
    check(a.get(f"/api/v1/response-approvals/{response['approval_id']}"), "GET", one_response)
    check(r.post(f"/api/v1/response-approvals/{response['approval_id']}/respond",
                 {"decision": "requires_modification", "modifications_required": "Add tests"}, format="json"),
          "POST", one_response + "/respond")
    check(a.get(f"/api/v1/response-approvals/project/{p}"), "GET", "/api/v1/response-approvals/project/{project_id}")
    check(a.post("/api/v1/agent-approvals", {"project_id": "nope"}, format="json"), "POST", "/api/v1/agent-approvals")

    second = check(a.post("/api/v1/tasks", {"project_id": p, "agent_type": "coder", "title": "Usage"}, format="json"),
                   "POST", "/api/v1/tasks")
    used = call(second["task_id"])
    check(r.post(f"/api/v1/agent-approvals/{used['approval_id']}/respond", {"decision": "approve"}, format="json"),
          "POST", one + "/respond")
    check(a.post(f"/api/v1/agent-approvals/{used['approval_id']}/start"), "POST", one + "/start")
    check(a.post(f"/api/v1/agent-approvals/{used['approval_id']}/usage", {"tokens_used": 300}, format="json"),
          "POST", one + "/usage")
    check(a.post(f"/api/v1/tasks/{second['task_id']}/status", {"status": "completed"}, format="json"),
          "POST", "/api/v1/tasks/{task_id}/status")
    check(a.get(f"/api/v1/agent-approvals/project/{p}?status=approved"), "GET",
          "/api/v1/agent-approvals/project/{project_id}")

    # budgets, and a call blocked behind an override
    check(m.patch(f"/api/v1/budgets/{p}", {"daily_cost_limit": "1.0000"}, format="json"), "PATCH",
          "/api/v1/budgets/{project_id}")
    third = check(a.post("/api/v1/tasks", {"project_id": p, "agent_type": "coder", "title": "Costly"}, format="json"),
                  "POST", "/api/v1/tasks")
    blocked = call(third["task_id"], estimated_cost="1.2000")
    assert blocked["budget_override_id"]
    check(r.post(f"/api/v1/agent-approvals/{blocked['approval_id']}/respond", {"decision": "approve"}, format="json"),
          "POST", one + "/respond")  # 409 until the override is approved
    overrides = check(r.get(f"/api/v1/budget-overrides/project/{p}"), "GET",
                      "/api/v1/budget-overrides/project/{project_id}")
    assert overrides
    check(r.post(f"/api/v1/budget-overrides/{blocked['budget_override_id']}/respond", {"decision": "approve"},
                 format="json"), "POST", "/api/v1/budget-overrides/{override_id}/respond")
    check(a.post("/api/v1/budget-overrides", {"project_id": p, "violation_type": "daily_cost_limit",
                                              "requested_amount": "1.0000", "justification": "a bigger day"},
                 format="json"), "POST", "/api/v1/budget-overrides")
    assert ProjectBudget.objects.get(project=project).daily_cost_limit == Decimal("1.0000")
    budget = check(a.get(f"/api/v1/budgets/{p}"), "GET", "/api/v1/budgets/{project_id}")
    assert budget["budget_alerts"]  # the limit is passed: alerts, as the schema describes them
    check(a.get(f"/api/v1/projects/{p}"), "GET", "/api/v1/projects/{project_id}")

    # questions
    asked = check(a.post("/api/v1/hitl", {"project_id": p, "task_id": task["task_id"], "request_type": "question",
                                          "question": "Which database?", "options": ["PostgreSQL", "SQLite"]},
                         format="json"), "POST", "/api/v1/hitl")
    check(a.get(f"/api/v1/hitl/{asked['id']}"), "GET", "/api/v1/hitl/{request_id}")
    check(r.post(f"/api/v1/hitl/{asked['id']}/respond", {"action": "approve", "response": "SQLite"}, format="json"),
          "POST", "/api/v1/hitl/{request_id}/respond")
    check(a.get(f"/api/v1/hitl/project/{p}"), "GET", "/api/v1/hitl/project/{project_id}")
    check(a.post(f"/api/v1/tasks/{third['task_id']}/status", {"status": "failed", "error": "gave up"}, format="json"),
          "POST", "/api/v1/tasks/{task_id}/status")
    check(a.post("/api/v1/hitl", {"project_id": p, "task_id": third["task_id"], "request_type": "question",
                                  "question": "Still there?"}, format="json"), "POST", "/api/v1/hitl")  # 409: ended

    # a stop, its status, its recovery
    stop = check(r.post(f"/api/v1/emergency/stop/{p}", {"reason": "drill"}, format="json"),
                 "POST", "/api/v1/emergency/stop/{project_id}")
    check(a.post("/api/v1/tasks", {"project_id": p, "agent_type": "coder", "title": "refused"}, format="json"),
          "POST", "/api/v1/tasks")  # 423
    check(a.get(f"/api/v1/emergency/status/{p}"), "GET", "/api/v1/emergency/status/{project_id}")
    session = check(m.post(f"/api/v1/emergency/recovery/{p}", {"recovery_type": "manual"}, format="json"),
                    "POST", "/api/v1/emergency/recovery/{project_id}")
    assert session["emergency_stop_id"] == stop["id"] and session["current_step"]["approved_by"] is None
    status = check(a.get(f"/api/v1/emergency/status/{p}"), "GET", "/api/v1/emergency/status/{project_id}")
    assert status["recovery_session"]["id"] == session["id"]
    step_path = "/api/v1/recovery/{session_id}/steps/{step_id}/respond"
    for step in session["recovery_plan"]["steps"]:
        check(r.post(f"/api/v1/recovery/{session['id']}/steps/{step['step_id']}/respond", {"decision": "approve"},
                     format="json"), "POST", step_path)
    done = check(r.get(f"/api/v1/recovery/{session['id']}"), "GET", "/api/v1/recovery/{session_id}")
    assert done["status"] == "completed"
    check(a.get(f"/api/v1/emergency/status/{p}"), "GET", "/api/v1/emergency/status/{project_id}")

    events = check(a.get(f"/api/v1/events?project_id={p}&after=0"), "GET", "/api/v1/events")
    assert {"agent_approval_requested", "emergency_stop_triggered", "budget_alert"} <= {
        e["event_type"] for e in events["results"]}
    check(a.get("/api/v1/events?project_id=nope"), "GET", "/api/v1/events")  # 400
    assert len(contract.checked) >= 50


def test_every_operation_documents_the_busy_databases_503_and_a_suppressions_409(contract):
    """Any request may get 503 unavailable (with Retry-After) while the database is busy, and a
    finding suppressed again with another reason is 409: neither was in the schema."""
    operations = [(path, method, op) for path, item in contract.paths.items() for method, op in item.items()
                  if method in ("get", "post", "patch", "put", "delete")]
    assert operations and [(path, method) for path, method, op in operations if "503" not in op["responses"]] == []
    assert "409" in contract.paths["/api/v1/flag-suppressions"]["post"]["responses"]


def test_the_json_bodies_the_api_takes_as_objects_are_objects_in_the_schema(contract):
    """``input_data``, ``amended_input_data`` and ``agent_response`` must be JSON objects and
    ``next_steps`` a list of strings (400 otherwise); the schema said any value."""
    schemas = contract.defs
    call, decision, response = (schemas["AgentApprovalCreateInputRequest"], schemas["AgentApprovalRespondInputRequest"],
                                schemas["ResponseApprovalCreateInputRequest"])
    assert call["properties"]["input_data"]["type"] == "object"
    assert schemas["TaskCreateInputRequest"]["properties"]["input_data"]["type"] == "object"
    amended = decision["properties"]["amended_input_data"]  # an object, or null (no amendment)
    for value, takes in (({"a": 1}, True), (None, True), ([1], False), ("x", False), (1, False)):
        try:
            jsonschema.validate(value, {**amended, "$defs": schemas})
        except jsonschema.ValidationError:
            assert not takes, value
        else:
            assert takes, value
    assert response["properties"]["agent_response"]["type"] == "object"
    assert response["properties"]["next_steps"] == {"type": "array", "items": {"type": "string"}}


def test_every_field_of_an_answer_is_required_in_the_schema(contract):
    """An answer always carries every field (null when it has none); the schema left a model
    field with a default (``status``, ``timezone``, ...) optional."""
    outputs = {name: schema for name, schema in contract.defs.items() if name.endswith("Output")}
    assert "AgentCallApprovalOutput" in outputs and "ProjectOutput" in outputs
    for name, schema in outputs.items():
        assert sorted(schema.get("required", [])) == sorted(schema["properties"]), name


def test_money_in_the_schema_is_what_the_api_takes_and_gives(contract):
    """A body's money is a decimal string or a JSON integer, never negative where the API refuses
    it (the schema's pattern took "-1", "" and other scripts' digits); an answer's is a string
    with its four places."""
    def accepts(schema, value):
        try:
            jsonschema.validate(value, {**schema, "$defs": contract.defs})
        except jsonschema.ValidationError:
            return False
        return True

    for schema in (contract.defs["AgentApprovalCreateInputRequest"]["properties"]["estimated_cost"],
                   contract.defs["PatchedBudgetLimitsInputRequest"]["properties"]["daily_cost_limit"],
                   contract.defs["BudgetOverrideCreateInputRequest"]["properties"]["requested_amount"]):
        for value in ("0.0125", "12", "12.5", ".5", "7.", 3, 0):
            assert accepts(schema, value), (schema, value)
        for value in ("-1.0000", "-1", -1, "", "1.00001", "abc", "١٢", 0.5, "1 000", 10 ** 12, "1" * 12):
            assert not accepts(schema, value), (schema, value)
    answer = contract.defs["AgentCallApprovalOutput"]["properties"]["estimated_cost"]
    assert accepts(answer, "0.0125") and accepts(answer, "12.0000")
    assert not accepts(answer, "0.01") and not accepts(answer, 1) and not accepts(answer, "")


def test_no_request_body_is_described_by_our_own_implementation_notes(contract):
    """19 request bodies were described in Swagger UI by the docstring of the mixin their
    serializers use ("Input serializers that copy their fields ... about 35 µs a field")."""
    described = {name: schema.get("description", "") for name, schema in contract.defs.items()}
    leaked = [name for name, text in described.items() if "serializers that" in text or "µs" in text]
    assert not leaked, leaked
