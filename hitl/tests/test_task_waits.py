"""A pending question or checkpoint about a task keeps the task (and its agent) waiting for a
person, together with the calls and outputs of that task that wait for one: whichever closes
last puts the task back where the work left it."""
import importlib
from datetime import timedelta

import pytest
from django.apps import apps
from django.utils import timezone

from emergency.services import emergency_stop_trigger
from hitl.models import HitlRequest
from hitl.services import hitl_request_expire_overdue
from projects.models import AgentState, Task
from projects.services import task_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def coder_task(agent_client, project):
    r = agent_client.post("/api/v1/tasks", {"project_id": str(project.pk), "agent_type": "coder",
                                            "title": "Implement the login form"}, format="json")
    assert r.status_code == 201, r.content
    return r.json()["task_id"]


@pytest.fixture
def flow(agent_client, reviewer_client, project, coder_task):
    """The agent's and the reviewer's steps, through the API as they take them."""

    class Flow:
        def task(self):
            r = agent_client.get(f"/api/v1/tasks/{coder_task}")
            assert r.status_code == 200, r.content
            return r.json()

        def status(self):
            return self.task()["status"]

        def agent_state(self):
            return AgentState.objects.get(project=project, agent_type="coder").status

        def ask(self, **extra):
            r = agent_client.post("/api/v1/hitl", {"project_id": str(project.pk), "task_id": coder_task,
                                                   "request_type": "question", "question": "Tabs or spaces?",
                                                   **extra}, format="json")
            assert r.status_code == 201, r.content
            return r.json()["id"]

        def answer(self, request_id, action="approve", **extra):
            r = reviewer_client.post(f"/api/v1/hitl/{request_id}/respond", {"action": action, **extra},
                                     format="json")
            assert r.status_code == 200, r.content
            return r.json()

        def call(self):
            r = agent_client.post("/api/v1/agent-approvals", {
                "project_id": str(project.pk), "task_id": coder_task, "agent_type": "coder",
                "proposed_action": "Write the login form component", "input_data": {"files": ["login.tsx"]},
                "model": "gpt-4o-mini"}, format="json")
            assert r.status_code == 201, r.content
            return r.json()["approval_id"]

        def decide(self, approval_id, decision="approve"):
            r = reviewer_client.post(f"/api/v1/agent-approvals/{approval_id}/respond",
                                     {"decision": decision, "reason": "no"}, format="json")
            assert r.status_code == 200, r.content

        def start(self, approval_id):
            r = agent_client.post(f"/api/v1/agent-approvals/{approval_id}/start", format="json")
            assert r.status_code == 200, r.content

        def running(self):
            """A call requested, approved and started: the task runs. Returns the call's id."""
            call = self.call()
            self.decide(call)
            self.start(call)
            return call

        def submit(self, approval_id):
            r = agent_client.post("/api/v1/response-approvals", {
                "project_id": str(project.pk), "task_id": coder_task, "agent_type": "coder",
                "original_call_approval_id": approval_id, "agent_response": {"code": "export const a = 1;"},
                "response_summary": "The form", "next_steps": ["Tests"], "tokens_used": 120}, format="json")
            assert r.status_code == 201, r.content
            return r.json()["approval_id"]

        def decide_response(self, response_id, decision="approve"):
            r = reviewer_client.post(f"/api/v1/response-approvals/{response_id}/respond",
                                     {"decision": decision}, format="json")
            assert r.status_code == 200, r.content

        def report(self, status):
            return agent_client.post(f"/api/v1/tasks/{coder_task}/status", {"status": status}, format="json")

    return Flow()


def test_a_question_about_a_pending_task_makes_it_wait_until_it_is_answered(flow):
    assert flow.status() == "pending"
    asked = flow.ask()
    task = flow.task()
    assert task["status"] == "waiting_for_hitl" and task["open_questions"] == 1
    assert flow.agent_state() == AgentState.Status.WAITING_FOR_HITL
    flow.answer(asked, action="reject", response="ask the team")
    task = flow.task()
    assert task["status"] == "pending" and task["open_questions"] == 0
    assert flow.agent_state() == AgentState.Status.IDLE


def test_a_running_task_goes_back_to_running_after_the_last_of_its_questions(flow):
    flow.running()
    assert flow.status() == "running"
    first, second = flow.ask(), flow.ask(question="And the line length?")
    assert flow.task()["open_questions"] == 2 and flow.agent_state() == AgentState.Status.WAITING_FOR_HITL
    flow.answer(first, action="amend", amended_content="spaces, four")
    assert flow.status() == "waiting_for_hitl"  # one is still open
    flow.answer(second)
    assert flow.status() == "running" and flow.agent_state() == AgentState.Status.WORKING


def test_a_question_answered_while_a_call_waits_leaves_the_task_waiting_for_the_call(flow):
    call = flow.call()
    asked = flow.ask()
    flow.answer(asked)
    assert flow.status() == "waiting_for_hitl"  # the call is still pending
    flow.decide(call, "reject")
    assert flow.status() == "pending"


def test_a_call_decided_while_a_question_waits_moves_the_task_when_the_question_is_answered(flow):
    call = flow.call()
    asked = flow.ask()
    flow.decide(call)
    flow.start(call)  # the approved call runs: the question does not gate it
    task = flow.task()
    assert task["status"] == "waiting_for_hitl" and task["started_at"] is not None
    flow.answer(asked)
    assert flow.status() == "running"


