import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from approvals.models import AgentCallApproval
from approvals.services import (
    agent_approval_decide,
    agent_approval_request,
    agent_approval_start,
)
from audit.models import AuditEvent
from emergency.conditions import conditions_check
from emergency.models import EmergencyStop
from emergency.services import emergency_settings_for, emergency_stop_trigger
from events.models import Event
from projects.models import AgentState, Project, Task
from projects.services import task_create, task_report_outcome

pytestmark = pytest.mark.django_db


def request_call(project, agent, title="t", **kwargs):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=title)
    body = dict(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                proposed_action="write the parser", input_data={"t": title}, estimated_tokens=100,
                estimated_cost="0.0100")
    body.update(kwargs)
    return agent_approval_request(**body)


def test_a_stop_times_out_what_was_past_its_deadline_and_cancels_the_rest(project, agent, reviewer, manager):
    """Beat late or down: a call, an output and a question past their deadlines, not timed out
    yet. The stop marked them "cancelled" (emergency stop), as if withdrawn: a missed deadline was
    out of the timeout rate, with no approval_timed_out event. They time out as beat would have;
    what is still in time is cancelled by the stop."""
    from approvals.models import ResponseApproval
    from approvals.services import response_approval_submit
    from budgets.services import current_windows
    from hitl.models import HitlRequest
    from hitl.services import hitl_request_create

    late_call, call_in_time = request_call(project, agent, "late"), request_call(project, agent, "in time")
    ran = request_call(project, agent, "ran")
    agent_approval_decide(approval_id=ran.pk, decider=reviewer, decision="approve")
    agent_approval_start(approval_id=ran.pk, actor=agent)
    output = response_approval_submit(submitter=agent, project_id=project.pk, task_id=ran.task_id, agent_type="coder",
                                      call_approval_id=ran.pk, agent_response={"text": "done"}, tokens_used=10)
    late_question = hitl_request_create(asker=agent, project_id=project.pk, request_type="question", question="A?")
    question_in_time = hitl_request_create(asker=agent, project_id=project.pk, request_type="question", question="B?")
    past = timezone.now() - timedelta(minutes=1)
    AgentCallApproval.objects.filter(pk=late_call.pk).update(expires_at=past)
    ResponseApproval.objects.filter(pk=output.pk).update(expires_at=past)
    HitlRequest.objects.filter(pk=late_question.pk).update(expires_at=past)

    stop, _ = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="drill", actor=manager)

    statuses = {obj.pk: type(obj).objects.get(pk=obj.pk).status
                for obj in (late_call, call_in_time, output, late_question, question_in_time)}
    assert statuses == {late_call.pk: "timed_out", call_in_time.pk: "cancelled", output.pk: "timed_out",
                        late_question.pk: "timed_out", question_in_time.pk: "cancelled"}
    assert set(stop.cancelled_approvals) == {str(call_in_time.pk), str(question_in_time.pk)}
    timed_out = {e.data.get("approval_id") or e.data.get("hitl_request_id")
                 for e in Event.objects.filter(project_id=project.pk, event_type="approval_timed_out")}
    assert {str(late_call.pk), str(output.pk), str(late_question.pk)} <= timed_out, timed_out
    assert {a.action for a in AuditEvent.objects.filter(object_id__in=[str(late_call.pk), str(output.pk),
                                                                       str(late_question.pk)])} >= {
        "agent_approval.time_out", "response_approval.time_out", "hitl_request.time_out"}
    assert HitlRequest.objects.get(pk=late_question.pk).history[-1]["status"] == "timed_out"
    day, month = current_windows(project)
    assert day.reserved_cost == 0 and month.reserved_cost == 0  # every reservation given back


def test_a_stop_with_a_late_reserved_call_and_one_waiting_on_an_override(project, agent, manager):
    """The late call's time-out withdrew overrides and released its reservation, then the other
    calls' cancel withdrew overrides again: 'override' after 'budget_window', a LockOrderError that
    rolled the whole stop back while beat was late on a project over its budget."""
    from decimal import Decimal

    from budgets.models import BudgetOverrideRequest, ProjectBudget
    from budgets.services import current_windows

    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("1.0000")})
    late = request_call(project, agent, "late", estimated_cost="0.5000")
    blocked = request_call(project, agent, "blocked", estimated_cost="0.9000")
    assert late.budget_state == "reserved" and blocked.budget_override_id is not None
    AgentCallApproval.objects.filter(pk=late.pk).update(expires_at=timezone.now() - timedelta(minutes=1))

    stop, _ = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="drill", actor=manager)

    assert AgentCallApproval.objects.get(pk=late.pk).status == "timed_out"
    assert AgentCallApproval.objects.get(pk=blocked.pk).status == "cancelled"
    assert BudgetOverrideRequest.objects.get(pk=blocked.budget_override_id).status != "pending"  # withdrawn
    assert current_windows(project)[0].reserved_cost == 0
    assert Project.objects.get(pk=project.pk).status == "emergency_stopped"


