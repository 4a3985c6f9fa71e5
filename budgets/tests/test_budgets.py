import io
import random
import threading
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.db import connections

from approvals.models import AgentCallApproval
from approvals.services import (
    agent_approval_cancel,
    agent_approval_decide,
    agent_approval_request,
)
from budgets.models import (
    BudgetAlert,
    BudgetOverrideRequest,
    BudgetWindow,
    ProjectBudget,
    UsageEntry,
)
from budgets.services import (
    budget_admit,
    budget_reconcile,
    current_windows,
    ledger_totals,
    window_bounds,
)
from core.errors import EmergencyStopActive, TransitionError
from core.tests.test_malformed import assert_error
from emergency.models import EmergencyStop
from events.models import Event
from projects.services import task_create

pytestmark = pytest.mark.django_db
UTC = ZoneInfo("UTC")


def limits(project, **values):
    ProjectBudget.objects.update_or_create(project=project, defaults=values)


def call(project, agent, tokens=100, cost="1.0000", title="t"):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=title)
    return agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="write the parser", input_data={}, estimated_tokens=tokens,
                                  estimated_cost=Decimal(cost))


def budget_settle(*, approval, tokens_used, actual_cost):
    from budgets.services import budget_settle as settle
    from projects.uow import project_uow

    with project_uow(approval.project_id) as uow:
        return settle(uow=uow, call=approval, tokens_used=tokens_used, actual_cost=actual_cost).settled


def budget_reserve(*, approval, now):
    from projects.uow import project_uow

    with project_uow(approval.project_id) as uow:
        return budget_admit(uow=uow, call=approval, requested_by=approval.requested_by, now=now)


@pytest.fixture
def request_body_for(project, agent):
    def make(**overrides):
        task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="money")
        return {"project_id": str(project.pk), "task_id": str(task.pk), "agent_type": "coder",
                "proposed_action": "Write it", "input_data": {}, "model": "gpt-4o-mini", **overrides}

    return make


def day_window(project):
    return current_windows(project)[0]


# --- reservation and overrides ------------------------------------------------------
def test_a_call_reserves_its_estimate_in_the_day_and_month_windows(project, agent, client_for):
    call(project, agent, tokens=1500, cost="2.5000")
    day, month = current_windows(project)
    for window in (day, month):
        assert (window.reserved_tokens, window.reserved_cost, window.spent_cost) == (1500, Decimal("2.5"), 0)
    body = client_for(agent).get(f"/api/v1/budgets/{project.pk}").json()
    assert body["tokens_reserved"] == 1500 and body["cost_reserved"] == "2.5000"
    assert body["cost_incurred_today"] == "0.0000" and body["daily_cost_limit"] == "100.0000"


def test_the_day_and_month_windows_each_keep_their_own_totals_in_one_update(project, agent):
    """windows_add changes both windows in one statement: each by the same amounts from its own
    totals (the month's include earlier days), none swapped with the other's."""
    from budgets.services import windows_add
    from projects.uow import project_uow

    call(project, agent, tokens=1500, cost="2.5000")
    BudgetWindow.objects.filter(kind=BudgetWindow.Kind.MONTH, project=project).update(
        spent_tokens=7000, spent_cost=Decimal("9.0000"))  # what earlier days of the month spent
    with project_uow(project.pk) as uow:
        day, month = current_windows(project, uow=uow)
        windows_add([day, month], reserved_tokens=-1500, reserved_cost=Decimal("-2.5000"), spent_tokens=1200,
                    spent_cost=Decimal("2.0001"))
    day, month = current_windows(project)
    assert (day.reserved_tokens, day.reserved_cost, day.spent_tokens, day.spent_cost) == \
        (0, Decimal("0"), 1200, Decimal("2.0001"))
    assert (month.reserved_tokens, month.reserved_cost, month.spent_tokens, month.spent_cost) == \
        (0, Decimal("0"), 8200, Decimal("11.0001"))


def test_passing_a_limit_blocks_the_call_behind_an_override(project, agent, reviewer, client_for):
    limits(project, daily_cost_limit=Decimal("10.0000"))
    first = call(project, agent, cost="8.0000", title="a")
    blocked = call(project, agent, cost="3.0000", title="b")
    assert first.budget_override_id is None
    assert blocked.budget_override_id is not None and blocked.status == "pending"
    override = BudgetOverrideRequest.objects.get(pk=blocked.budget_override_id)
    assert override.violation_type == "daily_cost_limit" and override.requested_amount == Decimal("1.0000")
    assert day_window(project).reserved_cost == Decimal("8.0000")  # the blocked call reserved nothing
    assert Event.objects.filter(event_type="budget_override_requested").count() == 1
    r = client_for(reviewer).post(f"/api/v1/agent-approvals/{blocked.pk}/respond", {"decision": "approve"},
                                  format="json")
    assert r.status_code == 409 and r.json()["budget_override_id"] == str(override.pk)
    r = client_for(reviewer).post(f"/api/v1/budget-overrides/{override.pk}/respond", {"decision": "approve"},
                                  format="json")
    assert r.status_code == 200 and r.json()["status"] == "approved"
    blocked.refresh_from_db()
    assert blocked.budget_override_id == override.pk  # the link stays; the override is approved
    window = day_window(project)
    assert window.allowance_cost == Decimal("1.0000") and window.reserved_cost == Decimal("11.0000")
    r = client_for(reviewer).post(f"/api/v1/agent-approvals/{blocked.pk}/respond", {"decision": "approve"},
                                  format="json")
    assert r.status_code == 200 and r.json()["status"] == "approved"


def test_rejecting_the_override_rejects_the_blocked_call(project, agent, reviewer):
    limits(project, daily_token_limit=1000)
    blocked = call(project, agent, tokens=1500)
    from approvals.services import budget_override_respond

    budget_override_respond(override_id=blocked.budget_override_id, actor=reviewer, decision="reject",
                            reason="too big")
    blocked.refresh_from_db()
    assert blocked.status == "rejected" and "too big" in blocked.rejection_reason


def test_an_override_rejected_through_the_api_without_a_reason(project, agent, reviewer, client_for):
    """API.md marks `reason?` optional on an override's decision; its blocked call is rejected too."""
    limits(project, daily_token_limit=1000)
    blocked = call(project, agent, tokens=1500)
    r = client_for(reviewer).post(f"/api/v1/budget-overrides/{blocked.budget_override_id}/respond",
                                  {"decision": "reject"}, format="json")
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "rejected" and r.json()["rejection_reason"] == ""
    blocked.refresh_from_db()
    assert blocked.status == "rejected" and blocked.rejection_reason == "Budget override rejected."
    # a second decision names who made the first
    again = client_for(reviewer).post(f"/api/v1/budget-overrides/{blocked.budget_override_id}/respond",
                                      {"decision": "approve"}, format="json")
    assert again.status_code == 409 and again.json()["status"] == "rejected"
    assert again.json()["decided_by"] == "reviewer"
    assert "The override is already rejected (by reviewer at " in again.json()["detail"]


