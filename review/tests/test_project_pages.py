"""The project, recovery and audit pages (issue 11): server-rendered, behind login and per-project
permissions, writing only through the services."""
import datetime
import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from approvals.services import agent_approval_request
from audit.models import AuditEvent
from budgets.models import BudgetAlert, ProjectBudget
from emergency.models import EmergencyStop
from emergency.services import emergency_stop_trigger
from events.models import Event
from projects.models import Project
from projects.services import task_create
from recovery.models import RecoverySession, RecoveryStep
from recovery.services import recovery_start

pytestmark = pytest.mark.django_db


def web(user=None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def call(project, agent, *, cost="1.0000", tokens=100, title="t"):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=title)
    return agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="write the parser", input_data={}, estimated_tokens=tokens,
                                  estimated_cost=Decimal(cost))


@pytest.fixture
def stopped(project, agent, reviewer):
    """A project stopped by hand and then by a high error rate, with halted work (as in recovery/tests)."""
    call(project, agent, title="first")
    task_create(actor=agent, project_id=project.pk, agent_type="tester", title="second")
    stop, _ = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="runaway agent",
                                     actor=reviewer)
    emergency_stop_trigger(project_id=project.pk, condition="error_rate_high", reason="errors")
    return stop


@pytest.fixture
def session(stopped, project, manager):
    return recovery_start(project_id=project.pk, actor=manager, recovery_type="manual")


def steps_of(session):
    return list(RecoveryStep.objects.filter(session=session).order_by("order"))


def decide(client, session, step, **body):
    return client.post(reverse("review:recovery_step_decide", args=[session.pk, step.pk]), body)


# --- access ---------------------------------------------------------------------------
def test_every_page_needs_a_login(project, session):
    client = web()
    for url in (reverse("review:project", args=[project.pk]), reverse("review:recovery", args=[session.pk]),
                reverse("review:audit")):
        r = client.get(url)
        assert r.status_code == 302 and r["Location"].startswith("/admin/login/"), url
    for url in (reverse("review:project_stop", args=[project.pk]), reverse("review:recovery_start", args=[project.pk])):
        assert client.post(url, {"reason": "x", "confirm": "yes"}).status_code == 302
    assert Project.objects.get(pk=project.pk).status == "emergency_stopped"
    assert EmergencyStop.objects.filter(project=project).count() == 1


def test_an_outsider_gets_404_everywhere(project, session, outsider):
    client = web(outsider)
    assert client.get(reverse("review:project", args=[project.pk])).status_code == 404
    assert client.get(reverse("review:recovery", args=[session.pk])).status_code == 404
    assert client.post(reverse("review:project_stop", args=[project.pk]),
                       {"reason": "x", "severity": "high", "confirm": "yes"}).status_code == 404
    assert client.post(reverse("review:recovery_start", args=[project.pk]),
                       {"recovery_type": "manual"}).status_code == 404
    step = steps_of(session)[0]
    assert decide(client, session, step, decision="approve").status_code == 404
    assert RecoveryStep.objects.get(pk=step.pk).status == "pending"


# --- project page ---------------------------------------------------------------------
def test_a_budget_bar_past_its_limit_within_approved_overrides_says_so(project, agent, reviewer, manager):
    from approvals.services import budget_override_respond

    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("100.0000")})
    call(project, agent, cost="90.0000", title="a")
    blocked = call(project, agent, cost="25.0000", title="b")
    html = web(reviewer).get(reverse("review:project", args=[project.pk])).content.decode()
    assert "approved overrides allow" not in html
    budget_override_respond(override_id=blocked.budget_override_id, actor=manager, decision="approve")
    html = web(reviewer).get(reverse("review:project", args=[project.pk])).content.decode()
    today = html[html.index('id="bar-cost-today"'):html.index('id="bar-cost-today"') + 2000]
    assert "$115.0000 of $100.0000" in today
    assert "approved overrides allow +$15.0000 past the limit" in today
    assert "past the limit, within approved overrides" in today and "limit reached" not in today


def test_a_budget_bar_exactly_at_its_limit_with_no_override_says_limit_reached(project, agent, reviewer):
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("100.0000")})
    call(project, agent, cost="100.0000")
    html = web(reviewer).get(reverse("review:project", args=[project.pk])).content.decode()
    today = html[html.index('id="bar-cost-today"'):html.index('id="bar-cost-today"') + 2000]
    assert "limit reached" in today and "within approved overrides" not in today
    assert "approved overrides allow" not in today


def test_the_project_page_shows_agents_tasks_budget_bars_and_alerts(project, agent, reviewer):
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("10.0000")})
    call(project, agent, cost="8.5000", tokens=1234, title="parse the logs")  # 85 % of the day: warning
    assert BudgetAlert.objects.filter(project=project, alert_type="warning", threshold_type="cost_daily").exists()
    r = web(reviewer).get(reverse("review:project", args=[project.pk]))
    assert r.status_code == 200
    html = r.content.decode()
    assert "Demo" in html and "Active" in html
    for agent_type in ("orchestrator", "coder", "tester", "deployer"):  # agent states
        assert f'<th scope="row">{agent_type}</th>' in html
    assert "parse the logs" in html  # recent tasks
    assert '<span class="pp-state pp-state--waiting_for_hitl">Waiting for a person</span>' in html  # not "hitl"
    assert html.count("<meter") == 4  # tokens and cost, today and this month
    for label in ("Tokens today", "Cost today", "Tokens this month", "Cost this month"):
        assert label in html
    assert "$8.5000 of $10.0000" in html and "(85 %)" in html and "reserved $8.5000" in html  # money: $, 4 places
    assert "1,234 of 100,000 tokens" in html and "reserved 1,234 tokens" in html
    assert 'pp-tag pp-tag--warning">warning</span></td>' in html and "Cost today</td>" in html  # the alert
    assert "<strong class=\"pp-big\">1</strong>" in html  # one pending call, linked to the inbox
    assert 'href="/review/"' in html
    assert "Continue to stop Demo" in html  # a reviewer gets the stop form


