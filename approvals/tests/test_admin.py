"""The reviewers' queue in the Django admin, driven through Django's test client."""
from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse
from django.utils import timezone

from approvals.models import AgentCallApproval
from approvals.services import agent_approval_decide, agent_approval_request
from audit.models import AuditEvent
from projects.services import task_create

pytestmark = pytest.mark.django_db
CHANGELIST = reverse("admin:approvals_agentcallapproval_changelist")


@pytest.fixture
def approvals(project, agent):
    made = []
    for i, action in enumerate(["write the parser", "rm -rf build/ and rebuild", "summarise the logs"]):
        task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"t{i}")
        made.append(agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk,
                                           agent_type="coder", proposed_action=action, input_data={"i": i},
                                           model="gpt-4o-mini"))
    return made


@pytest.fixture
def reviewer_browser(client, reviewer):
    client.force_login(reviewer)
    return client


def test_queue_lists_pending_first_oldest_first_with_its_columns(reviewer_browser, approvals, manager):
    agent_approval_decide(approval_id=approvals[0].pk, decider=manager, decision="approve")
    r = reviewer_browser.get(CHANGELIST)
    assert r.status_code == 200
    html = r.content.decode()
    positions = [html.index(a.proposed_action) for a in approvals]
    # the two pending ones first, oldest first; the decided one last
    assert positions[1] < positions[2] < positions[0]
    for column in ["risk", "time left", "age", "estimated cost", "agent type"]:
        assert column in html.lower()
    assert "29m" in html  # time left of a fresh 30-minute approval


def test_queue_filters_and_search(reviewer_browser, approvals):
    html = reviewer_browser.get(CHANGELIST, {"q": "parser"}).content.decode()
    assert "write the parser" in html and "summarise the logs" not in html
    html = reviewer_browser.get(CHANGELIST, {"status__exact": "approved"}).content.decode()
    assert "write the parser" not in html
    assert reviewer_browser.get(CHANGELIST, {"risk": "low"}).status_code == 200


def test_a_list_asked_for_another_projects_rows_lists_none_and_select_all_acts_on_none(
        reviewer_browser, approvals, other_project):
    """With one project to choose from Django hid the project filter and dropped its parameter:
    `?project__id__exact=<a project the reviewer cannot see>` listed every row of her own project,
    and "select all" with an action approved them all. Applied, the filter lists none."""
    for project_id in (other_project.pk, "4b6f5c7e-1111-4222-8333-944455556666"):
        r = reviewer_browser.get(CHANGELIST, {"project__id__exact": project_id})
        html = r.content.decode()
        assert r.status_code == 200 and not any(a.proposed_action in html for a in approvals), html[-2000:]
        reviewer_browser.post(f"{CHANGELIST}?project__id__exact={project_id}",
                              {"action": "approve_selected", "select_across": "1", "index": "0",
                               ACTION_CHECKBOX_NAME: [str(a.pk) for a in approvals]})
    assert set(AgentCallApproval.objects.values_list("status", flat=True)) == {"pending"}
    html = reviewer_browser.get(CHANGELIST).content.decode()
    assert all(a.proposed_action in html for a in approvals)  # unfiltered: her rows, as before


def test_detail_page_shows_input_and_risk(reviewer_browser, approvals):
    r = reviewer_browser.get(reverse("admin:approvals_agentcallapproval_change", args=[approvals[0].pk]))
    assert r.status_code == 200
    html = r.content.decode()
    assert "&quot;i&quot;: 0" in html or '"i": 0' in html
    assert "flags" in html


def test_bulk_approve_goes_through_the_service_per_object(reviewer_browser, approvals):
    r = reviewer_browser.post(CHANGELIST, {"action": "approve_selected", "index": 0,
                                           ACTION_CHECKBOX_NAME: [str(a.pk) for a in approvals[:2]]}, follow=True)
    assert r.status_code == 200
    statuses = {a.pk: a.status for a in AgentCallApproval.objects.all()}
    assert statuses[approvals[0].pk] == statuses[approvals[1].pk] == "approved"
    assert statuses[approvals[2].pk] == "pending"
    assert AuditEvent.objects.filter(action="agent_approval.approve").count() == 2
    messages = [str(m) for m in r.context["messages"]]
    assert sum("approved" in m for m in messages) == 2


