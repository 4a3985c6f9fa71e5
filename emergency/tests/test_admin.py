"""Stops and recoveries through the Django admin, driven by Django's test client."""
from decimal import Decimal

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from emergency.models import EmergencyStop
from emergency.services import emergency_stop_trigger
from projects.models import Project
from recovery.models import RecoverySession, RecoveryStep

pytestmark = pytest.mark.django_db


def login(client, user):
    client.force_login(user)
    return client


def test_a_reviewer_stops_a_project_from_the_admin_with_a_reason(client, reviewer, project, other_project):
    login(client, reviewer)
    url = reverse("admin:projects_project_changelist")
    html = client.get(url).content.decode()
    assert "demo" in html and "other" not in html  # only projects the reviewer holds a role on
    r = client.post(url, {"action": "emergency_stop", "index": 0, ACTION_CHECKBOX_NAME: [str(project.pk)]})
    assert b"Reason" in r.content and Project.objects.get(pk=project.pk).status == "active"
    client.post(url, {"action": "emergency_stop", "apply": "1", "reason": "runaway agents",
                      ACTION_CHECKBOX_NAME: [str(project.pk)]}, follow=True)
    stop = EmergencyStop.objects.get(project=project)
    assert stop.stop_reason == "runaway agents" and stop.triggered_by.startswith("reviewer#")
    assert Project.objects.get(pk=project.pk).status == "emergency_stopped"


def test_an_agent_with_staff_cannot_stop_from_the_admin(client, agent, project):
    agent.is_staff = True
    agent.save()
    login(client, agent)
    client.post(reverse("admin:projects_project_changelist"), {
        "action": "emergency_stop", "apply": "1", "reason": "x", ACTION_CHECKBOX_NAME: [str(project.pk)]})
    assert Project.objects.get(pk=project.pk).status == "active"


def test_recovery_through_the_admin(client, manager, reviewer, project):
    stop, _ = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="x", actor=reviewer)
    login(client, manager)
    client.post(reverse("admin:emergency_emergencystop_changelist"), {
        "action": "start_recovery", "index": 0, ACTION_CHECKBOX_NAME: [str(stop.pk)]})
    session = RecoverySession.objects.get(emergency_stop=stop)
    login(client, reviewer)
    url = reverse("admin:recovery_recoverysession_changelist")
    r = client.post(url, {"action": "reject_next_step", "index": 0, ACTION_CHECKBOX_NAME: [str(session.pk)]})
    assert b"Reason" in r.content
    for _ in range(session.total_steps):
        selected = {"action": "approve_next_step", "index": 0, ACTION_CHECKBOX_NAME: [str(session.pk)]}
        named = client.post(url, selected)  # the page naming the step: nothing run yet
        step = RecoveryStep.objects.filter(session=session, status="pending").order_by("order").first()
        assert f'name="step_{session.pk}" value="{step.pk}"' in named.content.decode()
        option = {f"option_{session.pk}": "resume"} if step.action == "settle_halted_tasks" else {}
        client.post(url, {**selected, "apply": "1", f"step_{session.pk}": str(step.pk), **option})
    session.refresh_from_db()
    assert session.status == "completed"
    assert set(RecoveryStep.objects.filter(session=session).values_list("status", flat=True)) == {"completed"}
    assert Project.objects.get(pk=project.pk).status == "active"
    page = client.get(reverse("admin:recovery_recoverysession_change", args=[session.pk]))
    assert page.status_code == 200 and b"lift_stop" in page.content
    # the project stopped again: the old, resolved stop starts nothing (it started a recovery of the new one)
    again, _ = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="y", actor=reviewer)
    login(client, manager)
    r = client.post(reverse("admin:emergency_emergencystop_changelist"), {
        "action": "start_recovery", "index": 0, ACTION_CHECKBOX_NAME: [str(stop.pk)]}, follow=True)
    assert any("this stop is resolved already: nothing to recover" in str(m) for m in r.context["messages"])
    assert not RecoverySession.objects.filter(emergency_stop=again).exists()