def test_a_zero_limit_is_shown_as_no_limit(project, reviewer):
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_token_limit": 0})
    html = web(reviewer).get(reverse("review:project", args=[project.pk])).content.decode()
    assert "no limit" in html and html.count("<meter") == 3


# --- emergency stop -------------------------------------------------------------------
def test_the_stop_needs_a_reason_and_a_confirmation_then_stops_through_the_service(project, agent, reviewer):
    call(project, agent, title="running work")
    client = web(reviewer)
    url = reverse("review:project_stop", args=[project.pk])

    html = client.get(reverse("review:project", args=[project.pk])).content.decode()
    form = html.split('<section class="pp-card pp-danger" aria-labelledby="estop-h" id="emergency-stop">')[1]
    # the browser asks for the reason first; a refusal by the server lands on the form, its box focused
    assert f'action="{url}#emergency-stop"' in form and "novalidate" not in form.split("</form>")[0]
    r = client.post(url, {"reason": "  ", "severity": "critical"})  # no reason
    assert r.status_code == 400 and "Give a reason" in r.content.decode()
    assert 'aria-describedby="reason-err" autofocus' in r.content.decode()
    r = client.post(url, {"reason": "  ", "severity": "critical", "confirm": "yes"})  # not even when confirmed
    assert r.status_code == 400

    r = client.post(url, {"reason": "it deletes files", "severity": "critical"})  # first post: confirm page
    html = r.content.decode()
    assert r.status_code == 200 and "Stop all agents of Demo" in html
    assert 'name="confirm" value="yes"' in html and "it deletes files" in html and "csrfmiddlewaretoken" in html
    # Cancel has the focus (a stray Enter stops nothing); the severity is said once
    assert 'class="pp-button pp-button--secondary" href="/review/projects/' in html
    assert html.split('value="yes"')[1].split("</button>")[0].count("autofocus") == 0
    assert "autofocus>Cancel</a>" in html
    assert "Critical</span> Critical:" not in html and "Critical</span> " in html
    assert Project.objects.get(pk=project.pk).status == "active"  # nothing happened yet
    assert not EmergencyStop.objects.filter(project=project).exists()

    r = client.post(url, {"reason": "it deletes files", "severity": "critical", "confirm": "yes"})
    assert r.status_code == 302 and r["Location"] == reverse("review:project", args=[project.pk])
    project.refresh_from_db()
    assert project.status == "emergency_stopped"
    stop = EmergencyStop.objects.get(project=project)
    assert stop.triggered_conditions == ["manual_stop"] and stop.severity == "critical"
    assert stop.stop_reason == "it deletes files" and stop.triggered_by_user == reviewer
    assert len(stop.stopped_tasks) == 1 and len(stop.cancelled_approvals) == 1
    assert AuditEvent.objects.filter(action="emergency_stop.trigger", project_id=project.pk,
                                     actor=reviewer).count() == 1
    assert Event.objects.filter(event_type="emergency_stop_triggered", project_id=project.pk).count() == 1

    html = client.get(r["Location"]).content.decode()  # the page now shows the active stop
    assert "Emergency stop active" in html and "it deletes files" in html and "reviewer" in html
    assert "is stopped: 1 task halted, 1 open request cancelled (agent calls, responses awaiting review, " \
           "questions)" in html  # the outcome, counted as what it is
    assert "<dt>Halted</dt><dd>1 task halted, 1 open request cancelled" in html
    assert "Continue to stop" not in html
    assert "Start recovery" not in html and "A manager of this project starts the recovery" in html


def test_the_confirmation_counts_every_call_the_stop_cancels(project, agent, reviewer, manager):
    """It counted pending calls only, while the stop also cancels approved calls not yet
    started: a reviewer was not told those would be withdrawn. It now says what the admin's
    confirmation says, and the stop cancels exactly that many."""
    from approvals.services import agent_approval_decide

    call(project, agent, title="waiting")
    for title in ("approved a", "approved b"):
        agent_approval_decide(approval_id=call(project, agent, title=title).pk, decider=manager, decision="approve")
    client = web(reviewer)
    url = reverse("review:project_stop", args=[project.pk])
    html = client.post(url, {"reason": "look", "severity": "high"}).content.decode()
    assert "3 open tasks will be halted." in html
    assert "3 agent calls will be cancelled (pending, or approved and not yet started)" in html
    client.post(url, {"reason": "look", "severity": "high", "confirm": "yes"})
    assert len(EmergencyStop.objects.get(project=project).cancelled_approvals) == 3


def test_the_confirmation_speaks_of_one_call_and_of_questions(project, agent, reviewer):
    from hitl.services import hitl_request_create

    call(project, agent, title="waiting")
    hitl_request_create(asker=agent, project_id=project.pk, request_type="question", question="Which DB?")
    html = web(reviewer).post(reverse("review:project_stop", args=[project.pk]),
                              {"reason": "look", "severity": "high"}).content.decode()
    assert "1 agent call will be cancelled (pending, or approved and not yet started), its budget reservation " \
           "released." in html
    assert "1 pending question or checkpoint will be cancelled." in html
    assert "HITL request" not in html


def test_an_unknown_severity_is_refused(project, reviewer):
    r = web(reviewer).post(reverse("review:project_stop", args=[project.pk]),
                           {"reason": "x", "severity": "apocalyptic", "confirm": "yes"})
    assert r.status_code == 400 and Project.objects.get(pk=project.pk).status == "active"


