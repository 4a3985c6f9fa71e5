"""/api/v1/hitl as API.md specifies it, with the API's error shapes."""
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from emergency.services import emergency_stop_trigger
from hitl.models import HitlRequest

pytestmark = pytest.mark.django_db

FIELDS = {"id", "project_id", "task_id", "request_type", "question", "options", "context", "status", "response",
          "amended_content", "responded_by", "created_at", "responded_at", "expires_at", "history"}


@pytest.fixture
def body(project, task):
    def make(**overrides):
        data = {"project_id": str(project.pk), "task_id": str(task.pk), "request_type": "question",
                "question": "Which database should we use?", "options": ["PostgreSQL", "SQLite"],
                "context": {"load": "small"}, "timeout_minutes": 10}
        data.update(overrides)
        return data

    return make


@pytest.fixture
def asked(agent_client, body):
    r = agent_client.post("/api/v1/hitl", body(), format="json")
    assert r.status_code == 201, r.content
    return r.json()


def test_create_answers_201_with_the_fields_of_api_md(asked, project, task):
    assert FIELDS <= set(asked)
    assert asked["status"] == "pending" and asked["project_id"] == str(project.pk)
    assert asked["task_id"] == str(task.pk) and asked["options"] == ["PostgreSQL", "SQLite"]
    assert asked["context"] == {"load": "small"} and asked["response"] == "" and asked["amended_content"] is None
    assert asked["responded_by"] is None and asked["responded_at"] is None
    assert [(h["status"], h["by"]) for h in asked["history"]] == [("pending", "agent")]
    assert asked["history"][0]["at"].endswith("Z") and asked["created_at"].endswith("Z")  # ISO-8601 UTC, one way


def test_a_checkpoint_needs_no_task_or_options(agent_client, project):
    r = agent_client.post("/api/v1/hitl", {"project_id": str(project.pk), "request_type": "checkpoint",
                                           "question": "The plan is ready, go on?"}, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["task_id"] is None and r.json()["options"] == [] and r.json()["context"] is None


@pytest.mark.parametrize("overrides, field", [
    ({"request_type": "poll"}, "request_type"),
    ({"question": ""}, "question"),
    ({"question": 3}, "question"),
    ({"options": ["a", "a"]}, "options"),
    ({"options": ["a", ""]}, "options"),
    # options a person cannot tell apart (found with look-alike text): an invisible one, one
    # differing only in a zero-width space, and é written two ways
    ({"options": ["yes", "\u200b"]}, "options"),
    ({"options": ["yes", "yes\u200b"]}, "options"),
    ({"options": ["\u00e9", "e\u0301"]}, "options"),
    ({"options": ["ok", "\u2800"]}, "options"),
    ({"options": ["yes", "yes\ufe0f"]}, "options"),  # a variation selector: nothing to see either
    ({"question": "\u200b"}, "question"),
    ({"options": [f"o{i}" for i in range(21)]}, "options"),
    ({"options": "a"}, "options"),
    ({"timeout_minutes": 0}, "timeout_minutes"),
    ({"project_id": "nope"}, "project_id"),
    ({"options": [1, {"a": 2}]}, "options"),
])
def test_create_refuses_bad_input_with_400(agent_client, body, overrides, field):
    r = agent_client.post("/api/v1/hitl", body(**overrides), format="json")
    assert r.status_code == 400, r.content
    assert r.json()["error"] == "invalid" and field in r.json()["fields"]
    fields = r.json()["fields"]  # API.md: each bad field maps to its messages, a list of strings
    assert all(isinstance(m, list) and m and all(isinstance(t, str) for t in m) for m in fields.values()), fields
    assert not HitlRequest.objects.exists()


def test_bad_items_of_a_list_are_named_in_the_fields_messages(agent_client, body):
    r = agent_client.post("/api/v1/hitl", body(options=["ok", 1, {"a": 2}]), format="json")
    assert r.status_code == 400, r.content
    assert r.json()["fields"] == {"options": ["Item 1: Must be a string.", "Item 2: Must be a string."]}


def test_create_refuses_a_task_of_another_project(agent_client, body, other_project, admin_user):
    from projects.services import task_create

    foreign = task_create(actor=admin_user, project_id=other_project.pk, agent_type="coder", title="x")
    r = agent_client.post("/api/v1/hitl", body(task_id=str(foreign.pk)), format="json")
    assert r.status_code == 400 and "task_id" in r.json()["fields"]


def test_create_is_403_for_a_reviewer_404_for_an_outsider_401_without_a_key(client_for, reviewer, outsider, body):
    assert client_for(reviewer).post("/api/v1/hitl", body(), format="json").status_code == 403
    r = client_for(outsider).post("/api/v1/hitl", body(), format="json")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = APIClient().post("/api/v1/hitl", body(), format="json")
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"


def test_create_is_423_while_stopped(agent_client, body, project, manager):
    stop, _ = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="t", actor=manager)
    r = agent_client.post("/api/v1/hitl", body(), format="json")
    assert r.status_code == 423 and r.json()["error"] == "emergency_stop"
    assert r.json()["emergency_stop_id"] == str(stop.pk)