# --- manual stop --------------------------------------------------------------------
def test_manual_stop_halts_everything_and_reports_it(project, agent, reviewer, manager, client_for):
    pending = request_call(project, agent, "a")
    approved = request_call(project, agent, "b")
    agent_approval_decide(approval_id=approved.pk, decider=reviewer, decision="approve")
    running = request_call(project, agent, "c")
    agent_approval_decide(approval_id=running.pk, decider=reviewer, decision="approve")
    agent_approval_start(approval_id=running.pk, actor=agent)
    done = task_create(actor=agent, project_id=project.pk, agent_type="tester", title="done")
    task_report_outcome(actor=agent, task_id=done.pk, status="completed")

    r = client_for(reviewer).post(f"/api/v1/emergency/stop/{project.pk}", {"reason": "agents misbehaving"},
                                  format="json")
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["triggered_conditions"] == ["manual_stop"] and body["stop_reason"] == "agents misbehaving"
    assert body["triggered_by"].startswith("reviewer#") and body["severity"] == "high"
    project.refresh_from_db()
    assert project.status == "emergency_stopped"
    assert set(body["stopped_tasks"]) == {str(pending.task_id), str(approved.task_id), str(running.task_id)}
    assert Task.objects.get(pk=done.pk).status == "completed"  # finished work stays as it was
    assert set(Task.objects.filter(pk__in=body["stopped_tasks"]).values_list("status", flat=True)) == {"halted"}
    assert AgentCallApproval.objects.get(pk=pending.pk).status == "cancelled"
    assert AgentCallApproval.objects.get(pk=approved.pk).status == "cancelled"  # approved, not started
    assert AgentCallApproval.objects.get(pk=running.pk).status == "approved"  # it already ran
    assert set(AgentState.objects.filter(project=project).values_list("status", flat=True)) == {"emergency_stopped"}
    event = Event.objects.get(event_type="emergency_stop_triggered")
    assert event.data["id"] == body["id"] and event.data["triggered_conditions"] == ["manual_stop"]
    assert event.data["triggered_by_name"] == "reviewer"  # as the pages name people (reviewer#7: reviewer)
    # every time in the answer and the event is ISO-8601 UTC written with a "Z", as DRF writes its fields
    assert body["created_at"].endswith("Z") and body["condition_details"][0]["at"].endswith("Z")
    assert event.data["created_at"].endswith("Z")
    assert AuditEvent.objects.filter(action="emergency_stop.trigger", object_id=body["id"]).exists()

    status = client_for(manager).get(f"/api/v1/emergency/status/{project.pk}").json()
    assert status["stopped"] is True and status["active_stop"]["id"] == body["id"]
    assert status["recovery_session"] is None


def test_every_admission_is_423_while_stopped(project, agent, reviewer, client_for):
    pending = request_call(project, agent, "a")
    approved = request_call(project, agent, "b")
    agent_approval_decide(approval_id=approved.pk, decider=reviewer, decision="approve")
    stop, _ = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="x", actor=reviewer)
    agent_c, reviewer_c = client_for(agent), client_for(reviewer)
    task = Task.objects.get(pk=pending.task_id)
    calls = [
        agent_c.post("/api/v1/tasks", {"project_id": str(project.pk), "agent_type": "coder", "title": "new"},
                     format="json"),
        agent_c.post("/api/v1/agent-approvals", {"project_id": str(project.pk), "task_id": str(task.pk),
                                                 "agent_type": "coder", "proposed_action": "x", "input_data": {},
                                                 "estimated_tokens": 1, "estimated_cost": "0.0001"}, format="json"),
        reviewer_c.post(f"/api/v1/agent-approvals/{pending.pk}/respond", {"decision": "approve"}, format="json"),
        agent_c.post(f"/api/v1/agent-approvals/{approved.pk}/start"),
    ]
    for r in calls:
        assert r.status_code == 423, r.content
        assert r.json() == {"error": "emergency_stop", "detail": r.json()["detail"],
                            "emergency_stop_id": str(stop.pk)}
    assert agent_c.get(f"/api/v1/agent-approvals/{pending.pk}").status_code == 200  # reading stays allowed