def test_the_stop_form_needs_csrf(project, reviewer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(reviewer)
    r = client.post(reverse("review:project_stop", args=[project.pk]),
                    {"reason": "x", "severity": "high", "confirm": "yes"})
    assert r.status_code == 403 and Project.objects.get(pk=project.pk).status == "active"


def test_an_agent_sees_no_stop_button_and_cannot_post_it(project, agent):
    agent.is_staff = True  # signed in (only staff can be): the agent role still stops nothing here
    agent.save(update_fields=["is_staff"])
    client = web(agent)
    html = client.get(reverse("review:project", args=[project.pk])).content.decode()
    assert "Continue to stop" not in html and "Only reviewers and managers of this project can stop it" in html
    r = client.post(reverse("review:project_stop", args=[project.pk]),
                    {"reason": "x", "severity": "high", "confirm": "yes"})
    assert r.status_code == 403
    assert "Only reviewers and managers of Demo may stop its agents." in r.content.decode()
    assert Project.objects.get(pk=project.pk).status == "active"


def test_stopping_a_stopped_project_adds_to_the_active_stop(stopped, project, manager):
    r = web(manager).post(reverse("review:project_stop", args=[project.pk]),
                          {"reason": "again", "severity": "low"}, follow=False)
    assert "already stopped" in r.content.decode()
    r = web(manager).post(reverse("review:project_stop", args=[project.pk]),
                          {"reason": "again", "severity": "low", "confirm": "yes"}, follow=True)
    assert "was already stopped" in r.content.decode()
    assert EmergencyStop.objects.filter(project=project).count() == 1
    # a form sent from a page drawn before the stop, with no reason: the stopped page says why nothing happened
    r = web(manager).post(reverse("review:project_stop", args=[project.pk]), {"reason": "  ", "severity": "low"})
    assert r.status_code == 400 and "Nothing was added to the stop: Give a reason" in r.content.decode()
    # the project page names an automatic stop's trigger as the other pages do
    html = web(manager).get(reverse("review:project", args=[project.pk])).content.decode()
    assert "system:" not in html and f"manager#{manager.pk}" not in html and "the system (error rate high)" in html


# --- recovery -------------------------------------------------------------------------
def test_a_manager_starts_a_recovery_from_the_project_page(stopped, project, manager, reviewer):
    html = web(manager).get(reverse("review:project", args=[project.pk])).content.decode()
    assert "Start recovery" in html and 'value="automated"' in html
    assert '<span class="pp-tag">manual stop</span> <span class="pp-tag">error rate high</span>' in html
    r = web(reviewer).post(reverse("review:recovery_start", args=[project.pk]), {"recovery_type": "manual"})
    assert r.status_code == 403 and "Only managers of Demo may start a recovery." in r.content.decode()
    r = web(manager).post(reverse("review:recovery_start", args=[project.pk]), {"recovery_type": "manual"})
    session = RecoverySession.objects.get(project=project)
    assert r.status_code == 302 and r["Location"] == reverse("review:recovery", args=[session.pk])
    html = web(manager).get(reverse("review:project", args=[project.pk])).content.decode()
    assert "Continue the recovery" in html and "Start recovery" not in html
    assert "A manual recovery is open" in html
    RecoverySession.objects.filter(pk=session.pk).update(recovery_type="automated")
    assert "An automated recovery is open" in web(manager).get(reverse("review:project", args=[project.pk])).content.decode()
    r = web(manager).post(reverse("review:recovery_start", args=[project.pk]), {"recovery_type": "manual"})
    assert r.status_code == 409 and "A recovery of this stop is already open." in r.content.decode()


def test_starting_a_recovery_of_an_active_project_shows_the_services_message(project, manager):
    r = web(manager).post(reverse("review:recovery_start", args=[project.pk]), {"recovery_type": "automated"})
    assert r.status_code == 409 and "The project is not emergency-stopped." in r.content.decode()


def test_the_recovery_page_lists_the_steps_in_order_with_a_readable_assessment(session, reviewer):
    r = web(reviewer).get(reverse("review:recovery", args=[session.pk]))
    html = r.content.decode()
    assert r.status_code == 200
    titles = ["Review the flagged calls and outputs", "Reset the error-rate window", "Re-enable the agents",
              "Settle the halted tasks", "Lift the emergency stop"]
    positions = [html.index(t) for t in titles]
    assert positions == sorted(positions)
    for step in steps_of(session):
        assert escape(step.description) in html
    assert html.count('aria-current="step"') == 1  # the next step is highlighted
    assert html.count("Approve and run step 1") == 1 and "Approve and run step 2" not in html
    assert "Reject step 1" in html
    for heading in ("The stop", "What tripped", "Impact of the stop", "Tasks by status now", "Budget today"):
        assert f"<h3>{heading}</h3>" in html
    assert "runaway agent" in html and "Manual stop" in html and "Error rate high" in html
    main = html[html.index('<main'):]
    assert '{"' not in main and "{'" not in main  # no JSON blob


def test_a_step_refused_for_the_budget_says_its_money_as_money(project, agent, reviewer, manager):
    """"The day's cost 16.0000 is still at or past 1.5 x the daily cost limit 10.0000 ... Above
    10.6666 lifts the stop": bare decimals next to pages that write $16.0000."""
    from recovery.tests.test_recovery import spend

    spend(project, agent, reviewer, limit="10.0000", estimate="9.0000", actual="16.0000")
    session = recovery_start(project_id=project.pk, actor=manager, recovery_type="manual")
    confirm = next(step for step in steps_of(session) if step.action == "confirm_budget")
    r = decide(web(reviewer), session, confirm, decision="approve")
    html = r.content.decode()
    assert r.status_code == 409 and "The day&#x27;s cost $16.0000 is still at or past 1.5 x the daily cost limit " \
                                    "$10.0000" in html and "Above $10.6666 lifts the stop" in html


def test_approving_the_next_step_runs_it_and_the_last_one_lifts_the_stop(session, project, reviewer):
    client = web(reviewer)
    steps = steps_of(session)
    r = decide(client, session, steps[0], decision="approve", reason="looked at them")
    assert r.status_code == 302 and r["Location"] == reverse("review:recovery", args=[session.pk])
    assert RecoveryStep.objects.get(pk=steps[0].pk).status == "completed"
    html = client.get(r["Location"]).content.decode()
    assert "Step 1 approved and run: Review the flagged calls and outputs." in html
    assert "What it did" in html and "Approved by reviewer" in html and "looked at them" in html
    assert re.search(r"Approved by reviewer at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", html)  # times say their zone
    assert re.search(r"recovery started by \w+\s+<time [^>]*>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</time>", html)
    assert "Approve and run step 2" in html
    for step in steps[1:]:
        option = {"option": "cancel"} if step.action == "settle_halted_tasks" else {}
        if option:  # resume or cancel: the page pre-chose resume (after a critical stop too); now asked
            page = client.get(reverse("review:recovery", args=[session.pk])).content.decode()
            assert re.search(r'<input type="radio" name="option" value="resume" required>', page) and not re.search(r'name="option" value="\w+" checked', page)
            r = decide(client, session, step, decision="approve")
            assert r.status_code == 400 and "Choose what to do (resume or cancel): nothing was run." in r.content.decode()
            # the choice is marked as what to mend and described by the error (it was only said at the top)
            refused = r.content.decode()
            assert 'id="pp-error"' in refused
            assert len(re.findall(r'name="option" value="\w+" required aria-invalid="true" aria-describedby="pp-error"',
                                  refused)) == 2
            assert 'id="approve-note" name="reason" maxlength="5000">' in refused  # the note is not what is wrong
            assert RecoveryStep.objects.get(pk=step.pk).status == "pending"
        assert decide(client, session, step, decision="approve", **option).status_code == 302
        assert Project.objects.get(pk=project.pk).status == ("active" if step.action == "lift_stop"
                                                              else "emergency_stopped")
    html = client.get(reverse("review:recovery", args=[session.pk])).content.decode()
    assert "The stop is lifted" in html and "Approve and run" not in html
    assert html.count("pp-step--completed") == len(steps)
    assert "Option: cancel" in html or "cancel" in html  # the settle step's result
    session.refresh_from_db()
    assert session.status == "completed"
    assert EmergencyStop.objects.get(project=project).resolved_at is not None
    assert "is <strong>active</strong> again" in html

    # a newer stop: the old recovery's page no longer says the project is active
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="again", actor=reviewer)
    html = client.get(reverse("review:recovery", args=[session.pk])).content.decode()
    assert "The stop is lifted" in html and "has been <strong>stopped again</strong> since" in html
    assert "active</strong> again" not in html and "Agents may call again" not in html


