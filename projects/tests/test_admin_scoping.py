"""The admin's read-only lists (tasks, the outbox, the audit trail) and the emergency settings show
each staff user the rows of the projects they hold a role on, nothing of the others, whatever
Django model permissions they were given."""
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse

from audit.models import AuditEvent
from emergency.models import EmergencySettings
from events.services import event_emit
from projects.services import task_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows(project, other_project, agent, make_user, admin_user):
    from django.db import transaction

    from audit.services import audit_record

    theirs = make_user("their-agent", role="agent", project=other_project)
    with transaction.atomic():  # a row of no project (as a user's or a key's are)
        audit_record(actor=admin_user, action="user.test", object_type="user", object_id=str(agent.pk))
    return {
        "mine": {"task": task_create(actor=agent, project_id=project.pk, agent_type="coder", title="mine-task"),
                 "event": event_emit(project_id=project.pk, event_type="safety_alert", data={}),
                 "settings": EmergencySettings.objects.get_or_create(project=project)[0]},
        "theirs": {"task": task_create(actor=theirs, project_id=other_project.pk, agent_type="coder",
                                       title="their-task"),
                   "event": event_emit(project_id=other_project.pk, event_type="safety_alert", data={}),
                   "settings": EmergencySettings.objects.get_or_create(project=other_project)[0]},
    }


def test_a_reviewer_sees_only_its_projects_rows_even_with_model_permissions(client, reviewer, rows, project,
                                                                            other_project):
    reviewer.user_permissions.add(*Permission.objects.filter(codename__in=[
        "view_auditevent", "view_task", "view_event", "view_emergencysettings", "change_emergencysettings",
        "delete_emergencysettings"]))
    client.force_login(reviewer)
    tasks = client.get(reverse("admin:projects_task_changelist")).content.decode()
    assert "mine-task" in tasks and "their-task" not in tasks and "Other" not in tasks  # its filter too
    events = client.get(reverse("admin:events_event_changelist")).content.decode()
    assert f">{rows['mine']['event'].id}<" in events and f">{rows['theirs']['event'].id}<" not in events
    audit = client.get(reverse("admin:audit_auditevent_changelist") + "?o=-1")
    shown = set(audit.context["cl"].result_list.values_list("project_id", flat=True))
    assert shown == {project.pk}, shown
    assert AuditEvent.objects.filter(project_id=other_project.pk).exists()
    assert AuditEvent.objects.filter(project_id__isnull=True).exists()  # users and roles: admins only
    for name, obj in [("projects_task", rows["theirs"]["task"]), ("events_event", rows["theirs"]["event"]),
                      ("emergency_emergencysettings", rows["theirs"]["settings"]),
                      ("audit_auditevent", AuditEvent.objects.filter(project_id=other_project.pk).first()),
                      ("audit_auditevent", AuditEvent.objects.filter(project_id__isnull=True).first())]:
        r = client.get(reverse(f"admin:{name}_change", args=[obj.pk]))
        assert r.status_code == 302 and r.url == reverse("admin:index"), (name, r.status_code)
    settings_list = client.get(reverse("admin:emergency_emergencysettings_changelist"))
    assert list(settings_list.context["cl"].result_list) == [rows["mine"]["settings"]]


def test_emergency_settings_are_changed_by_the_projects_managers_and_deleted_by_no_one(
        client, reviewer, manager, admin_user, rows, project):
    mine = rows["mine"]["settings"]
    url = reverse("admin:emergency_emergencysettings_change", args=[mine.pk])
    client.force_login(reviewer)
    page = client.get(url)
    assert page.status_code == 200 and not page.context["has_change_permission"]
    client.force_login(manager)
    page = client.get(url)
    assert page.context["has_change_permission"] and "project" not in page.context["adminform"].form.fields
    for user in (reviewer, manager, admin_user):
        client.force_login(user)
        r = client.post(reverse("admin:emergency_emergencysettings_delete", args=[mine.pk]), {"post": "yes"})
        assert r.status_code in (302, 403) and EmergencySettings.objects.filter(pk=mine.pk).exists()


def test_an_admin_sees_every_row_of_the_audit_trail(client, admin_user, rows):
    client.force_login(admin_user)
    row = AuditEvent.objects.filter(project_id__isnull=True).first()
    assert client.get(reverse("admin:audit_auditevent_change", args=[row.pk])).status_code == 200
    listed = client.get(reverse("admin:audit_auditevent_changelist")).context["cl"].result_count
    assert listed == AuditEvent.objects.count()


