import re

import pytest

from approvals.services import agent_approval_request
from audit.models import AuditEvent
from core.errors import EmergencyStopActive
from emergency.models import EmergencyStop
from emergency.services import emergency_settings_for, emergency_stop_trigger
from events.models import Event
from projects.models import AgentState, Project, Task
from projects.services import task_create
from recovery.models import RecoverySession

pytestmark = pytest.mark.django_db


@pytest.fixture
def stopped(project, agent, reviewer):
    tasks = [task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"t{i}") for i in range(3)]
    agent_approval_request(requester=agent, project_id=project.pk, task_id=tasks[0].pk, agent_type="coder",
                           proposed_action="write code", input_data={}, estimated_tokens=1, estimated_cost="0.0001")
    stop, _ = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="test", actor=reviewer)
    emergency_stop_trigger(project_id=project.pk, condition="error_rate_high", reason="errors")
    return stop


def start(client, project, **body):
    return client.post(f"/api/v1/emergency/recovery/{project.pk}", body or {"recovery_type": "manual"},
                       format="json")


def step(client, session, step_id, **body):
    return client.post(f"/api/v1/recovery/{session['id']}/steps/{step_id}/respond", body, format="json")


def test_a_full_session_walks_every_step_to_an_active_project(stopped, project, manager, reviewer, client_for):
    r = start(client_for(manager), project)
    assert r.status_code == 201, r.content
    session = r.json()
    assert session["emergency_stop_id"] == str(stopped.pk) and session["status"] == "waiting_approval"
    assert session["assessment"]["halted_tasks"] == 3 and session["assessment"]["cancelled_approvals"] == 1
    actions = [s["action"] for s in session["recovery_plan"]["steps"]]
    assert actions == ["review_flagged", "reset_error_window", "re_enable_agents", "settle_halted_tasks",
                       "lift_stop"]
    assert session["total_steps"] == 5 and session["steps_completed"] == 0
    reviewer_c = client_for(reviewer)
    current = session["current_step"]  # the step a person decides next
    for i, s in enumerate(session["recovery_plan"]["steps"], start=1):
        assert current == s and current["status"] == "pending"
        assert Project.objects.get(pk=project.pk).status == "emergency_stopped"  # nothing lifts it silently
        r = step(reviewer_c, session, s["step_id"], decision="approve")
        assert r.status_code == 200, r.content
        assert r.json()["steps_completed"] == i
        assert r.json()["recovery_plan"]["steps"][i - 1]["status"] == "completed"
        current = r.json()["current_step"]
        assert current == (r.json()["recovery_plan"]["steps"][i] if i < 5 else None)
    final = r.json()
    assert final["status"] == "completed" and final["current_step"] is None
    project.refresh_from_db()
    assert project.status == "active"
    stopped.refresh_from_db()
    assert stopped.resolved_at is not None
    assert set(Task.objects.filter(project=project).values_list("status", flat=True)) == {"pending"}
    assert set(AgentState.objects.filter(project=project).values_list("status", flat=True)) == {"idle"}
    assert emergency_settings_for(project.pk).error_window_reset_at is not None
    assert Event.objects.filter(event_type="recovery_step_completed").count() == 5
    assert Event.objects.filter(event_type="emergency_resolved").count() == 1
    assert Event.objects.filter(event_type="recovery_initiated").count() == 1
    assert AuditEvent.objects.filter(action="emergency_stop.resolve").count() == 1
    status = client_for(reviewer).get(f"/api/v1/emergency/status/{project.pk}").json()
    assert status == {"project_id": str(project.pk), "stopped": False, "active_stop": None, "recovery_session": None}
    # agents may work again
    r = client_for(manager).get(f"/api/v1/recovery/{session['id']}")
    assert r.status_code == 200 and r.json()["status"] == "completed"


def test_a_stop_during_a_recovery_that_resumed_the_tasks_lists_each_task_once(stopped, project, manager, reviewer,
                                                                              client_for):
    session = start(client_for(manager), project).json()
    for s in session["recovery_plan"]["steps"][:4]:   # up to the halted tasks resumed to pending
        assert step(client_for(reviewer), session, s["step_id"], decision="approve").status_code == 200
    again, created = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="again",
                                            actor=reviewer)
    assert not created and again.pk == stopped.pk
    tasks = sorted(str(pk) for pk in Task.objects.filter(project=project).values_list("pk", flat=True))
    assert sorted(again.stopped_tasks) == tasks  # halted twice, listed once
    assert len(again.cancelled_approvals) == len(set(again.cancelled_approvals))