def test_out_of_order_and_repeated_decisions_show_the_services_message(session, reviewer):
    client = web(reviewer)
    steps = steps_of(session)
    r = decide(client, session, steps[2], decision="approve")
    assert r.status_code == 409
    assert "Step 3 is pending; the next step is 1." in r.content.decode()
    assert RecoveryStep.objects.get(pk=steps[2].pk).status == "pending"
    assert decide(client, session, steps[0], decision="approve").status_code == 302
    r = decide(client, session, steps[0], decision="approve")  # again
    assert r.status_code == 409 and re.search(r"Step 1 is completed \(by \w+ at [^)]+\); the next step is 2\.",
                                              r.content.decode())


def test_the_starter_may_not_approve_and_a_rejection_needs_a_reason(session, manager, reviewer):
    step = steps_of(session)[0]
    html = web(manager).get(reverse("review:recovery", args=[session.pk])).content.decode()
    assert "You started this recovery" in html and "Approve and run" not in html
    r = decide(web(manager), session, step, decision="approve")
    assert r.status_code == 403 and "You cannot decide a request that you made yourself." in r.content.decode()
    r = decide(web(reviewer), session, step, decision="reject", reason="   ")
    assert r.status_code == 400 and "Rejecting a step needs a reason." in r.content.decode()
    client = web(reviewer)
    r = decide(client, session, step, decision="reject", reason="not convinced")
    assert r.status_code == 302
    html = client.get(r["Location"]).content.decode()
    assert "This recovery failed: the stop stays" in html and "not convinced" in html
    # which step, by whom and why (it said "A step was rejected or failed, or a new condition tripped")
    assert "Step 1 (Review the flagged calls and outputs) was rejected by reviewer: “not convinced”." in html
    assert RecoverySession.objects.get(pk=session.pk).status == "failed"


def test_a_malformed_step_decision_says_what_is_wrong_and_decides_nothing(session, reviewer):
    """A reason past 5,000 characters was told "Choose approve or reject." (it had chosen)."""
    step = steps_of(session)[0]
    r = decide(web(reviewer), session, step, decision="reject", reason="x" * 5001)
    html = r.content.decode()
    assert r.status_code == 400 and "The reason: Ensure this value has at most 5000 characters" in html, html[-3000:]
    assert "Choose approve or reject." not in html
    r = decide(web(reviewer), session, step, decision="maybe")
    assert r.status_code == 400 and "Choose approve or reject." in r.content.decode()
    assert RecoveryStep.objects.get(pk=step.pk).status == "pending"


def test_an_agent_cannot_decide_recovery_steps(session, agent):
    agent.is_staff = True  # signed in (only staff can be): the agent role still decides nothing
    agent.save(update_fields=["is_staff"])
    step = steps_of(session)[0]
    html = web(agent).get(reverse("review:recovery", args=[session.pk])).content.decode()
    assert "Approve and run" not in html
    r = decide(web(agent), session, step, decision="approve")
    assert r.status_code == 403 and RecoveryStep.objects.get(pk=step.pk).status == "pending"