def test_override_manager_rule_and_self_approval(project, agent, reviewer, manager, client_for):
    def override(amount, who=agent):
        r = client_for(who).post("/api/v1/budget-overrides", {
            "project_id": str(project.pk), "violation_type": "daily_cost_limit", "requested_amount": amount,
            "justification": "release day"}, format="json")
        assert r.status_code == 201, r.content
        return r.json()

    at = override("100.0000")
    above = override("100.0001")
    assert at["requires_manager_approval"] is False and above["requires_manager_approval"] is True
    assert client_for(reviewer).post(f"/api/v1/budget-overrides/{above['id']}/respond", {"decision": "approve"},
                                     format="json").status_code == 403
    assert client_for(reviewer).post(f"/api/v1/budget-overrides/{at['id']}/respond", {"decision": "approve"},
                                     format="json").status_code == 200
    assert client_for(manager).post(f"/api/v1/budget-overrides/{above['id']}/respond", {"decision": "approve"},
                                    format="json").status_code == 200
    own = override("5.0000", who=manager)
    r = client_for(manager).post(f"/api/v1/budget-overrides/{own['id']}/respond", {"decision": "approve"},
                                 format="json")
    assert r.status_code == 403
    assert day_window(project).allowance_cost == Decimal("200.0001")
    listed = client_for(reviewer).get(f"/api/v1/budget-overrides/project/{project.pk}", {"status": "pending"}).json()
    assert [o["id"] for o in listed["results"]] == [own["id"]]


def test_overrides_are_neither_asked_for_nor_decided_during_a_stop(project, agent, reviewer, client_for):
    body = {"project_id": str(project.pk), "violation_type": "daily_cost_limit", "requested_amount": "50.0000",
            "justification": "release day"}
    before = client_for(agent).post("/api/v1/budget-overrides", body, format="json").json()
    r = client_for(reviewer).post(f"/api/v1/emergency/stop/{project.pk}", {"reason": "drill"}, format="json")
    assert r.status_code == 201
    stop_id = r.json()["id"]
    r = client_for(agent).post("/api/v1/budget-overrides", body, format="json")
    assert r.status_code == 423 and r.json()["emergency_stop_id"] == stop_id, r.content
    r = client_for(reviewer).post(f"/api/v1/budget-overrides/{before['id']}/respond", {"decision": "approve"},
                                  format="json")
    assert r.status_code == 423 and r.json()["error"] == "emergency_stop", r.content
    assert BudgetOverrideRequest.objects.count() == 1
    assert BudgetOverrideRequest.objects.get().status == "pending"
    assert day_window(project).allowance_cost == 0


def test_one_and_a_half_times_the_daily_limit_stops_the_project(project, agent, client_for):
    limits(project, daily_cost_limit=Decimal("10.0000"))
    call(project, agent, cost="9.0000", title="a")
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="b")
    r = client_for(agent).post("/api/v1/agent-approvals", {
        "project_id": str(project.pk), "task_id": str(task.pk), "agent_type": "coder", "proposed_action": "x",
        "input_data": {}, "estimated_tokens": 10, "estimated_cost": "6.0001"}, format="json")
    assert r.status_code == 423 and r.json()["error"] == "emergency_stop"
    stop = EmergencyStop.objects.get(project=project)
    assert stop.triggered_conditions == ["budget_critical"]
    # the refused call is on record, cancelled by the stop that committed with it; it reserved nothing
    refused = AgentCallApproval.objects.get(task=task)
    assert refused.status == "cancelled" and str(refused.pk) in stop.cancelled_approvals
    assert not UsageEntry.objects.filter(approval=refused, kind="reserve").exists()
    body = client_for(agent).get(f"/api/v1/budgets/{project.pk}").json()
    assert body["emergency_stop_triggered"] is True
    assert body["cost_reserved"] == "0.0000"  # the stop cancelled the other call and released it


# --- settlement and release ----------------------------------------------------------
def test_settlement_counts_once_and_overruns_alert(project, agent, reviewer):
    approval = call(project, agent, tokens=1000, cost="1.0000")
    agent_approval_decide(approval_id=approval.pk, decider=reviewer, decision="approve")
    assert budget_settle(approval=approval, tokens_used=1200, actual_cost=Decimal("1.2500")) is True
    assert budget_settle(approval=approval, tokens_used=1200, actual_cost=Decimal("1.2500")) is False
    window = day_window(project)
    assert (window.reserved_tokens, window.reserved_cost) == (0, Decimal("0"))
    assert (window.spent_tokens, window.spent_cost) == (1200, Decimal("1.2500"))
    alert = BudgetAlert.objects.get(alert_type="overrun")  # one per call: on its cost, which passed the estimate
    assert (alert.threshold_type, alert.threshold_value, alert.current_value) == ("cost_daily", Decimal("1.0000"),
                                                                                  Decimal("1.2500"))
    assert budget_reconcile() == []


def test_an_overrun_in_tokens_alone_alerts_on_the_tokens(project, agent, reviewer):
    """Used more tokens than estimated for no more than the estimated cost: the alert names the
    tokens (estimate and use), not a cost that stayed under its estimate."""
    approval = call(project, agent, tokens=1010, cost="0.0101")
    agent_approval_decide(approval_id=approval.pk, decider=reviewer, decision="approve")
    budget_settle(approval=approval, tokens_used=1234, actual_cost=Decimal("0.0100"))
    alert = BudgetAlert.objects.get(alert_type="overrun")
    assert (alert.threshold_type, alert.threshold_value, alert.current_value) == ("token_daily", 1010, 1234)
    data = Event.objects.get(event_type="budget_overrun").data  # its own event: no budget_alert says overrun
    assert not Event.objects.filter(event_type="budget_alert", data__alert_type="overrun").exists()
    assert (data["threshold_type"], data["threshold_value"], data["current_value"]) == (
        "token_daily", "1010.0000", "1234.0000")
    assert data["detail"]["actual_cost"] == "0.0100" and data["detail"]["estimated_cost"] == "0.0101"


@pytest.mark.parametrize("end", ["reject", "cancel", "timeout"])
def test_a_call_that_will_not_run_releases_its_reservation(project, agent, reviewer, end):
    approval = call(project, agent, tokens=500, cost="0.5000")
    if end == "reject":
        agent_approval_decide(approval_id=approval.pk, decider=reviewer, decision="reject", reason="no")
    elif end == "cancel":
        agent_approval_cancel(approval_id=approval.pk, actor=agent)
    else:
        from approvals.services import agent_approval_time_out

        AgentCallApproval.objects.filter(pk=approval.pk).update(expires_at=approval.created_at)
        assert agent_approval_time_out(approval_id=approval.pk)
    window = day_window(project)
    assert (window.reserved_tokens, window.reserved_cost, window.spent_cost) == (0, Decimal("0"), Decimal("0"))
    assert UsageEntry.objects.filter(approval=approval, kind="release").count() == 1
    assert budget_reconcile() == []


