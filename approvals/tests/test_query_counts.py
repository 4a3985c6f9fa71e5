"""Query counts of the hot operations, pinned: a change that adds queries to a request every
agent makes fails here (raise a pin only with a reason in the commit).

Counts are taken in the steady state (the project's budget windows of the day exist) inside
the test's transaction, where each write's own transaction is a savepoint (2 statements that
production does not send). Before the throughput work (issue 9) the same operations took:
trivial GET 6, create 42, respond 31, start 23, usage 33. Every pin came down by one when the
API key's lookup began to read the user's project roles in the same statement. The writes on a call rose by one when the agent
state's refresh moved from after the commit (a transaction of its own, five round trips these
counts did not see) into the unit of work's flush (two statements: the row's lock, its update);
a create and a response submit then fell by two when their insert stopped needing a savepoint
(``ON CONFLICT DO NOTHING`` refuses the second pending one), and on PostgreSQL every write by one
per event and one per audit row when each of those became one statement with its lock or its
chain head's update. A create, a usage report and a response submit then fell by one when the
call's day and month window began to be updated in one statement. A usage report, a stop and a
response submit rose by one when an alert (a stop; a budget threshold or a call's overrun, which
the usage below and the response's settlement raise) began to be written in the change's own
transaction (one ``INSERT ... SELECT`` over the project's notifiers): a process dying right after
the commit no longer loses it. On PostgreSQL a create, a decision, a start, a usage report and a response submit rose by one when the
budget stopped being read in the project row's locking statement (its snapshot predates the wait
for the lock: a limits change committed meanwhile was not seen) and began to be read after it."""
import pytest
from django.db import connection

from projects.services import task_create

pytestmark = pytest.mark.django_db

PINS = {  # PostgreSQL
    "trivial_get": 2,    # API key with its user and the user's project roles (one statement), the task
    "approval_get": 2,
    "wait_decided": 2,   # a long poll on a decided call: the API key (with the roles), the call with its users
    "create": 20,        # + the project's analyzer rules and suppressions (issue 10), - the roles' own query,
                         # + the budget read after the project's lock
    "respond": 14,       # + the budget read after the project's lock
    "start": 13,         # + the budget read after the project's lock
    "usage": 19,        # + the alert (an overrun) written with the change, + the budget read after the lock
    "stop": 28,          # + the locks of the pending response approvals and questions (issue 10); + each
                         # cancelled call's own event: its read, the stream lock and one insert for them all
    "response_submit": 30,  # settles the budget (ledger, windows, alerts), records and analyzes the output
    "response_decide": 16,
}
# SQLite sends an audit row's insert and its chain head's update as two statements (no
# data-modifying WITH there): one more per audit row.
SQLITE = {**PINS, "create": 20, "respond": 14, "start": 13, "usage": 19, "stop": 28, "response_submit": 32,
          "response_decide": 17}


def pin(name: str) -> int:
    return (SQLITE if connection.vendor == "sqlite" else PINS)[name]


@pytest.fixture
def steady(agent_client, reviewer_client, request_body, project, agent):
    """One full round trip first, so the day's budget windows and the audit chain exist."""
    r = agent_client.post("/api/v1/agent-approvals", request_body(), format="json")
    assert r.status_code == 201, r.content
    approval_id = r.json()["approval_id"]
    assert reviewer_client.post(f"/api/v1/agent-approvals/{approval_id}/respond", {"decision": "approve"},
                                format="json").status_code == 200
    assert agent_client.post(f"/api/v1/agent-approvals/{approval_id}/start").status_code == 200
    return task_create(actor=agent, project_id=project.pk, agent_type="coder", title="Second task")


def test_reads(agent_client, steady, django_assert_max_num_queries):
    with django_assert_max_num_queries(pin("trivial_get")):
        assert agent_client.get(f"/api/v1/tasks/{steady.pk}").status_code == 200