# --- audit log ------------------------------------------------------------------------
def test_the_audit_page_shows_the_users_projects_newest_first_and_filters(stopped, project, other_project,
                                                                           reviewer):
    client = web(reviewer)
    r = client.get(reverse("review:audit"))
    html = r.content.decode()
    assert r.status_code == 200
    assert "emergency_stop.trigger" in html and "emergency_stop.add_condition" in html
    assert str(other_project.pk) not in html and "Other" not in html  # not a project the reviewer sees
    assert html.index("emergency_stop.add_condition") < html.index("emergency_stop.trigger")  # newest first

    html = client.get(reverse("review:audit"), {"action": "emergency_stop"}).content.decode()
    assert "emergency_stop.trigger" in html and "project.create" not in html
    html = client.get(reverse("review:audit"), {"actor": "reviewer"}).content.decode()
    assert "emergency_stop.trigger" in html and "emergency_stop.add_condition" not in html  # that one was system
    reviewer.username = "rita"  # renamed since: found by the name now too, as by the name at the time
    reviewer.save(update_fields=["username"])
    html = client.get(reverse("review:audit"), {"actor": "rit"}).content.decode()
    assert "emergency_stop.trigger" in html and "emergency_stop.add_condition" not in html
    tomorrow = (timezone.now() + datetime.timedelta(days=1)).date().isoformat()
    html = client.get(reverse("review:audit"), {"since": tomorrow}).content.decode()
    assert "No event matches." in html
    today = timezone.now().date().isoformat()
    html = client.get(reverse("review:audit"), {"since": today, "until": today}).content.decode()
    assert "emergency_stop.trigger" in html
    # actors by name, as the other pages have them (the record's "reviewer#5" in the cell's title)
    assert f'title="reviewer#{reviewer.pk}">reviewer</td>' in html
    r = client.get(reverse("review:audit"), {"until": "9999-12-31"})  # the last day there is: it was a 500
    assert r.status_code == 200 and "emergency_stop.trigger" in r.content.decode()
    r = client.get(reverse("review:audit"), {"project": str(other_project.pk)})  # not theirs: refused
    assert r.status_code == 200 and "No event matches." in r.content.decode()
    assert "Select a valid choice" in r.content.decode()


def test_the_audit_page_paginates(project, reviewer, admin_user):
    from audit.services import audit_record

    for i in range(60):
        audit_record(actor=admin_user, action=f"test.row{i}", project_id=project.pk, object_type="x", object_id=i)
    client = web(reviewer)
    html = client.get(reverse("review:audit"), {"action": "test."}).content.decode()
    assert "test.row59" in html and "test.row0<" not in html and "Page 1 of 2" in html
    assert "action=test.&amp;page=2" in html
    html = client.get(reverse("review:audit"), {"action": "test.", "page": 2}).content.decode()
    assert "test.row0<" in html and "test.row59" not in html


def test_the_audit_pages_changes_show_text_as_written(project, reviewer, admin_user):
    """Found by an auditor: a reason sent back with an emoji and Hebrew read as \\ud83d\\udee0 and
    \\u05e2... escapes under "Changes" (the admin's audit page showed it readably); a direction
    control is still shown as its mark."""
    from audit.services import audit_record

    audit_record(actor=admin_user, action="test.unicode", project_id=project.pk, object_type="x", object_id=1,
                 after={"reason": "Fix \U0001f6e0 \u05e2\u05d1\u05e8\u05d9\u05ea \u202eesrever"})
    html = web(reviewer).get(reverse("review:audit"), {"action": "test.unicode"}).content.decode()
    assert "Fix \U0001f6e0 \u05e2\u05d1\u05e8\u05d9\u05ea \u27e6U+202E\u27e7esrever" in html
    assert "\\ud83d" not in html and "\\u05e2" not in html


def test_the_chain_is_verified_on_demand_and_a_tampered_row_is_shown(stopped, project, reviewer, admin_user):
    client = web(reviewer)
    html = client.get(reverse("review:audit")).content.decode()
    assert "Verify chain" in html and "Chain verified" not in html  # not run unless asked
    rows = AuditEvent.objects.filter(project_id=project.pk).count()
    html = client.get(reverse("review:audit"), {"verify": 1}).content.decode()
    assert f"Chain verified: {rows} rows, OK." in html
    r = client.get(reverse("review:audit"), {"verify": 1}, HTTP_HX_REQUEST="true")  # htmx: the result only
    assert "Chain verified" in r.content.decode() and "<html" not in r.content.decode()

    row = AuditEvent.objects.filter(project_id=project.pk, action="emergency_stop.trigger").get()
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {AuditEvent._meta.db_table} SET reason = %s WHERE id = %s", ["edited", row.pk])
    html = client.get(reverse("review:audit"), {"verify": 1}).content.decode()
    assert "Chain broken" in html and f"row id={row.pk}" in html and "content does not match its hash" in html
    assert f"chain {project.pk} ({project.name}):" in html  # the chain by its project's name too
    html = web(admin_user).get(reverse("review:audit"), {"verify": 1}).content.decode()
    assert "Chain broken" in html and f"row id={row.pk}" in html


def test_a_reviewer_verifies_their_projects_chains_only(project, other_project, reviewer, admin_user,
                                                       django_assert_max_num_queries):
    """A reviewer's press walked every chain of the trail (16-22 s for a reviewer of 2 projects of
    30 at 213,000 rows), to say only how many problems were elsewhere."""
    row = AuditEvent.objects.filter(project_id=other_project.pk).first()
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {AuditEvent._meta.db_table} SET reason = %s WHERE id = %s", ["edited", row.pk])
    client = web(reviewer)
    client.get(reverse("review:audit"))
    mine = AuditEvent.objects.filter(project_id=project.pk).count()
    with django_assert_max_num_queries(30) as run:
        html = client.get(reverse("review:audit"), {"verify": 1}).content.decode()
    assert f"Chain verified: {mine} rows, OK." in html and f"row id={row.pk}" not in html and "outside" not in html
    walks = [q["sql"] for q in run.captured_queries if 'ORDER BY "audit_auditevent"."seq"' in q["sql"]]
    assert len(walks) == 1, walks  # one chain walked: theirs (not the other project's, nor the global one)
    html = web(admin_user).get(reverse("review:audit"), {"verify": 1}).content.decode()
    assert "Chain broken" in html and f"row id={row.pk}" in html


