"""A task reported completed or failed takes its calls that can no longer run with it: a pending
call stops asking a person, an approved one not started gives its reservation back at once (it
used to hold it until its start window lapsed), each with its audit row and event."""
from decimal import Decimal

from django.utils import timezone

import pytest

from approvals.models import AgentCallApproval
from approvals.services import agent_approval_decide, agent_approval_report_usage, agent_approval_start
from audit.models import AuditEvent
from budgets.models import BudgetOverrideRequest, ProjectBudget
from budgets.services import budget_reconcile, current_windows
from events.models import Event
from projects.services import task_create

pytestmark = pytest.mark.django_db


def ask(client, project, agent, cost="1.0000", title="t"):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=title)
    r = client.post("/api/v1/agent-approvals", {
        "project_id": str(project.pk), "task_id": str(task.pk), "agent_type": "coder",
        "proposed_action": f"write {title}", "input_data": {"file": "a.py"}, "estimated_tokens": 100,
        "estimated_cost": cost}, format="json")
    assert r.status_code == 201, r.content
    return task, r.json()["approval_id"]


def report(client, task, status):
    body = {"status": status} if status == "completed" else {"status": status, "error": "gave up"}
    r = client.post(f"/api/v1/tasks/{task.pk}/status", body, format="json")
    assert r.status_code == 200, r.content
    return r


def reserved_today(project):
    return current_windows(project)[0].reserved_cost


def test_an_approved_call_not_started_is_cancelled_and_its_reservation_released(
        project, agent, reviewer, client_for):
    agent_c = client_for(agent)
    task, call_id = ask(agent_c, project, agent, cost="2.5000")
    agent_approval_decide(approval_id=call_id, decider=reviewer, decision="approve")
    assert reserved_today(project) == Decimal("2.5000")
    report(agent_c, task, "completed")

    call = AgentCallApproval.objects.get(pk=call_id)
    assert (call.status, call.budget_state) == ("cancelled", "released")
    assert call.rejection_reason == "its task was reported completed before the call ran"
    assert reserved_today(project) == Decimal("0.0000")
    assert budget_reconcile() == []
    r = agent_c.post(f"/api/v1/agent-approvals/{call_id}/start")
    assert r.status_code == 409 and r.json()["status"] == "cancelled"
    assert "(its task was reported completed before the call ran)" in r.json()["detail"]
    assert agent_c.get(f"/api/v1/agent-approvals/{call_id}").json()["status"] == "cancelled"
    audit = AuditEvent.objects.get(action="agent_approval.task_ended", object_id=str(call_id))
    assert audit.actor == agent and audit.before["status"] == "approved" and audit.after["status"] == "cancelled"
    event = Event.objects.filter(event_type="agent_approval_decided", data__approval_id=str(call_id)).last()
    assert event.data["status"] == "cancelled" and event.data["budget_state"] == "released"
    assert event.data["rejection_reason"] == "its task was reported completed before the call ran"
    # the reviewer's page says who cancelled it and why
    page = client_for(reviewer)
    page.force_login(reviewer)
    html = page.get(f"/review/agent-approvals/{call_id}").content.decode()
    assert "its agent (agent)" in html and "its task was reported completed before the call ran" in html


def test_a_pending_call_and_the_override_it_waited_for_end_with_a_failed_task(
        project, agent, reviewer, client_for):
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("1.0000")})
    agent_c = client_for(agent)
    task, call_id = ask(agent_c, project, agent, cost="1.5000")
    call = AgentCallApproval.objects.get(pk=call_id)
    assert call.status == "pending" and call.budget_override_id is not None
    report(agent_c, task, "failed")

    call.refresh_from_db()
    assert call.status == "cancelled"
    assert call.rejection_reason == "its task was reported failed before the call ran"
    assert BudgetOverrideRequest.objects.get(pk=call.budget_override_id).status == "rejected"  # withdrawn
    r = client_for(reviewer).post(f"/api/v1/agent-approvals/{call_id}/respond", {"decision": "approve"},
                                  format="json")
    assert r.status_code == 409 and r.json()["status"] == "cancelled"


def test_a_task_abandoned_while_its_call_waits_takes_the_call_and_its_reservation_with_it(
        project, agent, reviewer, client_for):
    agent_c = client_for(agent)
    task, call_id = ask(agent_c, project, agent, cost="2.0000")
    assert reserved_today(project) == Decimal("2.0000")
    report(agent_c, task, "cancelled")  # the agent gives up on it while a person has not decided yet

    call = AgentCallApproval.objects.get(pk=call_id)
    assert (call.status, call.budget_state) == ("cancelled", "released")
    assert call.rejection_reason == "its task was reported cancelled before the call ran"
    assert reserved_today(project) == Decimal("0.0000")
    r = client_for(reviewer).post(f"/api/v1/agent-approvals/{call_id}/respond", {"decision": "approve"},
                                  format="json")
    assert r.status_code == 409 and r.json()["status"] == "cancelled"


