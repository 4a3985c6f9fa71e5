"""The findings of the hardening review, each reproduced as a test (they failed before the
fix): spend that escaped the ledger, agent-chosen estimates, time-zone resets, the critical-risk
stop in a second transaction, contract deviations, and the lock order itself."""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from approvals.estimation import count_tokens, prompt_text
from approvals.models import AgentCallApproval
from approvals.services import (
    agent_approval_decide,
    agent_approval_report_usage,
    agent_approval_request,
    agent_approval_start,
    budget_override_respond,
    budget_release_stale,
)
from budgets.models import BudgetOverrideRequest, BudgetWindow, ProjectBudget, UsageEntry
from budgets.services import budget_reconcile, current_windows, ledger_totals
from core.errors import EmergencyStopActive, Expired, Forbidden, TransitionError
from core.uow import LockOrderError
from emergency.models import EmergencyStop
from projects.models import Project, Task
from projects.services import task_create
from projects.uow import project_uow

pytestmark = pytest.mark.django_db

ZERO = Decimal("0.0000")


def limits(project, **values):
    ProjectBudget.objects.update_or_create(project=project, defaults=values)


def ask(project, agent, *, cost, tokens=10, title="t", input_data=None, **extra):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=title)
    return agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action=f"write {title}", input_data=input_data or {},
                                  estimated_tokens=tokens, estimated_cost=Decimal(cost), **extra)


def run(approval, reviewer, agent):
    agent_approval_decide(approval_id=approval.pk, decider=reviewer, decision="approve")
    return agent_approval_start(approval_id=approval.pk, actor=agent)


def day(project):
    return current_windows(project)[0]


# --- finding 1: spend can escape the ledger ------------------------------------------------
def test_an_override_that_cannot_be_reserved_leaves_its_call_blocked_and_spend_always_lands(
        project, agent, reviewer, manager):
    limits(project, daily_cost_limit=Decimal("10.0000"))
    a = ask(project, agent, cost="9.0000", title="a")
    b = ask(project, agent, cost="5.0000", title="b")
    assert (a.budget_state, b.budget_state) == ("reserved", "blocked")
    assert "override" in b.budget_blocked_reason and b.budget_override_id is not None
    run(a, reviewer, agent)
    agent_approval_report_usage(approval_id=a.pk, actor=agent, tokens_used=10, actual_cost=Decimal("12.0000"))
    budget_override_respond(override_id=b.budget_override_id, actor=manager, decision="approve")
    b.refresh_from_db()
    assert b.status == "pending" and b.budget_state == "blocked"  # visibly still blocked, with the reason
    assert "1.5 x" in b.budget_blocked_reason and "17.0000" in b.budget_blocked_reason
    with pytest.raises(TransitionError) as refused:
        agent_approval_decide(approval_id=b.pk, decider=reviewer, decision="approve")
    assert refused.value.extra["budget_state"] == "blocked"
    assert day(project).spent_cost == Decimal("12.0000")
    assert budget_reconcile() == []


def test_a_blocked_call_can_never_be_approved_the_database_refuses_it(project, agent):
    limits(project, daily_cost_limit=Decimal("1.0000"))
    blocked = ask(project, agent, cost="1.2000")
    assert blocked.budget_state == "blocked"
    with pytest.raises(IntegrityError), transaction.atomic():
        AgentCallApproval.objects.filter(pk=blocked.pk).update(status="approved")


def test_usage_of_a_started_call_lands_even_with_its_reservation_released_or_missing(project, agent, reviewer):
    first = run(ask(project, agent, cost="1.0000", title="released"), reviewer, agent)
    assert budget_release_stale(older_than=timedelta(seconds=-1)) == 1  # beat gave the reservation back
    first.refresh_from_db()
    assert first.budget_state == "released" and day(project).reserved_cost == ZERO
    agent_approval_report_usage(approval_id=first.pk, actor=agent, tokens_used=50, actual_cost=Decimal("1.5000"))
    second = run(ask(project, agent, cost="1.0000", title="missing"), reviewer, agent)
    UsageEntry.objects.filter(approval=second).delete()  # a reservation lost (say, data repaired by hand)
    BudgetWindow.objects.filter(project=project).update(reserved_tokens=0, reserved_cost=ZERO)
    agent_approval_report_usage(approval_id=second.pk, actor=agent, tokens_used=70, actual_cost=Decimal("2.0000"))
    assert day(project).spent_cost == Decimal("3.5000") and day(project).spent_tokens == 120
    second.refresh_from_db()
    assert second.budget_state == "settled"
    assert budget_reconcile() == []


def test_spend_past_one_and_a_half_times_the_daily_limit_stops_the_project(project, agent, reviewer):
    limits(project, daily_cost_limit=Decimal("10.0000"))
    a = run(ask(project, agent, cost="9.0000"), reviewer, agent)
    with pytest.raises(EmergencyStopActive, match="the usage was recorded"):  # the agent is told to stop
        agent_approval_report_usage(approval_id=a.pk, actor=agent, tokens_used=10, actual_cost=Decimal("15.0001"))
    stop = EmergencyStop.objects.get(project=project, resolved_at__isnull=True)
    assert stop.triggered_conditions == ["budget_critical"]
    assert day(project).spent_cost == Decimal("15.0001")