def test_a_round_trip_and_its_usage(agent_client, reviewer_client, request_body, steady,
                                    django_assert_max_num_queries):
    with django_assert_max_num_queries(pin("create")):
        r = agent_client.post("/api/v1/agent-approvals", request_body(task_id=str(steady.pk)), format="json")
    assert r.status_code == 201, r.content
    approval_id = r.json()["approval_id"]
    with django_assert_max_num_queries(pin("approval_get")):
        assert agent_client.get(f"/api/v1/agent-approvals/{approval_id}").status_code == 200
    with django_assert_max_num_queries(pin("respond")):
        r = reviewer_client.post(f"/api/v1/agent-approvals/{approval_id}/respond", {"decision": "approve"},
                                 format="json")
    assert r.status_code == 200 and r.json()["status"] == "approved"
    with django_assert_max_num_queries(pin("start")):
        r = agent_client.post(f"/api/v1/agent-approvals/{approval_id}/start")
    assert r.status_code == 200 and r.json()["input_to_run"] is not None
    with django_assert_max_num_queries(pin("usage")):
        r = agent_client.post(f"/api/v1/agent-approvals/{approval_id}/usage",
                              {"tokens_used": 900, "actual_cost": "0.0009"}, format="json")
    assert r.status_code == 200 and r.json()["budget_state"] == "settled"



def test_a_long_poll_on_a_decided_call(agent, reviewer_client, agent_client, request_body, steady,
                                       django_assert_max_num_queries):
    """The long poll's database trip (approvals/consumers.py: ``WaitKind.open``, which runs on a
    database thread under daphne) answered at once for a decided call."""
    from access.services import api_key_create
    from approvals.consumers import CALLS
    from core.request_cache import request_scope

    approval_id = agent_client.post("/api/v1/agent-approvals", request_body(task_id=str(steady.pk)),
                                    format="json").json()["approval_id"]
    assert reviewer_client.post(f"/api/v1/agent-approvals/{approval_id}/respond", {"decision": "approve"},
                                format="json").status_code == 200
    scope = {"headers": [(b"authorization", f"Bearer {api_key_create(user=agent)[1]}".encode())]}
    with request_scope():
        CALLS.open(scope, approval_id)  # the key's first use is recorded (then at most once a minute)
    with request_scope(), django_assert_max_num_queries(pin("wait_decided")):
        approval, answer, _ = CALLS.open(scope, approval_id)
    assert approval.status == "approved" and b'"status":"approved"' in answer

def test_emergency_stop(reviewer_client, agent_client, request_body, steady, project,
                        django_assert_max_num_queries):
    """A stop with one pending call to cancel (it grows with what it cancels, not per request)."""
    assert agent_client.post("/api/v1/agent-approvals", request_body(task_id=str(steady.pk)),
                             format="json").status_code == 201
    with django_assert_max_num_queries(pin("stop")):
        r = reviewer_client.post(f"/api/v1/emergency/stop/{project.pk}", {"reason": "pinned"}, format="json")
    assert r.status_code == 201, r.content


def test_response_approvals(agent_client, reviewer_client, steady, request_body, django_assert_max_num_queries):
    call = agent_client.post("/api/v1/agent-approvals", request_body(task_id=str(steady.pk)),
                             format="json").json()
    reviewer_client.post(f"/api/v1/agent-approvals/{call['approval_id']}/respond", {"decision": "approve"},
                         format="json")
    agent_client.post(f"/api/v1/agent-approvals/{call['approval_id']}/start")
    body = {"project_id": call["project_id"], "task_id": call["task_id"], "agent_type": "coder",
            "original_call_approval_id": call["approval_id"],
            "agent_response": {"files": [{"path": "a.py", "content": "def f():\n    return 1\n"}]},
            "response_summary": "f", "next_steps": ["test f"], "tokens_used": 100, "actual_cost": "0.0010"}
    with django_assert_max_num_queries(pin("response_submit")):
        r = agent_client.post("/api/v1/response-approvals", body, format="json")
    assert r.status_code == 201, r.content
    with django_assert_max_num_queries(pin("response_decide")):
        d = reviewer_client.post(f"/api/v1/response-approvals/{r.json()['approval_id']}/respond",
                                 {"decision": "approve"}, format="json")
    assert d.status_code == 200, d.content