def test_create_is_idempotent_with_an_idempotency_key(agent_client, body):
    first = agent_client.post("/api/v1/hitl", body(), format="json", HTTP_IDEMPOTENCY_KEY="ask-1")
    again = agent_client.post("/api/v1/hitl", body(), format="json", HTTP_IDEMPOTENCY_KEY="ask-1")
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert HitlRequest.objects.count() == 1
    other = agent_client.post("/api/v1/hitl", body(question="Other?"), format="json", HTTP_IDEMPOTENCY_KEY="ask-1")
    assert other.status_code == 400 and HitlRequest.objects.count() == 1


def test_detail_and_project_list(asked, agent_client, reviewer_client, client_for, outsider, project, body):
    r = reviewer_client.get(f"/api/v1/hitl/{asked['id']}")
    assert r.status_code == 200 and r.json()["id"] == asked["id"]
    agent_client.post("/api/v1/hitl", body(question="Second?"), format="json")
    HitlRequest.objects.filter(pk=asked["id"]).update(status="cancelled")  # a filter needs two statuses
    page = agent_client.get(f"/api/v1/hitl/project/{project.pk}").json()
    assert page["count"] == 2 and [r["question"] for r in page["results"]] == ["Second?", asked["question"]]
    page = agent_client.get(f"/api/v1/hitl/project/{project.pk}?status=pending&page_size=1").json()
    assert page["count"] == 1 and page["results"][0]["question"] == "Second?"
    assert agent_client.get(f"/api/v1/hitl/project/{project.pk}?status=maybe").status_code == 400
    outsider_client = client_for(outsider)
    assert outsider_client.get(f"/api/v1/hitl/{asked['id']}").status_code == 404
    assert outsider_client.get(f"/api/v1/hitl/project/{project.pk}").status_code == 404
    assert agent_client.get("/api/v1/hitl/not-a-uuid").status_code == 404


def test_respond_approve_with_one_of_the_options(asked, reviewer_client):
    url = f"/api/v1/hitl/{asked['id']}/respond"
    r = reviewer_client.post(url, {"action": "approve", "response": "MySQL"}, format="json")
    assert r.status_code == 400 and "response" in r.json()["fields"]
    r = reviewer_client.post(url, {"action": "approve", "response": "PostgreSQL"}, format="json")
    assert r.status_code == 200, r.content
    data = r.json()
    assert data["status"] == "approved" and data["response"] == "PostgreSQL" and data["responded_by"] == "reviewer"
    assert [h["status"] for h in data["history"]] == ["pending", "approved"]


def test_respond_amend_and_reject(agent_client, reviewer_client, body):
    amend = agent_client.post("/api/v1/hitl", body(options=None), format="json").json()
    url = f"/api/v1/hitl/{amend['id']}/respond"
    r = reviewer_client.post(url, {"action": "amend"}, format="json")
    assert r.status_code == 400 and "amended_content" in r.json()["fields"]
    for empty in ({}, [], "  "):
        r = reviewer_client.post(url, {"action": "amend", "amended_content": empty}, format="json")
        assert r.status_code == 400 and "amended_content" in r.json()["fields"], empty
    r = reviewer_client.post(url, {"action": "amend", "amended_content": {"database": "PostgreSQL 16"},
                                   "response": "pin the version"}, format="json")
    assert r.status_code == 200 and r.json()["status"] == "amended"
    assert r.json()["amended_content"] == {"database": "PostgreSQL 16"}
    reject = agent_client.post("/api/v1/hitl", body(), format="json").json()
    r = reviewer_client.post(f"/api/v1/hitl/{reject['id']}/respond", {"action": "reject", "response": "not now"},
                             format="json")
    assert r.status_code == 200 and r.json()["status"] == "rejected" and r.json()["response"] == "not now"
    r = reviewer_client.post(f"/api/v1/hitl/{reject['id']}/respond", {"action": "maybe"}, format="json")
    assert r.status_code == 400


def test_respond_409_for_a_second_decision(asked, reviewer_client, client_for, manager):
    url = f"/api/v1/hitl/{asked['id']}/respond"
    assert reviewer_client.post(url, {"action": "reject"}, format="json").status_code == 200
    r = client_for(manager).post(url, {"action": "approve", "response": "SQLite"}, format="json")
    assert r.status_code == 409 and r.json() == {**r.json(), "error": "conflict", "status": "rejected",
                                                 "decided_by": "reviewer"}
    assert "already rejected (by reviewer at " in r.json()["detail"] and r.json()["decided_at"].endswith("Z")