def test_a_second_trigger_adds_its_condition_to_the_active_stop(project, agent, reviewer, client_for):
    first, created = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="a",
                                            actor=reviewer)
    assert created
    r = client_for(agent).post(f"/api/v1/emergency/stop/{project.pk}", {"reason": "me too", "severity": "critical"},
                               format="json")
    assert r.status_code == 201 and r.json()["id"] == str(first.pk)
    second, created = emergency_stop_trigger(project_id=project.pk, condition="error_rate_high", reason="b")
    assert not created and second.pk == first.pk
    assert second.triggered_conditions == ["manual_stop", "error_rate_high"]
    assert second.severity == "critical" and len(second.condition_details) == 3
    assert EmergencyStop.objects.filter(project=project).count() == 1


def test_an_automatic_condition_tripped_again_is_recorded_sent_and_notified_once(project, agent, reviewer):
    """Found with 30 failures reported at once: each outcome's check saw the project active and tripped
    error_rate_high; the one stop got four emergency_stop_triggered events, four audit rows and four
    webhook alerts for one condition. Again, it adds nothing; a person's second stop is still recorded."""
    first, created = emergency_stop_trigger(project_id=project.pk, condition="error_rate_high", reason="a")
    events = Event.objects.filter(project_id=project.pk, event_type="emergency_stop_triggered").count()
    audits = AuditEvent.objects.filter(project_id=project.pk, action__startswith="emergency_stop.").count()
    for _ in range(3):
        again, created = emergency_stop_trigger(project_id=project.pk, condition="error_rate_high", reason="b")
        assert not created and again.pk == first.pk
    stop = EmergencyStop.objects.get(pk=first.pk)
    assert stop.triggered_conditions == ["error_rate_high"] and len(stop.condition_details) == 1
    assert Event.objects.filter(project_id=project.pk, event_type="emergency_stop_triggered").count() == events
    assert AuditEvent.objects.filter(project_id=project.pk, action__startswith="emergency_stop.").count() == audits
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="me too", actor=reviewer)
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="me three", actor=reviewer)
    assert len(EmergencyStop.objects.get(pk=first.pk).condition_details) == 3  # each person's stop is kept


def test_who_may_stop(project, client_for, make_user, outsider, other_project):
    assert client_for(outsider).post(f"/api/v1/emergency/stop/{project.pk}", {"reason": "x"},
                                     format="json").status_code == 404
    r = client_for(make_user("x", role="agent", project=other_project)).post(
        f"/api/v1/emergency/stop/{project.pk}", {"reason": "x"}, format="json")
    assert r.status_code == 404
    r = client_for(make_user("y", role="agent", project=project)).post(
        f"/api/v1/emergency/stop/{project.pk}", {"reason": ""}, format="json")
    assert r.status_code == 400  # a reason is required
    assert Project.objects.get(pk=project.pk).status == "active"


def test_a_critical_risk_flag_stops_the_project(project, agent, client_for):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="t")
    r = client_for(agent).post("/api/v1/agent-approvals", {
        "project_id": str(project.pk), "task_id": str(task.pk), "agent_type": "coder",
        "proposed_action": "Clean up the server with rm -rf / --no-preserve-root", "input_data": {},
        "estimated_tokens": 10, "estimated_cost": "0.0010"}, format="json")
    assert r.status_code == 423 and r.json()["error"] == "emergency_stop"
    stop = EmergencyStop.objects.get(project=project)
    assert stop.triggered_conditions == ["security_threat"] and stop.severity == "critical"
    attempted = AgentCallApproval.objects.get(project=project)
    assert attempted.status == "cancelled" and attempted.risk_assessment["level"] == "critical"


def test_critical_risk_does_not_stop_when_disabled(project, agent):
    settings_row = emergency_settings_for(project.pk)
    settings_row.stop_on_critical_risk = False
    settings_row.save()
    approval = request_call(project, agent, proposed_action="rm -rf / --no-preserve-root")
    assert approval.status == "pending" and approval.risk_assessment["level"] == "critical"
    assert Project.objects.get(pk=project.pk).status == "active"