def test_usage_far_above_the_estimate_raises_a_flag_for_reviewers(project, agent, reviewer):
    from events.models import Event

    a = run(ask(project, agent, cost="1.0000", tokens=100), reviewer, agent)
    agent_approval_report_usage(approval_id=a.pk, actor=agent, tokens_used=1000, actual_cost=Decimal("1.0000"))
    a.refresh_from_db()
    assert [f["code"] for f in a.usage_flags] == ["usage_overrun"]
    assert Event.objects.filter(event_type="safety_alert", data__flag__code="usage_overrun").count() == 1


# --- finding 3: the server's estimate is the floor ----------------------------------------
def test_an_agent_cannot_reserve_less_than_the_servers_count(project, agent, settings):
    settings.HITL_OUTPUT_TOKEN_ALLOWANCE = 500
    big = {"document": "lorem ipsum dolor sit amet " * 2000}
    approval = ask(project, agent, cost="0", tokens=0, input_data=big, title="big")
    floor = count_tokens(prompt_text(proposed_action="write big", input_data=big, context_summary=""))
    assert floor > 5000
    assert approval.estimated_tokens == floor + 500
    assert approval.estimated_cost > ZERO  # priced with HITL_FLOOR_PRICE_MODEL: the call named no model
    assert day(project).reserved_tokens == floor + 500
    more = ask(project, agent, cost="50.0000", tokens=10**6, title="more")
    assert (more.estimated_tokens, more.estimated_cost) == (10**6, Decimal("50.0000"))  # more is allowed


# --- finding 4: windows by instant ---------------------------------------------------------
def test_changing_the_time_zone_loses_nothing_spent_or_reserved(project, agent, manager, client_for):
    limits(project, daily_cost_limit=Decimal("10.0000"))
    project.timezone = "Europe/Berlin"
    project.save()
    ask(project, agent, cost="6.0000", title="a")
    r = client_for(manager).patch(f"/api/v1/projects/{project.pk}", {"timezone": "America/New_York"},
                                  format="json")
    assert r.status_code == 200 and r.json()["timezone"] == "America/New_York"
    assert r.json()["budget"]["cost_reserved"] == "6.0000"
    second = ask(project, agent, cost="6.0000", title="b")
    assert second.budget_state == "blocked"  # not admitted into a fresh, empty day
    assert BudgetWindow.objects.filter(project=project, kind="day").count() == 1


def test_after_a_zone_change_the_next_window_starts_where_the_old_one_ended(project):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    utc = ZoneInfo("UTC")
    project.timezone = "Europe/Berlin"
    project.save()
    noon = datetime(2026, 6, 10, 12, 0, tzinfo=utc)

    def windows(at):
        with project_uow(project.pk) as uow:
            return current_windows(uow.project, at, uow=uow)

    first, _ = windows(noon)
    assert first.end == datetime(2026, 6, 10, 22, 0, tzinfo=utc)  # Berlin midnight
    project.timezone = "America/New_York"
    project.save()
    assert windows(noon + timedelta(hours=2))[0].pk == first.pk  # still covers
    late, _ = windows(datetime(2026, 6, 10, 23, 0, tzinfo=utc))
    assert (late.start, late.end) == (first.end, datetime(2026, 6, 11, 4, 0, tzinfo=utc))  # New York midnight
    assert current_windows(project, datetime(2026, 6, 12, 0, 0, tzinfo=utc))[0].pk is None  # reads make none


def test_patching_a_project_needs_a_manager(project, reviewer, manager, client_for):
    r = client_for(reviewer).patch(f"/api/v1/projects/{project.pk}", {"name": "New"}, format="json")
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    r = client_for(reviewer).patch(f"/api/v1/projects/{project.pk}", {"timezone": "Mars/Base"}, format="json")
    assert r.status_code in (400, 403)
    r = client_for(manager).patch(f"/api/v1/projects/{project.pk}", {"timezone": "Mars/Base"}, format="json")
    assert r.status_code == 400 and "timezone" in r.json()["fields"]
    project.refresh_from_db()
    assert project.name == "Demo"


# --- finding 6: the critical-risk stop commits with the request ---------------------------
CRITICAL_INPUT = {"command": "rm -rf / --no-preserve-root"}


def test_a_critical_call_is_refused_and_stopped_in_one_transaction(project, agent):
    with pytest.raises(EmergencyStopActive) as refused:
        ask(project, agent, cost="0.1000", input_data=CRITICAL_INPUT, title="wipe")
    stop = EmergencyStop.objects.get(project=project)
    assert refused.value.extra["emergency_stop_id"] == str(stop.pk)
    call = AgentCallApproval.objects.get(proposed_action="write wipe")
    assert call.status == "cancelled" and str(call.pk) in stop.cancelled_approvals
    assert Project.objects.get(pk=project.pk).active_stop_id == stop.pk


def test_if_the_stop_fails_the_critical_request_is_not_committed_either(project, agent, monkeypatch):
    import approvals.services.requests as requests

    def crash(**kwargs):
        raise RuntimeError("the process died here")

    monkeypatch.setattr(requests, "emergency_stop_trigger", crash)
    with pytest.raises(RuntimeError):
        ask(project, agent, cost="0.1000", input_data=CRITICAL_INPUT, title="wipe")
    assert not AgentCallApproval.objects.filter(proposed_action="write wipe").exists()  # no pending call escapes