def test_rejecting_a_step_in_the_admin_keeps_the_stop(client, manager, reviewer, project):
    stop, _ = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="x", actor=reviewer)
    from recovery.services import recovery_start

    session = recovery_start(project_id=project.pk, actor=manager, recovery_type="manual")
    login(client, reviewer)
    first = RecoveryStep.objects.filter(session=session).order_by("order").first()
    client.post(reverse("admin:recovery_recoverysession_changelist"), {
        "action": "reject_next_step", "apply": "1", "reason": "not yet", ACTION_CHECKBOX_NAME: [str(session.pk)],
        f"step_{session.pk}": str(first.pk)})
    session.refresh_from_db()
    assert session.status == "failed"
    assert Project.objects.get(pk=project.pk).status == "emergency_stopped"


def test_condition_thresholds_set_in_the_admin_are_audited(admin_client, project):
    from audit.models import AuditEvent
    from emergency.models import EmergencySettings

    r = admin_client.post(reverse("admin:emergency_emergencysettings_add"), {
        "project": str(project.pk), "error_rate_threshold": "0.300", "error_window_count": 20,
        "error_window_seconds": 300, "error_min_outcomes": 5, "max_pending_approvals": 100, "max_open_tasks": 100,
        "rate_limit_errors_threshold": 10, "rate_limit_window_seconds": 60, "stop_on_critical_risk": "on"})
    assert r.status_code == 302, r.content[:500]
    assert EmergencySettings.objects.get(project=project).error_min_outcomes == 5
    assert AuditEvent.objects.filter(action="emergency_settings.update", project_id=project.pk).exists()


@pytest.mark.parametrize("bad", [{"error_rate_threshold": "-0.5"}, {"error_rate_threshold": "1.5"}, {"error_rate_threshold": "1"},
                                 {"error_rate_threshold": "0"}, {"error_window_count": 0},
                                 {"error_min_outcomes": 25}, {"max_pending_approvals": 0},
                                 {"rate_limit_window_seconds": 0}])
def test_condition_thresholds_that_would_stop_a_healthy_project_or_never_trip_are_refused(admin_client, project,
                                                                                           bad):
    """A threshold of -0.5 (with one outcome in the window) stopped a project on one completed
    task; above 1 the condition never trips. Refused in the form and in the service."""
    from audit.models import AuditEvent
    from core.errors import InvalidInput
    from emergency.models import EmergencySettings
    from emergency.services import emergency_settings_save

    good = {"project": str(project.pk), "error_rate_threshold": "0.300", "error_window_count": 20,
            "error_window_seconds": 300, "error_min_outcomes": 5, "max_pending_approvals": 100, "max_open_tasks": 100,
            "rate_limit_errors_threshold": 10, "rate_limit_window_seconds": 60, "stop_on_critical_risk": "on"}
    r = admin_client.post(reverse("admin:emergency_emergencysettings_add"), {**good, **bad})
    assert r.status_code == 200 and r.context["adminform"].form.errors, r.status_code
    assert not EmergencySettings.objects.filter(project=project).exists()
    row = EmergencySettings(project=project, **{k: v for k, v in bad.items()})
    with pytest.raises(InvalidInput):
        emergency_settings_save(settings_row=row, actor=None, before=None, after=bad)
    assert not AuditEvent.objects.filter(action="emergency_settings.update").exists()


GOOD_SETTINGS = {"error_rate_threshold": "0.300", "error_window_count": 20, "error_window_seconds": 300,
                 "error_min_outcomes": 5, "max_pending_approvals": 100, "max_open_tasks": 100,
                 "rate_limit_errors_threshold": 10, "rate_limit_window_seconds": 60, "stop_on_critical_risk": True}


