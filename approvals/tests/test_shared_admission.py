"""Admissions share the project lock (projects/uow.py): on PostgreSQL, in real threads, an
admission does not queue behind another one in flight, a stop waits for the admissions in
flight and then holds every new one back, and concurrent admissions never overspend."""
import threading
from decimal import Decimal

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from approvals.models import AgentCallApproval
from approvals.services import agent_approval_request
from approvals.tests.test_races import in_thread, race
from budgets.models import ProjectBudget
from budgets.services import budget_reconcile
from core.errors import EmergencyStopActive
from emergency.models import Condition, Severity
from emergency.services import emergency_stop_trigger
from projects.models import Project
from projects.services import task_create
from projects.uow import project_uow

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WAIT = 20  # seconds before a step that should happen is declared stuck (never reached when it works)


def ask(project, agent, title, cost="0.0100", task=None):
    task = task or task_create(actor=agent, project_id=project.pk, agent_type="coder", title=title)
    return agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action=f"do {title}", input_data={}, estimated_tokens=10,
                                  estimated_cost=Decimal(cost))


class Holder(threading.Thread):
    """Holds a project unit of work open (shared or exclusive) until released."""

    def __init__(self, project_id, shared, before_commit=None):
        super().__init__(daemon=True)
        self.project_id, self.shared, self.before_commit = project_id, shared, before_commit
        self.holding, self.release = threading.Event(), threading.Event()
        self.error = None

    def run(self):
        try:
            with project_uow(self.project_id, shared=self.shared):
                self.holding.set()
                self.release.wait(WAIT)
                if self.before_commit is not None:
                    self.before_commit()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
            self.holding.set()
        finally:
            connections.close_all()


def waits_for_a_holder(project_id, work, *, shared: bool, what: str, before_commit=None) -> dict:
    """``work()`` in a thread while a unit of work of the project is held (``shared`` or
    exclusive, running ``before_commit`` as it ends): it must wait for the holder (``what`` says
    who did not). Its box ({"result"} or {"error"}) once the holder has committed."""
    holder = Holder(project_id, shared=shared, before_commit=before_commit)
    holder.start()
    assert holder.holding.wait(WAIT) and holder.error is None
    done, box = in_thread(work)
    try:
        assert not done.wait(1.0), f"{what} did not wait for the unit of work in flight"
    finally:
        holder.release.set()
        holder.join(WAIT)
    assert done.wait(WAIT)
    return box


def test_an_admission_does_not_wait_for_another_one_in_flight(project, agent):
    ask(project, agent, "warm up")  # the day's windows exist
    second = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="second")
    holder = Holder(project.pk, shared=True)  # an admission in flight, holding its project lock
    holder.start()
    assert holder.holding.wait(WAIT) and holder.error is None
    done, box = in_thread(lambda: ask(project, agent, "second", task=second))
    try:
        # With an exclusive project lock this would wait until the holder ends.
        assert done.wait(WAIT), "the second admission queued behind the first one's project lock"
        assert "error" not in box, box.get("error")
        assert box["result"].status == AgentCallApproval.Status.PENDING
    finally:
        holder.release.set()
        holder.join(WAIT)


def test_an_exclusive_writer_still_waits_for_an_admission_in_flight(project, agent):
    box = waits_for_a_holder(project.pk, lambda: emergency_stop_trigger(
        project_id=project.pk, condition=Condition.MANUAL_STOP, severity=Severity.HIGH, reason="test"),
        shared=True, what="the stop")
    assert "error" not in box, box.get("error")
    assert Project.objects.get(pk=project.pk).status == Project.Status.EMERGENCY_STOPPED


def test_an_admission_waits_for_a_stop_in_flight_and_is_refused_after_it(project, agent):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="late")
    # An exclusive writer in flight that stops the project before it commits (as a stop does).
    box = waits_for_a_holder(project.pk, lambda: agent_approval_request(
        requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder", proposed_action="x",
        input_data={}, estimated_tokens=10, estimated_cost=Decimal("0.0100")),
        shared=False, what="the admission", before_commit=lambda: Project.objects.filter(pk=project.pk).update(
            status=Project.Status.EMERGENCY_STOPPED))
    assert isinstance(box.get("error"), EmergencyStopActive)
    assert not AgentCallApproval.objects.filter(task=task).exists()