def test_the_page_verifies_against_the_checkpoints_and_a_deleted_chain_is_not_ok(
        project, other_project, reviewer, admin_user, settings, tmp_path):
    """Found by a security test: the page's Verify read no checkpoint, so a chain cut short at its
    end (its head rewritten to match) or deleted whole said "verified, OK" where
    `verify_audit --checkpoints` did not."""
    from audit.services import audit_checkpoint_write, chain_key
    from projects.services import task_create

    settings.HITL_AUDIT_CHECKPOINT_DIR = tmp_path
    for n in range(3):
        task_create(actor=admin_user, project_id=project.pk, agent_type="coder", title=f"t{n}")
    audit_checkpoint_write()
    client = web(reviewer)
    html = client.get(reverse("review:audit"), {"verify": 1}).content.decode()
    assert "Chain verified" in html and "OK." in html

    # a database-only attacker cuts the last row and rewrites the head to match
    rows = list(AuditEvent.objects.filter(project_id=project.pk).order_by("seq"))
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {AuditEvent._meta.db_table} WHERE id = %s", [rows[-1].pk])
        cursor.execute("UPDATE audit_auditchain SET last_seq = %s, last_hash = %s WHERE key = %s",
                       [rows[-2].seq, rows[-2].hash, chain_key(project.pk)])
    html = client.get(reverse("review:audit"), {"verify": 1}).content.decode()
    assert "Chain broken" in html and f"chain has only {rows[-2].seq} rows (rows deleted)" in html
    assert str(other_project.pk) not in html  # not their project: neither walked nor compared

    # the whole chain deleted, with no checkpoint to say so: the project itself says it had one
    settings.HITL_AUDIT_CHECKPOINT_DIR = tmp_path / "none"
    with connection.cursor() as cursor:
        AuditEvent.objects.filter(project_id=project.pk)._raw_delete(AuditEvent.objects.db)  # around the model's guard
        cursor.execute("DELETE FROM audit_auditchain WHERE key = %s", [chain_key(project.pk)])
    html = client.get(reverse("review:audit"), {"verify": 1}).content.decode()
    assert "Chain broken" in html and f"chain {project.pk} ({project.name}): the project has no audit chain" in html


def test_one_verification_at_a_time_in_a_web_process(project, reviewer):
    """Four presses at once held every thread of two web processes: the next answers at once."""
    from review import views_project

    client = web(reviewer)
    with views_project._VERIFYING:  # another verification is running
        r = client.get(reverse("review:audit"), {"verify": 1}, HTTP_HX_REQUEST="true")
    html = r.content.decode()
    assert r.status_code == 200 and "A verification is running on this server already" in html
    assert "Chain verified" not in html
    assert "Chain verified" in client.get(reverse("review:audit"), {"verify": 1}).content.decode()  # released


# --- the projects list and the way there ----------------------------------------------
def test_the_projects_page_lists_the_users_projects_stopped_first_with_what_waits(
        project, other_project, agent, reviewer, admin_user):
    """From the inbox nothing led to a project page (its stop button) unless a request was
    pending or the project already stopped: a reviewer needed the project's id."""
    from access.services import role_grant
    from projects.services import project_create

    third = project_create(actor=admin_user, name="Alpha", slug="alpha")
    role_grant(user=reviewer, project=third, role="reviewer", actor=admin_user)
    emergency_stop_trigger(project_id=third.pk, condition="manual_stop", reason="look", actor=reviewer)
    call(project, agent, title="one")
    call(project, agent, title="two")
    r = web(reviewer).get(reverse("review:projects"))
    html = r.content.decode()
    assert r.status_code == 200
    assert "Other" not in html  # no role there
    rows = re.findall(r'<tr data-project="([^"]+)">(.*?)</tr>', html, re.S)
    assert [pk for pk, _ in rows] == [str(third.pk), str(project.pk)]  # the stopped one first
    alpha, demo = (row for _, row in rows)
    assert "emergency stopped" in alpha and reverse("review:project", args=[third.pk]) in alpha
    assert "active" in demo and reverse("review:project", args=[project.pk]) in demo
    assert re.findall(r"<td>(\d+)</td>", demo) == ["2", "2", "2"]  # two calls wait, two open tasks, both theirs


def waiting_on_page(html: str) -> int:
    return int(re.search(r'<strong class="pp-big">(\d+)</strong>\s+requests? waits? for a person', html).group(1))


def test_what_waits_counts_a_recovery_as_the_inbox_does(stopped, project, reviewer, manager):
    """The list left out a recovery's next step, which the inbox and the project page showed."""
    recovery_start(project_id=project.pk, actor=manager, recovery_type="manual")
    client = web(reviewer)
    assert re.findall(r"<td>(\d+)</td>", client.get(reverse("review:projects")).content.decode())[0] == "1"
    assert waiting_on_page(client.get(reverse("review:project", args=[project.pk])).content.decode()) == 1


def test_a_question_waits_for_a_person_on_the_list_and_the_project_page(project, agent, reviewer):
    """Both left out questions and checkpoints, which the inbox showed."""
    from hitl.services import hitl_request_create

    hitl_request_create(asker=agent, project_id=project.pk, request_type="question", question="Which file?")
    client = web(reviewer)
    assert re.findall(r"<td>(\d+)</td>", client.get(reverse("review:projects")).content.decode())[0] == "1"
    assert waiting_on_page(client.get(reverse("review:project", args=[project.pk])).content.decode()) == 1


def test_what_waits_says_how_much_of_it_the_user_may_decide(project, agent, reviewer, manager, client_for):
    """Found by a reviewer of one project: its page said 7 requests wait and the inbox listed 4 (three
    overrides above the reviewers' cap, which only a manager decides). Both are said now."""
    for amount in ("500", "600"):  # above HITL_MANAGER_COST_THRESHOLD: a manager's
        assert client_for(agent).post("/api/v1/budget-overrides", {
            "project_id": str(project.pk), "violation_type": "daily_cost_limit", "requested_amount": amount,
            "justification": "big batch"}, format="json").status_code == 201
    call(project, agent, title="one")
    page = web(reviewer).get(reverse("review:project", args=[project.pk])).content.decode()
    assert waiting_on_page(page) == 3
    assert re.search(r'<span id="pending-yours">1 of them for you to decide', page)
    row = re.findall(r"<td>(\d+)</td>", web(reviewer).get(reverse("review:projects")).content.decode())
    assert row == ["3", "1", "1"]  # waiting, open tasks, the reviewer's to decide
    page = web(manager).get(reverse("review:project", args=[project.pk])).content.decode()
    assert waiting_on_page(page) == 3 and 'id="pending-yours"' not in page  # all of them the manager's