def test_two_edits_valid_each_on_its_own_copy_cannot_combine_into_settings_that_never_trip(project, manager):
    """One manager raises the minimum of outcomes to 15 (of 20), another, from a copy read
    before, shrinks the window to 10 (with the minimum of 5 it saw): each is valid, together
    the condition could never trip. The second is refused and nothing of it is saved."""
    from audit.models import AuditEvent
    from core.errors import InvalidInput
    from emergency.models import EmergencySettings
    from emergency.services import emergency_settings_save

    row = EmergencySettings.objects.create(project=project, **GOOD_SETTINGS)
    first, second = EmergencySettings.objects.get(pk=row.pk), EmergencySettings.objects.get(pk=row.pk)
    first.error_min_outcomes = 15
    emergency_settings_save(settings_row=first, actor=manager, before={"error_min_outcomes": 5},
                            after={"error_min_outcomes": 15})
    second.error_window_count = 10
    with pytest.raises(InvalidInput) as refused:
        emergency_settings_save(settings_row=second, actor=manager, before={"error_window_count": 20},
                                after={"error_window_count": 10})
    assert "error_min_outcomes" in refused.value.extra["fields"]
    assert "Another manager changed these settings" in refused.value.detail
    row.refresh_from_db()
    assert (row.error_window_count, row.error_min_outcomes) == (20, 15)
    assert AuditEvent.objects.filter(action="emergency_settings.update").count() == 1
    # a later edit that fits the other one is saved, onto the row as it stands
    third = EmergencySettings.objects.get(pk=row.pk)
    third.error_window_seconds = 600
    emergency_settings_save(settings_row=third, actor=manager, before={"error_window_seconds": 300},
                            after={"error_window_seconds": 600})
    row.refresh_from_db()
    assert (row.error_window_count, row.error_min_outcomes, row.error_window_seconds) == (20, 15, 600)


def test_an_admin_save_refused_after_its_form_passed_is_said_on_the_page(client, project, manager, monkeypatch):
    """Another manager's edit lands between the form's check and the save: the page says why
    nothing was saved, shows the current values, and is never a 500."""
    import emergency.admin as emergency_admin
    from emergency.models import EmergencySettings

    row = EmergencySettings.objects.create(project=project, **GOOD_SETTINGS)
    real_save = emergency_admin.emergency_settings_save

    def other_manager_first(**kwargs):
        other = EmergencySettings.objects.get(pk=row.pk)
        other.error_min_outcomes = 15
        real_save(settings_row=other, actor=manager, before={"error_min_outcomes": 5},
                  after={"error_min_outcomes": 15})
        return real_save(**kwargs)

    monkeypatch.setattr(emergency_admin, "emergency_settings_save", other_manager_first)
    from projects.tests.test_admin_audit import form_data

    url = reverse("admin:emergency_emergencysettings_change", args=[row.pk])
    loaded = form_data(login(client, manager).get(url))
    r = client.post(url, {**loaded, "error_window_count": 10})
    assert r.status_code == 302 and r.url == url
    page = client.get(url).content.decode()
    assert "Another manager changed these settings" in page and "error min outcomes" in page
    row.refresh_from_db()  # the window kept; the other edit, run here inside this request's transaction, went with it
    assert (row.error_window_count, row.error_min_outcomes) == (20, 5)


def test_a_form_loaded_before_another_managers_save_does_not_put_their_change_back(client, project, manager,
                                                                                    make_user):
    """Two managers open the thresholds; one raises the minimum of outcomes to 15 and saves; the
    other, whose page still says 5, shrinks the window to 10 and saves. Django's admin wrote what
    differed from the row as it stood, the stale 5 among it: the first change was reverted without
    a word. Now the second save is refused, saying why, and nothing of it is saved."""
    from django.test import Client
    from django.utils import timezone

    from emergency.models import EmergencySettings
    from projects.tests.test_admin_audit import form_data

    other = make_user("manager2", role="manager", project=project)
    row = EmergencySettings.objects.create(project=project, **GOOD_SETTINGS)
    url = reverse("admin:emergency_emergencysettings_change", args=[row.pk])
    first, second = login(client, manager), Client()
    second.force_login(other)
    loaded, stale = form_data(first.get(url)), form_data(second.get(url))
    assert loaded["loaded_version"] and loaded["loaded_version"] == stale["loaded_version"]
    assert first.post(url, {**loaded, "error_min_outcomes": 15}).status_code == 302
    r = second.post(url, {**stale, "error_window_count": 10})
    assert r.status_code == 200 and "Another manager changed these settings" in r.content.decode()
    row.refresh_from_db()
    assert (row.error_window_count, row.error_min_outcomes) == (20, 15)
    # a recovery resetting the error window (a column of its own) is no other manager's change
    EmergencySettings.objects.filter(pk=row.pk).update(error_window_reset_at=timezone.now(), updated_at=timezone.now())
    fresh = form_data(second.get(url))  # reloaded: their values, and a save from there goes through
    EmergencySettings.objects.filter(pk=row.pk).update(error_window_reset_at=timezone.now(), updated_at=timezone.now())
    assert second.post(url, {**fresh, "error_window_seconds": 600}).status_code == 302
    row.refresh_from_db()
    assert (row.error_window_count, row.error_min_outcomes, row.error_window_seconds) == (20, 15, 600)
    # a post without the version it was loaded from proves nothing: refused likewise
    current = form_data(second.get(url))
    r = second.post(url, {**{k: v for k, v in current.items() if k != "loaded_version"}, "error_window_seconds": 900})
    assert r.status_code == 200 and "Another manager changed these settings" in r.content.decode()
    row.refresh_from_db()
    assert row.error_window_seconds == 600


