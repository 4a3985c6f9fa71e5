"""A recovery session's admin page walks a reviewer through the plan (issue 11): the assessment as
readable sections, every step in order with the next one named before it runs, and Approve-and-run /
Reject buttons that go through recovery_step_respond, its refusals shown as admin messages."""
import re

import pytest
from django.urls import reverse
from django.utils.html import escape

from approvals.services import agent_approval_request
from audit.models import AuditEvent
from emergency.services import emergency_stop_trigger
from projects.models import Project, Task
from projects.services import task_create
from recovery.models import RecoverySession, RecoveryStep
from recovery.presentation import assessment_sections, step_result_rows
from recovery.services import recovery_start

pytestmark = pytest.mark.django_db

PLAN = ["review_flagged", "reset_error_window", "re_enable_agents", "settle_halted_tasks", "lift_stop"]


@pytest.fixture
def session(project, agent, reviewer, manager):
    tasks = [task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"t{i}") for i in range(3)]
    agent_approval_request(requester=agent, project_id=project.pk, task_id=tasks[0].pk, agent_type="coder",
                           proposed_action="write code", input_data={}, estimated_tokens=1, estimated_cost="0.0001")
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="runaway agent", actor=reviewer)
    emergency_stop_trigger(project_id=project.pk, condition="error_rate_high", reason="errors over 50%",
                           data={"rate": 0.8, "window": 20})
    return recovery_start(project_id=project.pk, actor=manager, recovery_type="manual")


def page_url(session):
    return reverse("admin:recovery_recoverysession_change", args=[session.pk])


def steps_of(session):
    return list(RecoveryStep.objects.filter(session=session).order_by("order"))


def decide(client, session, step, decision, **extra):
    return client.post(page_url(session), {"_step_decision": "1", "decision": decision, "step_id": str(step.pk),
                                           **extra}, follow=True)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_the_page_lists_every_step_in_order_and_names_the_next_one(client, session, reviewer):
    client.force_login(reviewer)
    r = client.get(page_url(session))
    assert r.status_code == 200
    html = r.content.decode()
    table = html[html.index('id="recovery-steps"'):html.index("</table>", html.index('id="recovery-steps"'))]
    positions = [table.index(f"<code>{action}</code>") for action in PLAN]
    assert positions == sorted(positions)  # in plan order
    for step in steps_of(session):
        assert escape(step.description) in table
    assert "Next: step 1 of 5: Review the flagged calls and outputs" in html  # named before it runs
    assert table.count('aria-current="step"') == 1 and "next: waiting for approval" in table
    assert "Approve and run step 1" in html and "Reject step 1" in html
    # the assessment as labelled sections, not a JSON blob
    for text in ("The stop", "What tripped", "Error rate high (high)", "errors over 50%", "runaway agent",
                 "Impact of the stop", "Halted tasks", "Tasks by status", "Budget today", "Daily cost limit"):
        assert text in html, text
    assert '"halted_tasks"' not in html and "{&quot;" not in html and "{'" not in html
    # its money as money, as the reviewer pages write it
    budget = html[html.index("<h3>Budget today</h3>"):]
    budget = budget[:budget.index("</section>")]
    assert "<td>$0.0000</td>" in budget and not re.search(r"<td>\d+\.\d{4}</td>", budget), budget


def test_assessment_sections_render_every_key_as_rows():
    sections = assessment_sections({"halted_tasks": 2, "cancelled_approvals": 1, "task_counts": {"halted": 2},
                                    "error_rate": "below threshold", "something_new": {"a_b": True}})
    titles = [s["title"] for s in sections]
    assert titles == ["Impact of the stop", "Tasks by status", "Error rate", "Something new"]
    assert sections[-1]["rows"] == [("A b", "yes")] and sections[1]["rows"] == [("Halted", "2")]


