"""The services of questions and checkpoints: ask, respond, cancel, time out, and a stop."""
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from access.services import role_grant
from audit.models import AuditEvent
from core.errors import EmergencyStopActive, Expired, Forbidden, InvalidInput, TransitionError
from emergency.services import emergency_stop_trigger
from events.models import Event
from hitl.models import HitlRequest
from hitl.selectors import pending_for_reviewer
from hitl.services import (
    hitl_request_cancel,
    hitl_request_create,
    hitl_request_expire_overdue,
    hitl_request_respond,
    hitl_request_time_out,
    hitl_request_warn_due,
)
from hitl.tasks import hitl_expire_overdue_task, hitl_warn_due_task

pytestmark = pytest.mark.django_db
Status = HitlRequest.Status


def events(kind):
    return list(Event.objects.filter(event_type=kind).order_by("id"))


def audits(action):
    return list(AuditEvent.objects.filter(action=action))


def expire(req):
    HitlRequest.objects.filter(pk=req.pk).update(expires_at=timezone.now() - timedelta(seconds=1))


# --- ask -----------------------------------------------------------------------------------------
def test_create_records_the_request_its_history_audit_row_and_event(ask, agent, task, project):
    with_task = ask(task_id=task.pk, request_type="checkpoint", question="The plan is ready, go on?",
                    context={"plan": ["a", "b"]}, timeout_minutes=5)
    assert with_task.status == Status.PENDING and with_task.task_id == task.pk
    assert with_task.asked_by == agent and with_task.timeout_minutes == 5
    assert timedelta(minutes=4) < with_task.expires_at - timezone.now() <= timedelta(minutes=5)
    assert [(h["status"], h["by"]) for h in with_task.history] == [("pending", "agent")]
    [event] = events("hitl_requested")
    assert event.data["hitl_request_id"] == str(with_task.pk) and event.task_id == task.pk
    assert event.data["request_type"] == "checkpoint" and event.data["status"] == "pending"
    json.loads(json.dumps(event.data))
    assert len(audits("hitl_request.create")) == 1


def test_only_an_agent_role_may_ask(ask, reviewer):
    with pytest.raises(Forbidden):
        ask(asker=reviewer)
    assert not HitlRequest.objects.exists()


def test_the_task_must_belong_to_the_project(ask, other_project, admin_user):
    from projects.services import task_create

    foreign = task_create(actor=admin_user, project_id=other_project.pk, agent_type="coder", title="elsewhere")
    with pytest.raises(InvalidInput) as err:
        ask(task_id=foreign.pk)
    assert "task_id" in err.value.extra["fields"]


@pytest.mark.parametrize("options, ok", [
    (["PostgreSQL", "SQLite"], True),
    ([f"o{i}" for i in range(20)], True),
    ([f"o{i}" for i in range(21)], False),
    (["a", "a"], False),
    (["a", "  "], False),
    (["a", 3], False),
    ("a,b", False),
])
def test_options_are_at_most_twenty_unique_non_empty_strings(ask, options, ok):
    if ok:
        assert ask(options=options).options == options
    else:
        with pytest.raises(InvalidInput) as err:
            ask(options=options)
        assert "options" in err.value.extra["fields"]


def test_asking_is_refused_with_423_while_the_project_is_stopped(ask, project, manager):
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="test", actor=manager)
    with pytest.raises(EmergencyStopActive):
        ask()
    assert not HitlRequest.objects.exists()


# --- respond -------------------------------------------------------------------------------------
@pytest.mark.parametrize("action, to", [("approve", "approved"), ("reject", "rejected"), ("amend", "amended")])
def test_respond_approve_reject_amend(ask, reviewer, action, to):
    req = ask()
    kwargs = {"amended_content": {"use": "PostgreSQL 16"}} if action == "amend" else {}
    done = hitl_request_respond(request_id=req.pk, responder=reviewer, action=action, response="because", **kwargs)
    req.refresh_from_db()
    assert req.status == to == done.status
    assert req.responded_by == reviewer and req.responded_at is not None and req.response == "because"
    assert req.amended_content == ({"use": "PostgreSQL 16"} if action == "amend" else None)
    assert [(h["status"], h["by"], h["note"]) for h in req.history] == [
        ("pending", "agent", "question asked"), (to, "reviewer", "because")]
    [event] = events("hitl_decided")
    assert event.data["status"] == to and event.data["responded_by"] == "reviewer"
    assert len(audits(f"hitl_request.{action}")) == 1