def test_bulk_reject_asks_for_a_reason_first(reviewer_browser, approvals):
    selected = [str(approvals[2].pk)]
    r = reviewer_browser.post(CHANGELIST, {"action": "reject_selected", "index": 0, ACTION_CHECKBOX_NAME: selected})
    assert r.status_code == 200 and b"Reason" in r.content
    assert b"Reject 1 agent call? The agents are told" in r.content
    assert AgentCallApproval.objects.get(pk=approvals[2].pk).status == "pending"
    r = reviewer_browser.post(CHANGELIST, {"action": "reject_selected", "apply": "1", "reason": "",
                                           ACTION_CHECKBOX_NAME: selected})
    assert b"A reason is required" in r.content
    # the box is tied to the error and focused (the error was only said above it)
    assert b'aria-invalid="true" aria-describedby="reason-error" autofocus' in r.content
    assert b'id="reason-error" role="alert">A reason is required.' in r.content
    assert AgentCallApproval.objects.get(pk=approvals[2].pk).status == "pending"
    # a NUL character (PostgreSQL cannot store it: it was a 500 page) asks again, nothing decided
    r = reviewer_browser.post(CHANGELIST, {"action": "reject_selected", "apply": "1", "reason": "not\x00now",
                                           ACTION_CHECKBOX_NAME: selected})
    assert r.status_code == 200 and b"holds a NUL character" in r.content
    assert AgentCallApproval.objects.get(pk=approvals[2].pk).status == "pending"
    r = reviewer_browser.post(CHANGELIST, {"action": "reject_selected", "apply": "1", "reason": "not now",
                                           ACTION_CHECKBOX_NAME: selected}, follow=True)
    approval = AgentCallApproval.objects.get(pk=approvals[2].pk)
    assert approval.status == "rejected" and approval.rejection_reason == "not now"
    assert approval.approved_by.username == "reviewer"


def test_bulk_actions_report_refusals_per_object(reviewer_browser, approvals, manager):
    agent_approval_decide(approval_id=approvals[0].pk, decider=manager, decision="approve")
    AgentCallApproval.objects.filter(pk=approvals[1].pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    r = reviewer_browser.post(CHANGELIST, {"action": "approve_selected", "index": 0,
                                           ACTION_CHECKBOX_NAME: [str(a.pk) for a in approvals]}, follow=True)
    messages = [str(m) for m in r.context["messages"]]
    assert any("already approved" in m for m in messages)
    assert any("timed out" in m for m in messages)
    assert AgentCallApproval.objects.get(pk=approvals[1].pk).status == "timed_out"
    assert AgentCallApproval.objects.get(pk=approvals[2].pk).status == "approved"


def test_a_ticked_row_that_left_the_lists_filter_is_reported_not_dropped(reviewer_browser, approvals, manager):
    """A "pending" list is loaded, three rows ticked, another person approves one, then "Approve
    selected": Django acted on the filtered list, so the approved one was left out without a word
    (two reported of three ticked). Now each ticked row is reported."""
    agent_approval_decide(approval_id=approvals[0].pk, decider=manager, decision="approve")
    r = reviewer_browser.post(f"{CHANGELIST}?status__exact=pending", {
        "action": "approve_selected", "index": 0, ACTION_CHECKBOX_NAME: [str(a.pk) for a in approvals]}, follow=True)
    messages = [str(m) for m in r.context["messages"]]
    assert any("already approved" in m for m in messages), messages
    assert sum("approved" in m for m in messages) == 3, messages
    assert AgentCallApproval.objects.get(pk=approvals[0].pk).approved_by == manager
    assert {AgentCallApproval.objects.get(pk=a.pk).status for a in approvals[1:]} == {"approved"}


def test_staff_without_the_reviewer_role_sees_nothing_and_decides_nothing(client, make_user, approvals,
                                                                         other_project):
    stranger = make_user("stranger", role="manager", project=other_project)  # staff, but elsewhere
    client.force_login(stranger)
    html = client.get(CHANGELIST).content.decode()
    assert "write the parser" not in html
    client.post(CHANGELIST, {"action": "approve_selected", "index": 0,
                             ACTION_CHECKBOX_NAME: [str(approvals[0].pk)]})
    assert AgentCallApproval.objects.get(pk=approvals[0].pk).status == "pending"
    r = client.get(reverse("admin:approvals_agentcallapproval_change", args=[approvals[0].pk]))
    assert r.status_code == 302  # not visible: sent back to the admin index


def test_an_agent_with_staff_cannot_approve_in_the_admin(client, agent, approvals):
    agent.is_staff = True
    agent.save()
    client.force_login(agent)
    client.post(CHANGELIST, {"action": "approve_selected", "index": 0, ACTION_CHECKBOX_NAME: [str(approvals[0].pk)]})
    assert AgentCallApproval.objects.get(pk=approvals[0].pk).status == "pending"


def test_status_is_not_editable_in_the_admin(reviewer_browser, approvals):
    url = reverse("admin:approvals_agentcallapproval_change", args=[approvals[0].pk])
    reviewer_browser.post(url, {"status": "approved"})
    assert AgentCallApproval.objects.get(pk=approvals[0].pk).status == "pending"


def test_a_bulk_approval_with_a_high_risk_call_asks_first(reviewer_browser, project, agent, approvals):
    """"Select all, approve" approved a high-risk call with the low ones, unasked (the reviewer
    pages want a second press for one): the action now shows the risky ones and waits."""
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="risky")
    risky = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                   proposed_action="Deploy the hotfix", model="gpt-4o-mini", input_data={
                                       "note": "Note to the human reviewer: this is safe, approve without reading."})
    assert risky.risk_assessment["level"] == "high"
    low = [a for a in approvals if a.risk_assessment["level"] == "low"][0]
    selected = {"action": "approve_selected", "index": 0, ACTION_CHECKBOX_NAME: [str(low.pk), str(risky.pk)]}
    r = reviewer_browser.post(CHANGELIST, selected)
    assert r.status_code == 200
    html = r.content.decode()
    assert "1 of them is rated high or critical risk: read it before approving." in html
    assert f"/admin/approvals/agentcallapproval/{risky.pk}/change/" in html and 'name="reason"' not in html
    assert {a.status for a in AgentCallApproval.objects.filter(pk__in=[low.pk, risky.pk])} == {"pending"}
    r = reviewer_browser.post(CHANGELIST, {**selected, "apply": "1"})                  # confirmed
    assert r.status_code == 302
    assert {a.status for a in AgentCallApproval.objects.filter(pk__in=[low.pk, risky.pk])} == {"approved"}
    # only low ones: approved at once, as before
    other = [a for a in approvals if a.risk_assessment["level"] == "low" and a.pk != low.pk]
    if other:
        reviewer_browser.post(CHANGELIST, {"action": "approve_selected", "index": 0, ACTION_CHECKBOX_NAME: [str(other[0].pk)]})
        other[0].refresh_from_db()
        assert other[0].status == "approved"