# --- windows -------------------------------------------------------------------------
@pytest.mark.parametrize("tz,now,start,end", [
    ("America/New_York", datetime(2026, 3, 10, 3, 59, tzinfo=UTC), datetime(2026, 3, 9, 4, 0, tzinfo=UTC),
     datetime(2026, 3, 10, 4, 0, tzinfo=UTC)),                    # 23:59 local: still the 9th
    ("America/New_York", datetime(2026, 3, 10, 4, 1, tzinfo=UTC), datetime(2026, 3, 10, 4, 0, tzinfo=UTC),
     datetime(2026, 3, 11, 4, 0, tzinfo=UTC)),                    # 00:01 local: the 10th
    ("Asia/Kolkata", datetime(2026, 6, 1, 18, 29, tzinfo=UTC), datetime(2026, 5, 31, 18, 30, tzinfo=UTC),
     datetime(2026, 6, 1, 18, 30, tzinfo=UTC)),                   # UTC+05:30
    ("America/New_York", datetime(2026, 3, 8, 12, 0, tzinfo=UTC), datetime(2026, 3, 8, 5, 0, tzinfo=UTC),
     datetime(2026, 3, 9, 4, 0, tzinfo=UTC)),                     # spring forward: a 23-hour day
    ("America/New_York", datetime(2026, 11, 1, 12, 0, tzinfo=UTC), datetime(2026, 11, 1, 4, 0, tzinfo=UTC),
     datetime(2026, 11, 2, 5, 0, tzinfo=UTC)),                    # fall back: a 25-hour day
])
def test_day_windows_start_at_local_midnight(tz, now, start, end):
    assert window_bounds(tz, "day", now) == (start, end)


def test_month_windows_start_on_the_local_first():
    now = datetime(2026, 2, 1, 2, 0, tzinfo=UTC)  # still January 31st in New York
    assert window_bounds("America/New_York", "month", now) == (datetime(2026, 1, 1, 5, 0, tzinfo=UTC),
                                                               datetime(2026, 2, 1, 5, 0, tzinfo=UTC))
    assert window_bounds("Asia/Kolkata", "month", datetime(2026, 12, 31, 19, 0, tzinfo=UTC)) == (
        datetime(2026, 12, 31, 18, 30, tzinfo=UTC), datetime(2027, 1, 31, 18, 30, tzinfo=UTC))


def test_usage_around_local_midnight_lands_in_the_right_windows_without_beat(project, agent):
    project.timezone = "America/New_York"
    project.save()
    a = call(project, agent, tokens=7, cost="0.0700", title="x")
    b = call(project, agent, tokens=9, cost="0.0900", title="y")
    UsageEntry.objects.all().delete()  # start over: reserve the two calls at chosen instants
    BudgetWindow.objects.all().delete()
    budget_reserve(approval=a, now=datetime(2026, 3, 10, 3, 59, tzinfo=UTC))  # 23:59 local on the 9th
    budget_reserve(approval=b, now=datetime(2026, 3, 10, 4, 1, tzinfo=UTC))   # 00:01 local on the 10th
    days = {w.start: w.reserved_tokens for w in BudgetWindow.objects.filter(kind="day")}
    assert days == {datetime(2026, 3, 9, 4, 0, tzinfo=UTC): 7, datetime(2026, 3, 10, 4, 0, tzinfo=UTC): 9}
    assert BudgetWindow.objects.get(kind="month").reserved_tokens == 16


def test_after_a_time_zone_change_the_day_shown_is_the_day_the_next_write_makes(project, agent):
    """The old zone's day runs to its end; the next day starts there, never overlapping it, and
    the budget's last_reset_date says so before any write has made that day (it said the new
    zone's midnight, a start never used)."""
    from budgets.selectors import budget_summary

    project.timezone = "America/New_York"
    project.save()
    a = call(project, agent, tokens=7, cost="0.0700", title="x")
    b = call(project, agent, tokens=9, cost="0.0900", title="y")
    UsageEntry.objects.all().delete()
    BudgetWindow.objects.all().delete()
    budget_reserve(approval=a, now=datetime(2026, 3, 10, 3, 0, tzinfo=UTC))  # 23:00 local on the 9th (EDT)
    project.timezone = "UTC"
    project.save()
    later = datetime(2026, 3, 10, 5, 0, tzinfo=UTC)  # the old day ended at 04:00 UTC
    shown = budget_summary(project=project, now=later)["last_reset_date"]
    assert shown == datetime(2026, 3, 10, 4, 0, tzinfo=UTC)
    budget_reserve(approval=b, now=later)
    days = {(w.start, w.end): w.reserved_tokens for w in BudgetWindow.objects.filter(kind="day")}
    assert days == {(datetime(2026, 3, 9, 4, 0, tzinfo=UTC), datetime(2026, 3, 10, 4, 0, tzinfo=UTC)): 7,
                    (datetime(2026, 3, 10, 4, 0, tzinfo=UTC), datetime(2026, 3, 11, 0, 0, tzinfo=UTC)): 9}
    assert budget_summary(project=project, now=later)["last_reset_date"] == shown


# --- alerts --------------------------------------------------------------------------
def test_alerts_fire_once_per_threshold_per_window_and_again_in_the_next(project, agent):
    limits(project, daily_cost_limit=Decimal("10.0000"))
    call(project, agent, cost="8.0000", title="a")  # 80 %: warning
    call(project, agent, cost="0.5000", title="b")  # 85 %: nothing new
    call(project, agent, cost="1.0000", title="c")  # 95 %: critical
    alerts = BudgetAlert.objects.filter(threshold_type="cost_daily").order_by("triggered_at")
    assert [a.alert_type for a in alerts] == ["warning", "critical"]
    assert Event.objects.filter(event_type="budget_alert").count() == 2
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    approval = call(project, agent, cost="0.0000", title="d")
    UsageEntry.objects.filter(approval=approval).delete()
    AgentCallApproval.objects.filter(pk=approval.pk).update(estimated_cost=Decimal("9.0000"))
    approval.refresh_from_db()
    budget_reserve(approval=approval, now=tomorrow)
    assert BudgetAlert.objects.filter(threshold_type="cost_daily", alert_type="warning").count() == 2


def test_budget_json_has_no_floats(project, agent, client_for):
    call(project, agent, cost="1.2345")
    body = client_for(agent).get(f"/api/v1/budgets/{project.pk}").json()

    def walk(value):
        assert not isinstance(value, float), value
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        if isinstance(value, list):
            for v in value:
                walk(v)

    walk(body)
    assert body["cost_reserved"] == "1.2345" and body["monthly_cost_limit"] == "2000.0000"
    raw = client_for(agent).get(f"/api/v1/budgets/{project.pk}").content.decode()
    assert '"cost_reserved":"1.2345"' in raw.replace(" ", "")


def test_limits_are_set_by_managers(project, manager, reviewer, client_for):
    assert client_for(reviewer).patch(f"/api/v1/budgets/{project.pk}", {"daily_cost_limit": "5.0000"},
                                      format="json").status_code == 403
    r = client_for(manager).patch(f"/api/v1/budgets/{project.pk}", {"daily_cost_limit": "5.0000"}, format="json")
    assert r.status_code == 200 and r.json()["daily_cost_limit"] == "5.0000"
    assert client_for(manager).patch(f"/api/v1/budgets/{project.pk}", {"daily_cost_limit": "-1"},
                                     format="json").status_code == 400