def test_assessment_names_people_as_the_pages_do_and_explains_the_allowance():
    """The audit's "manager#3" read as a raw id next to pages that say "manager"."""
    sections = {s["title"]: s for s in assessment_sections({
        "stop": {"triggered_conditions": ["manual_stop"], "triggered_by": "manager#3"},
        "conditions": [{"condition": "manual_stop", "by": "rev#ie#w#er#12"},
                       {"condition": "error_rate_high", "by": "system:error_rate_high"}],
        "budget": {"allowance_today": "0.0000", "spent_month": "1.0000"}})}
    assert ("Triggered by", "manager") in sections["The stop"]["rows"]
    assert [item["rows"][1] for item in sections["What tripped"]["items"]] == [
        ("By", "rev#ie#w#er"), ("By", "the system (error rate high)")]
    assert sections["Budget today"]["rows"] == [("Override allowance today", "0.0000"),
                                                ("Spent this month", "1.0000")]


def test_the_flagged_calls_a_step_reviewed_read_one_row_each():
    """They read as one run of text: "kind: call; approval id: ...; flags: a, b, kind: response; ..."."""
    rows = step_result_rows({"reviewed": [
        {"kind": "call", "approval_id": "3f2a1b2c-0000-0000-0000-000000000000", "proposed_action": "Deploy to prod",
         "risk_level": "critical", "flags": ["secret.aws_access_key", "code.bandit.B602"]},
        {"kind": "response", "approval_id": "9e8d7c6b-0000-0000-0000-000000000000", "proposed_action": "Write docs",
         "risk_level": "high", "flags": []}]})
    assert rows == [("Reviewed call 3f2a1b2c", "critical risk: Deploy to prod — flags: secret.aws_access_key, "
                                               "code.bandit.B602"),
                    ("Reviewed response 9e8d7c6b", "high risk: Write docs — flags: none")]
    assert step_result_rows({"reviewed": []}) == [("Reviewed", "none")]


def test_approving_the_next_step_runs_it_through_the_service(client, session, reviewer):
    client.force_login(reviewer)
    first = steps_of(session)[0]
    r = decide(client, session, first, "approve", reason="checked them")
    assert r.status_code == 200
    assert r.redirect_chain[-1][0].endswith("#content-start")  # lands on the outcome's message
    first.refresh_from_db()
    assert first.status == "completed" and first.approved_by == reviewer and first.reason == "checked them"
    assert AuditEvent.objects.filter(action="recovery.step_complete", object_id=str(first.pk),
                                     actor_id=reviewer.pk).exists()
    assert any("step 1, Review the flagged calls and outputs (review_flagged) approved and run" in m and
               "Next: step 2, Reset the error-rate window" in m for m in messages_of(r))
    html = r.content.decode()
    assert "Next: step 2 of 5: Reset the error-rate window" in html and "“checked them”" in html


def test_rejecting_needs_a_reason_and_then_fails_the_recovery(client, session, reviewer, project):
    client.force_login(reviewer)
    first = steps_of(session)[0]
    r = decide(client, session, first, "reject", reason="  ")
    assert r.status_code == 200
    assert any("not rejected: Rejecting a step needs a reason." in m for m in messages_of(r))
    first.refresh_from_db()
    session.refresh_from_db()
    assert first.status == "pending" and session.status == "waiting_approval"

    r = decide(client, session, first, "reject", reason="not\x00convinced")  # PostgreSQL: was a 500 page
    assert r.status_code == 200 and any("holds a NUL character" in m for m in messages_of(r))
    first.refresh_from_db()
    assert first.status == "pending"

    r = decide(client, session, first, "reject", reason="not convinced")
    first.refresh_from_db()
    session.refresh_from_db()
    assert first.status == "rejected" and first.reason == "not convinced" and session.status == "failed"
    assert Project.objects.get(pk=project.pk).status == "emergency_stopped"
    assert AuditEvent.objects.filter(action="recovery.step_reject", object_id=str(first.pk)).exists()
    html = r.content.decode()
    assert "This recovery failed: the emergency stop stays" in html and "Approve and run" not in html


def test_out_of_order_is_refused_with_the_services_message(client, session, reviewer):
    client.force_login(reviewer)
    third = steps_of(session)[2]
    r = decide(client, session, third, "approve")
    assert r.status_code == 200
    assert any("step 3, Re-enable the agents (re_enable_agents) not approved: Step 3 is pending; the next step is 1."
               in m for m in messages_of(r))
    third.refresh_from_db()
    assert third.status == "pending"
    assert not AuditEvent.objects.filter(action="recovery.step_complete").exists()


