"""Ten reviewers answer one request at once, in real threads on PostgreSQL: exactly one wins,
the others get 409, and the history, audit trail and outbox record one decision."""
import threading

import pytest
from django.db import connections

from audit.models import AuditEvent
from audit.services import audit_verify
from core.errors import TransitionError
from events.models import Event
from hitl.models import HitlRequest
from hitl.services import hitl_request_create, hitl_request_respond

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def run_all(threads, timeout=120):
    """Start the threads together and wait for them; none may hang (a deadlock)."""
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "a worker hung (deadlock?)"


def test_ten_reviewers_answer_one_request_at_once_exactly_one_wins(project, agent, make_user):
    reviewers = [make_user(f"rev{i}", role="reviewer", project=project) for i in range(10)]
    req = hitl_request_create(asker=agent, project_id=project.pk, request_type="question",
                              question="Which database?", options=["PostgreSQL", "SQLite"])
    barrier = threading.Barrier(len(reviewers))
    wins, conflicts, errors = [], [], []

    def answer(i, reviewer):
        try:
            barrier.wait(timeout=30)
            action = ("approve", "reject", "amend")[i % 3]
            hitl_request_respond(request_id=req.pk, responder=reviewer, action=action,
                                 response="PostgreSQL" if action == "approve" else "",
                                 amended_content={"use": "pg"} if action == "amend" else None)
            wins.append(reviewer.username)
        except TransitionError as exc:
            conflicts.append(exc.status_code)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)
        finally:
            connections.close_all()

    run_all([threading.Thread(target=answer, args=(i, r)) for i, r in enumerate(reviewers)])
    assert not errors, errors
    assert len(wins) == 1 and conflicts == [409] * 9
    req.refresh_from_db()
    assert req.responded_by.username == wins[0] and req.status in ("approved", "rejected", "amended")
    assert [h["status"] for h in req.history] == ["pending", req.status]
    assert Event.objects.filter(event_type="hitl_decided").count() == 1
    assert AuditEvent.objects.filter(action__startswith="hitl_request.", object_id=str(req.pk)).count() == 2
    assert HitlRequest.objects.count() == 1
    assert audit_verify() == []


def test_a_question_asked_as_its_task_ends_is_refused_or_cancelled(project, agent):
    """Asking about a task while it is reported failed: either the question is refused (409) or
    the report cancels it. No question stays pending on an ended task."""
    from emergency.services import emergency_settings_for
    from projects.services import task_create, task_report_outcome

    settings_row = emergency_settings_for(project.pk)
    settings_row.error_min_outcomes = 1000  # these failures are not an error-rate stop
    settings_row.save()
    tasks = [task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"t{i}") for i in range(20)]
    outcomes, errors = {"asked": 0, "refused": 0}, []

    def ask(task):
        try:
            hitl_request_create(asker=agent, project_id=project.pk, request_type="question", question="late?",
                                task_id=task.pk)
            outcomes["asked"] += 1
        except TransitionError:
            outcomes["refused"] += 1

    def fail(task):
        task_report_outcome(actor=agent, task_id=task.pk, status="failed", error="gave up")

    for task in tasks:
        barrier = threading.Barrier(2)

        def run(work, task=task, barrier=barrier):
            try:
                barrier.wait(timeout=30)
                work(task)
            except BaseException as exc:  # noqa: BLE001 - reported to the test
                errors.append(exc)
            finally:
                connections.close_all()

        run_all([threading.Thread(target=run, args=(w,)) for w in (ask, fail)])
    assert not errors, errors
    assert outcomes["asked"] + outcomes["refused"] == 20
    assert not HitlRequest.objects.filter(task__in=tasks, status="pending").exists()
    assert HitlRequest.objects.filter(task__in=tasks, status="cancelled").count() == outcomes["asked"]
    assert audit_verify() == []


def test_questions_asked_and_answered_at_once_leave_their_task_where_the_work_was(project, agent, make_user):
    """Eight agents' questions about one task, asked at once, then answered at once by eight
    reviewers while its call is decided: the task counts every one and goes back to pending
    only after the last, never early and never stuck waiting."""
    from approvals.services import agent_approval_decide, agent_approval_request
    from projects.models import Task
    from projects.services import task_create

    reviewers = [make_user(f"rev{i}", role="reviewer", project=project) for i in range(9)]
    askers = [agent] + [make_user(f"agent{i}", role="agent", project=project) for i in range(7)]
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="Implement the form")
    errors, asked = [], []

    def together(works):
        barrier = threading.Barrier(len(works))

        def run(work):
            try:
                barrier.wait(timeout=30)
                work()
            except BaseException as exc:  # noqa: BLE001 - reported to the test
                errors.append(exc)
            finally:
                connections.close_all()

        run_all([threading.Thread(target=run, args=(w,)) for w in works])
        assert not errors, errors

    together([lambda a=a: asked.append(hitl_request_create(
        asker=a, project_id=project.pk, request_type="question", question="Which way?", task_id=task.pk))
        for a in askers])
    row = Task.objects.get(pk=task.pk)
    assert row.status == "waiting_for_hitl" and row.open_questions == 8

    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="Write the form", input_data={"f": 1}, model="gpt-4o-mini")
    together([lambda r=r, q=q: hitl_request_respond(request_id=q.pk, responder=r, action="approve")
              for r, q in zip(reviewers, asked)]
             + [lambda: agent_approval_decide(approval_id=call.pk, decider=reviewers[8], decision="reject",
                                              reason="not now")])
    row = Task.objects.get(pk=task.pk)
    assert (row.status, row.open_questions, row.status_after_questions) == ("pending", 0, "")
    assert HitlRequest.objects.filter(task=task, status="approved").count() == 8
    assert audit_verify() == []