def test_a_limits_change_needs_a_setting_and_a_daily_limit_within_the_monthly_one(project, manager, client_for):
    """``{}`` or only fields that are not settings (the usage figures) answered 200 and changed
    nothing; a daily limit above the monthly one was taken although no day could use it."""
    boss, url = client_for(manager), f"/api/v1/budgets/{project.pk}"
    before = boss.get(url).json()
    for body in ({}, {"tokens_used_today": 0}, {"cost_incurred_today": "0.0000"}):
        assert "daily_token_limit" in assert_error(boss.patch(url, body, format="json"), 400, "invalid",
                                                   "non_field_errors")["fields"]["non_field_errors"][0]
    r = boss.patch(url, {"daily_token_limit": 100, "monthly_token_limit": 50}, format="json")
    assert "above the monthly one" in assert_error(r, 400, "invalid", "daily_token_limit")["fields"][
        "daily_token_limit"][0]
    r = boss.patch(url, {"daily_cost_limit": "2500.0000"}, format="json")  # the monthly one is 2000
    assert_error(r, 400, "invalid", "daily_cost_limit")
    assert boss.get(url).json() == before
    assert boss.patch(url, {"daily_token_limit": 100, "monthly_token_limit": 0}, format="json").status_code == 200  # 0: no monthly limit


def test_lowering_a_limit_below_what_is_used_alerts_at_once(project, agent, manager, client_for):
    """The alerts waited for the next call: a manager who lowered the monthly limit under the
    month's usage saw no alert. Each still fires once per window."""
    call(project, agent, tokens=1000, cost="1.0000")
    used = day_window(project).reserved_tokens  # the estimate (the server's count is its floor)
    assert not BudgetAlert.objects.filter(project=project).exists()
    boss, url = client_for(manager), f"/api/v1/budgets/{project.pk}"
    limit = used * 100 // 90  # used is 90 % of it: past the warning (80 %), not the critical (95 %)
    assert boss.patch(url, {"daily_token_limit": 0, "monthly_token_limit": limit}, format="json").status_code == 200
    alerts = set(BudgetAlert.objects.filter(project=project).values_list("threshold_type", "alert_type"))
    assert alerts == {("token_monthly", "warning")}
    events = Event.objects.filter(project_id=project.pk, event_type="budget_alert")
    assert [(e.data["threshold_type"], e.data["alert_type"]) for e in events] == [("token_monthly", "warning")]
    assert boss.patch(url, {"monthly_token_limit": used}, format="json").status_code == 200  # 100 %
    alerts = list(BudgetAlert.objects.filter(project=project).values_list("alert_type", flat=True))
    assert sorted(alerts) == ["critical", "emergency", "warning"]  # the new ones only: no repeat


def test_lowering_the_daily_cost_limit_below_two_thirds_of_the_day_stops_the_project_at_once(
        project, agent, reviewer, manager, client_for):
    """A daily cost limit lowered below what the day holds tripped nothing: the stop waited for the
    next usage report or request, while the calls already reserved could still be approved and
    started (no budget check there). Now the limits change trips budget_critical in its own
    transaction; exactly 1.5 x is not past it; a limit of 0 is no limit."""
    held = call(project, agent, cost="0.6000", title="held")          # pending: 0.6000 reserved
    ran = call(project, agent, cost="1.0000", title="ran")
    agent_approval_decide(approval_id=ran.pk, decider=reviewer, decision="approve")
    boss, url = client_for(manager), f"/api/v1/budgets/{project.pk}"
    # the day holds 1.6000 (reserved): 1.5 x 1.0667 = 1.60005 is not past it, nor is a limit of 0
    for limit in ("1.0667", "0"):
        assert boss.patch(url, {"daily_cost_limit": limit}, format="json").status_code == 200
        assert not EmergencyStop.objects.exists()
    r = boss.patch(url, {"daily_cost_limit": "0.5000"}, format="json")
    assert r.status_code == 200 and r.json()["daily_cost_limit"] == "0.5000", r.content
    stop = EmergencyStop.objects.get()
    assert stop.triggered_conditions == ["budget_critical"] and stop.severity == "critical"
    assert "1.6000" in stop.stop_reason and "0.5000" in stop.stop_reason
    assert stop.condition_details[0]["data"]["limits_changed_by"].startswith(manager.get_username())
    project.refresh_from_db()
    assert project.status == "emergency_stopped"
    assert boss.get(url).json()["emergency_stop_triggered"] is True
    held.refresh_from_db()
    ran.refresh_from_db()
    assert held.status == ran.status == "cancelled"       # approved, not started: no longer runnable
    assert Event.objects.filter(project_id=project.pk, event_type="emergency_stop_triggered").count() == 1
    # lowering it again during the stop changes the limit, not the stop
    assert boss.patch(url, {"daily_cost_limit": "0.4000"}, format="json").status_code == 200
    assert EmergencyStop.objects.count() == 1


def test_beat_trips_budget_critical_for_a_day_past_one_and_a_half_times_its_limit(project, other_project, agent):
    """What no call or report brings (a limit changed outside the service, say by a data fix) is
    found by beat's condition check, as its README promises for every condition."""
    from emergency.conditions import conditions_check_all

    call(project, agent, cost="2.0000")
    assert conditions_check_all() == 0
    assert not ProjectBudget.objects.filter(project=other_project).exists()   # beat's read makes no row
    ProjectBudget.objects.filter(project=project).update(daily_cost_limit=Decimal("1.0000"))
    assert conditions_check_all() == 1
    stop = EmergencyStop.objects.get()
    assert stop.triggered_conditions == ["budget_critical"] and stop.triggered_by == "system:budget_critical"
    assert conditions_check_all() == 0       # stopped: checked no more


def test_an_override_justified_by_nothing_one_can_see_is_refused(project, agent, client_for):
    """Found by a verifier: "" and "   " were refused as blank, "\u200b" was taken."""
    for invisible in ("\u200b", "\ufeff\u2800"):
        r = client_for(agent).post("/api/v1/budget-overrides", {
            "project_id": str(project.pk), "violation_type": "daily_cost_limit", "requested_amount": "5",
            "justification": invisible}, format="json")
        assert r.status_code == 400 and "justification" in r.json()["fields"], r.content
    assert not BudgetOverrideRequest.objects.exists()


def test_an_override_event_masks_a_key_written_in_its_justification(project, agent, reviewer, client_for):
    """Every role of the project reads the events: a key pasted into a justification went out whole
    in budget_override_requested / _decided; the override keeps what was written."""
    token = "ghp_" + "Zq8Lm2Xv9Rt4Wb7Nc1Kd5Hf3Jg6Ps0Ya2Ue8"   # made up: the right shape, never a real key
    r = client_for(agent).post("/api/v1/budget-overrides", {
        "project_id": str(project.pk), "violation_type": "daily_cost_limit", "requested_amount": "0.5000",
        "justification": f"the deploy needs {token}"}, format="json")
    assert r.status_code == 201 and r.json()["justification"] == f"the deploy needs {token}"
    decided = client_for(reviewer).post(f"/api/v1/budget-overrides/{r.json()['id']}/respond",
                                        {"decision": "approve"}, format="json")
    assert decided.status_code == 200, decided.content
    events = Event.objects.filter(project_id=project.pk, event_type__startswith="budget_override_")
    assert [e.data["justification"] for e in events] == ["the deploy needs ghp_…"] * 2