def test_a_bad_step_or_decision_is_a_message_never_a_500(client, session, reviewer):
    client.force_login(reviewer)
    for body in ({"decision": "approve", "step_id": "not-a-uuid"}, {"decision": "maybe", "step_id": ""},
                 {"decision": "approve", "step_id": "00000000-0000-0000-0000-000000000000"}):
        r = client.post(page_url(session), {"_step_decision": "1", **body}, follow=True)
        assert r.status_code == 200 and messages_of(r)
    assert set(RecoveryStep.objects.filter(session=session).values_list("status", flat=True)) == {"pending"}


def test_walking_every_step_lifts_the_stop_and_says_so(client, session, reviewer, project):
    client.force_login(reviewer)
    for step in steps_of(session):
        extra = {"option": "cancel"} if step.action == "settle_halted_tasks" else {}
        if extra:  # resume or cancel is the person's choice: nothing pre-chosen, none given refused
            html = client.get(page_url(session)).content.decode()
            assert '<input type="radio" name="option" value="resume" required>' in html
            assert not re.search(r'name="option" value="\w+"[^>]* checked', html)
            r = decide(client, session, step, "approve")
            assert any("Choose what to do (resume or cancel): nothing was run." in m for m in messages_of(r))
            assert RecoveryStep.objects.get(pk=step.pk).status == "pending"
        r = decide(client, session, step, "approve", **extra)
    session.refresh_from_db()
    assert session.status == "completed" and session.steps_completed == 5
    assert Project.objects.get(pk=project.pk).status == "active"
    assert set(Task.objects.filter(project=project).values_list("status", flat=True)) == {"cancelled"}
    assert any("The emergency stop is lifted" in m for m in messages_of(r))
    html = r.content.decode()
    assert 'id="stop-lifted"' in html and "Approve and run" not in html
    # the settle step names the tasks it settled by their titles, not bare ids
    settled = Task.objects.get(project=project, title="t1")
    assert f"“t1” ({str(settled.pk)[:8]})" in html


def test_the_manager_who_started_it_gets_no_buttons_and_is_refused(client, session, manager):
    client.force_login(manager)
    html = client.get(page_url(session)).content.decode()
    assert "Approve and run step" not in html and "another reviewer or manager approves" in html
    first = steps_of(session)[0]
    r = decide(client, session, first, "approve")
    assert r.status_code == 200 and any("not approved" in m for m in messages_of(r))
    first.refresh_from_db()
    assert first.status == "pending"


def test_someone_without_a_role_on_the_project_cannot_see_or_decide(client, session, outsider, make_user, project):
    client.force_login(outsider)
    r = client.get(page_url(session), follow=True)
    assert r.status_code == 200 and "Review the flagged calls" not in r.content.decode()  # not even shown
    decide(client, session, steps_of(session)[0], "approve")
    assert steps_of(session)[0].status == "pending"
    viewer = make_user("viewer", role="agent", project=project)
    viewer.is_staff = True
    viewer.save()
    client.force_login(viewer)
    html = client.get(page_url(session)).content.decode()
    assert "Approve and run step" not in html and "not decide its steps" in html
    decide(client, session, steps_of(session)[0], "approve")
    assert steps_of(session)[0].status == "pending"


def test_the_list_names_the_next_step(client, session, reviewer):
    client.force_login(reviewer)
    html = client.get(reverse("admin:recovery_recoverysession_changelist")).content.decode()
    assert "1. Review the flagged calls and outputs" in html and "0 of 5" in html
    assert RecoverySession.objects.count() == 1


def list_action(client, session, action, **extra):
    from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME

    return client.post(reverse("admin:recovery_recoverysession_changelist"),
                       {"action": action, "index": 0, ACTION_CHECKBOX_NAME: [str(session.pk)], **extra}, follow=True)