def test_amend_accepts_text_and_needs_amended_content(ask, reviewer):
    req = ask()
    with pytest.raises(InvalidInput):
        hitl_request_respond(request_id=req.pk, responder=reviewer, action="amend")
    with pytest.raises(InvalidInput):
        hitl_request_respond(request_id=req.pk, responder=reviewer, action="approve", amended_content="x")
    done = hitl_request_respond(request_id=req.pk, responder=reviewer, action="amend", amended_content="use MySQL")
    assert done.status == Status.AMENDED and done.amended_content == "use MySQL"


def test_a_question_with_options_is_approved_with_one_of_them(ask, reviewer):
    req = ask(options=["PostgreSQL", "SQLite"])
    for bad in ("", "MySQL"):
        with pytest.raises(InvalidInput) as err:
            hitl_request_respond(request_id=req.pk, responder=reviewer, action="approve", response=bad)
        assert "response" in err.value.extra["fields"]
    req.refresh_from_db()
    assert req.status == Status.PENDING and len(req.history) == 1
    assert not events("hitl_decided")
    done = hitl_request_respond(request_id=req.pk, responder=reviewer, action="approve", response="PostgreSQL")
    assert done.status == Status.APPROVED and done.response == "PostgreSQL"


def test_reject_may_carry_a_free_text_reason_even_with_options(ask, reviewer):
    req = ask(options=["PostgreSQL", "SQLite"])
    done = hitl_request_respond(request_id=req.pk, responder=reviewer, action="reject", response="ask the team")
    assert done.status == Status.REJECTED and done.response == "ask the team"


def test_exactly_one_decision_wins(ask, reviewer, manager):
    req = ask()
    hitl_request_respond(request_id=req.pk, responder=reviewer, action="approve")
    with pytest.raises(TransitionError) as err:
        hitl_request_respond(request_id=req.pk, responder=manager, action="reject")
    assert err.value.status_code == 409 and err.value.extra["status"] == "approved"
    req.refresh_from_db()
    assert req.status == Status.APPROVED and req.responded_by == reviewer and len(req.history) == 2
    assert len(events("hitl_decided")) == 1


def test_the_asker_and_an_agent_role_may_not_respond(ask, agent, make_user, project):
    req = ask()
    other_agent = make_user("agent2", role="agent", project=project)
    for who in (agent, other_agent):
        with pytest.raises(Forbidden):
            hitl_request_respond(request_id=req.pk, responder=who, action="approve")
    # a reviewer who also holds the agent role and asked may not answer their own request either
    both = make_user("both", role="agent", project=project)
    role_grant(user=both, project=project, role="reviewer")
    own = ask(asker=both)
    with pytest.raises(Forbidden):
        hitl_request_respond(request_id=own.pk, responder=both, action="approve")
    assert HitlRequest.objects.filter(status=Status.PENDING).count() == 2


def test_after_expires_at_an_answer_is_410_and_the_request_times_out(ask, reviewer):
    req = ask()
    expire(req)
    with pytest.raises(Expired) as err:
        hitl_request_respond(request_id=req.pk, responder=reviewer, action="approve")
    assert err.value.status_code == 410
    req.refresh_from_db()
    assert req.status == Status.TIMED_OUT and req.responded_by is None
    assert [h["status"] for h in req.history] == ["pending", "timed_out"] and req.history[-1]["by"] == "system"
    [event] = events("approval_timed_out")
    assert event.data["hitl_request_id"] == str(req.pk) and event.data["kind"] == "hitl"
    with pytest.raises(Expired):  # and again: still 410, nothing new
        hitl_request_respond(request_id=req.pk, responder=reviewer, action="reject")
    assert len(events("approval_timed_out")) == 1


def test_the_beat_sweep_times_out_each_due_request_exactly_once(ask, reviewer):
    due, fresh = ask(), ask(question="Still open?")
    expire(due)
    assert hitl_expire_overdue_task.delay().get() == 1
    assert hitl_request_expire_overdue() == 0
    assert hitl_request_time_out(request_id=due.pk) is False
    due.refresh_from_db(), fresh.refresh_from_db()
    assert due.status == Status.TIMED_OUT and fresh.status == Status.PENDING
    assert len(events("approval_timed_out")) == 1 and len(audits("hitl_request.time_out")) == 1
    assert [h["status"] for h in due.history] == ["pending", "timed_out"]