def _money_refused(response, field):
    return assert_error(response, 400, "invalid", field)["fields"][field]


def test_money_is_a_decimal_string_never_a_float(project, manager, agent, reviewer, client_for, request_body_for):
    """API.md: all money is a decimal string, never a float. A JSON float (0.1 is not 0.1 in
    binary) is refused with a 400 naming the field, and changes nothing; an integer is exact."""
    boss = client_for(manager)
    before = boss.get(f"/api/v1/budgets/{project.pk}").json()
    for field in ("daily_cost_limit", "monthly_cost_limit"):
        message = _money_refused(boss.patch(f"/api/v1/budgets/{project.pk}", {field: 0.5}, format="json"), field)
        assert "never a float" in message[0]
    assert boss.get(f"/api/v1/budgets/{project.pk}").json() == before
    assert boss.patch(f"/api/v1/budgets/{project.pk}", {"daily_cost_limit": 7}, format="json").json()[
        "daily_cost_limit"] == "7.0000"
    assert _money_refused(client_for(agent).post("/api/v1/agent-approvals", request_body_for(estimated_cost=0.1),
                                                 format="json"), "estimated_cost")
    assert not AgentCallApproval.objects.exists()
    for amount in (0.5, 0, "0", "0.0000", "-1"):
        r = client_for(agent).post("/api/v1/budget-overrides", {
            "project_id": str(project.pk), "violation_type": "daily_cost_limit", "requested_amount": amount,
            "justification": "more room"}, format="json")
        _money_refused(r, "requested_amount")
    assert not BudgetOverrideRequest.objects.exists()
    # the project's id is a UUID string, as for every other create (its number was taken as the UUID)
    for project_id in (project.pk.int, True, 0, 2 ** 70):
        r = client_for(agent).post("/api/v1/budget-overrides", {
            "project_id": project_id, "violation_type": "daily_cost_limit", "requested_amount": "0.5000",
            "justification": "more room"}, format="json")
        assert r.status_code == 400 and r.json()["fields"]["project_id"] == ["Must be a valid UUID string."], r.content
    assert not BudgetOverrideRequest.objects.exists()
    r = client_for(agent).post("/api/v1/budget-overrides", {
        "project_id": str(project.pk), "violation_type": "daily_cost_limit", "requested_amount": "0.5000",
        "justification": "more room"}, format="json")
    assert r.status_code == 201 and r.json()["requested_amount"] == "0.5000"
    # tokens come whole: 1.5 was granted as 2, more than was asked for
    for violation in ("daily_token_limit", "monthly_token_limit"):
        r = client_for(agent).post("/api/v1/budget-overrides", {
            "project_id": str(project.pk), "violation_type": violation, "requested_amount": "1.5",
            "justification": "more room"}, format="json")
        assert r.status_code == 400 and r.json()["fields"]["requested_amount"] == [
            "A token limit takes a whole number of tokens."], r.content
    assert BudgetOverrideRequest.objects.count() == 1
    r = client_for(agent).post("/api/v1/budget-overrides", {
        "project_id": str(project.pk), "violation_type": "daily_token_limit", "requested_amount": "1500.0000",
        "justification": "more room"}, format="json")
    assert r.status_code == 201 and r.json()["requested_amount"] == "1500.0000"


@pytest.mark.parametrize("amount", ["1_000", "\u0665", "\uff11", " 5 ", "\u00a05", "5\n", "5,0", "0x10", "NaN",
                                    "Infinity", "", "1e", "--1"])
def test_money_is_an_ascii_decimal_string(project, manager, agent, client_for, amount):
    """Python's Decimal also reads "1_000", an Arabic-Indic or full-width digit, and spaces:
    each was saved as money. Now only an ASCII decimal string (exponent allowed) is."""
    before = client_for(manager).get(f"/api/v1/budgets/{project.pk}").json()
    message = _money_refused(client_for(manager).patch(f"/api/v1/budgets/{project.pk}",
                                                       {"daily_cost_limit": amount}, format="json"), "daily_cost_limit")
    assert "decimal string" in message[0]
    assert client_for(manager).get(f"/api/v1/budgets/{project.pk}").json() == before
    _money_refused(client_for(agent).post("/api/v1/budget-overrides", {
        "project_id": str(project.pk), "violation_type": "daily_cost_limit", "requested_amount": amount,
        "justification": "more room"}, format="json"), "requested_amount")
    assert not BudgetOverrideRequest.objects.exists()


@pytest.mark.parametrize("amount, saved", [("5", "5.0000"), ("5.", "5.0000"), (".5", "0.5000"), ("+5", "5.0000"),
                                           ("1E+2", "100.0000"), ("2.5e-1", "0.2500"), ("0.0125", "0.0125")])
def test_a_decimal_string_in_any_plain_form_is_money(project, agent, client_for, amount, saved):
    """What the SDK sends for a Decimal (str(Decimal("1E+2")) is "1E+2") stays accepted."""
    r = client_for(agent).post("/api/v1/budget-overrides", {
        "project_id": str(project.pk), "violation_type": "daily_cost_limit", "requested_amount": amount,
        "justification": "more room"}, format="json")
    assert r.status_code == 201 and r.json()["requested_amount"] == saved, r.content


def test_an_unknown_choice_is_refused_naming_the_values_it_takes(project, agent, admin_user, client_for):
    """API.md's threshold names are not the override's violation types: the 400 says which are."""
    r = client_for(agent).post("/api/v1/budget-overrides", {
        "project_id": str(project.pk), "violation_type": "cost_daily", "requested_amount": "1.0000",
        "justification": "more room"}, format="json")
    assert r.status_code == 400 and r.json()["fields"]["violation_type"] == [
        '"cost_daily" is not a valid choice: one of daily_token_limit, monthly_token_limit, daily_cost_limit, '
        'monthly_cost_limit.'], r.content
    r = client_for(agent).post("/api/v1/budget-overrides", {  # said as JSON, the client's own terms
        "project_id": str(project.pk), "violation_type": ["daily_cost_limit", True], "requested_amount": "1.0000",
        "justification": "more room"}, format="json")
    assert r.json()["fields"]["violation_type"][0].startswith('"["daily_cost_limit", true]" is not a valid choice')
    assert not BudgetOverrideRequest.objects.exists()
    # hundreds of time zones are not listed
    r = client_for(admin_user).post("/api/v1/projects", {"name": "Z", "slug": "z", "timezone": "Mars/Olympus"},
                                    format="json")
    assert r.status_code == 400 and r.json()["fields"]["timezone"] == ['"Mars/Olympus" is not a valid choice.']