def test_a_started_call_and_other_tasks_calls_are_left_alone(project, agent, reviewer, client_for):
    agent_c = client_for(agent)
    task, started_id = ask(agent_c, project, agent, cost="1.0000", title="started")
    agent_approval_decide(approval_id=started_id, decider=reviewer, decision="approve")
    agent_approval_start(approval_id=started_id, actor=agent)
    other_task, other_id = ask(agent_c, project, agent, cost="0.5000", title="other")
    agent_approval_decide(approval_id=other_id, decider=reviewer, decision="approve")
    report(agent_c, task, "completed")

    started, other = AgentCallApproval.objects.get(pk=started_id), AgentCallApproval.objects.get(pk=other_id)
    assert (started.status, started.budget_state, started.started_at is not None) == ("approved", "reserved", True)
    assert (other.status, other.budget_state) == ("approved", "reserved")
    assert reserved_today(project) == Decimal("1.5000")
    agent_approval_report_usage(approval_id=started_id, actor=agent, tokens_used=90, actual_cost=Decimal("0.9000"))
    assert reserved_today(project) == Decimal("0.5000")
    assert not AuditEvent.objects.filter(action="agent_approval.task_ended").exists()


def test_a_retried_report_changes_nothing_more(project, agent, reviewer, client_for):
    agent_c = client_for(agent)
    task, call_id = ask(agent_c, project, agent)
    agent_approval_decide(approval_id=call_id, decider=reviewer, decision="approve")
    report(agent_c, task, "completed")
    before = timezone.now()
    report(agent_c, task, "completed")
    assert AuditEvent.objects.filter(action="agent_approval.task_ended").count() == 1
    assert not Event.objects.filter(event_type="agent_approval_decided", created_at__gt=before).exists()


def test_a_failed_task_drops_its_output_held_for_review_and_its_open_questions(
        agent_client, reviewer_client, request_body, project, client_for, reviewer):
    from approvals.tests.test_response_approvals import response_body
    from hitl.models import HitlRequest

    body = request_body()
    call = agent_client.post("/api/v1/agent-approvals", body, format="json").json()
    reviewer_client.post(f"/api/v1/agent-approvals/{call['approval_id']}/respond", {"decision": "approve"},
                         format="json")
    call = agent_client.post(f"/api/v1/agent-approvals/{call['approval_id']}/start").json()
    question = agent_client.post("/api/v1/hitl", {
        "project_id": str(project.pk), "task_id": call["task_id"], "request_type": "question",
        "question": "Which database?", "options": ["PostgreSQL", "SQLite"]}, format="json")
    assert question.status_code == 201, question.content
    question_id = question.json()["id"]
    r = agent_client.post("/api/v1/response-approvals", response_body(call), format="json")
    assert r.status_code == 201, r.content
    response_id = r.json()["approval_id"]
    r = agent_client.post(f"/api/v1/tasks/{call['task_id']}/status", {"status": "completed"}, format="json")
    assert r.status_code == 409 and r.json()["status"] == "waiting_for_hitl"  # its output waits for a review
    assert "waits for a person" in r.json()["detail"] and "report the task failed" in r.json()["detail"]
    r = agent_client.post(f"/api/v1/tasks/{call['task_id']}/status", {"status": "failed", "error": "gave up"},
                          format="json")
    assert r.status_code == 200, r.content

    response = agent_client.get(f"/api/v1/response-approvals/{response_id}").json()
    assert response["status"] == "cancelled" and response["rejection_reason"] == "its task was reported failed"
    r = reviewer_client.post(f"/api/v1/response-approvals/{response_id}/respond", {"decision": "approve"},
                             format="json")
    assert r.status_code == 409 and r.json()["status"] == "cancelled"
    req = HitlRequest.objects.get(pk=question_id)
    assert req.status == "cancelled" and req.history[-1]["note"] == "its task was reported failed"
    r = reviewer_client.post(f"/api/v1/hitl/{question_id}/respond", {"action": "approve", "response": "SQLite"},
                             format="json")
    assert r.status_code == 409
    assert set(AuditEvent.objects.filter(action__endswith=".task_ended").values_list("action", flat=True)) == {
        "response_approval.task_ended", "hitl_request.task_ended"}
    assert Event.objects.filter(event_type="response_approval_decided", data__status="cancelled").exists()
    assert Event.objects.filter(event_type="hitl_decided", data__status="cancelled").exists()
    page = client_for(reviewer)
    page.force_login(reviewer)
    html = page.get(f"/review/hitl/{question_id}").content.decode()
    assert "its task was reported failed" in html