def test_the_admin_index_names_the_settings_in_plain_english(admin_user):
    from django.test import Client

    client = Client()
    client.force_login(admin_user)
    page = client.get("/admin/").content.decode()
    assert "Emergency settings" in page and "Emergency settingss" not in page


def test_a_settings_value_out_of_range_is_told_one_rule(client, project, manager):
    """-1 was told "greater than or equal to 0", then 0 "greater than or equal to 1"; a rate of
    0.12345 "no more than 4 digits in total" (the rule is three decimals)."""
    from emergency.models import EmergencySettings
    from projects.tests.test_admin_audit import form_data

    row = EmergencySettings.objects.create(project=project, **GOOD_SETTINGS)
    url = reverse("admin:emergency_emergencysettings_change", args=[row.pk])
    loaded = form_data(login(client, manager).get(url))
    for value in ("-1", "0"):
        page = client.post(url, {**loaded, "error_window_seconds": value}).content.decode()
        assert "Ensure this value is greater than or equal to 1." in page and "equal to 0" not in page, value
    page = client.post(url, {**loaded, "error_rate_threshold": "0.12345"}).content.decode()
    assert "Give a rate from 0.001 to 0.999, with at most three decimals." in page and "4 digits" not in page
    row.refresh_from_db()
    assert row.error_window_seconds == 300 and row.error_rate_threshold == Decimal("0.300")


def test_a_stops_admin_page_names_people_and_triggers_as_the_pages_do(client, project, reviewer, admin_user):
    """It showed "reviewer#4" and its triggers as a JSON list."""
    stop, _ = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="runaway agent",
                                     actor=reviewer)
    emergency_stop_trigger(project_id=project.pk, condition="error_rate_high", reason="errors over 50%",
                           data={"rate": "0.8"})
    client.force_login(admin_user)
    listing = client.get(reverse("admin:emergency_emergencystop_changelist")).content.decode()
    assert f"reviewer#{reviewer.pk}" not in listing and '<td class="field-by">reviewer</td>' in listing
    page = client.get(reverse("admin:emergency_emergencystop_change", args=[stop.pk])).content.decode()
    assert f"reviewer#{reviewer.pk}" not in page and "[{&quot;" not in page and '[{"' not in page
    assert "manual stop (high) by reviewer at " in page and ": runaway agent" in page
    assert "error rate high (high) by the system (error rate high) at " in page and "errors over 50%; rate: 0.8" in page


def test_admin_times_say_their_zone(client, admin_user, project, reviewer):
    """Found by a reviewer outside UTC: the admin's lists showed "Dec. 6, 2026, 6:30 p.m." (a
    Kolkata project's midnight) with nothing saying it was UTC; the reviewer pages write
    "2026-12-06 18:30:00 UTC". The admin now writes times as they do."""
    import re

    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="drill", actor=reviewer)
    client.force_login(admin_user)
    listing = client.get(reverse("admin:emergency_emergencystop_changelist")).content.decode()
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", listing), listing
    assert not re.search(r"\b(?:a|p)\.m\.", listing)
    audit = client.get("/review/audit/").content.decode()
    assert "From (UTC day)" in audit and "To (UTC day, inclusive)" in audit
