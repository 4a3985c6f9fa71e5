import threading
import uuid
from datetime import timedelta
from datetime import timezone as dt_timezone
from decimal import ROUND_UP, Decimal

import pytest
from django.db import connections
from django.utils import timezone

from approvals.estimation import count_tokens, prompt_text
from approvals.models import AgentCallApproval
from approvals.services import (
    agent_approval_decide,
    agent_approval_expire_overdue,
    agent_approval_warn_due,
)
from audit.models import AuditEvent
from events.models import Event
from projects.models import AgentState, Project
from projects.services import task_create

pytestmark = pytest.mark.django_db


def respond(client, approval_id, **body):
    return client.post(f"/api/v1/agent-approvals/{approval_id}/respond", body, format="json")


def test_request_estimates_assesses_and_waits_for_a_person(requested, task, project):
    assert requested["status"] == "pending"
    assert requested["estimated_tokens"] > 1000  # prompt tokens + the model's default output
    assert Decimal(requested["estimated_cost"]) > 0 and len(requested["estimated_cost"].split(".")[1]) == 4
    assert requested["risk_assessment"]["level"] in {"low", "medium", "high", "critical"}
    assert requested["approved_by"] is None and requested["budget_override_id"] is None
    expires = timezone.datetime.fromisoformat(requested["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=29) < expires - timezone.now() <= timedelta(minutes=30)
    task.refresh_from_db()
    assert task.status == "waiting_for_hitl"
    assert AgentState.objects.get(project=project, agent_type="coder").status == "waiting_for_hitl"
    event = Event.objects.get(event_type="agent_approval_requested")
    assert event.data["approval_id"] == requested["approval_id"] and event.task_id == task.pk
    assert AuditEvent.objects.filter(action="agent_approval.request", object_id=requested["approval_id"]).exists()


def test_full_lifecycle_approve_start_once(requested, agent_client, reviewer_client, task, project,
                                          django_capture_on_commit_callbacks):
    approval_id = requested["approval_id"]
    r = respond(reviewer_client, approval_id, decision="approve")
    assert r.status_code == 200 and r.json()["status"] == "approved" and r.json()["approved_by"] == "reviewer"
    assert r.json()["responded_at"]
    task.refresh_from_db()
    assert task.status == "pending"
    with django_capture_on_commit_callbacks(execute=True):  # the agent state is refreshed after the commit
        first = agent_client.post(f"/api/v1/agent-approvals/{approval_id}/start")
    assert first.status_code == 200
    assert first.json()["input_to_run"] == {"files": ["login.tsx"]} and first.json()["started_at"]
    task.refresh_from_db()
    assert task.status == "running"
    assert AgentState.objects.get(project=project, agent_type="coder").status == "working"
    second = agent_client.post(f"/api/v1/agent-approvals/{approval_id}/start")
    assert second.status_code == 409 and second.json()["status"] == "approved"
    assert AuditEvent.objects.filter(action="agent_approval.start").count() == 1
    decided = Event.objects.get(event_type="agent_approval_decided")
    assert decided.data["status"] == "approved" and decided.data["approved_by"] == "reviewer"


def test_amended_input_is_what_start_returns(requested, agent_client, reviewer_client):
    approval_id = requested["approval_id"]
    r = respond(reviewer_client, approval_id, decision="approve", amended_input_data={"files": ["safe.tsx"]},
                reason="only the safe file")
    assert r.status_code == 200 and r.json()["amended_input_data"] == {"files": ["safe.tsx"]}
    assert r.json()["input_digest"]
    started = agent_client.post(f"/api/v1/agent-approvals/{approval_id}/start").json()
    assert started["input_to_run"] == {"files": ["safe.tsx"]} and started["input_data"] == {"files": ["login.tsx"]}


def test_an_amendment_of_null_is_no_amendment(requested, agent_client, reviewer_client):
    """The API writes `amended_input_data: null` for a call approved as asked; a client that sent the
    same null back with its decision got 400 "This field may not be null." and had to leave the field out."""
    approval_id = requested["approval_id"]
    r = respond(reviewer_client, approval_id, decision="approve", amended_input_data=None)
    assert r.status_code == 200, r.json()
    assert r.json()["status"] == "approved" and r.json()["amended_input_data"] is None
    started = agent_client.post(f"/api/v1/agent-approvals/{approval_id}/start").json()
    assert started["input_to_run"] == {"files": ["login.tsx"]}


def test_an_amendment_with_numbers_jsonb_reads_back_otherwise_starts(requested, agent_client, reviewer_client):
    """Found on PostgreSQL: an amendment holding 1e23, 1e16 or -0.0 was approved (200) and then every
    start was 409 "The input changed after it was approved": its digest was taken of the numbers as
    sent, and jsonb gives them back as 100000000000000000000000, 10000000000000000 and 0."""
    approval_id = requested["approval_id"]
    amended = {"n": 1e23, "z": -0.0, "deep": {"list": [1e16, 2.5e16, 0.5]}}
    r = respond(reviewer_client, approval_id, decision="approve", amended_input_data=amended, reason="scaled")
    assert r.status_code == 200, r.json()
    started = agent_client.post(f"/api/v1/agent-approvals/{approval_id}/start")
    assert started.status_code == 200, started.json()
    assert started.json()["input_to_run"]["deep"]["list"][2] == 0.5


def test_the_trail_says_what_input_a_person_approved_and_what_it_reserves(requested, agent_client, reviewer_client,
                                                                         request_body):
    """Found by two reviewers and an auditor: the approve_amended row held only the status, the
    approver and the budget state: not the amendment, not the digest of the input allowed to run,
    not the larger reservation the amendment took. An input swapped in the database (with its digest
    recomputed) then started, and the signed trail could not tell."""
    from approvals.services import input_digest

    approval_id = requested["approval_id"]
    asked = AgentCallApproval.objects.get(pk=approval_id)
    amended = {"files": ["safe.tsx"], "max_tokens": 50000}
    assert respond(reviewer_client, approval_id, decision="approve", amended_input_data=amended,
                   reason="only the safe file").status_code == 200
    row = AuditEvent.objects.get(action="agent_approval.approve_amended", object_id=str(approval_id))
    call = AgentCallApproval.objects.get(pk=approval_id)
    assert row.after["amended_input_data"] == amended and row.after["input_digest"] == input_digest(amended)
    assert row.before["input_digest"] == "" and row.before["estimated_tokens"] == asked.estimated_tokens
    assert row.after["estimated_tokens"] == call.estimated_tokens > asked.estimated_tokens  # the reservation grew
    big = {"blob": "x" * 20000}
    other = agent_client.post("/api/v1/agent-approvals", request_body(), format="json")
    assert other.status_code == 201, other.json()
    assert respond(reviewer_client, other.json()["approval_id"], decision="approve", amended_input_data=big,
                   reason="bigger").status_code == 200
    row = AuditEvent.objects.get(action="agent_approval.approve_amended", object_id=other.json()["approval_id"])
    assert row.after["amended_input_data"] == "(20,011 bytes: see input_digest)"
    assert row.after["input_digest"] == input_digest(big)


def test_a_digest_taken_under_the_rule_before_still_starts(requested, agent_client, reviewer_client):
    """A call approved before the upgrade, with a whole float in its input (its digest of "2.0"),
    still starts after it."""
    import hashlib
    import json

    approval_id = requested["approval_id"]
    assert respond(reviewer_client, approval_id, decision="approve", amended_input_data={"replicas": 2.0},
                   reason="two").status_code == 200
    before = hashlib.sha256(json.dumps({"replicas": 2.0}, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    AgentCallApproval.objects.filter(pk=approval_id).update(input_digest=before)
    assert agent_client.post(f"/api/v1/agent-approvals/{approval_id}/start").status_code == 200


def test_reject_needs_a_reason(requested, reviewer_client, agent_client, task):
    approval_id = requested["approval_id"]
    r = respond(reviewer_client, approval_id, decision="reject")
    assert r.status_code == 400 and "reason" in r.json()["fields"]
    for invisible in ("\u200b", "\ufeff", "\u2800", " \u200b\u200d ", "\ufe0f", "\U000e0100"):  # passed strip(): a reason nobody can read
        r = respond(reviewer_client, approval_id, decision="reject", reason=invisible)
        assert r.status_code == 400 and "reason" in r.json()["fields"], (invisible, r.json())
    assert AgentCallApproval.objects.get(pk=approval_id).status == "pending"
    r = respond(reviewer_client, approval_id, decision="reject", reason="Too broad")
    assert r.status_code == 200 and r.json()["status"] == "rejected" and r.json()["rejection_reason"] == "Too broad"
    task.refresh_from_db()
    assert task.status == "pending"
    assert agent_client.post(f"/api/v1/agent-approvals/{approval_id}/start").status_code == 409


def test_second_decision_is_409_with_the_status(requested, reviewer_client, manager, client_for):
    approval_id = requested["approval_id"]
    assert respond(reviewer_client, approval_id, decision="approve").status_code == 200
    r = respond(client_for(manager), approval_id, decision="reject", reason="no")
    decided = AgentCallApproval.objects.get(pk=approval_id)
    # who decided first, and when: in the text and as fields
    assert r.status_code == 409 and r.json() == {
        "error": "conflict", "status": "approved", "decided_by": "reviewer",
        "decided_at": decided.responded_at.astimezone(dt_timezone.utc).isoformat().replace("+00:00", "Z"),
        "detail": f"The approval is already approved (by reviewer at "
                  f"{decided.responded_at.astimezone(dt_timezone.utc):%Y-%m-%d %H:%M:%S} UTC)."}
    assert decided.status == "approved"
    # cancelled since (a stop): the system ended it, not its approver
    AgentCallApproval.objects.filter(pk=approval_id).update(status="cancelled")
    r = respond(client_for(manager), approval_id, decision="reject", reason="no")
    assert r.status_code == 409 and r.json() == {"error": "conflict", "status": "cancelled", "decided_by": None,
                                                 "decided_at": None, "detail": "The approval is already cancelled."}


def test_the_requester_cannot_decide_its_own_request(project, task, make_user, client_for, request_body):
    both = make_user("both", role="agent", project=project)
    from access.services import role_grant

    role_grant(user=both, project=project, role="reviewer")
    client = client_for(both)
    approval = client.post("/api/v1/agent-approvals", request_body(), format="json").json()
    r = respond(client, approval["approval_id"], decision="approve")
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert AgentCallApproval.objects.get(pk=approval["approval_id"]).status == "pending"


def test_an_agent_cannot_decide_and_an_outsider_gets_404(requested, agent, make_user, project, client_for,
                                                          outsider):
    other_agent = make_user("agent2", role="agent", project=project)
    r = respond(client_for(other_agent), requested["approval_id"], decision="approve")
    assert r.status_code == 403
    for path in ["", "/respond", "/start", "/cancel"]:
        method = "get" if path == "" else "post"
        r = getattr(client_for(outsider), method)(f"/api/v1/agent-approvals/{requested['approval_id']}{path}",
                                                   {"decision": "approve"}, format="json")
        assert r.status_code == 404, path
    assert AgentCallApproval.objects.get(pk=requested["approval_id"]).status == "pending"


def test_only_the_requester_starts_or_cancels(requested, reviewer_client, make_user, project, client_for):
    respond(reviewer_client, requested["approval_id"], decision="approve")
    other_agent = client_for(make_user("agent2", role="agent", project=project))
    assert other_agent.post(f"/api/v1/agent-approvals/{requested['approval_id']}/start").status_code == 403
    assert other_agent.post(f"/api/v1/agent-approvals/{requested['approval_id']}/cancel").status_code == 403


def test_cancel_by_the_requesting_agent(requested, agent_client, reviewer_client, task):
    approval_id = requested["approval_id"]
    r = agent_client.post(f"/api/v1/agent-approvals/{approval_id}/cancel", {"reason": "not needed"}, format="json")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["rejection_reason"] == "not needed"  # the agent's reason, in the call and its event
    [event] = Event.objects.filter(event_type="agent_approval_decided", data__approval_id=approval_id)
    assert event.data["rejection_reason"] == "not needed" and event.data["status"] == "cancelled"
    assert agent_client.post(f"/api/v1/agent-approvals/{approval_id}/cancel").status_code == 200  # replay
    assert respond(reviewer_client, approval_id, decision="approve").status_code == 409
    task.refresh_from_db()
    assert task.status == "pending"


def test_one_pending_approval_per_task(requested, agent_client, request_body):
    r = agent_client.post("/api/v1/agent-approvals", request_body(), format="json")
    assert r.status_code == 409 and r.json()["approval_id"] == requested["approval_id"]


def test_crashed_agent_looks_its_approval_up_and_resumes(requested, agent_client, reviewer_client):
    approval_id = requested["approval_id"]
    assert agent_client.get(f"/api/v1/agent-approvals/{approval_id}").json()["status"] == "pending"
    respond(reviewer_client, approval_id, decision="approve")
    again = agent_client.get(f"/api/v1/agent-approvals/{approval_id}").json()
    assert again["status"] == "approved" and again["started_at"] is None  # resume: start it
    assert agent_client.post(f"/api/v1/agent-approvals/{approval_id}/start").status_code == 200
    assert agent_client.get(f"/api/v1/agent-approvals/{approval_id}").json()["started_at"]  # resume: do not rerun


def test_unknown_model_is_400_and_changes_nothing(agent_client, request_body, task):
    r = agent_client.post("/api/v1/agent-approvals", request_body(model="gpt-99"), format="json")
    assert r.status_code == 400 and "model" in r.json()["fields"]
    r = agent_client.post("/api/v1/agent-approvals", request_body(model="gpt-99", estimated_cost="1.0000"),
                          format="json")
    assert r.status_code == 400 and "model" in r.json()["fields"]
    assert not AgentCallApproval.objects.exists()
    task.refresh_from_db()
    assert task.status == "pending"


@pytest.mark.parametrize("absent", [{}, {"model": ""}])
def test_without_model_or_cost_the_server_estimates_both(agent_client, request_body, project, agent, absent,
                                                          settings):
    """API.md: model and estimated_cost are optional, the server estimates them. Priced with
    HITL_FLOOR_PRICE_MODEL (gpt-4o, dearer than gpt-4o-mini), and reserved."""
    settings.HITL_OUTPUT_TOKEN_ALLOWANCE = 1000  # as gpt-4o-mini's default output
    body = request_body()
    del body["model"]
    body.update(absent)
    r = agent_client.post("/api/v1/agent-approvals", body, format="json")
    assert r.status_code == 201, r.content
    created = r.json()
    assert created["estimated_tokens"] > settings.HITL_OUTPUT_TOKEN_ALLOWANCE
    other = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="other")
    mini = agent_client.post("/api/v1/agent-approvals", request_body(task_id=str(other.pk)), format="json").json()
    assert created["estimated_tokens"] == mini["estimated_tokens"]
    assert Decimal(created["estimated_cost"]) > Decimal(mini["estimated_cost"]) > 0
    budget = agent_client.get(f"/api/v1/budgets/{project.pk}").json()
    assert Decimal(budget["cost_reserved"]) == Decimal(created["estimated_cost"]) + Decimal(mini["estimated_cost"])


def test_agent_figures_are_kept(agent_client, request_body):
    r = agent_client.post("/api/v1/agent-approvals",
                          request_body(model="", estimated_tokens=1234, estimated_cost="0.5000"), format="json")
    assert r.status_code == 201
    assert r.json()["estimated_tokens"] == 1234 and r.json()["estimated_cost"] == "0.5000"


def test_cost_comes_from_the_price_table(agent_client, request_body):
    from approvals.models import ModelPrice

    ModelPrice.objects.filter(model="gpt-4o-mini").update(input_per_million="1000000.0000",
                                                          output_per_million="0.0000")
    from approvals.estimation import count_tokens, prompt_text

    body = request_body(estimated_tokens=5000)
    r = agent_client.post("/api/v1/agent-approvals", body, format="json")
    # Input tokens cost exactly $1 each and output is free: the cost is the prompt's token count.
    prompt_tokens = count_tokens(prompt_text(proposed_action=body["proposed_action"], input_data=body["input_data"],
                                             context_summary=body["context_summary"]))
    assert 5 < prompt_tokens < 500
    assert r.json()["estimated_tokens"] == 5000 and r.json()["estimated_cost"] == f"{prompt_tokens}.0000"


def test_an_agents_token_estimate_without_a_cost_is_priced_and_held_to_the_budget(agent_client, request_body, project,
                                                                                   task, agent):
    """A call of a million tokens (the agent's own ``estimated_tokens``, no ``estimated_cost``)
    reserved the cost of the server's small count, a cent: admitted under a limit of 1.0000, it
    then spent ten dollars. Its cost is now that of the tokens it reserves, held to the limit as
    the same call asking for them as ``max_tokens`` is."""
    from approvals.models import ModelPrice
    from budgets.models import ProjectBudget

    price = ModelPrice.objects.get(model="gpt-4o")
    ProjectBudget.objects.filter(project=project).update(daily_cost_limit=Decimal("1000.0000"),
                                                         monthly_cost_limit=Decimal("10000.0000"))
    body = request_body(model="gpt-4o", estimated_tokens=1_000_000)
    created = agent_client.post("/api/v1/agent-approvals", body, format="json").json()
    prompt = count_tokens(prompt_text(proposed_action=body["proposed_action"], input_data=body["input_data"],
                                      context_summary=body["context_summary"]))
    expected = (prompt * price.input_per_million + (1_000_000 - prompt) * price.output_per_million) / 1_000_000
    assert created["estimated_tokens"] == 1_000_000
    assert Decimal(created["estimated_cost"]) == expected.quantize(Decimal("0.0001"), rounding=ROUND_UP) > 5
    assert agent_client.post(f"/api/v1/agent-approvals/{created['approval_id']}/cancel").status_code == 200
    # against a limit of 1.0000 the same call is refused before it runs (past 1.5 x the limit: a stop)
    ProjectBudget.objects.filter(project=project).update(daily_cost_limit=Decimal("1.0000"))
    other = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="other")
    refused = agent_client.post("/api/v1/agent-approvals", request_body(model="gpt-4o", estimated_tokens=1_000_000,
                                                                        task_id=str(other.pk)), format="json")
    assert refused.status_code == 423 and "1.5 x the limit" in refused.json()["detail"], refused.content
    assert AgentCallApproval.objects.get(task=other).status == "cancelled"  # on record, cancelled by the stop
    assert Decimal(agent_client.get(f"/api/v1/budgets/{project.pk}").json()["cost_reserved"]) == 0


def test_an_agents_token_estimate_with_a_tiny_cost_is_still_priced(agent_client, request_body, project, task):
    """A million tokens with the agent's own ``estimated_cost`` of a cent reserved that cent:
    admitted under a limit of 1.0000, the call could then spend ten dollars. The reservation is
    the larger of the agent's cost and that of the tokens it reserves; a larger cost stays."""
    from approvals.models import ModelPrice
    from budgets.models import ProjectBudget

    price = ModelPrice.objects.get(model="gpt-4o")
    ProjectBudget.objects.filter(project=project).update(daily_cost_limit=Decimal("1000.0000"),
                                                         monthly_cost_limit=Decimal("10000.0000"))
    body = request_body(model="gpt-4o", estimated_tokens=1_000_000, estimated_cost="0.0100")
    created = agent_client.post("/api/v1/agent-approvals", body, format="json")
    assert created.status_code == 201, created.content
    prompt = count_tokens(prompt_text(proposed_action=body["proposed_action"], input_data=body["input_data"],
                                      context_summary=body["context_summary"]))
    expected = (prompt * price.input_per_million + (1_000_000 - prompt) * price.output_per_million) / 1_000_000
    assert Decimal(created.json()["estimated_cost"]) == expected.quantize(Decimal("0.0001"), rounding=ROUND_UP) > 5
    assert agent_client.post(f"/api/v1/agent-approvals/{created.json()['approval_id']}/cancel").status_code == 200
    # an agent's cost above the tokens' price is kept
    dear = agent_client.post("/api/v1/agent-approvals", request_body(model="gpt-4o", estimated_tokens=1000,
                                                                     estimated_cost="50.0000"), format="json")
    assert dear.status_code == 201 and dear.json()["estimated_cost"] == "50.0000", dear.content
    assert agent_client.post(f"/api/v1/agent-approvals/{dear.json()['approval_id']}/cancel").status_code == 200
    # against a limit of 1.0000 the cheap-looking call is refused before it runs
    ProjectBudget.objects.filter(project=project).update(daily_cost_limit=Decimal("1.0000"))
    refused = agent_client.post("/api/v1/agent-approvals", request_body(
        model="gpt-4o", estimated_tokens=1_000_000, estimated_cost="0.0100"), format="json")
    assert refused.status_code in (409, 423), refused.content
    assert Decimal(agent_client.get(f"/api/v1/budgets/{project.pk}").json()["cost_reserved"]) == 0


def test_an_unknown_model_is_400_saying_what_does_work(agent_client, request_body, project, task):
    """It said "or give estimated_cost", which never let an unknown model through."""
    for extra in ({}, {"estimated_cost": "5.0000"}):
        r = agent_client.post("/api/v1/agent-approvals", request_body(model="my-local-llm", **extra), format="json")
        assert r.status_code == 400 and "leave model out" in r.json()["fields"]["model"][0], r.content
    r = agent_client.post("/api/v1/agent-approvals", {**request_body(estimated_cost="5.0000"), "model": ""},
                          format="json")
    assert r.status_code == 201 and r.json()["estimated_cost"] == "5.0000", r.content


def test_request_is_423_while_stopped(agent_client, request_body, project, task):
    Project.objects.filter(pk=project.pk).update(status=Project.Status.EMERGENCY_STOPPED)
    r = agent_client.post("/api/v1/agent-approvals", request_body(), format="json")
    assert r.status_code == 423 and r.json()["error"] == "emergency_stop"
    assert not AgentCallApproval.objects.exists()


def test_task_of_another_project_or_agent_is_refused(agent_client, request_body, other_project, admin_user):
    from projects.services import task_create

    foreign = task_create(actor=admin_user, project_id=other_project.pk, agent_type="coder", title="x")
    assert agent_client.post("/api/v1/agent-approvals", request_body(task_id=str(foreign.pk)),
                             format="json").status_code == 404
    r = agent_client.post("/api/v1/agent-approvals", request_body(agent_type="tester"), format="json")
    assert r.status_code == 400 and "agent_type" in r.json()["fields"]


def test_project_list_filters_and_pages(requested, agent_client, project, reviewer_client, admin_user):
    from projects.services import task_create

    other = task_create(actor=admin_user, project_id=project.pk, agent_type="tester", title="t")
    r = agent_client.post("/api/v1/agent-approvals", {
        "project_id": str(project.pk), "task_id": str(other.pk), "agent_type": "tester",
        "proposed_action": "run pytest", "input_data": {}, "model": "gpt-4o-mini"}, format="json")
    assert r.status_code == 201
    page = reviewer_client.get(f"/api/v1/agent-approvals/project/{project.pk}").json()
    assert page["count"] == 2 and page["results"][0]["agent_type"] == "tester"  # newest first
    only = reviewer_client.get(f"/api/v1/agent-approvals/project/{project.pk}", {"agent_type": "coder"}).json()
    assert [a["approval_id"] for a in only["results"]] == [requested["approval_id"]]
    assert reviewer_client.get(f"/api/v1/agent-approvals/project/{project.pk}",
                               {"status": "approved"}).json()["count"] == 0
    assert reviewer_client.get(f"/api/v1/agent-approvals/project/{project.pk}",
                               {"status": "bogus"}).status_code == 400


# --- expiry -------------------------------------------------------------------------
def _expire(approval_id, seconds_ago=1):
    AgentCallApproval.objects.filter(pk=approval_id).update(
        expires_at=timezone.now() - timedelta(seconds=seconds_ago))


def test_decision_after_expiry_is_410_and_times_out_even_without_beat(requested, reviewer_client, task):
    _expire(requested["approval_id"])
    r = respond(reviewer_client, requested["approval_id"], decision="approve")
    assert r.status_code == 410 and r.json()["error"] == "expired" and r.json()["status"] == "timed_out"
    approval = AgentCallApproval.objects.get(pk=requested["approval_id"])
    assert approval.status == "timed_out" and approval.approved_by is None
    assert Event.objects.filter(event_type="approval_timed_out").count() == 1
    task.refresh_from_db()
    assert task.status == "pending"
    again = respond(reviewer_client, requested["approval_id"], decision="reject", reason="late")
    assert again.status_code == 410


def test_beat_sweep_expires_due_approvals_exactly_once(requested):
    assert agent_approval_expire_overdue() == 0  # not due yet
    _expire(requested["approval_id"])
    assert agent_approval_expire_overdue() == 1
    assert agent_approval_expire_overdue() == 0
    assert AgentCallApproval.objects.get(pk=requested["approval_id"]).status == "timed_out"
    [event] = Event.objects.filter(event_type="approval_timed_out")
    assert event.data["kind"] == "agent_approval"  # as the warning says which kind (questions say "hitl")
    assert AuditEvent.objects.filter(action="agent_approval.time_out").count() == 1


def test_timeout_warning_is_sent_once_when_a_fifth_is_left(requested):
    approval = AgentCallApproval.objects.get(pk=requested["approval_id"])
    assert agent_approval_warn_due(now=approval.expires_at - timedelta(minutes=7)) == 0  # 7 of 30 left
    assert agent_approval_warn_due(now=approval.expires_at - timedelta(minutes=5)) == 1  # 5 of 30 left
    assert agent_approval_warn_due(now=approval.expires_at - timedelta(minutes=4)) == 0
    warning = Event.objects.get(event_type="approval_timeout_warning")
    assert warning.data["seconds_left"] == 300 and warning.data["kind"] == "agent_approval"


def test_beat_tasks_are_scheduled(settings):
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"approvals.expire_overdue", "approvals.warn_due"} <= tasks


# --- the race -----------------------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_decisions_exactly_one_wins(project, task, agent, make_user, client_for, request_body):
    reviewers = [make_user(f"rev{i}", role="reviewer", project=project) for i in range(20)]
    clients = [client_for(r) for r in reviewers]
    approval_id = client_for(agent).post("/api/v1/agent-approvals", request_body(), format="json").json()["approval_id"]
    barrier = threading.Barrier(20)
    statuses = []

    def decide(i):
        try:
            barrier.wait()
            body = {"decision": "approve"} if i % 2 else {"decision": "reject", "reason": f"no {i}"}
            statuses.append(respond(clients[i], approval_id, **body).status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [409] * 19
    assert AuditEvent.objects.filter(object_id=approval_id, action__in=[
        "agent_approval.approve", "agent_approval.reject"]).count() == 1
    assert Event.objects.filter(event_type="agent_approval_decided", data__approval_id=approval_id).count() == 1


def test_service_refuses_unknown_decision(requested, reviewer):
    from core.errors import InvalidInput

    with pytest.raises(InvalidInput):
        agent_approval_decide(approval_id=uuid.UUID(requested["approval_id"]), decider=reviewer, decision="maybe")


def test_an_approval_not_started_in_time_expires(requested, agent_client, reviewer_client, task, settings):
    approval_id = requested["approval_id"]
    respond(reviewer_client, approval_id, decision="approve")
    AgentCallApproval.objects.filter(pk=approval_id).update(
        responded_at=timezone.now() - timedelta(minutes=settings.HITL_START_WITHIN_MINUTES + 1))
    r = agent_client.post(f"/api/v1/agent-approvals/{approval_id}/start")
    assert r.status_code == 410 and r.json()["status"] == "cancelled"
    assert AgentCallApproval.objects.get(pk=approval_id).status == "cancelled"
    assert AuditEvent.objects.filter(action="agent_approval.grant_expired").count() == 1
    task.refresh_from_db()
    assert task.status == "pending"  # the agent may request the call again


def test_no_read_shows_a_call_pending_past_its_deadline_while_beat_is_late(requested, agent_client, reviewer_client,
                                                                           project, agent):
    """Found by a time hunt: with beat stopped, `GET` of a call and its project's `?status=pending`
    list showed it pending after its deadline (a decision got 410 and /wait timed it out, but a
    reader polling GET saw pending for as long as beat was down). A read now times out what is due
    first, once, with its event, as beat would have."""
    AgentCallApproval.objects.filter(pk=requested["approval_id"]).update(
        expires_at=timezone.now() - timedelta(seconds=1))
    listed = agent_client.get(f"/api/v1/agent-approvals/project/{project.pk}?status=pending").json()
    assert listed["count"] == 0, listed
    other = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="second")
    second = agent_client.post("/api/v1/agent-approvals", {
        "project_id": str(project.pk), "task_id": str(other.pk), "agent_type": "coder", "proposed_action": "x",
        "input_data": {}, "model": "gpt-4o-mini"}, format="json").json()
    AgentCallApproval.objects.filter(pk=second["approval_id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    got = reviewer_client.get(f"/api/v1/agent-approvals/{second['approval_id']}").json()
    assert got["status"] == "timed_out", got
    assert agent_client.get(f"/api/v1/agent-approvals/{requested['approval_id']}").json()["status"] == "timed_out"
    timed_out = Event.objects.filter(event_type="approval_timed_out").values_list("data__approval_id", flat=True)
    assert sorted(timed_out) == sorted([requested["approval_id"], second["approval_id"]])  # once each
    assert agent_approval_expire_overdue() == 0  # nothing left for beat


def test_no_read_shows_a_lapsed_grant_as_startable_while_beat_is_late(requested, agent_client, reviewer_client,
                                                                       settings):
    """An approved call not started within HITL_START_WITHIN_MINUTES lapses (beat cancels it, and a
    start gets 410); a GET of it while beat is late shows it cancelled, not approved."""
    assert respond(reviewer_client, requested["approval_id"], decision="approve").status_code == 200
    AgentCallApproval.objects.filter(pk=requested["approval_id"]).update(
        responded_at=timezone.now() - timedelta(minutes=settings.HITL_START_WITHIN_MINUTES + 1))
    got = agent_client.get(f"/api/v1/agent-approvals/{requested['approval_id']}").json()
    assert got["status"] == "cancelled", got
    # lapsed before the start came (by that read, or by beat): the same 410 as a start that finds it
    # due (it was a 409, so the SDK raised Conflict or Expired depending on beat's timing)
    r = agent_client.post(f"/api/v1/agent-approvals/{requested['approval_id']}/start")
    assert r.status_code == 410 and r.json()["error"] == "expired" and r.json()["status"] == "cancelled", r.content


def test_a_read_racing_another_time_out_does_not_serve_the_call_as_pending(requested, agent_client, monkeypatch):
    """Found by a time hunt: a GET at the deadline, while a decision (410) or beat timed the call out
    first, answered `pending`: the read's own time-out found nothing to do and its stale copy was
    served. Another request times the call out between this read and its settle."""
    from approvals import selectors
    from approvals.services import agent_approval_time_out

    approval_id = requested["approval_id"]
    AgentCallApproval.objects.filter(pk=approval_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    first_read = selectors.agent_approval_for

    def read_then_lose_the_race(**kwargs):
        approval = first_read(**kwargs)
        if approval.status == "pending":
            agent_approval_time_out(approval_id=approval.pk)  # the other request wins
        return approval

    monkeypatch.setattr(selectors, "agent_approval_for", read_then_lose_the_race)
    got = agent_client.get(f"/api/v1/agent-approvals/{approval_id}").json()
    assert got["status"] == "timed_out", got


@pytest.mark.parametrize("zero", ["-0", "-0.0000", "-0e3"])
def test_a_negative_zero_cost_is_zero_without_its_sign(agent_client, request_body, project, zero):
    """Taken (it is not below 0), it was echoed "-0.0000" in the 201 and its event, "0.0000" later."""
    from approvals.models import ModelPrice
    from events.models import Event

    ModelPrice.objects.create(model="free", input_per_million=0, output_per_million=0)  # a local model
    r = agent_client.post("/api/v1/agent-approvals", request_body(model="free", estimated_tokens=10,
                                                                  estimated_cost=zero), format="json")
    assert r.status_code == 201 and r.json()["estimated_cost"] == "0.0000", r.content
    event = Event.objects.filter(project=project, event_type="agent_approval_requested").last()
    assert event.data["estimated_cost"] == "0.0000", event.data