def test_the_projects_page_needs_a_login_and_shows_no_project_to_someone_without_a_role(make_user, project):
    assert web().get(reverse("review:projects")).status_code == 302
    nobody = make_user("nobody")
    nobody.is_staff = True  # signed in (only staff can be), with no role
    nobody.save(update_fields=["is_staff"])
    html = web(nobody).get(reverse("review:projects")).content.decode()
    assert "You have no role on any project yet" in html and "Demo" not in html


def test_the_admin_and_review_pages_name_their_icon(reviewer):
    """Without one, every browser asked for /favicon.ico and logged a 404 on each page."""
    from django.contrib.staticfiles import finders

    for client, url in ((web(), "/admin/login/"), (web(reviewer), reverse("review:inbox"))):
        html = client.get(url).content.decode()
        assert re.search(r'<link rel="icon" href="[^"]*review/favicon\.svg"', html), url
    assert finders.find("review/favicon.svg")



def test_a_task_held_by_questions_says_how_many_on_the_project_page(project, agent, reviewer):
    from hitl.services import hitl_request_create
    from projects.services import task_create

    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="Pick the queue")
    page = reverse("review:project", args=[project.pk])
    assert "open question" not in web(reviewer).get(page).content.decode()
    for n in range(2):
        hitl_request_create(asker=agent, project_id=project.pk, request_type="question", question=f"q{n}",
                            task_id=task.pk)
    html = web(reviewer).get(page).content.decode()
    assert re.search(r"Pick the queue.*?Waiting for a person</span><br><small class=\"pp-muted\">2 open questions</small>",
                     html, re.S)


def test_a_form_sent_again_as_a_get_after_signing_in_goes_back_to_its_page_saying_nothing_was_done(
        project, agent, reviewer, manager, session):
    """The session ends while a reviewer types a stop's reason; Continue goes to the login page,
    whose ``next`` the browser then opens with a GET: that was a bare 405 and the action was lost.
    Now the page the form is on, saying nothing was done; nothing stopped or decided."""
    from approvals.models import AgentCallApproval

    cancelled = AgentCallApproval.objects.get(project=project)  # the stop cancelled it
    targets = [
        (reverse("review:project_stop", args=[project.pk]), reverse("review:project", args=[project.pk]), reviewer),
        (reverse("review:recovery_start", args=[project.pk]), reverse("review:project", args=[project.pk]), manager),
        (reverse("review:recovery_step_decide", args=[session.pk, steps_of(session)[0].pk]),
         reverse("review:recovery", args=[session.pk]), manager),
        (reverse("review:agent_approval_decide", args=[cancelled.pk]),
         reverse("review:agent_approval", args=[cancelled.pk]), reviewer),
    ]
    anonymous = web()
    for target, page, user in targets:
        r = anonymous.get(target)  # signed out: the login page first, with next
        assert r.status_code == 302 and r["Location"].startswith("/admin/login/"), target
        client = web(user)
        r = client.get(target)
        assert r.status_code == 302 and r["Location"] == page, (target, r.status_code)
        shown = client.get(page).content.decode()
        assert "Nothing was done: a form was not sent" in shown, page
        assert client.put(target).status_code == 405
    assert EmergencyStop.objects.filter(project=project).count() == 1  # the fixture's, no other
    assert steps_of(session)[0].status == "pending"
    assert RecoverySession.objects.filter(project=project).count() == 1


def test_a_page_resumes_its_events_from_before_it_read_its_data(project, reviewer, manager, monkeypatch):
    """The page's websocket resumes after data-last-event-id, which was read while the template
    rendered, after the view had read the page's data: a second trigger of a stop committed in
    between counted as seen, and the page kept the first trigger's severity for good."""
    import review.views_project as views

    read_stop = views._active_stop

    def stop_then_read(p):
        row = read_stop(p)
        emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="again", severity="critical",
                               actor=manager)   # lands after the page read the stop
        return row

    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="first", severity="medium",
                           actor=reviewer)
    before = Event.objects.filter(project_id=project.pk).order_by("-id").values_list("id", flat=True).first()
    monkeypatch.setattr(views, "_active_stop", stop_then_read)
    html = web(reviewer).get(f"/review/projects/{project.pk}").content.decode()
    resume = int(re.search(r'data-last-event-id="(\d+)"', html).group(1))
    assert resume == before < Event.objects.filter(project_id=project.pk).order_by("-id").first().id


def test_an_agents_words_in_a_steps_result_are_not_read_as_money(session, reviewer, admin_user):
    """The flagged calls a review step went through carry their agent's proposed action: its
    "0.2500" is the agent's, not money ($0.2500) as the service-written rows have it."""
    step = steps_of(session)[0]
    RecoveryStep.objects.filter(pk=step.pk).update(status="completed", result={"reviewed": [
        {"kind": "call", "approval_id": "3f2a1b2c-0000-0000-0000-000000000000", "risk_level": "high",
         "proposed_action": "set the ratio to 0.2500", "flags": ["secret.aws_access_key"]}]})
    html = web(reviewer).get(reverse("review:recovery", args=[session.pk])).content.decode()
    assert "high risk: set the ratio to 0.2500 — flags: secret.aws_access_key" in html and "$0.2500" not in html
    html = web(admin_user).get(reverse("admin:recovery_recoverysession_change", args=[session.pk])).content.decode()
    assert "high risk: set the ratio to 0.2500 — flags: secret.aws_access_key" in html and "$0.2500" not in html


def test_a_recovery_failed_by_a_new_condition_says_which_by_whom_and_why(session, agent, reviewer, admin_user):
    """It said only "A new condition tripped during the recovery"."""
    emergency_stop_trigger(project_id=session.project_id, condition="manual_stop", reason="the agent saw smoke",
                           actor=agent)
    session.refresh_from_db()
    assert session.status == "failed"
    html = web(reviewer).get(reverse("review:recovery", args=[session.pk])).content.decode()
    assert re.search(r"Manual stop by agent at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: “the agent saw smoke”", html)
    assert "runaway agent" not in html.split("This recovery failed")[1].split("</section>")[0]  # the earlier trigger
    html = web(admin_user).get(reverse("admin:recovery_recoverysession_change", args=[session.pk])).content.decode()
    assert re.search(r"Manual stop by agent at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: “the agent saw smoke”", html)