def test_a_rejected_step_fails_the_session_and_the_stop_stays(stopped, project, manager, reviewer, client_for):
    session = start(client_for(manager), project).json()
    first = session["recovery_plan"]["steps"][0]
    r = step(client_for(reviewer), session, first["step_id"], decision="reject", reason="not convinced")
    assert r.status_code == 200 and r.json()["status"] == "failed"
    assert r.json()["current_step"] is None  # a failed session waits for nobody
    assert r.json()["recovery_plan"]["steps"][0]["status"] == "rejected"
    assert Project.objects.get(pk=project.pk).status == "emergency_stopped"
    assert EmergencyStop.objects.get(pk=stopped.pk).resolved_at is None
    second = session["recovery_plan"]["steps"][1]
    assert step(client_for(reviewer), session, second["step_id"], decision="approve").status_code == 409
    assert start(client_for(manager), project).status_code == 201  # a new session may begin


def test_a_step_rejected_through_the_api_without_a_reason(stopped, project, manager, reviewer, client_for):
    """API.md marks `reason?` optional; the rejection still fails the session and keeps the stop."""
    session = start(client_for(manager), project).json()
    first = session["recovery_plan"]["steps"][0]
    r = step(client_for(reviewer), session, first["step_id"], decision="reject")
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "failed"
    assert r.json()["recovery_plan"]["steps"][0]["status"] == "rejected"
    assert r.json()["recovery_plan"]["steps"][0]["reason"] == ""
    assert Project.objects.get(pk=project.pk).status == "emergency_stopped"


def test_a_step_cannot_run_before_the_one_before_it(stopped, project, manager, reviewer, client_for):
    session = start(client_for(manager), project).json()
    last = session["recovery_plan"]["steps"][-1]
    r = step(client_for(reviewer), session, last["step_id"], decision="approve")
    assert r.status_code == 409 and r.json()["status"] == "pending"
    assert Project.objects.get(pk=project.pk).status == "emergency_stopped"


def test_the_second_approver_of_a_step_is_told_who_approved_it_first(stopped, project, manager, reviewer, make_user,
                                                                     client_for):
    """Two approvers at once: the loser was told only "Step 1 is completed", where a call's 409
    names who decided it and when."""
    other = make_user("rhea", role="reviewer", project=project)
    session = start(client_for(manager), project).json()
    first = session["recovery_plan"]["steps"][0]
    assert step(client_for(reviewer), session, first["step_id"], decision="approve").status_code == 200
    r = step(client_for(other), session, first["step_id"], decision="approve")
    assert r.status_code == 409 and r.json()["status"] == "completed"
    assert re.match(rf"Step 1 is completed \(by {reviewer.username} at \d{{4}}-\d\d-\d\dT[\d:.]+Z\); the next step "
                    r"is 2\.", r.json()["detail"]), r.json()["detail"]


def test_halted_tasks_can_be_cancelled_instead(stopped, project, manager, reviewer, client_for):
    session = start(client_for(manager), project).json()
    reviewer_c = client_for(reviewer)
    for s in session["recovery_plan"]["steps"]:
        body = {"decision": "approve"}
        if s["action"] == "settle_halted_tasks":
            r = step(reviewer_c, session, s["step_id"], decision="approve", option="bogus")
            assert r.status_code == 400 and r.json()["fields"]["option"] == ["This step takes one of resume, cancel."]
            r = step(reviewer_c, session, s["step_id"], decision=["approve"])  # said as JSON, not Python's repr
            assert r.json()["fields"]["decision"] == ['"[\"approve\"]" is not a valid choice: one of approve, reject.']
            body["option"] = "cancel"
        assert step(reviewer_c, session, s["step_id"], **body).status_code == 200
    assert set(Task.objects.filter(project=project).values_list("status", flat=True)) == {"cancelled"}


def test_who_may_start_and_approve(stopped, project, reviewer, agent, manager, outsider, client_for):
    assert start(client_for(reviewer), project).status_code == 403  # managers start recovery
    assert start(client_for(outsider), project).status_code == 404
    session = start(client_for(manager), project).json()
    assert start(client_for(manager), project).status_code == 409  # one open session per stop
    first = session["recovery_plan"]["steps"][0]
    assert step(client_for(agent), session, first["step_id"], decision="approve").status_code == 403
    assert step(client_for(outsider), session, first["step_id"], decision="approve").status_code == 404