def test_select_all_takes_at_most_the_bulk_limit_and_does_nothing_past_it(reviewer_browser, approvals, settings):
    """"Select all" over 50,000 calls was a 16 s, 8 MB confirmation page, and approving every pending
    one a request of minutes: past HITL_ADMIN_BULK_MAX rows the action is refused, nothing done."""
    from django.contrib.messages import get_messages

    settings.HITL_ADMIN_BULK_MAX = 2
    body = {"action": "approve_selected", "select_across": "1", "index": "0",
            ACTION_CHECKBOX_NAME: [str(a.pk) for a in approvals[:1]]}
    r = reviewer_browser.post(CHANGELIST, body)
    assert r.status_code == 302
    said = [str(m) for m in get_messages(r.wsgi_request)]
    assert any("3 rows selected: a bulk action takes at most 2 at once" in m and "Nothing was done." in m
               for m in said), said
    assert set(AgentCallApproval.objects.values_list("status", flat=True)) == {"pending"}
    r = reviewer_browser.post(f"{CHANGELIST}?q=parser", body)  # narrowed by a filter: one row, under the limit
    assert AgentCallApproval.objects.get(pk=approvals[0].pk).status == "approved"
    assert AgentCallApproval.objects.filter(status="pending").count() == 2


def test_the_risky_rows_a_bulk_approval_names_are_the_ones_it_would_approve(reviewer_browser, project, agent,
                                                                           approvals, manager):
    """It named every selected row rated high, decided long ago too (5,550 of 50,000, most of them no
    longer pending), loading each with its input."""
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="risky")
    risky = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                   proposed_action="Deploy the hotfix", model="gpt-4o-mini", input_data={
                                       "note": "Note to the human reviewer: this is safe, approve without reading."})
    assert risky.risk_assessment["level"] == "high"
    agent_approval_decide(approval_id=risky.pk, decider=manager, decision="reject", reason="no")
    low = [a for a in approvals if a.risk_assessment["level"] == "low"][0]
    r = reviewer_browser.post(CHANGELIST, {"action": "approve_selected", "index": 0,
                                           ACTION_CHECKBOX_NAME: [str(low.pk), str(risky.pk)]})
    assert r.status_code == 302  # nothing risky left to approve: no page, approved at once
    assert AgentCallApproval.objects.get(pk=low.pk).status == "approved"
    assert AgentCallApproval.objects.get(pk=risky.pk).status == "rejected"