# --- automatic conditions (the clock is a parameter: no sleeps) -----------------------
@pytest.fixture
def outcomes_without_inline_check(monkeypatch):
    """For tests of the conditions' arithmetic at chosen instants: outcomes are recorded without
    the inline check that task_report_outcome runs (projects.task_outcome_reported)."""
    from projects.hooks import task_outcome_reported

    monkeypatch.setattr(task_outcome_reported, "_handlers", [lambda **kwargs: None])


def _outcomes(project, agent, statuses, at, kind=""):
    for status in statuses:
        task = task_create(actor=agent, project_id=project.pk, agent_type="tester", title=status)
        task_report_outcome(actor=agent, task_id=task.pk, status=status, error_kind=kind if status == "failed" else "")
        Task.objects.filter(pk=task.pk).update(finished_at=at)


@pytest.fixture
def small_windows(project):
    row = emergency_settings_for(project.pk)
    row.error_rate_threshold, row.error_window_count, row.error_window_seconds, row.error_min_outcomes = \
        "0.500", 10, 300, 10
    row.save()
    return row


def test_error_rate_trips_above_the_threshold_and_not_at_it(project, agent, small_windows,
                                                           outcomes_without_inline_check):
    now = timezone.now()
    _outcomes(project, agent, ["completed"] * 5, now - timedelta(seconds=20))
    _outcomes(project, agent, ["failed"] * 5, now - timedelta(seconds=10))
    assert conditions_check(project_id=project.pk, now=now) == []  # 50 %: not above 50 %
    _outcomes(project, agent, ["failed"], now - timedelta(seconds=5))  # last 10: 6 of 10; 300 s: 6 of 11
    trips = conditions_check(project_id=project.pk, now=now)
    assert [t.condition for t in trips] == ["error_rate_high"]
    assert EmergencyStop.objects.get(project=project).triggered_conditions == ["error_rate_high"]


def test_error_rate_needs_enough_outcomes(project, agent, small_windows):
    now = timezone.now()
    _outcomes(project, agent, ["failed"] * 9, now)  # 100 % but only 9 outcomes
    assert conditions_check(project_id=project.pk, now=now) == []


def test_error_rate_needs_both_windows(project, agent, small_windows):
    now = timezone.now()
    _outcomes(project, agent, ["failed"] * 10, now - timedelta(hours=1))  # old failures: count window only
    _outcomes(project, agent, ["completed"] * 10, now - timedelta(seconds=1))
    assert conditions_check(project_id=project.pk, now=now) == []
    _outcomes(project, agent, ["failed"] * 10, now - timedelta(hours=2))
    assert conditions_check(project_id=project.pk, now=now + timedelta(seconds=400)) == []  # time window empty


def test_cancelled_tasks_are_neither_successes_nor_failures_to_the_error_rate(project, agent, small_windows,
                                                                           outcomes_without_inline_check):
    now = timezone.now()
    _outcomes(project, agent, ["failed"] * 6, now - timedelta(seconds=10))
    _outcomes(project, agent, ["cancelled"] * 20, now - timedelta(seconds=5))  # abandoned after refusals
    assert conditions_check(project_id=project.pk, now=now) == []  # 6 rated outcomes: fewer than the 10 needed
    _outcomes(project, agent, ["completed"] * 4, now - timedelta(seconds=8))
    # the last 10 rated outcomes are 6 failed and 4 completed, whatever was cancelled after them
    assert [t.condition for t in conditions_check(project_id=project.pk, now=now)] == ["error_rate_high"]


def test_task_outcomes_check_the_error_rate_inline(project, agent, small_windows, client_for):
    client = client_for(agent)
    for i in range(10):
        task = task_create(actor=agent, project_id=project.pk, agent_type="tester", title=str(i))
        r = client.post(f"/api/v1/tasks/{task.pk}/status", {"status": "failed", "error": "boom"}, format="json")
        assert r.status_code == 200
    assert Project.objects.get(pk=project.pk).status == "emergency_stopped"
    assert EmergencyStop.objects.get(project=project).triggered_conditions == ["error_rate_high"]


def test_resource_exhaustion_by_pending_approvals(project, agent):
    row = emergency_settings_for(project.pk)
    row.max_pending_approvals = 2
    row.save()
    for i in range(2):
        request_call(project, agent, str(i))
    assert conditions_check(project_id=project.pk) == []  # at the limit
    request_call(project, agent, "one too many")
    assert [t.condition for t in conditions_check(project_id=project.pk)] == ["resource_exhaustion"]


