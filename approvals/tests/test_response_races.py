"""Response approvals racing in real threads on PostgreSQL: one decision wins among many
reviewers; a submission retried at once makes one response and settles the budget once; a stop
racing submissions leaves nothing pending after it. (SQLite has one writer at a time: skipped.)"""
import threading

import pytest
from django.db import connections

from approvals.models import ResponseApproval
from approvals.services import (
    agent_approval_decide,
    agent_approval_request,
    agent_approval_start,
    response_approval_decide,
    response_approval_submit,
)
from audit.services import audit_verify
from budgets.models import UsageEntry
from core.errors import DomainError
from emergency.services import emergency_stop_trigger
from projects.services import task_create

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

CLEAN = {"files": [{"path": "src/app.py", "content": "def add(a, b):\n    return a + b\n"}],
         "explanation": "Adds two numbers."}


def started_call(project, agent, reviewer, title):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=title)
    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action=f"Implement {title}", input_data={"n": title},
                                  estimated_tokens=500, model="gpt-4o-mini")
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
    return agent_approval_start(approval_id=call.pk, actor=agent)


def submit(project, agent, call, tokens=400):
    return response_approval_submit(submitter=agent, project_id=project.pk, task_id=call.task_id,
                                    agent_type="coder", call_approval_id=call.pk, agent_response=CLEAN,
                                    response_summary="add()", next_steps=["test it"], tokens_used=tokens,
                                    actual_cost="0.0010")


def race(workers) -> tuple[list, list, list]:
    """Run every worker at once; (results, refusals, unexpected errors)."""
    results, refusals, errors = [], [], []
    barrier = threading.Barrier(len(workers))

    def run(work):
        try:
            barrier.wait(timeout=30)
            results.append(work())
        except DomainError as exc:
            refusals.append(exc)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker hung (deadlock?)"
    return results, refusals, errors


def test_twenty_reviewers_deciding_one_response_one_wins(project, agent, make_user):
    reviewers = [make_user(f"r{i}", role="reviewer", project=project) for i in range(20)]
    call = started_call(project, agent, reviewers[0], "one")
    response = submit(project, agent, call)
    decisions = ["approve", "reject", "requires_modification"]
    results, refusals, errors = race([
        (lambda r=r, d=decisions[i % 3]: response_approval_decide(
            approval_id=response.pk, decider=r, decision=d, reason="because",
            modifications_required="fix it" if d == "requires_modification" else None))
        for i, r in enumerate(reviewers)])
    assert not errors, errors
    assert len(results) == 1 and len(refusals) == 19
    assert all(getattr(e, "status_code", 409) == 409 for e in refusals)
    final = ResponseApproval.objects.get(pk=response.pk)
    assert final.status == results[0].status and final.approved_by_id == results[0].approved_by_id
    assert audit_verify() == []


def test_concurrent_submissions_of_one_call_make_one_response_and_settle_once(project, agent, reviewer):
    call = started_call(project, agent, reviewer, "dup")
    results, refusals, errors = race([lambda: submit(project, agent, call) for _ in range(8)])
    assert not errors, errors
    assert len(results) == 1 and len(refusals) == 7
    assert ResponseApproval.objects.filter(agent_call_approval=call).count() == 1
    assert UsageEntry.objects.filter(approval_id=call.pk, kind="settle").count() == 1
    assert sum(e.spent_tokens for e in UsageEntry.objects.filter(project=project)) == 400


def test_a_stop_racing_submissions_leaves_nothing_pending(project, agent, reviewer):
    calls = [started_call(project, agent, reviewer, f"s{i}") for i in range(8)]
    workers = [lambda c=c: submit(project, agent, c) for c in calls]
    workers.append(lambda: emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="drill",
                                                  actor=reviewer))
    results, refusals, errors = race(workers)
    assert not errors, errors
    assert not ResponseApproval.objects.filter(project=project, status="pending").exists()
    # every call's usage landed exactly once, whether its output was taken or refused with 423
    assert UsageEntry.objects.filter(project=project, kind="settle").count() == 8
    assert audit_verify() == []