def shown_step(page) -> dict:
    """The hidden step field (and nothing else) the action's page posts back, as a browser would."""
    return dict(re.findall(r'<input type="hidden" name="(step_[^"]+)" value="([^"]+)"', page.content.decode()))


def test_the_list_action_runs_the_step_it_named_not_the_one_after_it(client, session, reviewer, manager, project):
    """The list's "approve the next step" ran whatever was next when the form arrived: a step
    approved by someone else meanwhile made a reviewer's click run the one after it (the stop's
    lift, unseen). Its page names the step and posts its id back; a stale one runs nothing."""
    from recovery.services import recovery_step_respond

    client.force_login(reviewer)
    page = list_action(client, session, "approve_next_step")
    html = page.content.decode()
    assert "<b>step 1, Review the flagged calls and outputs (review_flagged)</b>" in html
    assert steps_of(session)[0].status == "pending"  # named, not run
    form = shown_step(page)
    assert list(form.values()) == [str(steps_of(session)[0].pk)]
    other = recovery_step_respond(session_id=session.pk, step_id=steps_of(session)[0].pk, actor=project_admin(),
                                  decision="approve")
    assert other.steps_completed == 1
    r = list_action(client, session, "approve_next_step", apply="1", **form)
    assert any("step 1, Review the flagged calls and outputs (review_flagged) not approved: Step 1 is completed" in m
               for m in messages_of(r)), messages_of(r)
    assert [s.status for s in steps_of(session)] == ["completed", "pending", "pending", "pending", "pending"]
    page = list_action(client, session, "approve_next_step")
    r = list_action(client, session, "approve_next_step", apply="1", **shown_step(page))
    assert [s.status for s in steps_of(session)] == ["completed", "completed", "pending", "pending", "pending"]
    assert any("step 2, Reset the error-rate window (reset_error_window) approved and run" in m for m in messages_of(r))


def project_admin():
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_superuser(username="root", password="pw")


def test_the_list_action_asks_what_to_do_with_the_halted_tasks(client, session, reviewer, project):
    """It settled them with "resume", the API's default, where the pages ask for the choice."""
    client.force_login(reviewer)
    for _ in range(3):
        page = list_action(client, session, "approve_next_step")
        list_action(client, session, "approve_next_step", apply="1", **shown_step(page))
    page = list_action(client, session, "approve_next_step")
    html = page.content.decode()
    assert "step 4, Settle the halted tasks (settle_halted_tasks)" in html
    assert html.count(f'name="option_{session.pk}"') == 2 and "required" in html
    r = list_action(client, session, "approve_next_step", apply="1", **shown_step(page))
    assert any("not approved: Choose what to do (resume or cancel): nothing was run." in m for m in messages_of(r))
    assert steps_of(session)[3].status == "pending"
    list_action(client, session, "approve_next_step", apply="1", **shown_step(page), **{f"option_{session.pk}": "cancel"})
    assert steps_of(session)[3].status == "completed"
    assert set(Task.objects.filter(project=project).values_list("status", flat=True)) == {"cancelled"}


def test_the_list_reject_names_the_step_and_keeps_it_when_the_reason_was_left_out(client, session, reviewer):
    client.force_login(reviewer)
    page = list_action(client, session, "reject_next_step")
    assert "<b>step 1, Review the flagged calls and outputs (review_flagged)</b>" in page.content.decode()
    again = list_action(client, session, "reject_next_step", apply="1", reason=" ", **shown_step(page))
    assert "A reason is required." in again.content.decode() and shown_step(again) == shown_step(page)
    decide(client, session, steps_of(session)[0], "approve")  # signed in as the same reviewer: fine, not the starter
    r = list_action(client, session, "reject_next_step", apply="1", reason="no", **shown_step(page))
    assert any("not rejected: Step 1 is completed" in m for m in messages_of(r)), messages_of(r)
    session.refresh_from_db()
    assert session.status != "failed" and steps_of(session)[1].status == "pending"
    r = list_action(client, session, "reject_next_step", apply="1", reason="no")  # no step named: nothing
    assert any("no step was named for it, so none was rejected" in m for m in messages_of(r)), messages_of(r)
    assert steps_of(session)[1].status == "pending"