def test_calls_past_their_deadline_trip_no_condition(project, agent):
    """Found with the time-out sweep's queue down (and in the 10 s between a deadline and the
    sweep): two calls past their deadline and a third one made resource_exhaustion stop the project
    ("3 pending approvals (limit 2)") for calls nobody could decide any more; a critical call past
    its deadline, switched on later, tripped security_threat."""
    row = emergency_settings_for(project.pk)
    row.max_pending_approvals, row.stop_on_critical_risk = 2, False
    row.save()
    late = [request_call(project, agent, str(i)) for i in range(2)]
    late.append(request_call(project, agent, "critical", proposed_action="rm -rf / --no-preserve-root"))
    AgentCallApproval.objects.filter(pk__in=[c.pk for c in late]).update(
        expires_at=timezone.now() - timedelta(seconds=1))  # past due; the sweep has not run
    request_call(project, agent, "the one still waiting")
    row.stop_on_critical_risk = True
    row.save()
    assert conditions_check(project_id=project.pk) == []
    assert AgentCallApproval.objects.filter(project=project, status="pending").count() == 4  # nothing touched
    request_call(project, agent, "one more")
    request_call(project, agent, "and one too many")
    assert [t.condition for t in conditions_check(project_id=project.pk)] == ["resource_exhaustion"]


def test_resource_exhaustion_by_rate_limit_failures(project, agent, outcomes_without_inline_check):
    row = emergency_settings_for(project.pk)
    row.rate_limit_errors_threshold, row.rate_limit_window_seconds, row.error_min_outcomes = 3, 60, 1000
    row.save()
    now = timezone.now()
    _outcomes(project, agent, ["failed"] * 2, now - timedelta(seconds=5), kind="rate_limit")
    _outcomes(project, agent, ["failed"] * 5, now - timedelta(seconds=5), kind="other")
    assert conditions_check(project_id=project.pk, now=now) == []
    _outcomes(project, agent, ["failed"], now - timedelta(seconds=1), kind="quota")
    assert [t.condition for t in conditions_check(project_id=project.pk, now=now)] == ["resource_exhaustion"]


def test_beat_task_checks_every_active_project(project, agent, small_windows, outcomes_without_inline_check):
    from emergency.tasks import emergency_check_conditions_task

    _outcomes(project, agent, ["failed"] * 10, timezone.now() - timedelta(seconds=1))
    assert emergency_check_conditions_task.delay().get() == 1
    assert emergency_check_conditions_task.delay().get() == 0  # stopped projects are not re-checked


# --- the gate under concurrency -------------------------------------------------------
def _race_the_stop(project, agent, reviewer) -> dict:
    """Threads keep requesting, approving and starting calls while another stops the project.
    Returns what happened after the stop committed."""
    from core.errors import EmergencyStopActive

    stop_committed = {}
    outcomes = []  # (kind, finished_at, admitted)
    go = threading.Event()

    def agent_loop(n):
        try:
            go.wait()
            for i in range(n):
                try:
                    task_id = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=str(i)).pk
                    outcomes.append(("task", timezone.now(), True))
                    a = agent_approval_request(requester=agent, project_id=project.pk, task_id=task_id,
                                               agent_type="coder", proposed_action="write code", input_data={},
                                               estimated_tokens=1, estimated_cost="0.0001")
                    outcomes.append(("request", timezone.now(), True))
                    agent_approval_decide(approval_id=a.pk, decider=reviewer, decision="approve")
                    outcomes.append(("decide", timezone.now(), True))
                    agent_approval_start(approval_id=a.pk, actor=agent)
                    outcomes.append(("start", timezone.now(), True))
                except EmergencyStopActive:
                    outcomes.append(("refused", timezone.now(), False))
                except Exception as exc:  # a call cancelled by the stop between two steps: 409
                    outcomes.append((type(exc).__name__, timezone.now(), False))
        finally:
            connections.close_all()

    def stopper():
        try:
            go.wait()
            threading.Event().wait(0.05)
            emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="race", actor=reviewer)
            stop_committed["at"] = timezone.now()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=agent_loop, args=(10,)) for _ in range(6)]
    threads.append(threading.Thread(target=stopper))
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join()
    stop = EmergencyStop.objects.get(project=project)
    return {
        "decided_after_stop": AgentCallApproval.objects.filter(project=project, responded_at__gt=stop.created_at).count(),
        "started_after_stop": AgentCallApproval.objects.filter(project=project, started_at__gt=stop.created_at).count(),
        "admitted_after_commit": sum(1 for kind, at, ok in outcomes if ok and at > stop_committed["at"]),
        "refused": sum(1 for kind, at, ok in outcomes if kind == "refused"),
        "admitted": sum(1 for kind, at, ok in outcomes if ok),
        "left_open": AgentCallApproval.objects.filter(project=project).filter(
            status="pending").count() + AgentCallApproval.objects.filter(
            project=project, status="approved", started_at__isnull=True).count(),
    }


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_nothing_is_admitted_after_the_stop_commits(project, agent, reviewer):
    """Afterwards no approval has responded_at or started_at later than the stop, every call
    after its commit got 423, and nothing admitted before it is left open."""
    result = _race_the_stop(project, agent, reviewer)
    assert result["admitted"] > 0 and result["refused"] > 0  # the race really ran both ways
    assert result["decided_after_stop"] == result["started_after_stop"] == 0
    assert result["admitted_after_commit"] == 0
    assert result["left_open"] == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_race_test_fails_without_the_gate(project, agent, reviewer, monkeypatch):
    """The same race with the gate's check removed (the row is still locked, the stopped
    status is not refused): work is admitted after the stop, which the test above catches."""
    import projects.uow

    monkeypatch.setattr(projects.uow, "_gate", lambda project: None)  # the unit of work's 423 check
    result = _race_the_stop(project, agent, reviewer)
    assert result["admitted_after_commit"] > 0 or result["decided_after_stop"] > 0 or result["started_after_stop"] > 0