def started_with_output(agent_client, reviewer_client, request_body):
    """A call approved and started, its output submitted (pending review): (call JSON, response id)."""
    from approvals.tests.test_response_approvals import response_body

    call = agent_client.post("/api/v1/agent-approvals", request_body(), format="json").json()
    reviewer_client.post(f"/api/v1/agent-approvals/{call['approval_id']}/respond", {"decision": "approve"},
                         format="json")
    call = agent_client.post(f"/api/v1/agent-approvals/{call['approval_id']}/start").json()
    r = agent_client.post("/api/v1/response-approvals", response_body(call), format="json")
    assert r.status_code == 201, r.content
    return call, r.json()["approval_id"]


def test_one_outcome_cancels_every_kind_of_open_request_of_its_task_in_lock_order(
        agent_client, reviewer_client, request_body, project, agent):
    """A blocked call (its override withdrawn, nothing reserved), an output held for review and a
    question, all on one task: one report cancels them all, in one unit of work (LOCK_ORDER
    approval, override, budget window, response, hitl: a handler out of order would raise)."""
    from hitl.models import HitlRequest
    from approvals.models import ResponseApproval

    call, response_id = started_with_output(agent_client, reviewer_client, request_body)
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("1.0000")})
    blocked = agent_client.post("/api/v1/agent-approvals", {**request_body(task_id=call["task_id"]),
                                                           "estimated_cost": "1.2000"}, format="json").json()
    assert "approval_id" in blocked, blocked
    assert AgentCallApproval.objects.get(pk=blocked["approval_id"]).budget_state == "blocked"
    question = agent_client.post("/api/v1/hitl", {"project_id": str(project.pk), "task_id": call["task_id"],
                                                  "request_type": "question", "question": "Go on?"}, format="json")
    assert question.status_code == 201, question.content
    r = agent_client.post(f"/api/v1/tasks/{call['task_id']}/status", {"status": "failed", "error": "x"},
                          format="json")
    assert r.status_code == 200, r.content

    blocked_call = AgentCallApproval.objects.get(pk=blocked["approval_id"])
    assert (blocked_call.status, blocked_call.budget_state) == ("cancelled", "released")
    assert BudgetOverrideRequest.objects.get(pk=blocked_call.budget_override_id).status == "rejected"
    assert ResponseApproval.objects.get(pk=response_id).status == "cancelled"
    assert HitlRequest.objects.get(pk=question.json()["id"]).status == "cancelled"
    assert budget_reconcile() == []
    # the outcome's audit row comes before the cancellations it caused
    actions = list(AuditEvent.objects.filter(project_id=project.pk).order_by("seq").values_list("action", flat=True))
    assert actions.index("task.failed") < min(actions.index(a) for a in (
        "agent_approval.task_ended", "response_approval.task_ended", "hitl_request.task_ended"))


def test_a_completed_task_cancels_its_output_left_waiting_and_a_question_holds_it(
        agent_client, reviewer_client, request_body, project):
    """A decision on another call of the task moves it back to pending while its output still
    waits; a question about it keeps it waiting for a person (completed is 409), and once the
    question is withdrawn, reporting it completed cancels that output, with that word."""
    from hitl.models import HitlRequest
    from approvals.models import ResponseApproval

    call, response_id = started_with_output(agent_client, reviewer_client, request_body)
    second = agent_client.post("/api/v1/agent-approvals", request_body(task_id=call["task_id"]), format="json")
    assert second.status_code == 201, second.content
    reviewer_client.post(f"/api/v1/agent-approvals/{second.json()['approval_id']}/respond",
                         {"decision": "reject", "reason": "not this one"}, format="json")
    question = agent_client.post("/api/v1/hitl", {"project_id": str(project.pk), "task_id": call["task_id"],
                                                  "request_type": "checkpoint", "question": "Ship?"}, format="json")
    r = agent_client.post(f"/api/v1/tasks/{call['task_id']}/status", {"status": "completed"}, format="json")
    assert r.status_code == 409 and r.json()["status"] == "waiting_for_hitl", r.content
    assert agent_client.post(f"/api/v1/hitl/{question.json()['id']}/cancel", {}, format="json").status_code == 200
    r = agent_client.post(f"/api/v1/tasks/{call['task_id']}/status", {"status": "completed"}, format="json")
    assert r.status_code == 200, r.content
    response = ResponseApproval.objects.get(pk=response_id)
    assert (response.status, response.rejection_reason) == ("cancelled", "its task was reported completed")
    assert HitlRequest.objects.get(pk=question.json()["id"]).status == "cancelled"