# --- finding 7: contract deviations -------------------------------------------------------
def test_an_expired_blocked_call_answers_410_and_times_out(project, agent, reviewer):
    limits(project, daily_cost_limit=Decimal("1.0000"))
    blocked = ask(project, agent, cost="1.2000")
    AgentCallApproval.objects.filter(pk=blocked.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(Expired):
        agent_approval_decide(approval_id=blocked.pk, decider=reviewer, decision="approve")
    blocked.refresh_from_db()
    assert blocked.status == "timed_out"
    assert BudgetOverrideRequest.objects.get(pk=blocked.budget_override_id).status == "rejected"  # withdrawn


def test_token_overrides_above_the_token_threshold_need_a_manager(project, agent, reviewer, manager, settings):
    settings.HITL_MANAGER_TOKEN_THRESHOLD = 1000
    limits(project, daily_token_limit=100)
    blocked = ask(project, agent, cost="0.0100", tokens=5000)
    override = BudgetOverrideRequest.objects.get(pk=blocked.budget_override_id)
    assert override.violation_type == "daily_token_limit" and override.requires_manager_approval
    with pytest.raises(Forbidden):
        budget_override_respond(override_id=override.pk, actor=reviewer, decision="approve")
    budget_override_respond(override_id=override.pk, actor=manager, decision="approve")
    blocked.refresh_from_db()
    assert blocked.budget_state == "reserved"


def test_who_must_approve_follows_the_setting_at_decision_time(project, agent, reviewer, settings):
    settings.HITL_MANAGER_COST_THRESHOLD = "0.1000"
    limits(project, daily_cost_limit=Decimal("2.0000"))
    blocked = ask(project, agent, cost="2.5000")
    override = BudgetOverrideRequest.objects.get(pk=blocked.budget_override_id)
    assert override.requires_manager_approval
    settings.HITL_MANAGER_COST_THRESHOLD = "100.0000"  # the deployment raised it
    override.refresh_from_db()
    assert not override.requires_manager_approval
    budget_override_respond(override_id=override.pk, actor=reviewer, decision="approve")


@pytest.mark.parametrize("body, field", [
    ({"manager_threshold": "1000000"}, "manager_threshold"),
    ({"warning_percent": 1000}, "warning_percent"),
    ({"warning_percent": 0}, "warning_percent"),
    ({"warning_percent": 99, "critical_percent": 10, "emergency_percent": 5}, "non_field_errors"),
])
def test_budget_settings_are_validated(project, manager, client_for, body, field):
    before = ProjectBudget.objects.get_or_create(project=project)[0]
    r = client_for(manager).patch(f"/api/v1/budgets/{project.pk}", body, format="json")
    assert r.status_code == 400 and r.json()["error"] == "invalid" and field in r.json()["fields"], r.content
    after = ProjectBudget.objects.get(project=project)
    assert (after.warning_percent, after.critical_percent, after.emergency_percent) == (
        before.warning_percent, before.critical_percent, before.emergency_percent)


def test_the_api_shows_a_blocked_call_and_what_unblocks_it(project, agent, client_for):
    limits(project, daily_cost_limit=Decimal("1.0000"))
    blocked = ask(project, agent, cost="1.2000")
    body = client_for(agent).get(f"/api/v1/agent-approvals/{blocked.pk}").json()
    assert body["budget_state"] == "blocked" and body["budget_override_id"] == str(blocked.budget_override_id)
    assert str(blocked.budget_override_id) in body["budget_blocked_reason"]
    assert body["approved_by"] is None


# --- the lock order ---------------------------------------------------------------------------
def test_locking_out_of_order_is_refused_at_once(project, agent):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="t")
    with pytest.raises(LockOrderError), project_uow(project.pk) as uow:
        current_windows(project, uow=uow)          # budget windows ...
        uow.lock("task", Task.objects, pk=task.pk)  # ... then a task: the order says task first


def test_audit_rows_and_events_are_written_last_in_the_unit_of_work(project, agent):
    from audit.models import AuditEvent
    from events.models import Event

    events_before, audit_before = Event.objects.count(), AuditEvent.objects.count()
    with project_uow(project.pk):
        ask(project, agent, cost="0.1000")
        assert (Event.objects.count(), AuditEvent.objects.count()) == (events_before, audit_before)
    assert Event.objects.count() > events_before and AuditEvent.objects.count() > audit_before


def test_ledger_totals_match_after_every_path(project, agent, reviewer, manager):
    limits(project, daily_cost_limit=Decimal("5.0000"))
    a = run(ask(project, agent, cost="2.0000", title="a"), reviewer, agent)
    b = ask(project, agent, cost="4.0000", title="b")  # blocked
    budget_override_respond(override_id=b.budget_override_id, actor=manager, decision="approve")
    agent_approval_report_usage(approval_id=a.pk, actor=agent, tokens_used=5, actual_cost=Decimal("1.0000"))
    for window in BudgetWindow.objects.filter(project=project):
        totals = ledger_totals(window)
        assert (window.reserved_cost, window.spent_cost) == (totals["reserved_cost"], totals["spent_cost"])