def test_reconcile_command_reports_a_tampered_window(project, agent):
    call(project, agent, cost="1.0000")
    out = io.StringIO()
    call_command("reconcile_budgets", stdout=out)
    assert "OK" in out.getvalue()
    BudgetWindow.objects.filter(kind="day").update(reserved_cost=Decimal("5.0000"))
    with pytest.raises(SystemExit) as exc:
        call_command("reconcile_budgets", stdout=io.StringIO(), stderr=io.StringIO())
    assert exc.value.code == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_reconcile_reads_one_moment_while_agents_reserve(project, agent, monkeypatch):
    """Found with agents working beside the nightly check: a reservation committed between the read of
    the windows and the sum of their ledger was reported as a MISMATCH (exit 1), though the ledger was
    consistent. The windows and the ledger are now read from one snapshot."""
    from budgets.services import ledger

    call(project, agent, cost="1.0000", title="before")
    summed = ledger.ledger_totals
    committed = []

    def sum_after_a_commit_elsewhere(window):
        if not committed:
            def reserve():
                try:
                    call(project, agent, cost="2.0000", title="meanwhile")
                finally:
                    connections["default"].close()

            writer = threading.Thread(target=reserve)
            writer.start()
            writer.join(30)
            committed.append(True)
        return summed(window)

    monkeypatch.setattr(ledger, "ledger_totals", sum_after_a_commit_elsewhere)
    assert budget_reconcile() == []
    assert committed and AgentCallApproval.objects.filter(status="pending").count() == 2  # it did commit
    monkeypatch.setattr(ledger, "ledger_totals", summed)
    assert budget_reconcile() == []


# --- no overspend under concurrency ---------------------------------------------------
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_calls_never_overspend(project, agent, reviewer):
    limits(project, daily_cost_limit=Decimal("10.0000"), monthly_cost_limit=Decimal("1000.0000"),
           daily_token_limit=10**9, monthly_token_limit=10**9)
    tasks = [task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"c{i}").pk for i in range(50)]
    barrier = threading.Barrier(50)
    made, errors = [], []

    def request(task_id):
        try:
            barrier.wait()
            made.append(agent_approval_request(requester=agent, project_id=project.pk, task_id=task_id,
                                               agent_type="coder", proposed_action="write code", input_data={},
                                               estimated_tokens=100, estimated_cost=Decimal("1.0000")))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=request, args=(t,)) for t in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    admitted = [a for a in made if a.budget_override_id is None]
    blocked = [a for a in made if a.budget_override_id is not None]
    assert len(admitted) == 10 and len(blocked) == 40
    day = day_window(project)
    assert day.reserved_cost == Decimal("10.0000") and day.spent_cost + day.reserved_cost <= Decimal("10.0000")
    # all fifty settle with random actual costs (the blocked ones never reserved: nothing to settle)
    rng = random.Random(7)
    for approval in admitted:
        agent_approval_decide(approval_id=approval.pk, decider=reviewer, decision="approve")
    for approval in made:
        budget_settle(approval=approval, tokens_used=rng.randint(1, 200),
                      actual_cost=Decimal(rng.randint(1, 20000)) / Decimal(10000))
    for window in BudgetWindow.objects.filter(project=project):
        totals = ledger_totals(window)
        assert (window.spent_tokens, window.spent_cost, window.reserved_tokens, window.reserved_cost) == (
            totals["spent_tokens"], totals["spent_cost"], totals["reserved_tokens"], totals["reserved_cost"])
    assert day_window(project).reserved_cost == Decimal("0")
    assert budget_reconcile() == []


def test_the_agent_reports_usage_of_a_started_call_once(project, agent, reviewer, client_for):
    approval = call(project, agent, tokens=1000, cost="1.0000")
    client = client_for(agent)
    url = f"/api/v1/agent-approvals/{approval.pk}/usage"
    assert client.post(url, {"tokens_used": 900, "actual_cost": "0.9000"}, format="json").status_code == 409
    agent_approval_decide(approval_id=approval.pk, decider=reviewer, decision="approve")
    assert client.post(f"/api/v1/agent-approvals/{approval.pk}/start").status_code == 200
    assert client_for(reviewer).post(url, {"tokens_used": 900}, format="json").status_code == 403
    assert client.post(url, {"actual_cost": "0.9000"}, format="json").status_code == 400  # tokens_used needed
    for _ in range(2):
        assert client.post(url, {"tokens_used": 900, "actual_cost": "0.9000"}, format="json").status_code == 200
    window = day_window(project)
    assert (window.spent_tokens, window.spent_cost, window.reserved_cost) == (900, Decimal("0.9000"), Decimal("0"))
    body = client.get(f"/api/v1/budgets/{project.pk}").json()
    assert body["tokens_used_today"] == 900 and body["cost_incurred_today"] == "0.9000"


def started_priced_call(project, agent, reviewer, client_for):
    """(the agent's client, the usage URL) of a started gpt-4o-mini call (priced from the table)."""
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="priced")
    approval = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                      proposed_action="write", input_data={}, model="gpt-4o-mini")
    agent_approval_decide(approval_id=approval.pk, decider=reviewer, decision="approve")
    client = client_for(agent)
    client.post(f"/api/v1/agent-approvals/{approval.pk}/start")
    return client, f"/api/v1/agent-approvals/{approval.pk}/usage"


def test_usage_cost_from_the_price_table(project, agent, reviewer, client_for):
    client, usage = started_priced_call(project, agent, reviewer, client_for)
    assert client.post(usage, {"tokens_used": 2000}, format="json").status_code == 200
    spent = day_window(project).spent_cost
    assert Decimal("0.0011") <= spent <= Decimal("0.0013")  # ~2000 tokens at $0.60 per million output


def test_a_priced_report_retried_after_a_price_change_charges_nothing_more(project, agent, reviewer, client_for):
    """The same totals again are a retry (the SDK retries a report without an Idempotency-Key):
    a price changed since the first report repriced the tokens and charged ten times more."""
    from approvals.models import ModelPrice

    client, usage = started_priced_call(project, agent, reviewer, client_for)
    assert client.post(usage, {"tokens_used": 100000}, format="json").status_code == 200
    spent = day_window(project).spent_cost
    ModelPrice.objects.filter(model="gpt-4o-mini").update(input_per_million=Decimal("1.5"),
                                                          output_per_million=Decimal("6.0"))
    assert client.post(usage, {"tokens_used": 100000}, format="json").status_code == 200
    assert day_window(project).spent_cost == spent
    # more tokens: only they are priced, at today's prices (6.00 per million output tokens)
    assert client.post(usage, {"tokens_used": 110000}, format="json").status_code == 200
    assert day_window(project).spent_cost == spent + Decimal("0.0600")
    ModelPrice.objects.filter(model="gpt-4o-mini").update(input_per_million=Decimal("0.015"),
                                                          output_per_million=Decimal("0.06"))
    assert client.post(usage, {"tokens_used": 910000}, format="json").status_code == 200  # cheaper now, still counted
    assert day_window(project).spent_cost == spent + Decimal("0.0600") + Decimal("0.0480")


