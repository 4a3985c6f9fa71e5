"""Response approvals through the API: an agent's output waits for a person, with the analyzer's
findings, settles the call's budget exactly once, and a critical finding stops the project."""
import asyncio
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator
from django.utils import timezone

from access.services import api_key_create
from approvals.models import AgentCallApproval, FlagLabel, FlagSuppression, ResponseApproval, RuleSetting
from approvals.services import (
    response_approval_decide,
    response_approval_expire_overdue,
    response_approval_warn_due,
    rule_precision,
    rule_setting_save,
)
from approvals.tasks import approval_warn_due_task
from audit.models import AuditEvent
from core.errors import Forbidden, InvalidInput
from budgets.models import UsageEntry
from emergency.services import emergency_stop_trigger
from events.models import Event
from projects.models import Project
from projects.services import task_create

pytestmark = pytest.mark.django_db

GITHUB_TOKEN = "ghp_" + "Zq8Lm2Xv9Rt4Wb7Nc1Kd5Hf3Jg6Ps0Ya2Ue8"   # made up: the right shape, never a real key


@pytest.fixture
def started(agent_client, reviewer_client, request_body):
    """A call the agent requested, a reviewer approved and the agent started; returns a maker of
    more such calls (each on a new task) and the first one's JSON."""
    def make(task_id=None):
        body = request_body() if task_id is None else request_body(task_id=str(task_id))
        r = agent_client.post("/api/v1/agent-approvals", body, format="json")
        assert r.status_code == 201, r.content
        call_id = r.json()["approval_id"]
        assert reviewer_client.post(f"/api/v1/agent-approvals/{call_id}/respond", {"decision": "approve"},
                                    format="json").status_code == 200
        r = agent_client.post(f"/api/v1/agent-approvals/{call_id}/start")
        assert r.status_code == 200, r.content
        return r.json()
    return make


def response_body(call, **overrides):
    body = {"project_id": call["project_id"], "task_id": call["task_id"], "agent_type": call["agent_type"],
            "original_call_approval_id": call["approval_id"],
            "agent_response": {"files": [{"path": "src/LoginForm.tsx",
                                          "content": "export function LoginForm() {\n  return <form />;\n}\n"}],
                               "explanation": "A controlled login form."},
            "response_summary": "Login form component", "next_steps": ["Write the tests for the form"],
            "tokens_used": 900, "actual_cost": "0.0080"}
    body.update(overrides)
    return body


def submit(client, call, **overrides):
    return client.post("/api/v1/response-approvals", response_body(call, **overrides), format="json")


def report_usage(client, call, tokens_used, actual_cost=None):
    body = {"tokens_used": tokens_used, **({"actual_cost": actual_cost} if actual_cost is not None else {})}
    return client.post(f"/api/v1/agent-approvals/{call['approval_id']}/usage", body, format="json")


def respond(client, approval_id, **body):
    return client.post(f"/api/v1/response-approvals/{approval_id}/respond", body, format="json")


def spent_tokens(project):
    return sum(e.spent_tokens for e in UsageEntry.objects.filter(project=project))


def test_lifecycle_submit_review_approve(started, agent_client, reviewer_client, project, task):
    call = started()
    r = submit(agent_client, call)
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["status"] == "pending" and body["original_call_approval_id"] == call["approval_id"]
    assert body["risk_flags"] == [] and body["safety_score"] == 1.0 and 0 < body["confidence_score"] <= 1
    assert set(body["quality_metrics"]) >= {"completeness", "consistency", "code_quality"}
    assert body["analysis"]["tools"]["detect-secrets"]          # pinned tool versions recorded
    assert body["tokens_used"] == 900 and body["actual_cost"] == "0.0080"
    task.refresh_from_db()
    assert task.status == "waiting_for_hitl"
    # the call's reservation is settled with the reported usage
    assert AgentCallApproval.objects.get(pk=call["approval_id"]).budget_state == "settled"
    assert spent_tokens(project) == 900
    assert Event.objects.filter(event_type="response_approval_requested").count() == 1
    assert AuditEvent.objects.filter(action="response_approval.submit", object_id=body["approval_id"]).exists()

    r = respond(reviewer_client, body["approval_id"], decision="approve")
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "approved" and r.json()["approved_by"] == "reviewer"
    task.refresh_from_db()
    assert task.status == "running"      # the agent goes on, then reports the task's outcome
    decided = Event.objects.get(event_type="response_approval_decided")
    assert decided.data["status"] == "approved"
    got = agent_client.get(f"/api/v1/response-approvals/{body['approval_id']}")
    assert got.status_code == 200 and got.json()["status"] == "approved"