# --- found by the review of this change -----------------------------------------------------
def test_a_critical_call_that_also_passes_the_ceiling_records_both_conditions(project, agent):
    from recovery.services import recovery_plan_for

    limits(project, daily_cost_limit=Decimal("10.0000"))
    with pytest.raises(EmergencyStopActive):
        ask(project, agent, cost="20.0000", input_data=CRITICAL_INPUT, title="wipe")
    stop = EmergencyStop.objects.get(project=project)
    assert set(stop.triggered_conditions) == {"security_threat", "budget_critical"}
    assert "review_flagged" in recovery_plan_for(stop)  # the dangerous call is reviewed in the recovery


def test_a_lapsed_grant_gives_its_reservation_back_at_once_and_cannot_start(project, agent, reviewer, settings):
    settings.HITL_START_WITHIN_MINUTES = 5
    call = ask(project, agent, cost="8.0000")
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
    assert budget_release_stale(older_than=timedelta(seconds=-1)) == 0  # not started: the grant decides
    AgentCallApproval.objects.filter(pk=call.pk).update(responded_at=timezone.now() - timedelta(minutes=6))
    from approvals.services import agent_approval_expire_overdue

    assert agent_approval_expire_overdue() == 1
    call.refresh_from_db()
    assert (call.status, call.budget_state) == ("cancelled", "released")
    assert day(project).reserved_cost == ZERO


def test_a_call_whose_reservation_was_released_cannot_start(project, agent, reviewer):
    call = ask(project, agent, cost="1.0000")
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
    AgentCallApproval.objects.filter(pk=call.pk).update(budget_state="released")
    with pytest.raises(TransitionError) as refused:
        agent_approval_start(approval_id=call.pk, actor=agent)
    assert refused.value.extra["budget_state"] == "released"


def test_raising_the_limit_admits_a_call_only_the_ceiling_kept_blocked(project, agent, reviewer, manager,
                                                                        client_for):
    limits(project, daily_cost_limit=Decimal("10.0000"))
    a = run(ask(project, agent, cost="9.0000", title="a"), reviewer, agent)
    b = ask(project, agent, cost="5.0000", title="b")
    agent_approval_report_usage(approval_id=a.pk, actor=agent, tokens_used=10, actual_cost=Decimal("12.0000"))
    budget_override_respond(override_id=b.budget_override_id, actor=manager, decision="approve")
    b.refresh_from_db()
    assert b.budget_state == "blocked"
    r = client_for(manager).patch(f"/api/v1/budgets/{project.pk}", {"daily_cost_limit": "100.0000"}, format="json")
    assert r.status_code == 200
    b.refresh_from_db()
    assert b.budget_state == "reserved" and b.budget_blocked_reason == ""
    agent_approval_decide(approval_id=b.pk, decider=reviewer, decision="approve")


def test_raising_the_limit_admits_a_call_blocked_behind_a_pending_override_and_withdraws_it(
        project, agent, reviewer, manager, client_for):
    limits(project, daily_cost_limit=Decimal("10.0000"))
    run(ask(project, agent, cost="9.0000", title="a"), reviewer, agent)
    b = ask(project, agent, cost="2.0000", title="b")
    c = ask(project, agent, cost="5.0000", title="c")
    old_b, old_c = b.budget_override_id, c.budget_override_id
    assert b.budget_state == c.budget_state == "blocked"
    assert "by 1.0000" in b.budget_blocked_reason

    # raised enough for b, not for c: b (the older) is reserved at once and its override withdrawn;
    # c, measured after b, still needs its 4.0000 and keeps its override
    r = client_for(manager).patch(f"/api/v1/budgets/{project.pk}", {"daily_cost_limit": "12.0000"}, format="json")
    assert r.status_code == 200, r.content
    b.refresh_from_db()
    c.refresh_from_db()
    assert (b.budget_state, b.budget_blocked_reason, b.budget_override_id) == ("reserved", "", None)
    withdrawn = BudgetOverrideRequest.objects.get(pk=old_b)
    assert withdrawn.status == "rejected" and "limits changed" in withdrawn.rejection_reason
    assert c.budget_state == "blocked" and c.budget_override_id == old_c and "by 4.0000" in c.budget_blocked_reason
    assert BudgetOverrideRequest.objects.get(pk=old_c).status == "pending"
    assert day(project).reserved_cost == Decimal("11.0000")  # a (started, not settled) and b
    agent_approval_decide(approval_id=b.pk, decider=reviewer, decision="approve")  # no override needed now

    # raised again, not enough for c: its override is replaced by one for what is missing now
    r = client_for(manager).patch(f"/api/v1/budgets/{project.pk}", {"daily_cost_limit": "14.0000"}, format="json")
    assert r.status_code == 200, r.content
    c.refresh_from_db()
    assert c.budget_state == "blocked" and c.budget_override_id != old_c and "by 2.0000" in c.budget_blocked_reason
    assert BudgetOverrideRequest.objects.get(pk=old_c).status == "rejected"
    assert BudgetOverrideRequest.objects.get(pk=c.budget_override_id).requested_amount == Decimal("2.0000")

    # a change that leaves c's need as it is leaves its override alone
    current = c.budget_override_id
    r = client_for(manager).patch(f"/api/v1/budgets/{project.pk}", {"warning_percent": 70}, format="json")
    assert r.status_code == 200, r.content
    c.refresh_from_db()
    assert c.budget_override_id == current
    assert BudgetOverrideRequest.objects.get(pk=current).status == "pending"