def test_output_sent_for_review_while_a_question_waits_keeps_the_task_waiting_for_it(flow):
    call = flow.running()
    asked = flow.ask()
    response = flow.submit(call)
    flow.answer(asked)
    assert flow.status() == "waiting_for_hitl"  # the output is still held for review
    flow.decide_response(response)
    assert flow.status() == "running"


def test_a_task_waiting_for_a_question_cannot_be_reported_completed_but_can_fail(flow):
    flow.running()
    asked = flow.ask()
    r = flow.report("completed")
    assert r.status_code == 409 and "question" in r.json()["detail"]
    assert flow.status() == "waiting_for_hitl"
    r = flow.report("failed")
    assert r.status_code == 200, r.content
    assert HitlRequest.objects.get(pk=asked).status == HitlRequest.Status.CANCELLED
    task = flow.task()
    assert task["status"] == "failed" and task["open_questions"] == 0


@pytest.mark.parametrize("how", ["cancel", "time_out"])
def test_a_question_withdrawn_or_timed_out_releases_its_task(flow, agent_client, how):
    asked = flow.ask(timeout_minutes=1)
    assert flow.status() == "waiting_for_hitl"
    if how == "cancel":
        r = agent_client.post(f"/api/v1/hitl/{asked}/cancel", {}, format="json")
        assert r.status_code == 200, r.content
    else:
        HitlRequest.objects.filter(pk=asked).update(expires_at=timezone.now() - timedelta(seconds=1))
        assert hitl_request_expire_overdue() == 1
    assert flow.status() == "pending" and flow.task()["open_questions"] == 0


def test_a_stop_halts_a_task_waiting_for_a_question_and_clears_it(flow, project):
    asked = flow.ask()
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="drill")
    task = flow.task()
    assert task["status"] == "halted" and task["open_questions"] == 0
    assert HitlRequest.objects.get(pk=asked).status == HitlRequest.Status.CANCELLED
    assert Task.objects.get(pk=task["task_id"]).status_after_questions == ""


def test_a_task_that_ran_is_not_reported_cancelled_behind_a_question(flow):
    """Cancelled is for work abandoned before it ran: a question asked while the task runs does
    not open that door (409, as for the running task itself)."""
    flow.running()
    assert flow.report("cancelled").status_code == 409
    flow.ask()
    r = flow.report("cancelled")
    assert r.status_code == 409 and "cannot be reported cancelled" in r.json()["detail"], r.content
    assert flow.status() == "waiting_for_hitl"


def test_after_a_stop_and_its_recovery_the_task_resumes_pending_and_counts_new_questions_afresh(
        flow, project, manager, reviewer, client_for):
    flow.running()
    flow.ask()
    flow.ask(question="And the other thing?")
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="drill", actor=reviewer)
    r = client_for(manager).post(f"/api/v1/emergency/recovery/{project.pk}", {"recovery_type": "manual"},
                                 format="json")
    assert r.status_code == 201, r.content
    session = r.json()
    for s in session["recovery_plan"]["steps"]:  # settle_halted_tasks resumes them (pending)
        r = client_for(reviewer).post(f"/api/v1/recovery/{session['id']}/steps/{s['step_id']}/respond",
                                      {"decision": "approve"}, format="json")
        assert r.status_code == 200, r.content
    task = flow.task()
    assert (task["status"], task["open_questions"]) == ("pending", 0)
    asked = flow.ask()
    assert flow.task()["open_questions"] == 1 and flow.status() == "waiting_for_hitl"
    flow.answer(asked)
    assert flow.status() == "pending"


def test_the_migration_counts_questions_pending_before_tasks_counted_them(project, agent):
    """Questions pending when tasks start counting them: the migration gives each open task its
    count and makes a pending or running one wait; an ended task is left as it is."""
    migration = importlib.import_module("hitl.migrations.0004_task_open_questions")
    tasks = {status: task_create(actor=agent, project_id=project.pk, agent_type="coder", title=status)
             for status in ("pending", "running", "completed")}
    for status, task in tasks.items():
        Task.objects.filter(pk=task.pk).update(status=status)
        for n in range(2 if status == "running" else 1):
            HitlRequest.objects.create(project=project, task=task, request_type="question", question=f"q{n}",
                                       asked_by=agent, expires_at=task.created_at + timedelta(hours=1))
    migration.count_open_questions(apps, None)
    rows = {t.title: (t.status, t.open_questions, t.status_after_questions) for t in Task.objects.all()}
    assert rows == {"pending": ("waiting_for_hitl", 1, "pending"), "running": ("waiting_for_hitl", 2, "running"),
                    "completed": ("completed", 0, "")}
    # rolled back (to code that does not count questions): they go back where the questions held
    # them, where they stayed waiting_for_hitl for good (their completion refused)
    migration.uncount_open_questions(apps, None)
    assert {t.title: t.status for t in Task.objects.all()} == {"pending": "pending", "running": "running",
                                                               "completed": "completed"}


def test_a_task_abandoned_before_it_ran_takes_its_questions_with_it(flow):
    asked = flow.ask()
    r = flow.report("cancelled")
    assert r.status_code == 200, r.content
    assert HitlRequest.objects.get(pk=asked).status == HitlRequest.Status.CANCELLED
    task = flow.task()
    assert (task["status"], task["open_questions"]) == ("cancelled", 0)
