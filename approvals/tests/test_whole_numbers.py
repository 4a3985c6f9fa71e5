"""A count in a JSON body is a JSON integer: "12", 12.0, true and other scripts' digits are 400
naming the field and change nothing (DRF's IntegerField took them all: a client sending its
token count as text or as a float passed unseen, and a budget limit of "١٠٠" was 100)."""
import pytest

from approvals.models import AgentCallApproval, ResponseApproval
from budgets.models import UsageEntry
from hitl.models import HitlRequest

pytestmark = pytest.mark.django_db

NOT_INTEGERS = ["12", 12.0, 12.5, True, "١٢", "1_2", " 12", None, [12], {"n": 12}]


def refused(response, field):
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "invalid" and list(body["fields"]) == [field], body
    return body["fields"][field][0]


@pytest.mark.parametrize("value", NOT_INTEGERS, ids=repr)
@pytest.mark.parametrize("field", ["estimated_tokens", "timeout_minutes"])
def test_a_call_request_takes_whole_numbers_only(agent_client, request_body, field, value):
    message = refused(agent_client.post("/api/v1/agent-approvals", request_body(**{field: value}), format="json"),
                      field)
    assert AgentCallApproval.objects.count() == 0
    if value is not None:
        assert "whole number" in message
    assert agent_client.post("/api/v1/agent-approvals", request_body(**{field: 12}), format="json").status_code == 201


@pytest.mark.parametrize("value", ["900", 900.0, "٩٠٠"], ids=repr)
def test_usage_and_a_response_take_whole_token_counts(agent_client, reviewer_client, requested, task, project,
                                                      value):
    approval_id = requested["approval_id"]
    assert reviewer_client.post(f"/api/v1/agent-approvals/{approval_id}/respond", {"decision": "approve"},
                                format="json").status_code == 200
    assert agent_client.post(f"/api/v1/agent-approvals/{approval_id}/start").status_code == 200
    refused(agent_client.post(f"/api/v1/agent-approvals/{approval_id}/usage", {"tokens_used": value},
                              format="json"), "tokens_used")
    assert UsageEntry.objects.exclude(kind="reserve").count() == 0
    body = {"project_id": str(project.pk), "task_id": str(task.pk), "agent_type": "coder",
            "original_call_approval_id": approval_id, "agent_response": {"text": "done"}, "response_summary": "done",
            "next_steps": ["none"], "tokens_used": value}
    refused(agent_client.post("/api/v1/response-approvals", body, format="json"), "tokens_used")
    refused(agent_client.post("/api/v1/response-approvals", {**body, "tokens_used": 900, "timeout_minutes": value},
                              format="json"), "timeout_minutes")
    assert ResponseApproval.objects.count() == 0
    r = agent_client.post("/api/v1/response-approvals", {**body, "tokens_used": 900}, format="json")
    assert r.status_code == 201, r.content


@pytest.mark.parametrize("field", ["daily_token_limit", "monthly_token_limit", "warning_percent"])
def test_budget_limits_take_whole_numbers_only(project, manager, client_for, field):
    client = client_for(manager)
    before = client.get(f"/api/v1/budgets/{project.pk}").json()
    for value in ("100", 100.0, "١٠٠", True):
        refused(client.patch(f"/api/v1/budgets/{project.pk}", {field: value}, format="json"), field)
    assert client.get(f"/api/v1/budgets/{project.pk}").json() == before
    r = client.patch(f"/api/v1/budgets/{project.pk}", {field: 90 if field == "warning_percent" else 10**6},
                     format="json")
    assert r.status_code == 200, r.content


def test_a_question_takes_a_whole_number_of_minutes(agent_client, project):
    body = {"project_id": str(project.pk), "request_type": "question", "question": "Ship it?"}
    for value in ("30", 30.0, "٣٠"):
        refused(agent_client.post("/api/v1/hitl", {**body, "timeout_minutes": value}, format="json"),
                "timeout_minutes")
    assert HitlRequest.objects.count() == 0
    assert agent_client.post("/api/v1/hitl", {**body, "timeout_minutes": 30}, format="json").status_code == 201


@pytest.mark.parametrize("query", ["after=1_0", "after=%D9%A1", "after=1e1", "after=+1", "after=%201",
                                   "limit=1.0", "limit=%D9%A1"])
def test_the_event_feed_reads_ascii_digits(agent_client, project, query):
    refused(agent_client.get(f"/api/v1/events?project_id={project.pk}&{query}"), query.split("=")[0])
    assert agent_client.get(f"/api/v1/events?project_id={project.pk}&after=0&limit=5").status_code == 200