def test_overrides_are_decided_in_the_admin(client, project, agent, reviewer):
    from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
    from django.urls import reverse

    limits(project, daily_cost_limit=Decimal("1.0000"))
    blocked = call(project, agent, cost="1.2000")
    client.force_login(reviewer)
    url = reverse("admin:budgets_budgetoverriderequest_changelist")
    r = client.post(url, {"action": "approve_selected", "index": 0,
                          ACTION_CHECKBOX_NAME: [str(blocked.budget_override_id)]}, follow=True)
    assert BudgetOverrideRequest.objects.get(pk=blocked.budget_override_id).status == "approved"
    said = [str(m) for m in r.context["messages"]]  # named by what it allows, not by a bare id
    assert said == ["Override of daily cost limit (+$0.2000) in demo: approved."], said
    assert UsageEntry.objects.filter(approval=blocked, kind="reserve").exists()  # unblocked: reserved now
    for name in ["budgets_budgetwindow", "budgets_usageentry", "budgets_budgetalert"]:
        assert client.get(reverse(f"admin:{name}_changelist")).status_code == 200


def test_a_late_report_after_a_stale_release_still_counts_once(project, agent, reviewer, client_for):
    from approvals.services import budget_release_stale

    approval = call(project, agent, tokens=100, cost="1.0000")
    agent_approval_decide(approval_id=approval.pk, decider=reviewer, decision="approve")
    client = client_for(agent)
    client.post(f"/api/v1/agent-approvals/{approval.pk}/start")
    assert budget_release_stale(older_than=timedelta(hours=24)) == 0  # too fresh
    assert budget_release_stale(older_than=timedelta(seconds=-1)) == 1
    assert day_window(project).reserved_cost == Decimal("0")
    for _ in range(2):
        client.post(f"/api/v1/agent-approvals/{approval.pk}/usage", {"tokens_used": 80, "actual_cost": "0.8000"},
                    format="json")
    window = day_window(project)
    assert (window.spent_cost, window.reserved_cost, window.spent_tokens) == (Decimal("0.8000"), Decimal("0"), 80)
    assert budget_reconcile() == []


def test_a_limit_of_zero_means_no_limit(project, agent):
    limits(project, daily_cost_limit=Decimal("0"), daily_token_limit=0)
    approval = call(project, agent, tokens=10**6, cost="500.0000")
    assert approval.budget_override_id is None and day_window(project).reserved_cost == Decimal("500.0000")


def test_an_emergency_stop_releases_every_reservation_it_cancels(project, agent, reviewer):
    from emergency.services import emergency_stop_trigger

    calls = [call(project, agent, tokens=100, cost="1.0000", title=f"s{i}") for i in range(3)]
    agent_approval_decide(approval_id=calls[0].pk, decider=reviewer, decision="approve")
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="x", actor=reviewer)
    window = day_window(project)
    assert (window.reserved_tokens, window.reserved_cost) == (0, Decimal("0"))
    assert UsageEntry.objects.filter(kind="release").count() == 3
    assert budget_reconcile() == []


def test_the_risk_assessment_sees_what_is_left_of_the_budget(project, agent):
    limits(project, daily_cost_limit=Decimal("10.0000"))
    call(project, agent, cost="7.0000", title="a")
    approval = call(project, agent, cost="2.0000", title="b")  # 2 of the 3 left: over half
    codes = {f["code"] for f in approval.risk_assessment["flags"]}
    assert "cost.budget_share" in codes


def test_deciding_an_override_the_system_withdrew_says_so_and_why(project, agent, reviewer, client_for):
    """Found by two reviewers approving two overrides at once: the loser read "The override is already
    rejected", as if a person had refused it, while the system had withdrawn it (and said why in its
    rejection_reason, which nobody was shown)."""
    limits(project, daily_token_limit=1000)
    blocked = call(project, agent, tokens=1500)
    BudgetOverrideRequest.objects.filter(pk=blocked.budget_override_id).update(
        status="rejected", rejection_reason="Another override of this window was approved first.")
    r = client_for(reviewer).post(f"/api/v1/budget-overrides/{blocked.budget_override_id}/respond",
                                  {"decision": "approve"}, format="json")
    assert r.status_code == 409 and r.json()["status"] == "rejected"
    assert r.json()["detail"] == "The override was withdrawn: Another override of this window was approved first."


def test_an_override_whose_call_ended_is_withdrawn(project, agent, reviewer):
    from approvals.services import budget_override_respond

    limits(project, daily_cost_limit=Decimal("1.0000"))
    blocked = call(project, agent, cost="1.2000")
    agent_approval_cancel(approval_id=blocked.pk, actor=agent)
    override = BudgetOverrideRequest.objects.get(pk=blocked.budget_override_id)
    assert override.status == "rejected" and "ended" in override.rejection_reason
    with pytest.raises(TransitionError):
        budget_override_respond(override_id=override.pk, actor=reviewer, decision="approve")
    assert day_window(project).allowance_cost == Decimal("0")


def test_overrides_do_not_lift_the_one_and_a_half_ceiling(project, agent, reviewer):
    from approvals.services import budget_override_respond
    from budgets.services import budget_override_create

    limits(project, daily_cost_limit=Decimal("1.0000"))
    override = budget_override_create(project_id=project.pk, actor=agent, violation_type="daily_cost_limit",
                                      requested_amount=Decimal("5.0000"), justification="big day")
    budget_override_respond(override_id=override.pk, actor=reviewer, decision="approve")
    call(project, agent, cost="1.4000", title="a")
    with pytest.raises(EmergencyStopActive):
        call(project, agent, cost="0.2000", title="b")  # projected 1.6 > 1.5 x 1.0


def test_totals_stay_exact_with_amounts_floats_cannot_hold(project, agent, reviewer):
    """0.1 + 0.2 + 0.7 - ... is not exact in binary floating point (SQLite's arithmetic)."""
    calls = [call(project, agent, tokens=1, cost=c, title=c) for c in ["0.1000", "0.2000", "0.7000", "0.8000"]]
    for approval in calls[:3]:
        agent_approval_cancel(approval_id=approval.pk, actor=agent)
    window = day_window(project)
    assert window.reserved_cost == Decimal("0.8000")
    agent_approval_cancel(approval_id=calls[3].pk, actor=agent)
    assert day_window(project).reserved_cost == Decimal("0")
    assert budget_reconcile() == []