# --- alerts -----------------------------------------------------------------------------
def test_a_stop_alerts_by_signed_webhook_and_email(project, reviewer, mailoutbox,
                                                   django_capture_on_commit_callbacks):
    import hashlib
    import hmac
    import json as jsonlib

    from projects.models import ProjectNotifier
    from projects.tests.test_notifications import _Receiver

    receiver = _Receiver(200)
    try:
        ProjectNotifier.objects.create(project=project, kind="webhook", target=receiver.url + "/hook", secret="k3y")
        ProjectNotifier.objects.create(project=project, kind="email", target="oncall@example.com")
        with django_capture_on_commit_callbacks(execute=True):
            stop, _ = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="alert test",
                                             actor=reviewer)
    finally:
        receiver.close()
    [hook] = receiver.requests
    body = jsonlib.loads(hook["body"])
    assert body["event_type"] == "emergency_stop_triggered" and body["data"]["id"] == str(stop.pk)
    timestamp = hook["headers"]["X-HITL-Timestamp"]
    expected = hmac.new(b"k3y", timestamp.encode() + b"." + hook["body"], hashlib.sha256).hexdigest()
    assert hook["headers"]["X-HITL-Signature"] == f"sha256={expected}"
    [mail] = mailoutbox
    assert mail.to == ["oncall@example.com"] and "Emergency stop of demo" in mail.subject
    assert "alert test" in mail.body