def test_recovery_needs_an_active_stop(project, manager, client_for):
    r = start(client_for(manager), project)
    assert r.status_code == 409 and r.json()["status"] == "active"
    assert RecoverySession.objects.count() == 0


def test_the_manager_who_starts_a_recovery_does_not_approve_its_steps(stopped, project, manager, client_for):
    session = start(client_for(manager), project).json()
    first = session["recovery_plan"]["steps"][0]
    r = step(client_for(manager), session, first["step_id"], decision="approve")
    assert r.status_code == 403
    r = step(client_for(manager), session, "00000000-0000-0000-0000-000000000000", decision="approve")
    assert r.status_code in (403, 404)


def test_an_automated_recovery_runs_only_the_steps_that_need_no_judgement(stopped, project, manager, reviewer,
                                                                         client_for):
    session = start(client_for(manager), project, recovery_type="automated").json()
    statuses = {s["action"]: s["status"] for s in session["recovery_plan"]["steps"]}
    assert statuses == {"review_flagged": "pending", "reset_error_window": "pending", "re_enable_agents": "pending",
                        "settle_halted_tasks": "pending", "lift_stop": "pending"}  # a person reviews first
    steps = session["recovery_plan"]["steps"]
    r = step(client_for(reviewer), session, steps[0]["step_id"], decision="approve")
    after = {s["action"]: s["status"] for s in r.json()["recovery_plan"]["steps"]}
    assert after == {"review_flagged": "completed", "reset_error_window": "completed",
                     "re_enable_agents": "completed", "settle_halted_tasks": "pending", "lift_stop": "pending"}
    assert r.json()["steps_completed"] == 3
    assert Project.objects.get(pk=project.pk).status == "emergency_stopped"  # lifting still needs a person
    automatic = AuditEvent.objects.filter(action="recovery.step_complete", after__automatic=True)
    assert sorted(automatic.values_list("after__action", flat=True)) == ["re_enable_agents", "reset_error_window"]
    assert all(e.actor_id is None for e in automatic)
    for s in steps[3:]:
        assert step(client_for(reviewer), session, s["step_id"], decision="approve").status_code == 200
    assert Project.objects.get(pk=project.pk).status == "active"


def spend(project, agent, reviewer, *, limit: str, estimate: str, actual: str):
    """A daily cost limit, and one call approved, started and reporting ``actual`` cost."""
    from decimal import Decimal

    from approvals.services import agent_approval_decide, agent_approval_report_usage, agent_approval_start
    from budgets.models import ProjectBudget

    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal(limit)})
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="spend")
    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="write code", input_data={}, estimated_tokens=10,
                                  estimated_cost=Decimal(estimate))
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
    agent_approval_start(approval_id=call.pk, actor=agent)
    if Decimal(actual) > Decimal(limit) * Decimal("1.5"):
        with pytest.raises(EmergencyStopActive):  # recorded, and it stops the project: the agent gets 423
            agent_approval_report_usage(approval_id=call.pk, actor=agent, tokens_used=10, actual_cost=Decimal(actual))
    else:
        agent_approval_report_usage(approval_id=call.pk, actor=agent, tokens_used=10, actual_cost=Decimal(actual))