def test_output_of_a_call_not_approved_and_started_is_409(agent_client, reviewer_client, request_body):
    r = agent_client.post("/api/v1/agent-approvals", request_body(), format="json")
    call = r.json()
    assert submit(agent_client, call).json()["status"] == "pending"     # the call's status
    assert submit(agent_client, call).status_code == 409
    respond_call = reviewer_client.post(f"/api/v1/agent-approvals/{call['approval_id']}/respond",
                                        {"decision": "approve"}, format="json")
    assert respond_call.status_code == 200
    r = submit(agent_client, call)           # approved, not started
    assert r.status_code == 409 and r.json()["error"] == "conflict"
    assert ResponseApproval.objects.count() == 0


@pytest.mark.parametrize("outcome", ["completed", "failed"])
def test_the_output_of_a_task_reported_finished_is_409_and_changes_nothing(started, agent_client, project, outcome):
    """It was taken (201) while its task stayed finished: a rejection could neither send the task
    back nor stop the output from being used, and the task could not be redone."""
    call = started()
    assert agent_client.post(f"/api/v1/tasks/{call['task_id']}/status", {"status": outcome},
                             format="json").status_code == 200
    r = submit(agent_client, call)
    assert r.status_code == 409 and r.json()["error"] == "conflict", r.content
    assert r.json()["task_status"] == outcome and f"Its task is {outcome}" in r.json()["detail"]
    assert ResponseApproval.objects.count() == 0 and spent_tokens(project) == 0  # nothing changed
    assert report_usage(agent_client, call, 900, "0.0080").status_code == 200    # its usage is still taken


def test_one_response_per_call_and_usage_settled_exactly_once(started, agent_client, project):
    call = started()
    assert submit(agent_client, call).status_code == 201
    again = submit(agent_client, call, tokens_used=5000)
    assert again.status_code == 409 and again.json()["status"] == "pending"
    assert ResponseApproval.objects.count() == 1
    assert spent_tokens(project) == 900
    assert UsageEntry.objects.filter(approval_id=call["approval_id"], kind="settle").count() == 1


def test_usage_reported_first_is_not_counted_twice(started, agent_client, project):
    call = started()
    assert report_usage(agent_client, call, 700, "0.0050").status_code == 200
    assert submit(agent_client, call).status_code == 201   # reports 900 tokens in all: 200 more land
    assert spent_tokens(project) == 900
    lower = report_usage(agent_client, call, 800)
    assert lower.status_code == 409 and lower.json()["tokens_used"] == 900   # a total never shrinks
    assert spent_tokens(project) == 900


def test_a_response_below_the_usage_already_reported_is_409_and_changes_nothing(started, agent_client, project):
    call = started()
    assert report_usage(agent_client, call, 1200, "0.0100").status_code == 200
    lower = submit(agent_client, call)  # 900 tokens, 0.0080: below the totals on record
    assert lower.status_code == 409, lower.content
    assert lower.json()["tokens_used"] == 1200 and lower.json()["actual_cost"] == "0.0100"
    assert ResponseApproval.objects.count() == 0 and spent_tokens(project) == 1200
    same = submit(agent_client, call, tokens_used=1200, actual_cost="0.0100")  # the totals again: taken
    assert same.status_code == 201 and same.json()["tokens_used"] == 1200 and spent_tokens(project) == 1200


def test_a_response_without_a_cost_is_never_below_a_cost_reported_before(started, agent_client, project):
    """No actual_cost: the server prices the tokens; that price never counts as less than the cost
    the agent reported through .../usage (it was a 409 for totals the agent never sent)."""
    call = started()
    assert report_usage(agent_client, call, 700, "5.0000").status_code == 200
    body = response_body(call, tokens_used=900)
    del body["actual_cost"]
    r = agent_client.post("/api/v1/response-approvals", body, format="json")
    assert r.status_code == 201, r.content
    assert spent_tokens(project) == 900
    # what landed stays, and only the 200 new tokens are priced (a hundredth of a cent here)
    assert Decimal("5.0000") < sum(e.spent_cost for e in UsageEntry.objects.filter(
        approval_id=call["approval_id"])) <= Decimal("5.0002")


def test_a_stopped_project_answers_423_even_for_totals_below_those_reported(started, agent_client, project, manager):
    call = started()
    assert report_usage(agent_client, call, 1200, "0.0100").status_code == 200
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="halt", actor=manager)
    r = submit(agent_client, call)  # 900 tokens: below, but the project is stopped
    assert r.status_code == 423 and r.json()["error"] == "emergency_stop"
    assert spent_tokens(project) == 1200 and ResponseApproval.objects.count() == 0


def test_cost_is_priced_from_the_calls_model_when_omitted(started, agent_client):
    call = started()
    body = response_body(call)
    del body["actual_cost"]
    r = agent_client.post("/api/v1/response-approvals", body, format="json")
    assert r.status_code == 201, r.content
    assert Decimal(r.json()["actual_cost"]) > 0