# --- found in review ----------------------------------------------------------------------
def test_a_critical_call_with_an_idempotency_key_still_stops_the_project(project, agent, client_for):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="t")
    body = {"project_id": str(project.pk), "task_id": str(task.pk), "agent_type": "coder",
            "proposed_action": "rm -rf / --no-preserve-root", "input_data": {}, "estimated_tokens": 1,
            "estimated_cost": "0.0001"}
    r = client_for(agent).post("/api/v1/agent-approvals", body, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert r.status_code == 423
    stop = EmergencyStop.objects.get(project=project)
    assert r.json()["emergency_stop_id"] == str(stop.pk)
    assert Project.objects.get(pk=project.pk).status == "emergency_stopped"


def test_a_new_condition_during_a_recovery_voids_its_plan(project, reviewer, manager, client_for):
    from recovery.services import recovery_start

    emergency_stop_trigger(project_id=project.pk, condition="error_rate_high", reason="errors")
    session = recovery_start(project_id=project.pk, actor=manager, recovery_type="manual")
    r = client_for(reviewer).post(f"/api/v1/emergency/stop/{project.pk}", {"reason": "leaked key"}, format="json")
    assert r.status_code == 201
    session.refresh_from_db()
    assert session.status == "failed"
    # live clients learn it from the events, as they learn of a rejected step
    feed = client_for(reviewer).get(f"/api/v1/events?project_id={project.pk}").json()["results"]
    failed = [e for e in feed if e["event_type"] == "recovery_step_completed"]
    assert [(e["data"]["session_id"], e["data"]["status"], e["data"]["condition"]) for e in failed] == [
        (str(session.pk), "failed", "manual_stop")]
    assert "start a new one" in failed[0]["data"]["reason"]
    step = session.steps.order_by("order").first()
    r = client_for(reviewer).post(f"/api/v1/recovery/{session.pk}/steps/{step.pk}/respond", {"decision": "approve"},
                                  format="json")
    assert r.status_code == 409
    fresh = recovery_start(project_id=project.pk, actor=manager, recovery_type="manual")
    assert "review_flagged" in [s.action for s in fresh.steps.all()]  # planned for manual_stop too


def test_a_finished_task_cannot_have_its_call_approved_or_started(project, agent, reviewer):
    from core.errors import TransitionError

    pending = request_call(project, agent, "a")
    task_report_outcome(actor=agent, task_id=pending.task_id, status="failed", error="gave up")
    with pytest.raises(TransitionError):
        agent_approval_decide(approval_id=pending.pk, decider=reviewer, decision="approve")
    approved = request_call(project, agent, "b")
    agent_approval_decide(approval_id=approved.pk, decider=reviewer, decision="approve")
    task_report_outcome(actor=agent, task_id=approved.task_id, status="completed")
    with pytest.raises(TransitionError):
        agent_approval_start(approval_id=approved.pk, actor=agent)


def test_zero_minimum_outcomes_does_not_crash_the_check(project, agent):
    row = emergency_settings_for(project.pk)
    row.error_min_outcomes = 0
    row.save()
    assert conditions_check(project_id=project.pk) == []


def test_a_plain_worker_consumes_the_emergency_queue():
    from botarmy_hitl.celery import app

    assert {q.name for q in app.amqp.queues.values()} >= {"celery", "emergency"}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_stop_and_the_time_out_sweep_do_not_deadlock(project, agent, reviewer):
    from approvals.services import agent_approval_expire_overdue

    calls = [request_call(project, agent, f"x{i}") for i in range(40)]
    AgentCallApproval.objects.filter(pk__in=[c.pk for c in calls]).update(
        expires_at=timezone.now() - timedelta(seconds=1))
    errors, go = [], threading.Barrier(2)

    def run(fn):
        try:
            go.wait()
            fn()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(agent_approval_expire_overdue,)),
               threading.Thread(target=run, args=(lambda: emergency_stop_trigger(
                   project_id=project.pk, condition="manual_stop", reason="race", actor=reviewer),))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Project.objects.get(pk=project.pk).status == "emergency_stopped"
    assert not AgentCallApproval.objects.filter(project=project, status="pending").exists()


def test_a_stop_writes_each_cancelled_call_output_and_questions_own_event_after_its_own(
        project, agent, reviewer, client_for):
    """A dashboard counting pending work by its events saw what a stop cancelled pending for ever:
    only the stop's event listed them. Each now has its own decided event (status cancelled), after
    the stop's event (agents and pages learn of the stop first), and the feed serves them in order."""
    from decimal import Decimal

    from approvals.services import (agent_approval_decide, agent_approval_request, agent_approval_start,
                                    response_approval_submit)
    from events.models import Event
    from hitl.services import hitl_request_create
    from projects.services import task_create

    def call(title):
        task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=title)
        return agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                      proposed_action=f"do {title}", input_data={}, estimated_tokens=10,
                                      estimated_cost=Decimal("0.0100"))

    pending = [call("one"), call("two")]
    ran = call("three")
    agent_approval_decide(approval_id=ran.pk, decider=reviewer, decision="approve")
    agent_approval_start(approval_id=ran.pk, actor=agent)
    output = response_approval_submit(
        submitter=agent, project_id=project.pk, task_id=ran.task_id, agent_type="coder", call_approval_id=ran.pk,
        agent_response={"files": [{"path": "a.py", "content": "x = 1\n"}]}, response_summary="done",
        next_steps=["test"], tokens_used=5, actual_cost=Decimal("0.0010"))
    question = hitl_request_create(asker=agent, project_id=project.pk, request_type="question", question="Go on?")
    before = Event.objects.order_by("-id").values_list("id", flat=True).first()

    stop, _ = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="drill", actor=reviewer)

    events = list(Event.objects.filter(id__gt=before).order_by("id"))
    assert events[0].event_type == "emergency_stop_triggered"
    decided = {(e.event_type, e.data.get("approval_id") or e.data.get("hitl_request_id")): e for e in events[1:]}
    assert set(decided) == {("agent_approval_decided", str(pending[0].pk)), ("agent_approval_decided", str(pending[1].pk)),
                            ("response_approval_decided", str(output.pk)), ("hitl_decided", str(question.pk))}
    assert all(e.data["status"] == "cancelled" for e in decided.values())
    assert decided[("agent_approval_decided", str(pending[0].pk))].task_id == pending[0].task_id
    assert "emergency stop" in decided[("agent_approval_decided", str(pending[0].pk))].data["rejection_reason"]
    feed = client_for(reviewer).get(f"/api/v1/events?project_id={project.pk}&after={before}").json()
    assert [e["id"] for e in feed["results"]] == [e.id for e in events]