def test_an_admission_that_waited_for_a_limits_change_admits_against_the_new_limits(project, agent):
    """The project row is locked with its budget read in the same statement; an admission that
    waited for a limits change (which holds the project row, unchanged, and writes the budget row)
    got the statement's older snapshot of the budget: a call was admitted against the limit the
    manager had just lowered."""
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("100.0000")})
    ask(project, agent, "warm up", cost="1.0000")  # the day's windows exist
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="after the change")
    box = waits_for_a_holder(project.pk, lambda: ask(project, agent, "after the change", cost="10.0000", task=task),
                             shared=False, what="the admission", before_commit=lambda: ProjectBudget.objects.filter(
                                 project=project).update(daily_cost_limit=Decimal("10.0000")))  # as the limits change
    assert "error" not in box, box.get("error")
    assert box["result"].budget_state == "blocked"  # 11 past the new limit of 10: it waits for an override


def test_concurrent_admissions_never_overspend(project, agent):
    """Thirty admissions at once against a limit that fits ten: exactly ten are reserved, the
    rest are blocked behind overrides, and the windows match the ledger."""
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("1.0000")})
    tasks = [task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"t{i}") for i in range(30)]
    outcomes = []
    assert race(*[lambda _, task=task: outcomes.append(agent_approval_request(
        requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder", proposed_action="x",
        input_data={}, estimated_tokens=10, estimated_cost=Decimal("0.1000"))) for task in tasks]) == []
    assert len(outcomes) == 30  # none refused
    calls = AgentCallApproval.objects.filter(project=project)
    assert calls.filter(budget_state="reserved").count() == 10
    assert calls.filter(budget_state="blocked").count() == 20
    assert budget_reconcile() == []


def _deadlocks() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        return cursor.fetchone()[0]


def _twenty_started_calls_at_the_limit(project, agent, reviewer) -> list:
    """Twenty started calls of 0.1000 reserving a daily cost limit of 2.0000 in full."""
    from approvals.services import agent_approval_decide, agent_approval_start

    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("2.0000")})
    calls = []
    for i in range(20):
        call = ask(project, agent, f"call {i}", cost="0.1000")
        agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
        agent_approval_start(approval_id=call.pk, actor=agent)
        calls.append(call)
    return calls


def test_usage_reports_that_trip_the_budget_stop_do_not_deadlock(project, agent, reviewer):
    """Twenty started calls of 0.1000 against a daily limit of 2.0000, each reporting 0.3000 at
    once: the report that takes the day past 1.5 x stops the project. It upgraded its shared
    project lock in place while holding the budget windows the others waited for (holding the
    shared lock it waited for): deadlocks, retries and, on a server, a minute of 503s. Now it runs
    again with the exclusive lock from the start: no deadlock, every report lands."""
    from approvals.services import agent_approval_report_usage
    from emergency.models import EmergencyStop

    calls = _twenty_started_calls_at_the_limit(project, agent, reviewer)
    before = _deadlocks()
    errors = race(*[(lambda i, call=call: agent_approval_report_usage(
        approval_id=call.pk, actor=agent, tokens_used=100, actual_cost=Decimal("0.3000"))) for call in calls])
    assert errors == []
    assert _deadlocks() == before
    assert AgentCallApproval.objects.filter(budget_state="settled").count() == 20  # every report landed
    stop = EmergencyStop.objects.get(project=project)
    assert stop.triggered_conditions == [Condition.BUDGET_CRITICAL]
    assert budget_reconcile() == []


def test_through_the_api_with_an_idempotency_key_neither(project, agent, reviewer):
    """The SDK sends an Idempotency-Key on admissions and outputs: the key's own transaction made
    the unit of work look not re-runnable, and the stop's upgrade deadlocked in place again."""
    from rest_framework.test import APIClient

    from access.services import api_key_create
    from emergency.models import EmergencyStop

    calls = _twenty_started_calls_at_the_limit(project, agent, reviewer)
    key = api_key_create(user=agent, name="race")[1]
    answers = []

    def report(i, call):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}", HTTP_IDEMPOTENCY_KEY=f"usage-{call.pk}")
        answers.append(client.post(f"/api/v1/agent-approvals/{call.pk}/usage",
                                   {"tokens_used": 100, "actual_cost": "0.3000"}, format="json").status_code)

    before = _deadlocks()
    errors = race(*[(lambda i, call=call: report(i, call)) for call in calls])
    # the report that tripped the stop and those after it are told to stop (423); every one landed
    assert errors == [] and len(answers) == 20 and set(answers) == {200, 423}, answers
    assert _deadlocks() == before
    assert AgentCallApproval.objects.filter(budget_state="settled").count() == 20
    assert EmergencyStop.objects.get(project=project).triggered_conditions == [Condition.BUDGET_CRITICAL]
    assert budget_reconcile() == []


