"""Services that share rows, racing in real threads on PostgreSQL: no deadlock, no 5xx, the
ledger reconciles and the audit chain verifies. (SQLite has one writer at a time: skipped.)"""
import random
import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connections
from django.utils import timezone

from approvals.models import AgentCallApproval
from approvals.services import (
    agent_approval_cancel,
    agent_approval_decide,
    agent_approval_request,
    agent_approval_time_out,
    agent_approval_warn_due,
    budget_override_respond,
    input_digest,
)
from audit.services import audit_verify
from budgets.models import ProjectBudget
from budgets.services import budget_reconcile
from core.errors import DomainError
from emergency.models import EmergencyStop
from emergency.services import emergency_stop_trigger
from projects.services import task_create, task_report_outcome

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def race(*workers, rounds: int = 1) -> list[BaseException]:
    """Run the workers at once (a barrier per round); return the unexpected errors. A refusal
    (DomainError: 409, 410, 423, ...) is an expected outcome of a race, anything else is not."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(workers))

    def loop(work):
        try:
            for i in range(rounds):
                barrier.wait(timeout=30)
                try:
                    work(i)
                except DomainError:
                    pass
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=loop, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker hung (deadlock?)"
    return errors


def in_thread(fn):
    """``fn()`` in a thread of its own: (an event set when it ends, {"result"} or {"error"})."""
    done, box = threading.Event(), {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            box["error"] = exc
        finally:
            connections.close_all()
            done.set()

    threading.Thread(target=run, daemon=True).start()
    return done, box


def over_budget_call(project, agent, title, cost="1.5000"):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=title)
    return agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action=f"do {title}", input_data={}, estimated_tokens=10,
                                  estimated_cost=Decimal(cost))


@pytest.fixture
def tight(project):
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("10.0000")})
    return project


def test_warning_sweep_races_override_decisions(tight, agent, reviewer):
    """Was: warn_due locked the call then the outbox, override_respond the outbox then the call."""
    over_budget_call(tight, agent, "base", cost="9.0000")
    blocked = [over_budget_call(tight, agent, f"b{i}", cost="1.5000") for i in range(6)]
    AgentCallApproval.objects.filter(pk__in=[b.pk for b in blocked]).update(warn_at=timezone.now())
    overrides = [b.budget_override_id for b in blocked]
    errors = race(lambda i: agent_approval_warn_due(),
                  lambda i: budget_override_respond(override_id=overrides[i], actor=reviewer, decision="approve"),
                  rounds=6)
    assert errors == []
    assert budget_reconcile() == [] and audit_verify() == []


def test_task_outcomes_race_over_budget_requests(tight, agent):
    """Was: task_report_outcome locked task, agent state, chain; a request chain then agent state."""
    over_budget_call(tight, agent, "base", cost="9.0000")
    tasks = [task_create(actor=agent, project_id=tight.pk, agent_type="coder", title=f"t{i}") for i in range(8)]
    errors = race(lambda i: task_report_outcome(actor=agent, task_id=tasks[i].pk, status="completed"),
                  lambda i: over_budget_call(tight, agent, f"r{i}", cost="1.5000"),
                  rounds=8)
    assert errors == []
    assert budget_reconcile() == [] and audit_verify() == []


def test_cancelling_and_timing_out_blocked_calls_race_requests_and_decisions(tight, agent, reviewer):
    over_budget_call(tight, agent, "base", cost="9.0000")
    blocked = [over_budget_call(tight, agent, f"b{i}") for i in range(6)]
    due = [over_budget_call(tight, agent, f"d{i}") for i in range(6)]
    AgentCallApproval.objects.filter(pk__in=[d.pk for d in due]).update(expires_at=timezone.now())
    errors = race(lambda i: agent_approval_cancel(approval_id=blocked[i].pk, actor=agent),
                  lambda i: agent_approval_time_out(approval_id=due[i].pk, now=timezone.now() + timedelta(seconds=1)),
                  lambda i: over_budget_call(tight, agent, f"n{i}"),
                  lambda i: budget_override_respond(override_id=due[i].budget_override_id, actor=reviewer,
                                                    decision="reject", reason="no"),
                  rounds=6)
    assert errors == []
    assert budget_reconcile() == [] and audit_verify() == []


def test_a_stop_races_requests_decisions_and_overrides(tight, agent, reviewer):
    over_budget_call(tight, agent, "base", cost="5.0000")
    pending = [over_budget_call(tight, agent, f"p{i}", cost="0.1000") for i in range(4)]
    blocked = [over_budget_call(tight, agent, f"b{i}", cost="5.5000") for i in range(4)]
    errors = race(lambda i: emergency_stop_trigger(project_id=tight.pk, condition="manual_stop", reason="race",
                                                   actor=reviewer) if i == 2 else None,
                  lambda i: agent_approval_decide(approval_id=pending[i].pk, decider=reviewer, decision="approve"),
                  lambda i: budget_override_respond(override_id=blocked[i].budget_override_id, actor=reviewer,
                                                    decision="approve"),
                  lambda i: over_budget_call(tight, agent, f"n{i}", cost="0.1000"),
                  rounds=4)
    assert errors == []
    assert not AgentCallApproval.objects.filter(project=tight, status="pending").exists()  # the stop took all
    assert budget_reconcile() == [] and audit_verify() == []


def test_mixed_load_through_the_api_has_no_5xx_and_everything_reconciles(tight, agent, reviewer, manager,
                                                                         client_for):
    """Several agents and reviewers at once on a project with a tight budget."""
    agents = [client_for(agent) for _ in range(3)]
    reviewers = [client_for(reviewer), client_for(manager)]
    statuses: list[int] = []
    lock = threading.Lock()

    def note(response):
        with lock:
            statuses.append(response.status_code)
        return response

    def agent_work(client, seed):
        rng = random.Random(seed)

        def work(i):
            task = note(client.post("/api/v1/tasks", {"project_id": str(tight.pk), "agent_type": "coder",
                                                      "title": f"{seed}-{i}"}, format="json"))
            if task.status_code != 201:
                return
            task_id = task.json()["task_id"]
            r = note(client.post("/api/v1/agent-approvals", {
                "project_id": str(tight.pk), "task_id": task_id, "agent_type": "coder",
                "proposed_action": f"step {seed}-{i}", "input_data": {"i": i},
                "estimated_tokens": 50, "estimated_cost": f"{rng.choice(['0.5000', '1.0000', '2.0000'])}"},
                format="json"))
            if r.status_code != 201:
                return
            approval = r.json()
            choice = rng.random()
            if choice < 0.25:
                note(client.post(f"/api/v1/agent-approvals/{approval['approval_id']}/cancel", {}, format="json"))
            elif approval["status"] == "approved" or choice < 0.9:
                started = note(client.post(f"/api/v1/agent-approvals/{approval['approval_id']}/start", {},
                                           format="json"))
                if started.status_code == 200:
                    note(client.post(f"/api/v1/agent-approvals/{approval['approval_id']}/usage",
                                     {"tokens_used": 60, "actual_cost": "0.7000"}, format="json"))
            note(client.post(f"/api/v1/tasks/{task_id}/status",
                             {"status": rng.choice(["completed", "completed", "failed"])}, format="json"))
        return work

    def reviewer_work(client, seed):
        rng = random.Random(seed)

        def work(i):
            page = client.get(f"/api/v1/agent-approvals/project/{tight.pk}", {"status": "pending"})
            note(page)
            for approval in page.json().get("results", [])[:5]:
                if approval["budget_state"] == "blocked" and approval["budget_override_id"]:
                    note(client.post(f"/api/v1/budget-overrides/{approval['budget_override_id']}/respond",
                                     {"decision": rng.choice(["approve", "reject"]), "reason": "load"},
                                     format="json"))
                else:
                    note(client.post(f"/api/v1/agent-approvals/{approval['approval_id']}/respond",
                                     {"decision": rng.choice(["approve", "approve", "reject"]), "reason": "load"},
                                     format="json"))
        return work

    workers = [agent_work(c, n) for n, c in enumerate(agents)] + [reviewer_work(c, 10 + n)
                                                                  for n, c in enumerate(reviewers)]
    errors = race(*workers, rounds=12)
    assert errors == []
    assert statuses and not [s for s in statuses if s >= 500], sorted(set(statuses))
    assert budget_reconcile() == [] and audit_verify() == []
    assert not AgentCallApproval.objects.filter(status="approved", budget_state="blocked").exists()


def test_the_agent_state_matches_its_tasks_after_concurrent_writes(project, agent, reviewer):
    """The agent state is written at the end of each request's transaction (locked, then
    derived, so that its row is not held through the requests' transactions): whatever order
    concurrent requests commit in, the state left is the one the committed tasks give."""
    from projects.models import AgentState, Task
    from approvals.services import agent_approval_start

    tasks = [task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"s{i}") for i in range(6)]
    calls = [None] * len(tasks)

    def work(n):
        def step(i):
            task = tasks[n]
            if i == 0:
                calls[n] = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk,
                                                  agent_type="coder", proposed_action=f"do s{n}", input_data={},
                                                  estimated_tokens=10, estimated_cost=Decimal("0.0100"))
            elif i == 1:
                agent_approval_decide(approval_id=calls[n].pk, decider=reviewer, decision="approve")
            elif i == 2:
                agent_approval_start(approval_id=calls[n].pk, actor=agent)
            elif n % 2:  # half finish, half keep running
                task_report_outcome(actor=agent, task_id=task.pk, status="completed")
        return step

    seen = []
    for rounds in (1, 2, 3, 4):  # the state is checked after each phase
        errors = race(*(lambda i, w=work(n), r=rounds: w(r - 1) for n in range(len(tasks))))
        assert errors == []
        statuses = set(Task.objects.filter(pk__in=[t.pk for t in tasks]).values_list("status", flat=True))
        state = AgentState.objects.get(project=project, agent_type="coder")
        expected = ("waiting_for_hitl" if "waiting_for_hitl" in statuses else
                    "working" if "running" in statuses else "idle")
        assert state.status == expected, (rounds, statuses)
        seen.append(expected)
        if expected == "idle":
            assert state.current_task_id is None
            continue
        current = Task.objects.get(pk=state.current_task_id)
        assert current.status == ("waiting_for_hitl" if expected == "waiting_for_hitl" else "running")
        newest = Task.objects.filter(pk__in=[t.pk for t in tasks], status=current.status).latest("updated_at")
        assert current.pk == newest.pk
    assert seen[-2:] == ["working", "working"]  # the phases did reach running tasks


def test_concurrent_usage_reports_of_one_call_land_its_largest_totals_once(project, agent, reviewer):
    """Reports give a call's totals. Eight agents' threads report 100..800 tokens for one started
    call at once, twice each: whatever the order, the ledger ends with the largest totals (800
    tokens, 8.0000), never a sum of differences computed from a stale read."""
    from approvals.services import agent_approval_report_usage, agent_approval_start

    call = over_budget_call(project, agent, "reported", cost="0.5000")
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
    agent_approval_start(approval_id=call.pk, actor=agent)
    workers = [lambda i, n=n: agent_approval_report_usage(approval_id=call.pk, actor=agent, tokens_used=100 * n,
                                                          actual_cost=Decimal(n))
               for n in range(1, 9)]
    assert race(*workers, rounds=2) == []
    from budgets.models import UsageEntry
    from budgets.services import current_windows

    day = current_windows(project)[0]
    assert (day.spent_tokens, day.spent_cost, day.reserved_tokens) == (800, Decimal("8.0000"), 0)
    entries = UsageEntry.objects.filter(approval=call).exclude(kind="reserve")
    assert sum(e.spent_tokens for e in entries) == 800 and entries.filter(kind="settle").count() == 1
    assert budget_reconcile() == []


def test_amendments_that_grow_reservations_race_new_calls_without_passing_a_limit(project, agent, reviewer):
    """A reviewer's larger amendment grows its call's reservation under the same window locks as
    an admission: four amendments and four new calls racing for a 10.0000 daily cost limit never
    reserve past it, and every window reconciles with the ledger."""
    from budgets.services import current_windows

    ProjectBudget.objects.update_or_create(project=project, defaults={
        "daily_cost_limit": Decimal("10.0000"), "daily_token_limit": 0, "monthly_token_limit": 0})
    calls = [over_budget_call(project, agent, f"amend {n}", cost="1.0000") for n in range(4)]
    big = {"text": "word " * 200, "max_tokens": 200_000}  # priced at gpt-4o (the floor): about 1.0 more each

    def amend(call):
        return lambda i: agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve",
                                               amended_input_data=big)

    def ask(n):
        return lambda i: over_budget_call(project, agent, f"new {n}", cost="1.0000")

    assert race(*[amend(c) for c in calls], *[ask(n) for n in range(4)]) == []
    day = current_windows(project)[0]
    assert day.reserved_cost + day.spent_cost <= Decimal("10.0000")
    grown = AgentCallApproval.objects.filter(pk__in=[c.pk for c in calls], status="approved")
    assert grown.exists() and all(c.estimated_cost > Decimal("1.0000") for c in grown)
    assert budget_reconcile() == []


def test_task_outcomes_race_the_starts_and_decisions_of_their_calls(tight, agent, reviewer):
    """A task reported completed or failed while its call is started or decided: one side wins.
    A call is never both started and cancelled, none stays open on an ended task, and every
    reservation of a cancelled call is back (the ledger reconciles)."""
    from approvals.services import agent_approval_start
    from emergency.services import emergency_settings_for

    settings_row = emergency_settings_for(tight.pk)
    settings_row.error_min_outcomes = 1000  # the failures reported here are not an error-rate stop
    settings_row.save()
    approved = [over_budget_call(tight, agent, f"a{i}", cost="0.2500") for i in range(6)]
    for call in approved:
        agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
    pending = [over_budget_call(tight, agent, f"p{i}", cost="0.2500") for i in range(6)]
    # past the limit (3 reserved + 7.5 > 10); one override granted keeps the day under 1.5 x (no stop)
    blocked = [over_budget_call(tight, agent, f"b{i}", cost="7.5000") for i in range(6)]
    errors = race(lambda i: task_report_outcome(actor=agent, task_id=approved[i].task_id, status="completed"),
                  lambda i: agent_approval_start(approval_id=approved[i].pk, actor=agent),
                  lambda i: task_report_outcome(actor=agent, task_id=pending[i].task_id, status="failed"),
                  lambda i: agent_approval_decide(approval_id=pending[i].pk, decider=reviewer, decision="approve"),
                  lambda i: task_report_outcome(actor=agent, task_id=blocked[i].task_id, status="failed"),
                  lambda i: budget_override_respond(override_id=blocked[i].budget_override_id, actor=reviewer,
                                                    decision="approve") if i == 0 else None,
                  rounds=6)
    assert errors == []
    assert not EmergencyStop.objects.filter(project=tight).exists()
    calls = AgentCallApproval.objects.filter(pk__in=[c.pk for c in approved + pending + blocked]).select_related("task")
    for call in calls:
        if call.started_at is not None:
            assert call.status == "approved" and call.budget_state == "reserved", call.pk
        else:  # not started: its task ended, so it must be closed and hold nothing
            assert call.task.status in ("completed", "failed")
            assert call.status in ("cancelled", "rejected", "timed_out"), (call.pk, call.status)
            assert call.budget_state == "released", (call.pk, call.budget_state)
    assert budget_reconcile() == [] and audit_verify() == []


def _decided_while_waiting(call, decider, work):
    """``work()`` run in a thread while this one holds the call's row with a decision by ``decider``
    not yet committed: it waits for the lock, then PostgreSQL re-reads the row. What it raised or
    returned."""
    from django.db import connection, transaction

    with transaction.atomic():
        row = AgentCallApproval.objects.select_for_update().get(pk=call.pk)
        AgentCallApproval.objects.filter(pk=row.pk).update(status="approved", approved_by=decider,
                                                           responded_at=timezone.now(),
                                                           input_digest=input_digest(row.input_to_run))
        done, outcome = in_thread(work)
        deadline = time.monotonic() + 20
        with connection.cursor() as cursor:
            while time.monotonic() < deadline:  # until the other waits for the row lock
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                if cursor.fetchone()[0]:
                    break
                time.sleep(0.02)
                if done.is_set():
                    raise AssertionError(f"the other thread ended without waiting for the lock: {outcome}")
            else:
                raise AssertionError("the other thread never waited for the lock")
    assert done.wait(30), "the other thread did not end"
    return outcome


def test_a_decision_that_waited_for_the_winners_lock_names_the_winner(project, task, agent, reviewer, manager):
    """PostgreSQL re-reads a locked row that changed while a statement waited for it, but not the
    rows of its outer join: the decider's user stayed the empty one, and setting it wiped the id.
    The loser's 409 said "already approved" with decided_by null (7 of 16 in a real race)."""
    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="do it", input_data={}, model="gpt-4o-mini")
    outcome = _decided_while_waiting(call, manager, lambda: agent_approval_decide(
        approval_id=call.pk, decider=reviewer, decision="reject", reason="no"))
    error = outcome.get("error")
    assert isinstance(error, DomainError) and error.extra["decided_by"] == manager.username, outcome
    assert f"already approved (by {manager.username} at " in error.detail


