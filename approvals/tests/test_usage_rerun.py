"""A stop tripped inside a shared unit of work runs the service again with the exclusive lock
(core.uow.ExclusiveNeeded), on every database, with or without an Idempotency-Key: most tests run
inside the test's transaction, where the service cannot be re-run and upgrades in place, so this
path needs a transactional test of its own."""
from decimal import Decimal

import pytest

from approvals.services import agent_approval_decide, agent_approval_request, agent_approval_start
from budgets.models import ProjectBudget, UsageEntry
from core import uow as core_uow
from emergency.models import EmergencyStop
from projects.services import task_create

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("idempotency_key", [None, "usage-once"])
def test_a_usage_report_that_trips_the_stop_runs_again_with_the_exclusive_lock(
        project, agent, reviewer, agent_client, monkeypatch, idempotency_key):
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("1.0000")})
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="t")
    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="do it", input_data={}, estimated_tokens=10,
                                  estimated_cost=Decimal("0.1000"))
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
    agent_approval_start(approval_id=call.pk, actor=agent)
    raised = []
    original = core_uow.ExclusiveNeeded.__init__

    def spy(self, scope_key):
        raised.append(scope_key)
        original(self, scope_key)

    monkeypatch.setattr(core_uow.ExclusiveNeeded, "__init__", spy)
    headers = {"HTTP_IDEMPOTENCY_KEY": idempotency_key} if idempotency_key else {}
    r = agent_client.post(f"/api/v1/agent-approvals/{call.pk}/usage", {"tokens_used": 100, "actual_cost": "2.0000"},
                          format="json", **headers)
    # recorded, and the stop it tripped is said: 423
    assert r.status_code == 423 and r.json()["detail"].endswith("the usage was recorded."), r.content
    assert r.json()["emergency_stop_id"] == str(EmergencyStop.objects.get(project=project).pk)
    assert raised == [f"project:{project.pk}"]  # once: the second run took the exclusive lock
    call.refresh_from_db()
    assert call.budget_state == "settled"
    stop = EmergencyStop.objects.get(project=project)
    assert stop.triggered_conditions == ["budget_critical"]
    # the day is named: the spend lands in the day the cost was reserved in (reported after the
    # project's midnight, the reason spoke of "the day's cost" while the budget showed today's 0)
    day = UsageEntry.objects.filter(approval=call).first().day_window
    assert f"The cost of the day from {day.start:%Y-%m-%dT%H:%M:%S}Z (the day the call's cost was reserved in) " \
           "2.0000 passes 1.5 x the daily limit 1.0000" == stop.stop_reason, stop.stop_reason
    if idempotency_key:  # a retry with its key (a 423 is not kept for it: run again) lands nothing more
        again = agent_client.post(f"/api/v1/agent-approvals/{call.pk}/usage",
                                  {"tokens_used": 100, "actual_cost": "2.0000"}, format="json", **headers)
        assert again.status_code == 423 and again.json() == r.json()
    assert sum(e.spent_cost for e in UsageEntry.objects.filter(approval=call)) == Decimal("2.0000")  # once
