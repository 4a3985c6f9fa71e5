"""The beat sweeps (every 10 s: time-outs, warnings, lapsed grants) read only what is due, by their
partial indexes, however long the history. Found at 100,000 calls: each sweep's query walked the
table's created_at index backwards over every row (the models' order, newest first), 0.3 s a query,
the admin's call list (which runs the sweep first) 1.2 s, both growing with every call ever made."""
import copy
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from approvals.models import AgentCallApproval, ResponseApproval
from approvals.services import (
    agent_approval_decide,
    agent_approval_expire_overdue,
    agent_approval_request,
    agent_approval_start,
    agent_approval_warn_due,
    response_approval_expire_overdue,
    response_approval_submit,
    response_approval_warn_due,
)
from hitl.models import HitlRequest
from hitl.services import hitl_request_create, hitl_request_expire_overdue, hitl_request_warn_due
from projects.services import task_create

pytestmark = pytest.mark.postgres
HISTORY = 4000


def _history(row, **changes):
    """HISTORY decided copies of ``row``: what months of use leave behind."""
    copies = []
    for _ in range(HISTORY):
        twin = copy.copy(row)
        twin.pk = uuid.uuid4()
        for name, value in changes.items():
            setattr(twin, name, value)
        copies.append(twin)
    type(row).objects.bulk_create(copies, batch_size=1000)


def _plans(sweep, table):
    """The plan of each statement ``sweep`` sends that reads ``table``."""
    with CaptureQueriesContext(connection) as sent:
        sweep()
    reads = [q["sql"] for q in sent.captured_queries if q["sql"].startswith("SELECT") and f'FROM "{table}"' in q["sql"]]
    assert reads, f"the sweep read nothing from {table}"
    with connection.cursor() as cursor:
        plans = []
        for sql in reads:
            cursor.execute("EXPLAIN " + sql)
            plans.append("\n".join(line for (line,) in cursor.fetchall()))
    return plans


def test_the_sweeps_read_what_is_due_by_its_index_not_the_whole_history(project, agent, reviewer):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="history")
    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="write", input_data={}, estimated_tokens=10,
                                  estimated_cost="0.0010")
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
    call = agent_approval_start(approval_id=call.pk, actor=agent)
    output = response_approval_submit(submitter=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                      call_approval_id=call.pk, agent_response={"ok": 1}, tokens_used=5)
    question = hitl_request_create(asker=agent, project_id=project.pk, request_type="question", question="ok?")
    _history(AgentCallApproval.objects.get(pk=call.pk), status="approved")  # approved and started
    _history(AgentCallApproval.objects.get(pk=call.pk), status="rejected", started_at=None)
    _history(ResponseApproval.objects.get(pk=output.pk), status="approved")
    _history(HitlRequest.objects.get(pk=question.pk), status="approved")
    with connection.cursor() as cursor:
        for table in ("approvals_agentcallapproval", "approvals_responseapproval", "hitl_hitlrequest"):
            cursor.execute(f"ANALYZE {table}")

    sweeps = [(agent_approval_expire_overdue, "approvals_agentcallapproval"),
              (agent_approval_warn_due, "approvals_agentcallapproval"),
              (response_approval_expire_overdue, "approvals_responseapproval"),
              (response_approval_warn_due, "approvals_responseapproval"),
              (hitl_request_expire_overdue, "hitl_hitlrequest"),
              (hitl_request_warn_due, "hitl_hitlrequest")]
    for sweep, table in sweeps:
        for plan in _plans(sweep, table):
            assert "Seq Scan" not in plan and "created_at" not in plan, (sweep.__name__, plan)
            assert any(name in plan for name in ("_pending_expires", "_warning_due", "_grant_not_started")), \
                (sweep.__name__, plan)