def test_the_sweep_is_in_the_beat_schedule(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["hitl-expire-overdue"]
    assert entry["task"] == hitl_expire_overdue_task.name == "hitl.expire_overdue"


def test_a_timeout_warning_is_sent_once_when_a_fifth_is_left(ask, reviewer, settings):
    req, answered = ask(timeout_minutes=10), ask(question="Answered in time?", timeout_minutes=10)
    hitl_request_respond(request_id=answered.pk, responder=reviewer, action="approve")
    assert hitl_request_warn_due(now=req.expires_at - timedelta(minutes=3)) == 0   # 3 of 10 left
    assert hitl_warn_due_task.delay().get() == 0                                  # beat's sweep, now
    assert hitl_request_warn_due(now=req.expires_at - timedelta(minutes=2)) == 1  # 2 of 10 left: not the answered
    assert hitl_request_warn_due(now=req.expires_at - timedelta(minutes=1)) == 0  # once
    [warning] = events("approval_timeout_warning")
    assert warning.data["hitl_request_id"] == str(req.pk) and warning.data["kind"] == "hitl"
    assert warning.data["seconds_left"] == 120 and warning.data["status"] == "pending"
    assert settings.CELERY_BEAT_SCHEDULE["hitl-warn-due"]["task"] == hitl_warn_due_task.name == "hitl.warn_due"


# --- cancel --------------------------------------------------------------------------------------
def test_the_asker_cancels_once(ask, agent, reviewer):
    req = ask()
    with pytest.raises(Forbidden):
        hitl_request_cancel(request_id=req.pk, actor=reviewer)
    done = hitl_request_cancel(request_id=req.pk, actor=agent, reason="not needed any more")
    again = hitl_request_cancel(request_id=req.pk, actor=agent)
    assert done.status == again.status == Status.CANCELLED
    req.refresh_from_db()
    assert [(h["status"], h["note"]) for h in req.history][-1] == ("cancelled", "not needed any more")
    assert len(req.history) == 2 and len(audits("hitl_request.cancel")) == 1
    answered = ask()
    hitl_request_respond(request_id=answered.pk, responder=reviewer, action="approve")
    with pytest.raises(TransitionError):
        hitl_request_cancel(request_id=answered.pk, actor=agent)


# --- emergency stop ------------------------------------------------------------------------------
def test_a_stop_cancels_pending_requests(ask, reviewer, manager, project):
    pending, answered = ask(), ask(question="Done?")
    hitl_request_respond(request_id=answered.pk, responder=reviewer, action="approve")
    stop, _ = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="halt", actor=manager)
    pending.refresh_from_db(), answered.refresh_from_db()
    assert pending.status == Status.CANCELLED and answered.status == Status.APPROVED
    assert pending.history[-1] == {**pending.history[-1], "status": "cancelled", "by": "system",
                                   "note": "emergency stop"}
    assert str(pending.pk) in stop.cancelled_approvals and str(answered.pk) not in stop.cancelled_approvals
    with pytest.raises(EmergencyStopActive):
        hitl_request_respond(request_id=pending.pk, responder=reviewer, action="approve")


# --- the reviewer inbox ------------------------------------------------------------------------
def test_pending_for_reviewer(ask, agent, reviewer, manager, outsider, admin_user, make_user, project):
    soon, later = ask(timeout_minutes=5), ask(timeout_minutes=60, question="Later?")
    expired = ask(question="Too late?")
    expire(expired)
    answered = ask(question="Answered?")
    hitl_request_respond(request_id=answered.pk, responder=reviewer, action="approve")
    own = ask(asker=make_user("agent_reviewer", role="agent", project=project))  # 30 minutes
    role_grant(user=own.asked_by, project=project, role="reviewer")
    assert list(pending_for_reviewer(reviewer)) == [soon, own, later]  # the soonest to expire first
    assert list(pending_for_reviewer(own.asked_by)) == [soon, later]   # never one's own
    assert list(pending_for_reviewer(manager)) == [soon, own, later]
    assert list(pending_for_reviewer(admin_user)) == [soon, own, later]
    assert list(pending_for_reviewer(agent)) == []
    assert list(pending_for_reviewer(outsider)) == []


def test_create_validates_its_arguments(ask):
    with pytest.raises(InvalidInput):
        ask(request_type="poll")
    with pytest.raises(InvalidInput):
        ask(question="   ")
    with pytest.raises(InvalidInput):
        ask(timeout_minutes=24 * 60 + 1)
    assert hitl_request_create  # the service is importable from hitl.services