def test_limits_set_in_the_admin_are_audited(admin_client, project):
    from django.urls import reverse

    from audit.models import AuditEvent

    r = admin_client.post(reverse("admin:budgets_projectbudget_add"), {
        "project": str(project.pk), "daily_token_limit": 5, "monthly_token_limit": 50, "daily_cost_limit": "2.0000",
        "monthly_cost_limit": "20.0000", "warning_percent": 80, "critical_percent": 95, "emergency_percent": 100})
    assert r.status_code == 302, r.content[:500]
    assert ProjectBudget.objects.get(project=project).daily_cost_limit == Decimal("2.0000")
    assert AuditEvent.objects.filter(action="budget.update", project_id=project.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_setting_limits_is_tried_again_after_a_transient_database_error(project, manager, monkeypatch):
    """A deadlock or a busy database while limits are set is retried, like every write (a helper
    placed between the decorator and the service once took the retry away)."""
    from django.db import OperationalError

    from budgets.services import overrides
    from budgets.services.windows import budget_for

    tries = []
    real = overrides.check_alerts

    def busy_once(*args, **kwargs):
        tries.append(1)
        if len(tries) == 1:
            raise OperationalError("database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(overrides, "check_alerts", busy_once)
    overrides.budget_limits_update(project=project, actor=manager, values={"daily_cost_limit": Decimal("5")})
    assert len(tries) == 2 and budget_for(project).daily_cost_limit == Decimal("5.0000")


def test_a_reviewer_cannot_pass_the_manager_threshold_in_pieces(project, agent, reviewer, manager, client_for):
    """Three cost overrides of 40 in one day each looked under the 100.0000 threshold: a reviewer
    granted 120 that a single override would have needed a manager for."""
    def override(amount, violation_type="daily_cost_limit"):
        r = client_for(agent).post("/api/v1/budget-overrides", {
            "project_id": str(project.pk), "violation_type": violation_type, "requested_amount": amount,
            "justification": "release day"}, format="json")
        assert r.status_code == 201, r.content
        return r.json()["id"]

    def approve(override_id, who=reviewer):
        return client_for(who).post(f"/api/v1/budget-overrides/{override_id}/respond", {"decision": "approve"},
                                    format="json")

    first, second, third = override("40.0000"), override("40.0000"), override("40.0000")
    monthly = override("40.0000", "monthly_cost_limit")
    tokens = override("5000", "daily_token_limit")
    assert approve(first).status_code == 200 and approve(second).status_code == 200
    listed = {o["id"]: o["requires_manager_approval"] for o in client_for(reviewer).get(
        f"/api/v1/budget-overrides/project/{project.pk}", {"status": "pending"}).json()["results"]}
    assert listed == {third: True, monthly: False, tokens: False}  # said before a reviewer tries it
    r = approve(third)
    assert r.status_code == 403 and "120.0000 USD, above 100.0000: a manager" in r.json()["detail"], r.content
    assert BudgetOverrideRequest.objects.get(pk=third).status == "pending"
    assert day_window(project).allowance_cost == Decimal("80.0000")
    assert approve(monthly).status_code == 200   # another window
    assert approve(tokens).status_code == 200    # another kind
    assert approve(third, who=manager).status_code == 200
    assert day_window(project).allowance_cost == Decimal("120.0000")


@pytest.mark.postgres
def test_totals_past_what_the_database_holds_are_a_409_that_changes_nothing(project, agent, client_for):
    """Five reports of 2,147,483,647 tokens made every later call request a 500 for the month
    (the automatic override's amount overflowed NUMERIC(14,4)): now a 409 in the API's format,
    and nothing is written."""
    limits(project, daily_token_limit=1000)
    call(project, agent, cost="0.0001")  # the day's window exists
    BudgetWindow.objects.filter(pk=day_window(project).pk).update(spent_tokens=20_000_000_000)
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="after the flood")
    calls_before = AgentCallApproval.objects.count()
    r = client_for(agent).post("/api/v1/agent-approvals", {
        "project_id": str(project.pk), "task_id": str(task.pk), "agent_type": "coder", "proposed_action": "x",
        "input_data": {}, "estimated_tokens": 10, "estimated_cost": "0.0001"}, format="json")
    assert_error(r, 409, "conflict")
    assert "beyond what the database holds" in r.json()["detail"] and r.json()["status"] is None
    assert AgentCallApproval.objects.count() == calls_before
    assert not BudgetOverrideRequest.objects.filter(project=project).exists()


def test_totals_past_what_the_database_holds_are_a_409_on_either_database(project, agent, reviewer, manager,
                                                                          client_for):
    """On the embedded default (SQLite stores any number) a reserved total past NUMERIC(14,4)
    was saved; every later read of the project's budget then failed (500), the emergency stop
    included. Now refused when written, on SQLite as on PostgreSQL: a 409 that changes nothing,
    and the project's budget, its calls and its stop keep working."""
    limits(project, daily_cost_limit=Decimal("0"), monthly_cost_limit=Decimal("0"), daily_token_limit=0,
           monthly_token_limit=0)  # no limits
    agent_c = client_for(agent)

    def request(cost):
        task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"big {cost}")
        return agent_c.post("/api/v1/agent-approvals", {
            "project_id": str(project.pk), "task_id": str(task.pk), "agent_type": "coder", "proposed_action": "x",
            "input_data": {}, "estimated_tokens": 10, "estimated_cost": cost}, format="json")

    assert request("1.0000").status_code == 201
    # as a hundred calls of 99,999,999.9999 (the most one may ask) would leave it
    BudgetWindow.objects.filter(pk=day_window(project).pk).update(reserved_cost=Decimal("9999999001.0000"))
    calls_before = AgentCallApproval.objects.count()
    r = request("99999999.9999")  # past 9,999,999,999.9999 reserved
    assert_error(r, 409, "conflict")
    assert "beyond what the database holds" in r.json()["detail"] and r.json()["status"] is None
    assert AgentCallApproval.objects.count() == calls_before
    budget = agent_c.get(f"/api/v1/budgets/{project.pk}")
    assert budget.status_code == 200 and budget.json()["cost_reserved"] == "9999999001.0000"
    assert request("1.0000").status_code == 201

    # an override allowance past it: the second approval is refused, the first one stands
    overrides = []
    for _ in range(2):
        r = agent_c.post("/api/v1/budget-overrides", {"project_id": str(project.pk), "violation_type": "daily_cost_limit",
                                                      "requested_amount": "9999999999.9999", "justification": "x"},
                         format="json")
        assert r.status_code == 201, r.content
        overrides.append(r.json()["id"])
    respond = lambda o: client_for(manager).post(f"/api/v1/budget-overrides/{o}/respond",  # noqa: E731
                                                 {"decision": "approve"}, format="json")
    assert respond(overrides[0]).status_code == 200
    r = respond(overrides[1])
    assert_error(r, 409, "conflict")  # its own status, as every 409 gives (it was null: a total's generic 409)
    assert r.json()["status"] == "pending" and "more than a budget holds (9999999999.9999)" in r.json()["detail"]
    assert BudgetOverrideRequest.objects.get(pk=overrides[1]).status == "pending"
    assert day_window(project).allowance_cost == Decimal("9999999999.9999")

    r = client_for(reviewer).post(f"/api/v1/emergency/stop/{project.pk}", {"reason": "halt"}, format="json")
    assert r.status_code == 201, r.content
    assert client_for(manager).get(f"/api/v1/projects/{project.pk}").json()["status"] == "emergency_stopped"


@pytest.mark.parametrize("tz", ["America/St_Johns", "America/Goose_Bay"])
def test_a_day_and_month_whose_clocks_fell_back_across_midnight_cover_every_instant(tz):
    """Until 2011 these zones fell back at 00:01 to 23:01 the day before: for the repeated hour the
    window computed ended at the first midnight, before the instant itself, so no window covered it
    and a call's admission failed with a 500 (IndexError)."""
    for minutes in range(0, 240, 5):  # 02:00Z to 06:00Z on 2009-11-01, the repeated hour in it
        now = datetime(2009, 11, 1, 2, 0, tzinfo=UTC) + timedelta(minutes=minutes)
        for kind in ("day", "month"):
            start, end = window_bounds(tz, kind, now)
            assert start <= now < end, (kind, now, start, end)