def test_a_call_the_ceiling_holds_after_an_earlier_one_is_admitted_keeps_its_override(
        project, agent, reviewer, manager, client_for):
    """Readmitting the older call first takes the younger one past 1.5 x the new limit: it keeps
    its pending override (never blocked behind a withdrawn one), says why, and a later raise
    admits it."""
    limits(project, daily_cost_limit=Decimal("10.0000"))
    a = ask(project, agent, cost="11.0000", title="a")
    b = ask(project, agent, cost="12.0000", title="b")
    ask(project, agent, cost="9.0000", title="x")
    assert a.budget_state == b.budget_state == "blocked"
    old_a = a.budget_override_id
    r = client_for(manager).patch(f"/api/v1/budgets/{project.pk}", {"daily_cost_limit": "20.0000"}, format="json")
    assert r.status_code == 200, r.content
    a.refresh_from_db()
    b.refresh_from_db()
    assert a.budget_state == "reserved" and a.budget_override_id is None  # admitted without it
    assert BudgetOverrideRequest.objects.get(pk=old_a).status == "rejected"  # withdrawn
    assert b.budget_state == "blocked" and "1.5 x the daily limit" in b.budget_blocked_reason
    assert BudgetOverrideRequest.objects.get(pk=b.budget_override_id).status == "pending"
    r = client_for(manager).patch(f"/api/v1/budgets/{project.pk}", {"daily_cost_limit": "100.0000"}, format="json")
    assert r.status_code == 200, r.content
    old_b = b.budget_override_id
    b.refresh_from_db()
    assert b.budget_state == "reserved" and b.budget_override_id is None
    assert BudgetOverrideRequest.objects.get(pk=old_b).status == "rejected"


def test_approving_one_of_two_calls_blocked_at_once_sizes_the_others_override_again(
        project, agent, reviewer, manager):
    """Two calls blocked side by side each got an override sized as if the other did not exist:
    approving both left the second still short, though its reason said approving its override
    unblocks it. Approving the first now sizes the second's again (withdrawn, replaced by one
    for what it needs after the first is reserved), so each approval does what it says."""
    from events.models import Event

    limits(project, daily_cost_limit=Decimal("10.0000"))
    run(ask(project, agent, cost="9.0000", title="a"), reviewer, agent)
    b = ask(project, agent, cost="2.0000", title="b")
    c = ask(project, agent, cost="2.0000", title="c")
    old_c = c.budget_override_id
    assert b.budget_state == c.budget_state == "blocked"
    assert "by 1.0000" in b.budget_blocked_reason and "by 1.0000" in c.budget_blocked_reason

    budget_override_respond(override_id=b.budget_override_id, actor=reviewer, decision="approve")
    b.refresh_from_db()
    c.refresh_from_db()
    assert b.budget_state == "reserved"
    withdrawn = BudgetOverrideRequest.objects.get(pk=old_c)
    assert withdrawn.status == "rejected" and str(b.budget_override_id) in withdrawn.rejection_reason
    assert c.budget_state == "blocked" and c.budget_override_id != old_c
    assert "by 2.0000" in c.budget_blocked_reason and str(c.budget_override_id) in c.budget_blocked_reason
    assert BudgetOverrideRequest.objects.get(pk=c.budget_override_id).requested_amount == Decimal("2.0000")
    assert Event.objects.filter(event_type="budget_override_requested",
                                data__id=str(c.budget_override_id), data__approval_id=str(c.pk)).exists()

    budget_override_respond(override_id=c.budget_override_id, actor=reviewer, decision="approve")
    c.refresh_from_db()
    assert c.budget_state == "reserved"
    assert day(project).reserved_cost == Decimal("13.0000")  # a (started), b and c, within 10 + 1 + 2
    agent_approval_decide(approval_id=c.pk, decider=reviewer, decision="approve")


def test_rejecting_one_of_two_blocked_calls_leaves_the_others_override_as_it_was(project, agent, reviewer):
    limits(project, daily_cost_limit=Decimal("10.0000"))
    run(ask(project, agent, cost="9.0000", title="a"), reviewer, agent)
    b = ask(project, agent, cost="2.0000", title="b")
    c = ask(project, agent, cost="2.0000", title="c")
    budget_override_respond(override_id=b.budget_override_id, actor=reviewer, decision="reject", reason="no")
    c_override = c.budget_override_id
    c.refresh_from_db()
    assert c.budget_override_id == c_override
    assert BudgetOverrideRequest.objects.get(pk=c_override).status == "pending"
    budget_override_respond(override_id=c_override, actor=reviewer, decision="approve")
    c.refresh_from_db()
    assert c.budget_state == "reserved" and c.budget_override_id == c_override  # names the approved one


def test_max_tokens_anywhere_in_the_input_is_reserved_never_ignored(project, agent):
    huge = ask(project, agent, cost="0", tokens=0, input_data={"max_tokens": 10_000_000}, title="huge")
    assert huge.estimated_tokens >= 10_000_000
    nested = ask(project, agent, cost="0", tokens=0, title="nested",
                 input_data={"tool": "llm", "arguments": {"max_tokens": "5000"}})
    assert nested.estimated_tokens >= 5000