def test_a_stops_statements_do_not_grow_with_the_questions_it_cancels(project, other_project, agent, reviewer,
                                                                      make_user):
    """Each cancelled question's event names who asked: read with the locked rows, not one user
    read per question while the stop holds the project; and the questions are updated in one
    statement, not one each."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from hitl.services import hitl_request_create

    other_agent = make_user("agent2", role="agent", project=other_project)
    other_reviewer = make_user("reviewer2", role="reviewer", project=other_project)
    hitl_request_create(asker=agent, project_id=project.pk, request_type="question", question="one?")
    for i in range(5):
        hitl_request_create(asker=other_agent, project_id=other_project.pk, request_type="question", question=f"{i}?")
    counts = []
    for where, who in ((project, reviewer), (other_project, other_reviewer)):
        with CaptureQueriesContext(connection) as queries:
            emergency_stop_trigger(project_id=where.pk, condition="manual_stop", reason="drill", actor=who)
        counts.append(len(queries.captured_queries))
    assert counts[0] == counts[1], counts


@pytest.mark.parametrize("started", [True, False])
def test_a_halted_task_takes_no_outcome_report_its_recovery_settles_it(project, agent, reviewer, manager, client_for,
                                                                        started):
    """An agent reported a halted task whose call had run "cancelled" (200) while "failed" was
    refused: a run hidden from the error rate and from the person settling the halted tasks."""
    call = request_call(project, agent, "ran" if started else "asked")
    if started:
        agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
        agent_approval_start(approval_id=call.pk, actor=agent)
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="drill", actor=manager)
    client = client_for(agent)
    trail = AuditEvent.objects.count()
    for status in ("cancelled", "failed", "completed"):
        r = client.post(f"/api/v1/tasks/{call.task_id}/status", {"status": status}, format="json")
        assert r.status_code == 409, (status, r.content)
        assert r.json()["status"] == "halted" and "recovery" in r.json()["detail"], r.json()
    assert Task.objects.get(pk=call.task_id).status == "halted" and AuditEvent.objects.count() == trail


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_beats_check_goes_on_after_the_database_ended_its_connection(project, other_project, agent, make_user,
                                                                      monkeypatch):
    """Found by an operator: pg_terminate_backend (a restart, a failover) during beat's pass failed
    every later project's check of that pass on the dead connection (a traceback each, nothing could
    trip, "0" reported). The lost connection is replaced and the checks go on: both projects past
    their limit are stopped in the same pass."""
    import psycopg

    from emergency import conditions

    other_agent = make_user("other-agent", role="agent", project=other_project)
    for owner, where in ((agent, project), (other_agent, other_project)):
        row = emergency_settings_for(where.pk)
        row.max_pending_approvals = 1
        row.save()
        for i in range(2):
            request_call(where, owner, f"{where.slug} {i}")
    params = connections["default"].get_connection_params()
    admin = psycopg.connect(**{k: v for k, v in params.items() if k in ("dbname", "user", "host", "port", "password")},
                            autocommit=True)
    real_check, ended = conditions.conditions_check, []

    def check_after_the_server_ends_the_connection(**kwargs):
        if not ended:  # the first project's check: its connection ended under it
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pid = cursor.fetchone()[0]
            ended.append(admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0])
        return real_check(**kwargs)

    monkeypatch.setattr(conditions, "conditions_check", check_after_the_server_ends_the_connection)
    try:
        assert conditions.conditions_check_all() == 2
        assert ended == [True]
        assert set(Project.objects.values_list("status", flat=True)) == {"emergency_stopped"}
    finally:
        connections["default"].close()
        admin.close()