def test_bad_input_is_400_and_changes_nothing(started, agent_client, project):
    call = started()
    for bad in ({"agent_response": "not an object"}, {"next_steps": "one string"}, {"tokens_used": -1},
                {"task_id": "not-a-uuid"}, {"actual_cost": "abc"}):
        r = submit(agent_client, call, **bad)
        assert r.status_code == 400 and r.json()["error"] == "invalid", (bad, r.content)
    other_task = task_create(actor=project_admin(project), project_id=project.pk, agent_type="coder", title="x")
    r = submit(agent_client, call, task_id=str(other_task.pk))
    assert r.status_code == 400 and "task_id" in r.json()["fields"]
    assert ResponseApproval.objects.count() == 0 and spent_tokens(project) == 0


def project_admin(project):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.get(username="admin")


def test_permissions(started, agent_client, make_user, project, client_for, outsider):
    call = started()
    other_agent = client_for(make_user("agent2", role="agent", project=project))
    r = submit(other_agent, call)
    assert r.status_code == 403                         # only the agent that ran the call submits
    assert submit(client_for(outsider), call).status_code == 404       # not their project: no existence leak
    response = submit(agent_client, call).json()
    assert client_for(outsider).get(f"/api/v1/response-approvals/{response['approval_id']}").status_code == 404
    assert respond(agent_client, response["approval_id"], decision="approve").status_code == 403
    assert respond(client_for(outsider), response["approval_id"], decision="approve").status_code == 404
    assert ResponseApproval.objects.get(pk=response["approval_id"]).status == "pending"


def test_the_submitter_cannot_decide_its_own_output(project, make_user, client_for, admin_user):
    both = make_user("both", role="agent", project=project)
    from access.services import role_grant

    role_grant(user=both, project=project, role="reviewer")
    me, rev = client_for(both), client_for(make_user("rev2", role="reviewer", project=project))
    t = task_create(actor=both, project_id=project.pk, agent_type="coder", title="t")
    call = me.post("/api/v1/agent-approvals", {"project_id": str(project.pk), "task_id": str(t.pk),
                                               "agent_type": "coder", "proposed_action": "Write it",
                                               "input_data": {}, "model": "gpt-4o-mini"}, format="json").json()
    assert rev.post(f"/api/v1/agent-approvals/{call['approval_id']}/respond", {"decision": "approve"},
                    format="json").status_code == 200
    assert me.post(f"/api/v1/agent-approvals/{call['approval_id']}/start").status_code == 200
    response = submit(me, call).json()
    assert respond(me, response["approval_id"], decision="approve").status_code == 403
    assert respond(rev, response["approval_id"], decision="approve").status_code == 200


def test_reject_through_the_api_without_a_reason(started, agent_client, reviewer_client, task):
    """API.md marks `reason?` optional on a response's decision (unlike a call's, where reject
    needs one); the reviewers' pages still ask for one."""
    response = submit(agent_client, started()).json()
    r = respond(reviewer_client, response["approval_id"], decision="reject")
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "rejected" and r.json()["rejection_reason"] == ""
    assert reviewer_client.get(f"/api/v1/response-approvals/{response['approval_id']}").json()["status"] == "rejected"


def test_a_reviewer_page_still_needs_a_reason_to_reject(started, agent_client, reviewer, task):
    response = submit(agent_client, started()).json()
    with pytest.raises(InvalidInput):
        response_approval_decide(approval_id=response["approval_id"], decider=reviewer, decision="reject")
    assert ResponseApproval.objects.get(pk=response["approval_id"]).status == "pending"


def test_reject_with_a_reason_and_exactly_one_decision_wins(started, agent_client, reviewer_client, manager,
                                                            client_for, task):
    response = submit(agent_client, started()).json()
    r = respond(reviewer_client, response["approval_id"], decision="reject", reason="Wrong component")
    assert r.status_code == 200 and r.json()["rejection_reason"] == "Wrong component"
    second = respond(client_for(manager), response["approval_id"], decision="approve")
    assert second.status_code == 409 and second.json()["status"] == "rejected"
    assert second.json()["decided_by"] == "reviewer" and "rejected (by reviewer at " in second.json()["detail"]
    task.refresh_from_db()
    assert task.status == "pending"


def test_requires_modification_loop_and_its_cap(started, agent_client, reviewer_client, settings, task):
    settings.HITL_RESPONSE_MAX_MODIFICATION_ROUNDS = 2
    rounds = []
    for i in range(3):
        call = started(task_id=task.pk)
        response = submit(agent_client, call).json()
        rounds.append(response["modification_round"])
        r = respond(reviewer_client, response["approval_id"], decision="requires_modification")
        assert r.status_code == 400 and "modifications_required" in r.json()["fields"]
        r = respond(reviewer_client, response["approval_id"], decision="requires_modification",
                    modifications_required=["Add input validation", "Use the design system's Button"])
        if i < 2:
            assert r.status_code == 200, r.content
            assert r.json()["status"] == "requires_modification"
            assert r.json()["modifications_required"] == ["Add input validation", "Use the design system's Button"]
            task.refresh_from_db()
            assert task.status == "pending"      # ready for a new call approval
            assert submit(agent_client, call).status_code == 409   # the redo needs a new call
        else:   # the cap: the third round must be approved or rejected
            assert r.status_code == 409 and r.json()["modification_round"] == 2
            assert respond(reviewer_client, response["approval_id"], decision="approve").status_code == 200
    assert rounds == [0, 1, 2]