@pytest.mark.parametrize("value", ["Infinity", "inf", "1e309", 10 ** 400, 10 ** 30, "99999999"])
def test_a_max_tokens_too_large_for_a_float_reserves_the_most_never_the_default(project, agent, value):
    """Values past a float ("Infinity", "1e309", a 400-digit integer) were ignored, so the call
    reserved the model's default output (about a thousand tokens) instead of the capped ten million."""
    from approvals.estimation import MAX_OUTPUT_TOKENS

    call = ask(project, agent, cost="0", tokens=0, input_data={"max_tokens": value}, title=f"huge {str(value)[:8]}",
               model="gpt-4o-mini")
    assert call.estimated_tokens >= MAX_OUTPUT_TOKENS


@pytest.mark.parametrize("value", ["NaN", "lots", None, True, [5], -10])
def test_a_max_tokens_that_is_no_count_asks_for_no_more_than_the_default(project, agent, value):
    from approvals.estimation import MAX_OUTPUT_TOKENS

    call = ask(project, agent, cost="0", tokens=0, input_data={"max_tokens": value}, title="odd", model="gpt-4o-mini")
    assert 0 < call.estimated_tokens < MAX_OUTPUT_TOKENS


def test_spend_past_the_ceiling_during_a_stop_joins_the_stop(project, agent, reviewer):
    limits(project, daily_cost_limit=Decimal("10.0000"))
    a = run(ask(project, agent, cost="1.0000"), reviewer, agent)
    from emergency.services import emergency_stop_trigger

    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="look", actor=reviewer)
    with pytest.raises(EmergencyStopActive, match="the usage was recorded"):
        agent_approval_report_usage(approval_id=a.pk, actor=agent, tokens_used=10, actual_cost=Decimal("16.0000"))
    assert day(project).spent_cost == Decimal("16.0000")
    stop = EmergencyStop.objects.get(project=project, resolved_at__isnull=True)
    assert stop.triggered_conditions == ["manual_stop", "budget_critical"]


def test_an_amended_input_is_estimated_and_assessed(project, agent, reviewer):
    limits(project, daily_token_limit=5000)
    call = ask(project, agent, cost="0.0100", tokens=50, input_data={"files": ["a.py"]})
    with pytest.raises(TransitionError, match=r"more than the call reserved.*daily token limit by \d{1,3}(?:,\d{3})+ tokens\."):
        agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve",
                              amended_input_data={"files": ["a.py"], "max_tokens": 100_000})
    with pytest.raises(TransitionError, match="critical risk"):
        agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve",
                              amended_input_data={"command": "rm -rf /"})
    call.refresh_from_db()
    assert call.status == "pending"
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve",
                          amended_input_data={"files": ["b.py"]})
    call.refresh_from_db()
    assert call.status == "approved" and call.risk_assessment["amended"]["level"] == "low"
    assert budget_reconcile() == []


@pytest.mark.parametrize("then", ["settle", "cancel", "stop"])
def test_a_larger_amendment_grows_the_reservation_and_all_of_it_goes_back(project, agent, reviewer, settings, then):
    """A reviewer's amendment a little longer than the input used to be refused (409 "needs 1012
    tokens, more than reserved (1011)"): the reservation had no room for it. Now the difference
    is reserved (within the limits) and the call's estimate is the amended one; settling,
    cancelling or a stop gives back all of it."""
    settings.HITL_OUTPUT_TOKEN_ALLOWANCE = 1000
    call = ask(project, agent, cost="0", tokens=0, input_data={"files": ["a.py"]})
    before = (call.estimated_tokens, call.estimated_cost, day(project).reserved_tokens)
    assert before[2] == before[0]
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve",
                          amended_input_data={"files": ["a.py", "b.py", "c.py"], "note": "also the tests"})
    call.refresh_from_db()
    assert call.status == "approved" and call.estimated_tokens > before[0] and call.estimated_cost >= before[1]
    assert day(project).reserved_tokens == call.estimated_tokens
    assert budget_reconcile() == []
    if then == "settle":
        agent_approval_start(approval_id=call.pk, actor=agent)
        agent_approval_report_usage(approval_id=call.pk, actor=agent, tokens_used=700, actual_cost=Decimal("0.0100"))
        assert (day(project).spent_tokens, day(project).reserved_tokens) == (700, 0)
    elif then == "cancel":
        from approvals.services import agent_approval_cancel

        agent_approval_cancel(approval_id=call.pk, actor=agent)
    else:
        from emergency.services import emergency_stop_trigger

        emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="look", actor=reviewer)
    assert (day(project).reserved_tokens, day(project).reserved_cost) == (0, ZERO)
    assert budget_reconcile() == []
    if then != "settle":
        assert budget_release_stale(older_than=timedelta(seconds=-1)) == 0  # closed: nothing left to release