def test_a_budget_stop_is_not_lifted_while_the_day_is_still_at_or_past_the_critical_line(
        project, agent, reviewer, manager, client_for):
    """Confirming the budget (and lifting the stop) is refused while the day's cost is at or past
    1.5 x the daily limit: the next call would stop the project again. Raising the limit lets it through."""
    spend(project, agent, reviewer, limit="10.0000", estimate="9.0000", actual="16.0000")
    stop = EmergencyStop.objects.get(project=project, resolved_at__isnull=True)
    assert stop.triggered_conditions == ["budget_critical"]

    session = start(client_for(manager), project).json()
    steps = {s["action"]: s["step_id"] for s in session["recovery_plan"]["steps"]}
    assert list(steps) == ["confirm_budget", "re_enable_agents", "settle_halted_tasks", "lift_stop"]
    r = step(client_for(reviewer), session, steps["confirm_budget"], decision="approve")
    assert r.status_code == 409, r.content
    body = r.json()
    assert body["error"] == "conflict" and body["status"] == "pending"
    assert "16.0000 is still at or past 1.5 x the daily cost limit 10.0000" in body["detail"]
    assert "Above 10.6666 lifts the stop" in body["detail"] and "a limit of 16.0000 (the day's cost) leaves 8.0000" in body["detail"]
    assert body["daily_cost_limit_needed"] == "10.6667"
    session_now = client_for(reviewer).get(f"/api/v1/recovery/{session['id']}").json()
    assert session_now["status"] == "waiting_approval" and session_now["steps_completed"] == 0

    # the manager raises the limit just enough: the step goes through, and the rest lifts the stop
    r = client_for(manager).patch(f"/api/v1/budgets/{project.pk}", {"daily_cost_limit": "10.6667"}, format="json")
    assert r.status_code == 200, r.content
    for action in ("confirm_budget", "re_enable_agents", "settle_halted_tasks", "lift_stop"):
        r = step(client_for(reviewer), session, steps[action], decision="approve")
        assert r.status_code == 200, (action, r.content)
    assert r.json()["status"] == "completed"
    assert Project.objects.get(pk=project.pk).status == "active"


def test_lifting_is_refused_while_the_day_passes_the_line_of_a_limit_lowered_during_the_recovery(
        project, agent, reviewer, manager, client_for):
    """Whatever stopped the project, the stop is not lifted into a day already past 1.5 x its limit."""
    spend(project, agent, reviewer, limit="10.0000", estimate="8.0000", actual="12.0000")
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="test", actor=reviewer)
    session = start(client_for(manager), project).json()
    steps = [(s["action"], s["step_id"]) for s in session["recovery_plan"]["steps"]]
    assert [action for action, _ in steps] == ["review_flagged", "re_enable_agents", "settle_halted_tasks",
                                               "lift_stop"]
    for _, step_id in steps[:-1]:
        assert step(client_for(reviewer), session, step_id, decision="approve").status_code == 200
    r = client_for(manager).patch(f"/api/v1/budgets/{project.pk}", {"daily_cost_limit": "5.0000"}, format="json")
    assert r.status_code == 200, r.content
    r = step(client_for(reviewer), session, steps[-1][1], decision="approve")
    assert r.status_code == 409, r.content
    assert r.json()["daily_cost_limit_needed"] == "8.0001"  # at 8.0000 the day is at 1.5 x: still refused
    assert Project.objects.get(pk=project.pk).status == "emergency_stopped"
    assert client_for(reviewer).get(f"/api/v1/recovery/{session['id']}").json()["status"] == "in_progress"
    client_for(manager).patch(f"/api/v1/budgets/{project.pk}", {"daily_cost_limit": "8.0000"}, format="json")
    assert step(client_for(reviewer), session, steps[-1][1], decision="approve").status_code == 409
    client_for(manager).patch(f"/api/v1/budgets/{project.pk}", {"daily_cost_limit": "8.0001"}, format="json")
    assert step(client_for(reviewer), session, steps[-1][1], decision="approve").status_code == 200
    assert Project.objects.get(pk=project.pk).status == "active"


def test_the_refusal_names_the_monthly_limit_when_the_daily_one_cannot_pass_it(
        project, agent, reviewer, manager, client_for):
    from budgets.models import ProjectBudget

    spend(project, agent, reviewer, limit="10.0000", estimate="9.0000", actual="30.0000")
    ProjectBudget.objects.filter(project=project).update(monthly_cost_limit="15.0000")
    session = start(client_for(manager), project).json()
    first = session["recovery_plan"]["steps"][0]
    assert first["action"] == "confirm_budget"
    r = step(client_for(reviewer), session, first["step_id"], decision="approve")
    assert r.status_code == 409 and r.json()["daily_cost_limit_needed"] == "20.0001"
    detail = r.json()["detail"]
    assert "(and the monthly cost limit, now 15.0000, as high: a daily limit may not pass it)" in detail
    assert "or set it to 0 (no daily limit)" in detail
    assert re.search(r"wait for the day's window to end at \d{4}-\d\d-\d\d 00:00 UTC", detail), detail
    # no daily limit at all clears it too
    r = client_for(manager).patch(f"/api/v1/budgets/{project.pk}", {"daily_cost_limit": "0"}, format="json")
    assert r.status_code == 200, r.content
    assert step(client_for(reviewer), session, first["step_id"], decision="approve").status_code == 200