def test_respond_410_after_expiry(asked, reviewer_client):
    HitlRequest.objects.filter(pk=asked["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    r = reviewer_client.post(f"/api/v1/hitl/{asked['id']}/respond", {"action": "approve", "response": "SQLite"},
                             format="json")
    assert r.status_code == 410 and r.json()["error"] == "expired"
    assert reviewer_client.get(f"/api/v1/hitl/{asked['id']}").json()["status"] == "timed_out"


def test_respond_403_for_the_asker_and_an_agent_role_404_for_an_outsider(asked, agent_client, client_for,
                                                                         make_user, project, outsider):
    url = f"/api/v1/hitl/{asked['id']}/respond"
    answer = {"action": "approve", "response": "SQLite"}
    r = agent_client.post(url, answer, format="json")
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    other_agent = client_for(make_user("agent2", role="agent", project=project))
    assert other_agent.post(url, answer, format="json").status_code == 403
    assert client_for(outsider).post(url, answer, format="json").status_code == 404
    assert HitlRequest.objects.get(pk=asked["id"]).status == "pending"


def test_respond_423_while_stopped(asked, reviewer_client, project, manager):
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="t", actor=manager)
    r = reviewer_client.post(f"/api/v1/hitl/{asked['id']}/respond", {"action": "reject"}, format="json")
    assert r.status_code == 423
    assert reviewer_client.get(f"/api/v1/hitl/{asked['id']}").json()["status"] == "cancelled"


def test_cancel_by_the_asker_only(asked, agent_client, reviewer_client):
    url = f"/api/v1/hitl/{asked['id']}/cancel"
    assert reviewer_client.post(url, {}, format="json").status_code == 403
    r = agent_client.post(url, {"reason": "solved it myself"}, format="json")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert agent_client.post(url, {}, format="json").status_code == 200  # again: unchanged
    r = reviewer_client.post(f"/api/v1/hitl/{asked['id']}/respond", {"action": "reject"}, format="json")
    assert r.status_code == 409


def test_the_schema_lists_the_endpoints():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    for path in ("/api/v1/hitl", "/api/v1/hitl/{request_id}", "/api/v1/hitl/{request_id}/respond",
                 "/api/v1/hitl/{request_id}/cancel", "/api/v1/hitl/project/{project_id}",
                 "/api/v1/hitl/{request_id}/wait"):  # named as the other /hitl paths (it was approval_id)
        assert path in schema["paths"], path


def test_nothing_is_asked_about_an_ended_task(agent_client, body, task):
    r = agent_client.post(f"/api/v1/tasks/{task.pk}/status", {"status": "completed"}, format="json")
    assert r.status_code == 200, r.content
    r = agent_client.post("/api/v1/hitl", body(), format="json")
    assert r.status_code == 409, r.content
    assert r.json()["error"] == "conflict" and r.json()["status"] == "completed"
    assert not HitlRequest.objects.exists()


GITHUB_TOKEN = "ghp_" + "Zq8Lm2Xv9Rt4Wb7Nc1Kd5Hf3Jg6Ps0Ya2Ue8"   # made up: the right shape, never a real key
AWS_KEY = "AKIA" + "Q3EGRT5YH7KDW2PX"


def test_events_mask_keys_written_in_a_question_its_options_and_its_answer(agent_client, reviewer_client, body,
                                                                           project):
    """Every role of the project reads its events, agents too: a live key pasted into a question,
    an option or an answer went out whole in hitl_requested / hitl_decided (the call and output
    events mask theirs). The request itself keeps what was written, for the person answering."""
    from events.models import Event

    options = [f"use {GITHUB_TOKEN}", "ask again"]
    r = agent_client.post("/api/v1/hitl", body(question=f"Deploy with {AWS_KEY}?", options=options), format="json")
    assert r.status_code == 201 and r.json()["options"] == options
    answered = reviewer_client.post(f"/api/v1/hitl/{r.json()['id']}/respond",
                                    {"action": "approve", "response": options[0]}, format="json")
    assert answered.status_code == 200, answered.content
    events = list(Event.objects.filter(project_id=project.pk, event_type__in=["hitl_requested", "hitl_decided"]))
    assert [e.event_type for e in events] == ["hitl_requested", "hitl_decided"]
    feed = agent_client.get(f"/api/v1/events?project_id={project.pk}&after=0").content.decode()
    for text in (str([e.data for e in events]), feed):
        assert GITHUB_TOKEN not in text and AWS_KEY not in text and "ghp_…" in text
    assert events[0].data["options"][1] == "ask again" and events[0].data["question"].startswith("Deploy with")