def test_later_usage_reports_are_totals_the_growth_lands_and_nothing_goes_back(project, agent, reviewer):
    """A second report of a started call (70 tokens, then 99 tokens and 0.5000) answered 200 but
    only the first reached the ledger. Reports give the call's totals: the same totals again
    change nothing (a retry), larger ones land the difference, smaller ones are refused."""
    call = run(ask(project, agent, cost="1.0000", tokens=100), reviewer, agent)
    agent_approval_report_usage(approval_id=call.pk, actor=agent, tokens_used=70, actual_cost=Decimal("0.2000"))
    assert (day(project).spent_tokens, day(project).spent_cost, day(project).reserved_tokens) == (70, Decimal("0.2000"), 0)
    _, settled = agent_approval_report_usage(approval_id=call.pk, actor=agent, tokens_used=70,
                                             actual_cost=Decimal("0.2000"))
    assert settled is False and day(project).spent_tokens == 70  # a retry
    agent_approval_report_usage(approval_id=call.pk, actor=agent, tokens_used=99, actual_cost=Decimal("0.5000"))
    assert (day(project).spent_tokens, day(project).spent_cost) == (99, Decimal("0.5000"))
    with pytest.raises(TransitionError, match="already reported as 99 tokens and 0.5000") as refused:
        agent_approval_report_usage(approval_id=call.pk, actor=agent, tokens_used=98, actual_cost=Decimal("0.6000"))
    assert refused.value.extra["tokens_used"] == 99
    assert (day(project).spent_tokens, day(project).spent_cost) == (99, Decimal("0.5000"))
    assert list(UsageEntry.objects.filter(approval=call).values_list("kind", "spent_tokens")) == [
        ("reserve", 0), ("settle", 70), ("adjust", 29)]
    assert budget_reconcile() == []


def test_growth_reported_past_the_critical_line_stops_the_project(project, agent, reviewer):
    limits(project, daily_cost_limit=Decimal("10.0000"))
    call = run(ask(project, agent, cost="1.0000"), reviewer, agent)
    agent_approval_report_usage(approval_id=call.pk, actor=agent, tokens_used=10, actual_cost=Decimal("1.0000"))
    assert not EmergencyStop.objects.filter(project=project).exists()
    with pytest.raises(EmergencyStopActive):
        agent_approval_report_usage(approval_id=call.pk, actor=agent, tokens_used=10, actual_cost=Decimal("15.0001"))
    stop = EmergencyStop.objects.get(project=project, resolved_at__isnull=True)
    assert stop.triggered_conditions == ["budget_critical"]
    assert day(project).spent_cost == Decimal("15.0001")


def test_overrun_alerts_are_not_in_the_budget_alerts_of_the_api(project, agent, reviewer, client_for):
    a = run(ask(project, agent, cost="1.0000"), reviewer, agent)
    agent_approval_report_usage(approval_id=a.pk, actor=agent, tokens_used=10, actual_cost=Decimal("1.5000"))
    body = client_for(agent).get(f"/api/v1/budgets/{project.pk}").json()
    assert {alert["alert_type"] for alert in body["budget_alerts"]} <= {"warning", "critical", "emergency"}


def test_a_usage_report_honours_its_idempotency_key(project, agent, reviewer, client_for):
    started = run(ask(project, agent, cost="1.0000", title="usage"), reviewer, agent)
    client, url = client_for(agent), f"/api/v1/agent-approvals/{started.pk}/usage"
    first = client.post(url, {"tokens_used": 100, "actual_cost": "0.5000"}, format="json", HTTP_IDEMPOTENCY_KEY="u1")
    assert first.status_code == 200, first.content
    other = client.post(url, {"tokens_used": 200, "actual_cost": "0.6000"}, format="json", HTTP_IDEMPOTENCY_KEY="u1")
    assert other.status_code == 400 and "Idempotency-Key" in other.json()["fields"], other.content
    assert day(project).spent_cost == Decimal("0.5000")  # the other body was not applied
    again = client.post(url, {"tokens_used": 100, "actual_cost": "0.5000"}, format="json", HTTP_IDEMPOTENCY_KEY="u1")
    assert again.status_code == 200 and again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    grown = client.post(url, {"tokens_used": 200, "actual_cost": "0.6000"}, format="json", HTTP_IDEMPOTENCY_KEY="u2")
    assert grown.status_code == 200 and day(project).spent_cost == Decimal("0.6000")