def test_a_task_whose_output_waits_for_review_is_not_reported_cancelled(
        agent_client, reviewer_client, request_body):
    """Its call ran and made the output a reviewer is looking at: "cancelled" (work abandoned
    before it ran) was accepted and cancelled the review; the task is reported failed (or
    completed) instead, and a refused output leaves it cancellable as before."""
    from approvals.models import ResponseApproval

    call, response_id = started_with_output(agent_client, reviewer_client, request_body)
    r = agent_client.post(f"/api/v1/tasks/{call['task_id']}/status", {"status": "cancelled"}, format="json")
    assert r.status_code == 409 and "its output waits for review" in r.json()["detail"], r.content
    assert ResponseApproval.objects.get(pk=response_id).status == "pending"
    r = reviewer_client.post(f"/api/v1/response-approvals/{response_id}/respond",
                             {"decision": "reject", "reason": "wrong file"}, format="json")
    assert r.status_code == 200, r.content
    r = agent_client.post(f"/api/v1/tasks/{call['task_id']}/status", {"status": "cancelled"}, format="json")
    assert r.status_code == 200, r.content  # abandoned after a refusal, as the SDK reports it


def second_call(client, project, task, title="again"):
    r = client.post("/api/v1/agent-approvals", {
        "project_id": str(project.pk), "task_id": str(task.pk), "agent_type": "coder",
        "proposed_action": f"write {title}", "input_data": {"file": "b.py"}, "estimated_tokens": 100,
        "estimated_cost": "1.0000"}, format="json")
    assert r.status_code == 201, r.content
    return r.json()["approval_id"]


@pytest.mark.parametrize("decision", [{"decision": "reject", "reason": "no"}, {"decision": "approve"}])
def test_a_second_call_on_a_running_task_leaves_it_running_and_can_start_beside_the_first(
        project, agent, reviewer, client_for, decision):
    """Call A started (the task runs); the agent asks for call B on the same task; B is decided.
    The task went back to pending (its agent idle, A still running) and could then be reported
    cancelled, "work abandoned before it ran". It stays running while A runs, an approved B
    starts beside A, and once nothing of it runs the next refusal leaves it pending."""
    from projects.models import AgentState

    agent_c, reviewer_c = client_for(agent), client_for(reviewer)
    task, first = ask(agent_c, project, agent)
    agent_approval_decide(approval_id=first, decider=reviewer, decision="approve")
    agent_approval_start(approval_id=first, actor=agent)
    second = second_call(agent_c, project, task)
    assert agent_c.get(f"/api/v1/tasks/{task.pk}").json()["status"] == "waiting_for_hitl"
    r = reviewer_c.post(f"/api/v1/agent-approvals/{second}/respond", decision, format="json")
    assert r.status_code == 200, r.content
    assert agent_c.get(f"/api/v1/tasks/{task.pk}").json()["status"] == "running"
    assert AgentState.objects.get(project=project, agent_type="coder").status == "working"
    r = agent_c.post(f"/api/v1/tasks/{task.pk}/status", {"status": "cancelled"}, format="json")
    assert r.status_code == 409 and r.json()["status"] == "running" and "a call of it runs" in r.json()["detail"], r.content

    if decision["decision"] == "approve":  # B starts beside A (the task was running: it was refused)
        r = agent_c.post(f"/api/v1/agent-approvals/{second}/start")
        assert r.status_code == 200 and r.json()["started_at"], r.content
        assert agent_c.get(f"/api/v1/tasks/{task.pk}").json()["status"] == "running"
        agent_approval_report_usage(approval_id=second, actor=agent, tokens_used=20, actual_cost=Decimal("0.2000"))
    agent_approval_report_usage(approval_id=first, actor=agent, tokens_used=50, actual_cost=Decimal("0.5000"))
    third = second_call(agent_c, project, task, title="third")
    r = reviewer_c.post(f"/api/v1/agent-approvals/{third}/respond", {"decision": "reject", "reason": "no"},
                        format="json")
    assert r.status_code == 200, r.content
    assert agent_c.get(f"/api/v1/tasks/{task.pk}").json()["status"] == "pending"  # nothing of it runs now
    report(agent_c, task, "cancelled")  # abandoned after a refusal, as the SDK reports it