@pytest.fixture
def lock_timeout_of_300_ms():
    """The connections of this process wait at most 300 ms for a lock (HITL_DB_LOCK_TIMEOUT's
    option, rebuilt into a new pool) for the test, then the configured limit again."""
    from django.db import connection

    options = connection.settings_dict["OPTIONS"]
    configured = options.get("options")
    assert configured and "lock_timeout=" in configured  # the settings set one

    def new_pool(value):
        connections.close_all()
        connection.close_pool()
        options["options"] = value

    new_pool("-c lock_timeout=300")
    try:
        yield
    finally:
        new_pool(configured)


def test_a_request_held_up_by_a_stuck_lock_gets_503_at_its_lock_timeout_and_changes_nothing(
        lock_timeout_of_300_ms, project, agent, client_for):
    """A transaction that keeps its project's lock (a person's psql session, a hung process)
    holds every request of the project up only until the lock timeout: then 503 with
    Retry-After, once (not run again: its client decides), and nothing admitted."""
    client = client_for(agent)
    client.raise_request_exception = False
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="held up")
    body = {"project_id": str(project.pk), "task_id": str(task.pk), "agent_type": "coder",
            "proposed_action": "do it", "input_data": {}, "estimated_tokens": 10, "estimated_cost": "0.0100"}
    holder = Holder(project.pk, shared=False)
    holder.start()
    assert holder.holding.wait(WAIT) and holder.error is None
    try:
        with CaptureQueriesContext(connections["default"]) as queries:
            response = client.post("/api/v1/agent-approvals", body, format="json")
    finally:
        holder.release.set()
        holder.join(WAIT)
    assert response.status_code == 503, response.content
    assert response.json()["error"] == "unavailable" and response["Retry-After"] == "1"
    assert "lock" in response.json()["detail"]
    locking = [q for q in queries.captured_queries if "projects_project" in q["sql"] and " FOR " in q["sql"]]
    assert len(locking) == 1, locking
    assert not AgentCallApproval.objects.filter(project=project).exists()
    assert client.post("/api/v1/agent-approvals", body, format="json").status_code == 201  # once it is let go


def test_the_connections_wait_at_most_hitl_db_lock_timeout_for_a_lock():
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        assert cursor.fetchone()[0] == "10s"  # HITL_DB_LOCK_TIMEOUT's default


def test_a_sweep_leaves_a_locked_projects_row_for_later_and_goes_on_with_the_others(
        lock_timeout_of_300_ms, project, other_project, agent, make_user):
    """One project's stuck lock failed beat's whole time-out sweep at its first row (every
    project's approvals stayed pending while it lasted): that row waits for the next sweep."""
    from datetime import timedelta

    from django.utils import timezone

    from approvals.services import agent_approval_expire_overdue

    other_agent = make_user("other-agent", role="agent", project=other_project)
    held, free = ask(project, agent, "held"), ask(other_project, other_agent, "free")
    AgentCallApproval.objects.filter(pk__in=[held.pk, free.pk]).update(expires_at=timezone.now() - timedelta(seconds=1))
    holder = Holder(project.pk, shared=False)
    holder.start()
    assert holder.holding.wait(WAIT) and holder.error is None
    try:
        assert agent_approval_expire_overdue() == 1
    finally:
        holder.release.set()
        holder.join(WAIT)
    assert AgentCallApproval.objects.get(pk=free.pk).status == "timed_out"
    assert AgentCallApproval.objects.get(pk=held.pk).status == "pending"
    assert agent_approval_expire_overdue() == 1  # the next sweep, once it is let go
    assert AgentCallApproval.objects.get(pk=held.pk).status == "timed_out"