def test_a_date_past_any_calendar_in_the_audit_list_is_a_bad_filter_not_a_500(client, admin_user, rows):
    client.force_login(admin_user)
    url = reverse("admin:audit_auditevent_changelist")
    r = client.get(url, {"created_at__year": "2026", "created_at__month": "1", "created_at__day": "9" * 20})
    assert r.status_code == 302 and r.url == f"{url}?e=1"
    for last_year in ({"created_at__year": "9999"}, {"created_at__year": "9999", "created_at__month": "12"}):
        r = client.get(url, last_year)  # the year alone ends in year 10000: "year 10000 is out of range"
        assert r.status_code == 302 and r.url == f"{url}?e=1", last_year


def test_a_bulk_action_says_how_many_selected_items_it_left_out(client, reviewer, agent, rows, project,
                                                                   other_project):
    from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME

    from approvals.models import AgentCallApproval

    mine = call(agent, rows["mine"]["task"])
    theirs = call(rows["theirs"]["task"].created_by, rows["theirs"]["task"])
    client.force_login(reviewer)
    r = client.post(reverse("admin:approvals_agentcallapproval_changelist"),
                    {"action": "approve_selected", "index": 0, ACTION_CHECKBOX_NAME: [str(mine.pk), str(theirs.pk)]},
                    follow=True)
    said = [str(m) for m in r.context["messages"]]
    assert "1 selected item is not visible to you and was not changed." in said, said
    assert AgentCallApproval.objects.get(pk=mine.pk).status == "approved"
    assert AgentCallApproval.objects.get(pk=theirs.pk).status == "pending"


def test_a_hand_edited_selection_that_is_not_an_id_is_left_out_not_a_500(client, reviewer, agent, rows):
    from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME

    from approvals.models import AgentCallApproval

    mine = call(agent, rows["mine"]["task"])
    client.force_login(reviewer)
    changelist = reverse("admin:approvals_agentcallapproval_changelist")
    r = client.post(changelist, {"action": "approve_selected", "index": 0,
                                 ACTION_CHECKBOX_NAME: [str(mine.pk), "not-a-uuid"]}, follow=True)
    said = [str(m) for m in r.context["messages"]]
    assert "1 selected item is not visible to you and was not changed." in said, said
    assert AgentCallApproval.objects.get(pk=mine.pk).status == "approved"


@pytest.mark.parametrize("changelist, action", [
    ("admin:access_apikey_changelist", "revoke"), ("admin:core_heartbeat_changelist", "delete_selected"),
    ("admin:approvals_modelprice_changelist", "delete_selected"), ("admin:auth_user_changelist", "delete_selected"),
    ("admin:auth_group_changelist", "delete_selected"),
])
def test_a_selection_that_is_not_an_id_is_left_out_on_every_admin_list(client, admin_user, changelist, action):
    """The lists that are not a project's (keys, heartbeats, prices, users, groups) raised on a
    ticked value that is no id of theirs: a 500."""
    from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME

    client.force_login(admin_user)
    for value in ("x", "00000000-0000-0000-0000-000000000000", "9" * 10_000, "9" * 20):
        r = client.post(reverse(changelist), {"action": action, "index": 0, ACTION_CHECKBOX_NAME: [value]})
        assert r.status_code in (200, 302), (value, r.status_code)
    assert get_user_model().objects.filter(pk=admin_user.pk).exists()


def test_an_action_asking_a_reason_names_the_selected_items_it_leaves_out(client, reviewer, agent, rows):
    from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME

    from approvals.models import AgentCallApproval

    mine = call(agent, rows["mine"]["task"])
    theirs = call(rows["theirs"]["task"].created_by, rows["theirs"]["task"])
    client.force_login(reviewer)
    r = client.post(reverse("admin:approvals_agentcallapproval_changelist"),
                    {"action": "reject_selected", "index": 0, ACTION_CHECKBOX_NAME: [str(mine.pk), str(theirs.pk)]})
    assert r.status_code == 200  # the page asking for the reason
    assert "1 selected item is not visible to you and was not changed." in r.content.decode()
    assert AgentCallApproval.objects.get(pk=theirs.pk).status == "pending"


def call(user, task):
    """A pending call of ``task``, requested by ``user``."""
    from approvals.services import agent_approval_request

    return agent_approval_request(requester=user, project_id=task.project_id, task_id=task.pk,
                                  agent_type="coder", proposed_action="x", input_data={},
                                  estimated_tokens=1, estimated_cost="0.0001")
