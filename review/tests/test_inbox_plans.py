"""The inbox's lists are read by their indexes, in the inbox's order, however many are pending.
Found with 25,000 pending items across 30 projects: every re-fetch of one reviewer's inbox (once
every 2 s while agents work) sorted all 20,000 pending calls to list the first (0.1–0.7 s of
PostgreSQL a read, spilling to disk), and rendered 200 rows (0.2 s of the web process's CPU)."""
import copy
import re
import uuid

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from approvals.models import AgentCallApproval, ResponseApproval
from approvals.services import agent_approval_decide, agent_approval_request, agent_approval_start, response_approval_submit
from hitl.models import HitlRequest
from hitl.services import hitl_request_create
from projects.models import Task
from projects.services import task_create
from review import views

pytestmark = pytest.mark.postgres
PENDING = 3000


def _copies(row, n, **changes):
    out = []
    for i in range(n):
        twin = copy.copy(row)
        twin.pk = uuid.uuid4()
        for name, value in changes.items():
            setattr(twin, name, value(i) if callable(value) else value)
        out.append(twin)
    return type(row).objects.bulk_create(out, batch_size=1000)


def test_a_long_inbox_is_read_in_its_order_by_index_and_lists_a_page(project, agent, reviewer):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="t")
    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="write", input_data={}, estimated_tokens=10, estimated_cost="0.0010")
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
    agent_approval_start(approval_id=call.pk, actor=agent)
    output = response_approval_submit(submitter=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                      call_approval_id=call.pk, agent_response={"ok": 1}, tokens_used=5)
    question = hitl_request_create(asker=agent, project_id=project.pk, request_type="question", question="ok?")
    tasks = _copies(Task.objects.get(pk=task.pk), PENDING)
    pending = AgentCallApproval.objects.get(pk=call.pk)
    pending.status, pending.started_at, pending.responded_at, pending.approved_by = "pending", None, None, None
    calls = _copies(pending, PENDING, task_id=lambda i: tasks[i].pk)
    _copies(ResponseApproval.objects.get(pk=output.pk), PENDING, agent_call_approval_id=lambda i: calls[i].pk)
    _copies(HitlRequest.objects.get(pk=question.pk), PENDING)
    with connection.cursor() as cursor:
        for table in ("approvals_agentcallapproval", "approvals_responseapproval", "hitl_hitlrequest", "projects_task"):
            cursor.execute(f"ANALYZE {table}")

    client = Client()
    client.force_login(reviewer)
    client.get("/review/inbox/items")
    with CaptureQueriesContext(connection) as sent:
        html = client.get("/review/inbox/items").content.decode()
    assert html.count('class="item-link"') == views.INBOX_SHOWN == 50
    assert f"<strong>{3 * PENDING + 2}</strong> pending" in html  # the counts are of them all
    lists = {table: q["sql"] for q in sent.captured_queries for table in
             ("approvals_agentcallapproval", "approvals_responseapproval", "hitl_hitlrequest")
             if q["sql"].startswith(f'SELECT "{table}"') and "LIMIT" in q["sql"]}
    assert set(lists) == {"approvals_agentcallapproval", "approvals_responseapproval", "hitl_hitlrequest"}
    with connection.cursor() as cursor:
        for table, index in (("approvals_agentcallapproval", "aca_inbox_order"),
                             ("approvals_responseapproval", "ra_inbox_order"), ("hitl_hitlrequest", "hitl_inbox_order")):
            cursor.execute("EXPLAIN " + lists[table])
            plan = "\n".join(line for (line,) in cursor.fetchall())
            # read in order from an index (this one, or one the planner finds as good, with an
            # incremental sort): never every pending row read and sorted
            assert f"Index Scan using {index}" in plan or (
                f"Seq Scan on {table}" not in plan and not re.search(r"(^|->)\s*Sort\s+\(", plan, re.M)), \
                (table, plan)
