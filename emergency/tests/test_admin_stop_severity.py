"""The projects admin's emergency stop (issue 11): a confirmation page that says what will happen and
asks for a reason and a severity, then a stop per project through emergency_stop_trigger, with the
project's reviewer/manager role checked for each."""
import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from approvals.services import agent_approval_request
from audit.models import AuditEvent
from emergency.models import EmergencyStop
from projects.models import Project
from projects.services import task_create

pytestmark = pytest.mark.django_db

URL = "admin:projects_project_changelist"


def stop_post(client, projects, **body):
    return client.post(reverse(URL), {"action": "emergency_stop", "index": 0,
                                      ACTION_CHECKBOX_NAME: [str(p.pk) for p in projects], **body}, follow=True)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def busy(project, agent):
    tasks = [task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"t{i}") for i in range(3)]
    for task in tasks[:2]:
        agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                               proposed_action="write code", input_data={}, estimated_tokens=1,
                               estimated_cost="0.0001")
    return project


def test_the_action_asks_for_reason_and_severity_and_says_what_will_happen(client, reviewer, busy):
    client.force_login(reviewer)
    assert 'value="emergency_stop"' in client.get(reverse(URL)).content.decode()  # offered to reviewers
    r = stop_post(client, [busy])
    html = r.content.decode()
    assert r.status_code == 200 and 'name="reason"' in html and "Reason (required)" in html
    for value, meaning in (("low", "a precaution"), ("medium", "needs a look"), ("high", "doing harm"),
                           ("critical", "an incident")):
        assert f'value="{value}"' in html and meaning in html
    assert 'id="id_severity_high" checked' in html  # high by default
    assert "3 open tasks will be halted." in html and "2 agent calls will be cancelled (pending, or approved and not yet started)" in html
    assert Project.objects.get(pk=busy.pk).status == "active"  # nothing happened yet


def test_the_stop_records_severity_and_reason(client, reviewer, busy):
    client.force_login(reviewer)
    r = stop_post(client, [busy], apply="1", reason="leaking secrets", severity="critical")
    stop = EmergencyStop.objects.get(project=busy)
    assert stop.severity == "critical" and stop.stop_reason == "leaking secrets"
    assert stop.triggered_conditions == ["manual_stop"] and stop.triggered_by_user == reviewer
    assert len(stop.stopped_tasks) == 3 and len(stop.cancelled_approvals) == 2
    assert Project.objects.get(pk=busy.pk).status == "emergency_stopped"
    assert AuditEvent.objects.filter(action="emergency_stop.trigger", project_id=busy.pk,
                                     after__severity="critical").exists()
    assert any("stopped (severity critical): 3 tasks halted, 2 open requests cancelled" in m for m in messages_of(r))


def test_a_missing_reason_or_a_bad_severity_stops_nothing(client, reviewer, busy):
    client.force_login(reviewer)
    r = stop_post(client, [busy], apply="1", reason="  ", severity="medium")
    html = r.content.decode()
    assert "A reason is required" in html and 'id="id_severity_medium" checked' in html  # the choice is kept
    r = stop_post(client, [busy], apply="1", reason="x", severity="apocalyptic")
    assert "Select a valid choice" in r.content.decode()
    assert not EmergencyStop.objects.filter(project=busy).exists()


def test_stopping_again_adds_to_the_active_stop(client, reviewer, manager, project):
    client.force_login(reviewer)
    stop_post(client, [project], apply="1", reason="first", severity="low")
    client.force_login(manager)
    r = stop_post(client, [project])
    assert "already stopped" in r.content.decode()
    r = stop_post(client, [project], apply="1", reason="worse", severity="high")
    stop = EmergencyStop.objects.get(project=project)
    assert stop.severity == "high" and [d["reason"] for d in stop.condition_details] == ["first", "worse"]
    assert any("already stopped" in m for m in messages_of(r))


def test_an_agent_cannot_stop_its_project_from_the_admin(client, agent, project):
    agent.is_staff = True
    agent.save()
    client.force_login(agent)
    html = client.get(reverse(URL)).content.decode()
    assert 'value="emergency_stop"' not in html  # the action is not offered
    stop_post(client, [project], apply="1", reason="x", severity="high")
    assert Project.objects.get(pk=project.pk).status == "active"


def test_a_reviewer_cannot_stop_another_project(client, make_user, project, other_project):
    """Agent role on one project, reviewer on another: only the second may be stopped, and the
    page and messages say so per project."""
    user = make_user("mixed", role="agent", project=other_project)
    from access.services import role_grant

    role_grant(user=user, project=project, role="reviewer")
    client.force_login(user)
    r = stop_post(client, [project, other_project])
    html = r.content.decode()
    assert "You may not stop it" in html and "Stop 1 project now" in html
    r = stop_post(client, [project, other_project], apply="1", reason="stop", severity="medium")
    assert Project.objects.get(pk=project.pk).status == "emergency_stopped"
    assert Project.objects.get(pk=other_project.pk).status == "active"
    msgs = messages_of(r)
    assert any(m.startswith("Demo: stopped (severity medium)") for m in msgs)
    assert any(m.startswith("Other: not stopped: only its reviewers and managers may stop it") for m in msgs)


def test_a_user_without_a_role_cannot_stop_a_project(client, outsider, project, reviewer):
    client.force_login(outsider)  # manager of another project only: this one is not even listed
    stop_post(client, [project], apply="1", reason="x", severity="high")
    assert Project.objects.get(pk=project.pk).status == "active"