def test_a_start_that_waited_for_the_approvals_lock_answers_with_its_approver(project, task, agent, manager):
    from approvals.services import agent_approval_start

    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="do it", input_data={}, model="gpt-4o-mini")
    outcome = _decided_while_waiting(call, manager, lambda: agent_approval_start(approval_id=call.pk, actor=agent))
    started = outcome.get("result")
    assert started is not None and started.approved_by_id == manager.pk, outcome
    assert AgentCallApproval.objects.get(pk=call.pk).approved_by_id == manager.pk


def test_an_amended_inputs_analysis_holds_no_lock_an_emergency_stop_waits_for(project, agent, reviewer, monkeypatch):
    """An amended input was assessed inside the decision's unit of work: a red team's large input
    (seconds of analysis) held the project's lock meanwhile, and an emergency stop waited for it
    (503 after the lock timeout). The analysis now runs first; a stop made during it goes through
    at once, and the decision then finds the project stopped (423), deciding nothing."""
    from approvals.services import decisions
    from core.errors import EmergencyStopActive

    call = over_budget_call(project, agent, "amend me", cost="0.0100")
    real_assess = decisions.assess
    stop_box = {}

    def assess_while_stopping(ctx, rules=None):
        done, box = in_thread(lambda: emergency_stop_trigger(project_id=project.pk, condition="manual_stop",
                                                             reason="drill during analysis", actor=reviewer))
        stop_box["finished"] = done.wait(timeout=20)
        stop_box.update(box)
        return real_assess(ctx, rules)

    monkeypatch.setattr(decisions, "assess", assess_while_stopping)
    with pytest.raises(EmergencyStopActive):
        agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve",
                              amended_input_data={"files": ["safer.py"]})
    assert stop_box["finished"] and "error" not in stop_box, stop_box
    call.refresh_from_db()
    assert call.status == "cancelled" and call.amended_input_data is None