def test_a_decision_honours_its_idempotency_key_and_keeps_what_a_refusal_committed(project, agent, reviewer,
                                                                                    client_for):
    """A reviewer's retried decision (its answer lost on the network) with the same key gets the
    first answer again, not 409 for its own decision; once. A refusal is not stored, and what it
    committed stays as without a key: a decision past the deadline times the call out (410)."""
    from audit.models import AuditEvent

    client = client_for(reviewer)
    call = ask(project, agent, cost="0.1000", title="decided once")
    url = f"/api/v1/agent-approvals/{call.pk}/respond"
    first = client.post(url, {"decision": "approve"}, format="json", HTTP_IDEMPOTENCY_KEY="d1")
    again = client.post(url, {"decision": "approve"}, format="json", HTTP_IDEMPOTENCY_KEY="d1")
    assert first.status_code == 200 and again.status_code == 200 and again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert AuditEvent.objects.filter(action="agent_approval.approve", object_id=str(call.pk)).count() == 1
    other_key = client.post(url, {"decision": "approve"}, format="json", HTTP_IDEMPOTENCY_KEY="d2")
    assert other_key.status_code == 409  # a new decision (another key) on a decided call

    late = ask(project, agent, cost="0.1000", title="too late")
    AgentCallApproval.objects.filter(pk=late.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    url = f"/api/v1/agent-approvals/{late.pk}/respond"
    for _ in range(2):  # not stored: the retry is refused again, as the item is timed out now
        refused = client.post(url, {"decision": "approve"}, format="json", HTTP_IDEMPOTENCY_KEY="d3")
        assert refused.status_code == 410, refused.content
    late.refresh_from_db()
    assert late.status == "timed_out"  # committed, though the key's transaction refused the decision


def test_usage_of_a_call_without_a_model_is_priced_like_its_estimate(project, agent, reviewer, client_for):
    """A call created without ``model`` (the server estimated it at HITL_FLOOR_PRICE_MODEL's
    price) used to need ``actual_cost`` in every report (400 "the call has no priced model"),
    though API.md makes it optional on usage and on response approvals."""
    from approvals.models import ModelPrice

    floor = ModelPrice.objects.get(model="gpt-4o")
    usage = run(ask(project, agent, cost="0", tokens=0, title="usage"), reviewer, agent)
    response = run(ask(project, agent, cost="0", tokens=0, title="response"), reviewer, agent)
    assert usage.model == "" and response.model == ""
    client = client_for(agent)
    r = client.post(f"/api/v1/agent-approvals/{usage.pk}/usage", {"tokens_used": 1_000_000}, format="json")
    assert r.status_code == 200, r.content
    # a million tokens: the prompt's few at the input price, the rest at the output price
    assert floor.input_per_million < day(project).spent_cost <= floor.output_per_million
    r = client.post("/api/v1/response-approvals", {
        "project_id": str(project.pk), "task_id": str(response.task_id), "agent_type": "coder",
        "original_call_approval_id": str(response.pk), "agent_response": {"text": "done"},
        "response_summary": "done", "next_steps": [], "tokens_used": 2000}, format="json")
    assert r.status_code == 201, r.content
    assert Decimal(r.json()["actual_cost"]) > 0
    assert budget_reconcile() == []


def test_an_override_asked_by_hand_for_a_day_that_ended_is_withdrawn_by_beat(project, agent, manager, client_for):
    """An override asked for by hand (no call behind it) for a day that then ended stayed pending
    for ever (in the inbox; approving it 409): beat's closing of the ended window withdraws it."""
    from audit.models import AuditEvent
    from budgets.services import budget_close_past_windows
    from events.models import Event

    limits(project, daily_cost_limit=Decimal("1.0000"))
    r = client_for(agent).post("/api/v1/budget-overrides", {
        "project_id": str(project.pk), "violation_type": "daily_cost_limit", "requested_amount": "150",
        "justification": "a batch tonight"}, format="json")
    assert r.status_code == 201, r.content
    override = BudgetOverrideRequest.objects.get(pk=r.json()["id"])
    BudgetWindow.objects.filter(pk=override.window_id).update(start=F("start") - timedelta(days=1),
                                                              end=F("end") - timedelta(days=1))
    budget_close_past_windows()
    override.refresh_from_db()
    assert override.status == "rejected" and "window ended before a decision" in override.rejection_reason
    assert Event.objects.filter(event_type="budget_override_decided", data__id=str(override.pk)).exists()
    assert AuditEvent.objects.filter(action="budget_override.withdraw", object_id=str(override.pk)).exists()
    r = client_for(manager).post(f"/api/v1/budget-overrides/{override.pk}/respond", {"decision": "approve"},
                                 format="json")
    assert r.status_code == 409, r.content


def test_a_call_blocked_for_a_day_that_ended_is_admitted_in_the_new_one_and_its_override_not_approved(
        project, agent, reviewer, manager, client_for):
    """Found by a time-zone hunt: past the project's midnight a call blocked by the daily limit stayed
    blocked (its override asked for room in the day that had ended), and approving that override
    answered 200, raising the allowance of a closed day. Approving it is now 409; beat's closing of
    the ended window admits the call again in the new day and withdraws the old override."""
    from budgets.services import budget_close_past_windows

    limits(project, daily_cost_limit=Decimal("1.0000"))
    ask(project, agent, cost="0.8000", title="fits")
    blocked = ask(project, agent, cost="0.5000", title="blocked")
    assert blocked.budget_state == "blocked" and blocked.budget_override_id
    override = BudgetOverrideRequest.objects.get(pk=blocked.budget_override_id)
    # the project's day ends: its window (and what the first call reserved in it) is now yesterday's
    BudgetWindow.objects.filter(pk=override.window_id).update(start=F("start") - timedelta(days=1),
                                                              end=F("end") - timedelta(days=1))
    r = client_for(manager).post(f"/api/v1/budget-overrides/{override.pk}/respond", {"decision": "approve"},
                                 format="json")
    assert r.status_code == 409 and "ended at" in r.json()["detail"], r.content
    # it says what becomes of a call it held, and of one asked for by hand (no call behind it: it said
    # "Its call is admitted again", found with an override asked for through the API)
    assert "A call it held is admitted again in the new day" in r.json()["detail"]
    assert "one asked for by hand is asked for again there" in r.json()["detail"]
    override.refresh_from_db()
    assert override.status == "pending"
    assert BudgetWindow.objects.get(pk=override.window_id).allowance_cost == 0

    budget_close_past_windows()
    blocked.refresh_from_db()
    override.refresh_from_db()
    assert blocked.budget_state == "reserved" and blocked.budget_override_id is None
    assert override.status == "rejected" and "window ended before a decision" in override.rejection_reason
    day, _ = current_windows(project)
    assert day.pk != override.window_id and day.reserved_cost == Decimal("0.5000")
    assert BudgetWindow.objects.get(pk=override.window_id).closed_at is not None
    r = client_for(reviewer).post(f"/api/v1/agent-approvals/{blocked.pk}/respond", {"decision": "approve"},
                                  format="json")
    assert r.status_code == 200, r.content