def test_a_failed_recovery_whose_stop_a_later_one_lifted_says_so(session, agent, reviewer, manager, admin_user):
    """A recovery failed by a new stop; a second recovery walked that stop to its end. The first
    one's pages still said "the stop stays" and sent a manager to start a new recovery (a 409:
    the project is no longer stopped)."""
    from recovery.services import recovery_step_respond

    emergency_stop_trigger(project_id=session.project_id, condition="manual_stop", reason="again", actor=agent)
    session.refresh_from_db()
    assert session.status == "failed"
    later = recovery_start(project_id=session.project_id, actor=manager, recovery_type="manual")
    for step in steps_of(later):
        recovery_step_respond(session_id=later.pk, step_id=step.pk, actor=reviewer, decision="approve")
    later.refresh_from_db()
    assert later.status == "completed" and Project.objects.get(pk=session.project_id).status == "active"

    html = web(reviewer).get(reverse("review:recovery", args=[session.pk])).content.decode()
    failed = html.split("This recovery failed")[1].split("</section>")[0]
    assert failed.startswith("; the stop was lifted later") and "the stop stays" not in html
    assert reverse("review:recovery", args=[later.pk]) in failed and "starts a new recovery" not in failed
    html = web(admin_user).get(reverse("admin:recovery_recoverysession_change", args=[session.pk])).content.decode()
    assert "This recovery failed; the emergency stop was lifted later" in html and "stop stays" not in html
    assert reverse("admin:recovery_recoverysession_change", args=[later.pk]) in html
    # a failed recovery whose stop is still on says what it said
    emergency_stop_trigger(project_id=session.project_id, condition="manual_stop", reason="third", actor=reviewer)
    third = recovery_start(project_id=session.project_id, actor=manager, recovery_type="manual")
    recovery_step_respond(session_id=third.pk, step_id=steps_of(third)[0].pk, actor=reviewer, decision="reject",
                          reason="no")
    html = web(reviewer).get(reverse("review:recovery", args=[third.pk])).content.decode()
    assert "This recovery failed: the stop stays" in html and "starts a new recovery" in html


def test_an_automatic_stops_reason_writes_its_money_as_money(project, agent, reviewer, manager):
    """"The day's cost 16.0000 ... 1.5 x the daily limit 10.0000" beside rows that say $16.0000; a
    person's reason stays as they wrote it."""
    from recovery.tests.test_recovery import spend

    spend(project, agent, reviewer, limit="10.0000", estimate="9.0000", actual="16.0000")
    html = web(reviewer).get(reverse("review:project", args=[project.pk])).content.decode()
    assert not re.search(r"[^$]16\.0000 passes", html) and "$16.0000 passes" in html and "$10.0000" in html
    recovery_start(project_id=project.pk, actor=manager, recovery_type="manual")
    session = RecoverySession.objects.get(project=project)
    html = web(reviewer).get(reverse("review:recovery", args=[session.pk])).content.decode()
    what_tripped = html.split("What tripped")[1].split("</section>")[0]
    assert "$16.0000 passes" in what_tripped and not re.search(r"[^$]16\.0000 passes", what_tripped)


def test_after_a_time_zone_change_the_day_is_not_said_to_begin_at_midnight_in_the_new_zone(project, agent, reviewer,
                                                                                         manager):
    """The current day runs to its end in the zone before: the page named the new zone's midnight."""
    from projects.services import project_update

    call(project, agent, cost="0.5000", tokens=10, title="spend a little")
    html = web(reviewer).get(reverse("review:project", args=[project.pk])).content.decode()
    assert ": midnight in UTC)" in html
    project_update(actor=manager, project_id=project.pk, timezone_name="Asia/Tokyo")
    html = web(reviewer).get(reverse("review:project", args=[project.pk])).content.decode()
    assert ": midnight in Asia/Tokyo)" not in html
    assert "time zone before it changed; the next day begins at midnight in Asia/Tokyo)" in html


def test_the_pages_of_a_large_stop_show_the_first_of_its_tasks_and_count_the_rest(project, agent, reviewer, manager,
                                                                                  admin_user):
    """Found at scale: a stop of 9,198 tasks made its recovery page 1 MB (the settle step listed
    every task), the admin's stop page 1.1 MB and one audit page of 50 rows 4 MB (each row's
    Changes listed them all). Each list shows its first 50 and how many more; the whole record stays
    (the API, the admin's audit row)."""
    from projects.models import Task

    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="template")
    Task.objects.bulk_create([Task(project=project, created_by=agent, agent_type="coder", title=f"task {i}",
                                   status=Task.Status.RUNNING) for i in range(119)])
    stop, _ = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="runaway",
                                     actor=reviewer)
    assert len(stop.stopped_tasks) == 120 and task
    session = recovery_start(project_id=project.pk, actor=manager, recovery_type="manual")
    client = web(reviewer)
    for step in steps_of(session):
        body = {"option": "cancel"} if step.action == "settle_halted_tasks" else {}
        assert decide(client, session, step, decision="approve", **body).status_code == 302
    page = client.get(reverse("review:recovery", args=[session.pk])).content.decode()
    assert "… and 70 more" in page and page.count("“task ") <= 50
    audit = client.get("/review/audit/?action=emergency_stop").content.decode()
    assert "… and 70 more" in audit and sum(audit.count(str(pk)) for pk in stop.stopped_tasks) == 50
    admin_page = web(admin_user).get(f"/admin/emergency/emergencystop/{stop.pk}/change/").content.decode()
    assert "120: " in admin_page and "… and 70 more" in admin_page
    assert sum(admin_page.count(str(pk)) for pk in stop.stopped_tasks) == 50
    assert client.get(f"/api/v1/emergency/status/{project.pk}").status_code == 200
    assert len(AuditEvent.objects.get(action="emergency_stop.trigger").after["stopped_tasks"]) == 120  # kept whole