def test_outputs_of_calls_run_side_by_side_are_sent_back_no_more_than_the_cap(started, agent_client, reviewer_client,
                                                                               settings, task):
    """Each output's round was fixed when it was submitted: three outputs of one task, submitted
    before any was decided, each passed a cap of 2, and the task was sent back three times."""
    settings.HITL_RESPONSE_MAX_MODIFICATION_ROUNDS = 2
    outputs = [submit(agent_client, started(task_id=task.pk)).json() for _ in range(3)]
    assert [output["modification_round"] for output in outputs] == [0, 0, 0]
    answers = [respond(reviewer_client, output["approval_id"], decision="requires_modification",
                       modifications_required="Use the design system's Button") for output in outputs]
    assert [a.status_code for a in answers] == [200, 200, 409], [a.content for a in answers]
    assert answers[2].json()["modification_round"] == 2 and "already sent back 2 times" in answers[2].json()["detail"]
    assert ResponseApproval.objects.filter(task=task, status="requires_modification").count() == 2
    assert respond(reviewer_client, outputs[2]["approval_id"], decision="reject", reason="no").status_code == 200


def test_decision_after_expiry_is_410_and_beat_times_out_once(started, agent_client, reviewer_client, task):
    first = submit(agent_client, started()).json()
    ResponseApproval.objects.filter(pk=first["approval_id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    r = respond(reviewer_client, first["approval_id"], decision="approve")
    assert r.status_code == 410 and r.json()["status"] == "timed_out"
    assert respond(reviewer_client, first["approval_id"], decision="approve").status_code == 410

    t2 = task_create(actor=project_admin(task.project), project_id=task.project_id, agent_type="coder", title="b")
    second = submit(agent_client, started(task_id=t2.pk)).json()
    assert response_approval_expire_overdue() == 0
    later = timezone.now() + timedelta(hours=2)
    assert response_approval_expire_overdue(now=later) == 1
    assert response_approval_expire_overdue(now=later) == 0
    assert ResponseApproval.objects.get(pk=second["approval_id"]).status == "timed_out"
    [event] = Event.objects.filter(event_type="approval_timed_out", data__approval_id=second["approval_id"])
    assert event.data["kind"] == "response_approval"


def test_a_timeout_warning_is_sent_once_when_a_fifth_is_left(started, agent_client, reviewer_client, task):
    pending = submit(agent_client, started()).json()
    row = ResponseApproval.objects.get(pk=pending["approval_id"])
    expires, fifth = row.expires_at, timedelta(minutes=row.timeout_minutes) / 5  # HITL_RESPONSE_TIMEOUT_MINUTES
    assert response_approval_warn_due(now=expires - fifth - timedelta(seconds=1)) == 0  # more than a fifth left
    assert approval_warn_due_task.delay().get() == 0                                    # beat's sweep, now
    assert response_approval_warn_due(now=expires - fifth) == 1                         # a fifth left
    assert response_approval_warn_due(now=expires - fifth / 2) == 0                     # once
    [warning] = Event.objects.filter(event_type="approval_timeout_warning")
    assert warning.data["kind"] == "response_approval" and warning.data["approval_id"] == pending["approval_id"]
    assert warning.data["seconds_left"] == fifth.total_seconds() and warning.task_id == task.pk

    t2 = task_create(actor=project_admin(task.project), project_id=task.project_id, agent_type="coder", title="b")
    decided = submit(agent_client, started(task_id=t2.pk)).json()
    assert respond(reviewer_client, decided["approval_id"], decision="approve").status_code == 200
    assert response_approval_warn_due(now=expires + timedelta(minutes=1)) == 0  # decided, or past its time
    assert Event.objects.filter(event_type="approval_timeout_warning").count() == 1


def test_a_critical_finding_raises_safety_alert_and_stops_the_project(started, agent_client, project):
    call = started()
    leaked = {"files": [{"path": "deploy/config.py", "content": f'GITHUB_TOKEN = "{GITHUB_TOKEN}"\n'}]}
    r = submit(agent_client, call, agent_response=leaked)
    assert r.status_code == 423 and r.json()["error"] == "emergency_stop", r.content
    project.refresh_from_db()
    assert project.status == Project.Status.EMERGENCY_STOPPED
    stop_event = Event.objects.get(event_type="emergency_stop_triggered")
    assert "security_threat" in stop_event.data["triggered_conditions"]
    alert = Event.objects.get(event_type="safety_alert", data__source="response")
    assert any(f["severity"] == "critical" for f in alert.data["flags"])
    assert GITHUB_TOKEN not in json.dumps(alert.data)          # never the raw secret
    response = ResponseApproval.objects.get()
    assert response.status == "cancelled"                        # on record, held back by the stop
    assert GITHUB_TOKEN not in json.dumps(response.risk_flags) + json.dumps(response.analysis)
    assert spent_tokens(project) == 900                          # the usage still counts


def test_the_recovery_reviews_the_output_that_tripped_the_stop(started, agent_client, reviewer_client, project,
                                                               manager, reviewer, client_for, client):
    harmless = started()
    call = started(task_id=task_create(actor=project_admin(project), project_id=project.pk, agent_type="coder",
                                       title="b").pk)
    assert submit(agent_client, harmless).status_code == 201  # cancelled by the stop too, but not flagged
    leaked = {"files": [{"path": "deploy/config.py", "content": f'GITHUB_TOKEN = "{GITHUB_TOKEN}"\n'}]}
    assert submit(agent_client, call, agent_response=leaked).status_code == 423
    flagged = ResponseApproval.objects.get(agent_call_approval_id=call["approval_id"])
    r = client_for(manager).post(f"/api/v1/emergency/recovery/{project.pk}", {"recovery_type": "manual"},
                                 format="json")
    assert r.status_code == 201, r.content
    session = r.json()
    assert session["assessment"]["open_flags"] == [str(flagged.pk)]
    review = session["recovery_plan"]["steps"][0]
    assert review["action"] == "review_flagged" and "outputs" in review["description"]

    client.force_login(reviewer)  # the recovery page names what to review, with a link, before it is approved
    html = client.get(f"/review/recovery/{session['id']}").content.decode()
    assert f'href="/review/response-approvals/{flagged.pk}"' in html and "critical risk" in html
    assert str(harmless["approval_id"]) not in html

    r = reviewer_client.post(f"/api/v1/recovery/{session['id']}/steps/{review['step_id']}/respond",
                             {"decision": "approve"}, format="json")
    assert r.status_code == 200, r.content
    [reviewed] = r.json()["recovery_plan"]["steps"][0]["result"]["reviewed"]
    assert reviewed["kind"] == "response" and reviewed["approval_id"] == str(flagged.pk)
    assert reviewed["risk_level"] == "critical" and reviewed["proposed_action"] == call["proposed_action"]
    assert reviewed["flags"] and GITHUB_TOKEN not in json.dumps(reviewed)


def test_a_stop_cancels_pending_responses_and_later_submissions_get_423(started, agent_client, reviewer_client,
                                                                         project, task):
    first = submit(agent_client, started()).json()
    t2 = task_create(actor=project_admin(project), project_id=project.pk, agent_type="coder", title="b")
    second_call = started(task_id=t2.pk)
    r = reviewer_client.post(f"/api/v1/emergency/stop/{project.pk}", {"reason": "drill"}, format="json")
    assert r.status_code == 201, r.content
    assert ResponseApproval.objects.get(pk=first["approval_id"]).status == "cancelled"
    late = submit(agent_client, second_call)
    assert late.status_code == 423
    assert ResponseApproval.objects.count() == 1
    assert spent_tokens(project) == 1800      # the running call's usage is still recorded
    assert respond(reviewer_client, first["approval_id"], decision="approve").status_code == 423


@pytest.mark.django_db(transaction=True)
def test_wait_returns_when_decided(started, agent_client, reviewer, agent):
    response = submit(agent_client, started()).json()
    _, key = api_key_create(user=agent, name="wait")

    async def wait_and_decide():
        from botarmy_hitl.asgi import application

        comm = HttpCommunicator(application, "GET",
                                f"/api/v1/response-approvals/{response['approval_id']}/wait?timeout=10",
                                headers=[(b"host", b"localhost"), (b"authorization", f"Bearer {key}".encode())])
        waiter = asyncio.ensure_future(comm.get_response(timeout=15))
        await asyncio.sleep(0.3)
        assert not waiter.done()
        from channels.db import database_sync_to_async

        await database_sync_to_async(response_approval_decide)(approval_id=response["approval_id"], decider=reviewer,
                                                               decision="approve")
        return await waiter

    got = async_to_sync(wait_and_decide)()
    assert got["status"] == 200
    assert json.loads(got["body"])["status"] == "approved"


def test_project_list_filters(started, agent_client, reviewer_client, project):
    response = submit(agent_client, started()).json()
    r = reviewer_client.get(f"/api/v1/response-approvals/project/{project.pk}?status=pending")
    assert r.status_code == 200 and r.json()["count"] == 1
    assert r.json()["results"][0]["approval_id"] == response["approval_id"]
    assert reviewer_client.get(f"/api/v1/response-approvals/project/{project.pk}?status=approved").json()[
        "count"] == 0
    assert reviewer_client.get(f"/api/v1/response-approvals/project/{project.pk}?status=nope").status_code == 400


def _flagged_response(agent_client, call):
    # a medium/high but not critical finding: a link to an IP address outside the allow list
    text = "Fetch the fixtures from http://198.51.100.23/fixtures.json before running the tests."
    r = submit(agent_client, call, agent_response={"files": [{"path": "README.md", "content": text}],
                                                   "explanation": text})
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["risk_flags"], body
    return body


def test_decisions_label_flags_and_rules_report_precision(started, agent_client, reviewer_client, project, task):
    body = _flagged_response(agent_client, started())
    assert respond(reviewer_client, body["approval_id"], decision="approve").status_code == 200
    labels = FlagLabel.objects.filter(object_id=body["approval_id"])
    assert labels.count() == len(body["risk_flags"])
    assert {label.outcome for label in labels} == {"false_alarm"}
    t2 = task_create(actor=project_admin(project), project_id=project.pk, agent_type="coder", title="b")
    second = _flagged_response(agent_client, started(task_id=t2.pk))
    assert respond(reviewer_client, second["approval_id"], decision="reject", reason="no raw IPs").status_code == 200
    rows = {r["code"]: r for r in rule_precision(project_ids=[project.pk])}
    code = body["risk_flags"][0]["code"]
    per_response = sum(f["code"] == code for f in body["risk_flags"])    # one label per flag (and location)
    assert rows[code]["confirmed"] == per_response and rows[code]["false_alarms"] == per_response
    assert rows[code]["precision"] == 0.5


def test_reviewer_suppression_moves_a_finding_out_of_the_score(started, agent_client, reviewer_client, project,
                                                               task):
    body = _flagged_response(agent_client, started())
    flag = body["risk_flags"][0]
    suppress = {"project_id": str(project.pk), "approval_id": body["approval_id"], "code": flag["code"],
                "fingerprint": flag["fingerprint"], "reason": "Our CI fixture host", "days": 7}
    assert agent_client.post("/api/v1/flag-suppressions", suppress, format="json").status_code == 403
    bad = reviewer_client.post("/api/v1/flag-suppressions", {**suppress, "fingerprint": "0" * 16}, format="json")
    assert bad.status_code == 400
    r = reviewer_client.post("/api/v1/flag-suppressions", suppress, format="json")
    assert r.status_code == 201, r.content
    assert AuditEvent.objects.filter(action="analyzer_flag.suppress").count() == 1
    assert respond(reviewer_client, body["approval_id"], decision="reject", reason="redo").status_code == 200
    again = _flagged_response_maybe_clean(agent_client, started(task_id=task.pk))
    assert flag["fingerprint"] not in {f.get("fingerprint") for f in again["risk_flags"]}
    assert flag["fingerprint"] in {f.get("fingerprint") for f in again["analysis"]["suppressed_flags"]}
    assert again["safety_score"] > body["safety_score"]
    # revoked: it counts again
    sid = r.json()["id"]
    assert reviewer_client.post(f"/api/v1/flag-suppressions/{sid}/revoke").status_code == 200
    assert FlagSuppression.objects.get(pk=sid).revoked_at is not None


def _flagged_response_maybe_clean(agent_client, call):
    text = "Fetch the fixtures from http://198.51.100.23/fixtures.json before running the tests."
    r = submit(agent_client, call, agent_response={"files": [{"path": "README.md", "content": text}],
                                                   "explanation": text})
    assert r.status_code == 201, r.content
    return r.json()


def test_agent_written_suppressions_do_not_hide_a_finding(started, agent_client, project):
    code = ('import subprocess\n\ndef run(cmd):\n'
            '    return subprocess.call(cmd, shell=True)  # nosec B602 pragma: allowlist secret\n')
    body = submit(agent_client, started(), agent_response={"code": code, "explanation": "false positive, ignore"})
    assert body.status_code == 201, body.content
    assert any(f["code"].startswith("code.") for f in body.json()["risk_flags"]), body.json()["risk_flags"]


def test_a_manager_turns_a_noisy_rule_to_observe(started, agent_client, reviewer, manager, project, task):
    body = _flagged_response(agent_client, started())
    code = body["risk_flags"][0]["code"]
    with pytest.raises(Forbidden):
        rule_setting_save(actor=reviewer, project_id=project.pk, code=code, mode="observe", threshold=0)
    rule_setting_save(actor=manager, project_id=project.pk, code=code, mode="observe", threshold=0)
    assert RuleSetting.objects.get(project=project, code=code).mode == "observe"
    assert AuditEvent.objects.filter(action="analyzer_rule.update").count() == 1
    response_approval_decide(approval_id=body["approval_id"], decider=manager, decision="reject", reason="x")
    again = _flagged_response_maybe_clean(agent_client, started(task_id=task.pk))
    assert code not in {f["code"] for f in again["risk_flags"]}
    assert code in {f["code"] for f in again["analysis"]["observed_flags"]}


def test_links_to_the_projects_allowed_hosts_are_not_flagged(started, agent_client, client_for, manager, project,
                                                              reviewer_client, task):
    manager_client = client_for(manager)
    text = "Deploy notes: see https://docs.orbitcart.io/runbooks/deploy and https://paste.evilcdn.io/x"
    r = manager_client.patch(f"/api/v1/projects/{project.pk}", {"allowed_link_hosts": ["OrbitCart.io"]},
                             format="json")
    assert r.status_code == 200 and r.json()["allowed_link_hosts"] == ["orbitcart.io"], r.content
    assert manager_client.patch(f"/api/v1/projects/{project.pk}", {"allowed_link_hosts": ["https://x.io/a"]},
                                format="json").status_code == 400
    assert reviewer_client.patch(f"/api/v1/projects/{project.pk}", {"allowed_link_hosts": []},
                                 format="json").status_code == 403
    body = submit(agent_client, started(), agent_response={"files": [{"path": "NOTES.md", "content": text}]})
    assert body.status_code == 201, body.content
    flagged = " ".join(f["message"] for f in body.json()["risk_flags"] if f["code"].startswith("link."))
    assert "paste.evilcdn.io" in flagged and "orbitcart.io" not in flagged


def test_beat_rechecks_pending_outputs_with_a_critical_flag(started, agent_client, project):
    from emergency.conditions import conditions_check
    from emergency.services import emergency_settings_for

    settings_row = emergency_settings_for(project.pk)
    settings_row.stop_on_critical_risk = False
    settings_row.save()
    leaked = {"files": [{"path": "config.py", "content": f'GITHUB_TOKEN = "{GITHUB_TOKEN}"\n'}]}
    r = submit(agent_client, started(), agent_response=leaked)
    assert r.status_code == 201 and r.json()["analysis"]["level"] == "critical"     # held for review, no stop
    assert Event.objects.filter(event_type="safety_alert", data__source="response").count() == 1
    project.refresh_from_db()
    assert project.status == "active"
    settings_row.stop_on_critical_risk = True
    settings_row.save()
    trips = conditions_check(project_id=project.pk)
    assert [t.condition for t in trips] == ["security_threat"]
    project.refresh_from_db()
    assert project.status == "emergency_stopped"
    assert ResponseApproval.objects.get().status == "cancelled"


def test_blank_modifications_are_refused_and_a_repeated_suppression_is_one_row(started, agent_client,
                                                                                reviewer_client, project):
    body = _flagged_response(agent_client, started())
    for blank in ("   ", [], [""], {}, 0, False, True, [None], [{}], {"  ": None}, {"": ""}):
        r = respond(reviewer_client, body["approval_id"], decision="requires_modification",
                    modifications_required=blank)
        assert r.status_code == 400, (blank, r.content)
    flag = body["risk_flags"][0]
    suppress = {"project_id": str(project.pk), "approval_id": body["approval_id"], "code": flag["code"],
                "fingerprint": flag["fingerprint"], "reason": "known host"}
    first = reviewer_client.post("/api/v1/flag-suppressions", suppress, format="json")
    again = reviewer_client.post("/api/v1/flag-suppressions", suppress, format="json")
    assert first.status_code == again.status_code == 201 and first.json()["id"] == again.json()["id"]
    assert FlagSuppression.objects.count() == 1
    # another reason was answered 201 with the first one's, dropping what was asked
    r = reviewer_client.post("/api/v1/flag-suppressions", {**suppress, "reason": "known host, for a year",
                                                            "days": 365}, format="json")
    assert r.status_code == 409 and r.json()["suppression_id"] == first.json()["id"], r.content
    assert r.json()["status"] == "active" and "revoke it first" in r.json()["detail"]
    row = FlagSuppression.objects.get()
    assert (row.reason, row.expires_at.isoformat()[:10]) == ("known host", first.json()["expires_at"][:10])
    renewals = AuditEvent.objects.filter(action="analyzer_flag.suppress", object_id=str(row.pk))
    assert renewals.count() == 1
    # the same asked again days later is the same suppression, lasting the 30 days asked from now
    # (it kept its first end: 28 days left for "30 days")
    FlagSuppression.objects.filter(pk=row.pk).update(created_at=row.created_at - timedelta(days=2),
                                                     expires_at=row.expires_at - timedelta(days=2))
    r = reviewer_client.post("/api/v1/flag-suppressions", suppress, format="json")
    assert r.status_code == 201 and r.json()["id"] == first.json()["id"], r.content
    row.refresh_from_db()
    assert timedelta(days=29, hours=23) < row.expires_at - timezone.now() <= timedelta(days=30)
    assert r.json()["expires_at"] == row.expires_at.isoformat().replace("+00:00", "Z")
    assert renewals.count() == 2 and FlagSuppression.objects.count() == 1
    # a retry right after the renewal changes nothing (no row, no audit line)
    assert reviewer_client.post("/api/v1/flag-suppressions", suppress, format="json").status_code == 201
    assert renewals.count() == 2
    # longer: the same row ends later; shorter than what holds: 409, it would be dropped
    r = reviewer_client.post("/api/v1/flag-suppressions", {**suppress, "days": 90}, format="json")
    assert r.status_code == 201 and r.json()["id"] == first.json()["id"], r.content
    row.refresh_from_db()
    assert timedelta(days=89, hours=23) < row.expires_at - timezone.now() <= timedelta(days=90)
    r = reviewer_client.post("/api/v1/flag-suppressions", suppress, format="json")
    assert r.status_code == 409 and "shorter time" in r.json()["detail"], r.content
    assert FlagSuppression.objects.get().expires_at == row.expires_at
    assert reviewer_client.post(f"/api/v1/flag-suppressions/{row.pk}/revoke").status_code == 200
    r = reviewer_client.post("/api/v1/flag-suppressions", {**suppress, "days": 7}, format="json")
    assert r.status_code == 201 and r.json()["id"] != first.json()["id"]
    # the project's list: active and past, newest first, paginated as the approval lists are
    listed = agent_client.get(f"/api/v1/flag-suppressions/project/{project.pk}").json()
    assert listed["count"] == 2 and [x["id"] for x in listed["results"]] == [r.json()["id"], first.json()["id"]]
    assert [x["revoked_at"] is None for x in listed["results"]] == [True, False]
    one = agent_client.get(f"/api/v1/flag-suppressions/project/{project.pk}?page_size=1&page=2").json()
    assert [x["id"] for x in one["results"]] == [first.json()["id"]] and one["previous"] and not one["next"]
    bad = agent_client.get(f"/api/v1/flag-suppressions/project/{project.pk}?page=x")
    assert bad.status_code == 400 and "page" in bad.json()["fields"]


def test_event_payloads_mask_secrets_written_in_the_summary(started, agent_client):
    r = submit(agent_client, started(), response_summary=f"Used the token {GITHUB_TOKEN} to clone")
    event = Event.objects.get(event_type="response_approval_requested")
    assert GITHUB_TOKEN not in json.dumps(event.data)
    assert "Used the token ghp_" in event.data["response_summary"]
    assert r.status_code == 423          # the summary is analyzed too: a live token in it stops the project
    assert GITHUB_TOKEN not in json.dumps(Event.objects.get(event_type="safety_alert", data__source="response").data)


def test_the_agent_type_must_be_the_calls(started, agent_client):
    r = submit(agent_client, started(), agent_type="tester")
    assert r.status_code == 400 and "agent_type" in r.json()["fields"]
    assert ResponseApproval.objects.count() == 0


@pytest.mark.parametrize("code", ["secert", "secert.github_token", "Secret.x", ".secret"])
def test_a_rule_code_no_analyzer_reports_is_refused(manager, project, code):
    from core.errors import InvalidInput

    with pytest.raises(InvalidInput) as refused:
        rule_setting_save(actor=manager, project_id=project.pk, code=code, mode="observe", threshold=0)
    assert "No analyzer reports" in refused.value.extra["fields"]["code"][0]
    assert not RuleSetting.objects.exists()


@pytest.mark.parametrize("code", ["analyzer", "analyzer.timeout", "risk.scan_truncated", "risk"])
def test_the_pipelines_fail_closed_flags_get_no_rule(manager, project, code):
    from core.errors import InvalidInput

    with pytest.raises(InvalidInput) as refused:
        rule_setting_save(actor=manager, project_id=project.pk, code=code, mode="observe", threshold=0)
    assert "never observed or suppressed" in refused.value.extra["fields"]["code"][0]


@pytest.mark.parametrize("code", ["secret", "secret.github_token", "pii.email", "code", "link.ip_literal",
                                  "unicode", "exfil", "injection", "destructive", "deploy", "cost",
                                  "completeness", "consistency"])
def test_every_family_an_analyzer_reports_may_be_set(manager, project, code):
    rule_setting_save(actor=manager, project_id=project.pk, code=code, mode="observe", threshold=0)
    assert RuleSetting.objects.get(project=project).code == code


@pytest.mark.parametrize("said", [{"max_lines": 50}, {"a": 1}, [1], ["shorter"], {"steps": [{"drop": True}]}])
def test_modifications_said_as_json_with_numbers_are_taken(started, agent_client, reviewer_client, said):
    """"Text or JSON": an object naming what must change was refused when its values were numbers
    or booleans (only non-blank strings counted)."""
    body = submit(agent_client, started()).json()
    r = respond(reviewer_client, body["approval_id"], decision="requires_modification", modifications_required=said)
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "requires_modification" and r.json()["modifications_required"] == said


def test_no_read_shows_an_output_pending_past_its_deadline_while_beat_is_late(started, agent_client, reviewer_client):
    call = started()
    output = submit(agent_client, call).json()
    ResponseApproval.objects.filter(pk=output["approval_id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert reviewer_client.get(f"/api/v1/response-approvals/{output['approval_id']}").json()["status"] == "timed_out"
    second = submit(agent_client, started()).json()
    ResponseApproval.objects.filter(pk=second["approval_id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    listed = agent_client.get(f"/api/v1/response-approvals/project/{call['project_id']}?status=pending").json()
    assert listed["count"] == 0, listed
    assert response_approval_expire_overdue() == 0  # nothing left for beat
