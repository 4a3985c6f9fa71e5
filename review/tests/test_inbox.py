"""The reviewers' inbox (/review/): login, per-project visibility, what it lists and in which
order, budget-blocked calls and overrides, recovery steps, the metrics, the emergency banners."""
import re
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone
from django.utils.html import escape

from approvals.models import AgentCallApproval
from approvals.services import agent_approval_decide, agent_approval_request, agent_approval_time_out
from budgets.models import BudgetOverrideRequest, ProjectBudget
from emergency.services import emergency_stop_trigger
from projects.services import task_create
from recovery.presentation import step_title
from recovery.services import recovery_start
from review.selectors import inbox_items, reviewer_metrics
from review.templatetags.review_format import money_text

pytestmark = pytest.mark.django_db


def make_call(project, agent, *, action="Write the login form", input_data=None, title=None, cost="0.0100",
              tokens=100, risk=None):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=title or action)
    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action=action, input_data=input_data or {"files": ["login.tsx"]},
                                  estimated_tokens=tokens, estimated_cost=Decimal(cost))
    if risk is not None:  # test data: a known risk level (the analyzers are tested elsewhere)
        AgentCallApproval.objects.filter(pk=call.pk).update(
            risk_assessment={"level": risk, "score": 0.5, "flags": []})
        call.refresh_from_db()
    return call


def web(user):
    client = Client()
    client.force_login(user)
    return client


def test_the_inbox_needs_a_login():
    r = Client().get("/review/")
    assert r.status_code == 302 and r["Location"].startswith("/admin/login/?next=/review/")
    assert Client().get("/review/inbox/items").status_code == 302
    assert Client().get("/review/stop-banners").status_code == 302


def test_pending_calls_are_listed_newest_risk_first_then_oldest_first(project, agent, reviewer):
    low = make_call(project, agent, action="low one", risk="low")
    high_old = make_call(project, agent, action="high old", risk="high")
    critical = make_call(project, agent, action="critical one", risk="critical")
    medium = make_call(project, agent, action="medium one", risk="medium")
    high_new = make_call(project, agent, action="high new", risk="high")
    base = timezone.now() - timedelta(minutes=10)
    for i, call in enumerate([low, high_old, critical, medium, high_new]):
        AgentCallApproval.objects.filter(pk=call.pk).update(created_at=base + timedelta(minutes=i))
    decided = make_call(project, agent, action="already decided")
    agent_approval_decide(approval_id=decided.pk, decider=reviewer, decision="approve")

    r = web(reviewer).get("/review/")
    assert r.status_code == 200
    html = r.content.decode()
    order = [html.index(text) for text in ("critical one", "high old", "high new", "medium one", "low one")]
    assert order == sorted(order)
    assert "already decided" not in html
    assert f'href="/review/agent-approvals/{critical.pk}"' in html
    assert re.search(r'<span class="count-n">5</span> Agent calls', html)
    assert "<strong>5</strong> pending" in html
    assert "Demo" in html and "coder" in html and "left" in html  # project, agent type, time left
    # the partial the page re-fetches live lists the same
    part = web(reviewer).get("/review/inbox/items").content.decode()
    assert "critical one" in part and "<html" not in part


def test_a_long_inbox_lists_its_first_items_and_counts_them_all(project, agent, reviewer, monkeypatch,
                                                                django_assert_max_num_queries):
    """7,000 pending items made a 6 MB inbox of 2.5 s, fetched again every 30 s and after each
    burst of events (the agents' requests waited for the web threads meanwhile). The page lists
    the first INBOX_SHOWN in its order and says how many more wait; the counts are of them all."""
    from review import views

    monkeypatch.setattr(views, "INBOX_SHOWN", 3)
    calls = [make_call(project, agent, action=f"call {i}", risk="critical" if i == 4 else "low") for i in range(5)]
    base = timezone.now() - timedelta(minutes=10)
    for i, call in enumerate(calls):
        AgentCallApproval.objects.filter(pk=call.pk).update(created_at=base + timedelta(minutes=i))
    client = web(reviewer)
    client.get("/review/inbox/items")  # the session and the first request's reads
    with django_assert_max_num_queries(20):  # the deferred inputs are not read one by one
        html = client.get("/review/inbox/items").content.decode()
    assert "<strong>5</strong> pending" in html and re.search(r'<span class="count-n">5</span> Agent calls', html)
    listed = re.findall(r'class="item-link" href="/review/agent-approvals/([0-9a-f-]+)"', html)
    assert listed == [str(calls[4].pk), str(calls[0].pk), str(calls[1].pk)]  # the riskiest, then the oldest
    assert "2 more pending items not listed here" in html
    monkeypatch.setattr(views, "INBOX_SHOWN", 200)
    assert "more pending" not in client.get("/review/").content.decode()


def test_a_long_inbox_reads_only_what_it_lists_of_each_kind(project, agent, reviewer, monkeypatch):
    """Reading every pending item to list 200 of them took a second at 7,000: each kind now reads
    at most INBOX_SHOWN rows in the inbox's order and the database counts them all, so the list
    across kinds is the same (riskiest, then oldest) and so are the counts."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from hitl.services import hitl_request_create
    from review import views

    monkeypatch.setattr(views, "INBOX_SHOWN", 3)
    base = timezone.now() - timedelta(minutes=30)
    lows = [make_call(project, agent, action=f"low {i}", risk="low") for i in range(4)]
    questions = [hitl_request_create(asker=agent, project_id=project.pk, request_type="question",
                                     question=f"which way {i}?") for i in range(2)]
    critical = make_call(project, agent, action="the critical one", risk="critical")
    for i, call in enumerate(lows):
        AgentCallApproval.objects.filter(pk=call.pk).update(created_at=base + timedelta(minutes=i))
    with CaptureQueriesContext(connection) as queries:
        html = web(reviewer).get("/review/").content.decode()
    listed = re.findall(r'class="item-link" href="/review/(?:agent-approvals|hitl)/([0-9a-f-]+)"', html)
    # the critical call first, then the questions (medium), older than no low call but riskier
    assert listed == [str(critical.pk), str(questions[0].pk), str(questions[1].pk)]
    assert "<strong>7</strong> pending" in html and "4 more pending items not listed here" in html
    assert re.search(r'<span class="count-n">5</span> Agent calls', html)
    assert re.search(r'<span class="count-n">2</span> Questions', html)
    reads = [q["sql"] for q in queries.captured_queries if 'FROM "approvals_agentcallapproval"' in q["sql"]
             and "\"status\" = 'pending'" in q["sql"] and "COUNT(" not in q["sql"]]
    assert reads and all("LIMIT 3" in sql for sql in reads), reads  # not the 5 calls to list 3


def test_a_long_inbox_shows_one_kind_or_one_project_at_a_time(project, other_project, agent, reviewer, make_user,
                                                              admin_user, monkeypatch):
    """Found with 22,000 pending items: the list held the riskiest and oldest calls, and the 3,050
    questions and 169 budget overrides its counts announced could not be reached from these pages
    (the counts were plain text, and the project page's link opened the same list). Each count now
    shows its kind, the project page opens the project's items, and the live re-fetch and a
    decision in the list keep the filter."""
    from budgets.services import budget_override_create
    from hitl.services import hitl_request_create
    from access.services import role_grant
    from projects.services import project_create
    from review import views

    monkeypatch.setattr(views, "INBOX_SHOWN", 3)
    role_grant(user=reviewer, project=other_project, role="reviewer")
    other_agent = make_user("other-agent", role="agent", project=other_project)
    calls = [make_call(project, agent, action=f"risky {i}", risk="high") for i in range(4)]
    question = hitl_request_create(asker=agent, project_id=project.pk, request_type="question", question="which db?")
    override = budget_override_create(project_id=project.pk, actor=agent, violation_type="daily_cost_limit",
                                      requested_amount=Decimal("5.0000"), justification="release day")
    elsewhere = make_call(other_project, other_agent, action="elsewhere", risk="low")
    client = web(reviewer)

    def listed(html):
        return re.findall(r'class="item-link" href="([^"]+)"', html)

    html = client.get("/review/").content.decode()
    assert len(listed(html)) == 3 and f"/review/hitl/{question.pk}" not in listed(html)
    assert 'href="/review/?kind=hitl"' in html and 'href="/review/?kind=override"' in html
    html = client.get("/review/?kind=hitl").content.decode()
    assert listed(html) == [f"/review/hitl/{question.pk}"] and "Showing questions only." in html
    assert "<strong>7</strong> pending" in html  # the counts stay of them all
    assert 'hx-get="/review/inbox/items?kind=hitl"' in html  # the live re-fetch keeps the filter
    assert listed(client.get("/review/inbox/items?kind=hitl").content.decode()) == [f"/review/hitl/{question.pk}"]
    assert listed(client.get("/review/?kind=override").content.decode()) == [
        f"/review/?kind=override&amp;project={project.pk}#override-{override.pk}"]

    html = client.get(f"/review/?project={other_project.pk}").content.decode()
    assert listed(html) == [f"/review/agent-approvals/{elsewhere.pk}"]
    assert "<strong>1</strong> pending</a> in Other" in html
    html = client.get(f"/review/?kind=call&project={project.pk}").content.decode()
    assert listed(html) == [f"/review/agent-approvals/{c.pk}" for c in calls[:3]] and "1 more pending item" in html
    project_page = client.get(f"/review/projects/{project.pk}").content.decode()
    assert f'href="/review/?project={project.pk}"' in project_page

    # a decision in a filtered list answers with the same filter
    r = client.post(f"/review/budget-overrides/{override.pk}/decide?kind=override&project={project.pk}",
                    {"decision": "reject", "reason": "not today"}, HTTP_HX_REQUEST="true")
    assert r.status_code == 200 and "Nothing of this kind waits for you in Demo" in r.content.decode()
    # nothing to filter on: a kind that is none, a project the user does not review, not an id
    hidden = project_create(actor=admin_user, name="Hidden", slug="hidden")
    for query in ("?kind=everything", f"?project={uuid.uuid4()}", "?project=x", "?kind=&project=",
                  f"?project={hidden.pk}"):
        html = client.get("/review/" + query).content.decode()
        assert "<strong>6</strong> pending" in html and len(listed(html)) == 3 and "Hidden" not in html, query


def test_outsiders_and_agents_see_nothing_to_decide_of_other_projects(project, agent, reviewer, outsider):
    make_call(project, agent, action="secret project work")
    assert "secret project work" not in web(outsider).get("/review/").content.decode()
    assert "secret project work" not in web(outsider).get("/review/inbox/items").content.decode()
    # the agent made the request: it may not decide it, so it is not in its inbox
    assert "secret project work" not in web(agent).get("/review/").content.decode()
    assert [i.summary for i in inbox_items(user=reviewer)] == ["secret project work"]


def test_a_call_blocked_by_its_budget_says_so_and_links_its_override(project, agent, reviewer, manager):
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("2.0000")})
    blocked = make_call(project, agent, action="expensive call", cost="2.5000")
    assert blocked.budget_state == "blocked" and blocked.budget_override_id
    html = web(reviewer).get("/review/").content.decode()
    assert "blocked by budget" in html
    assert blocked.budget_blocked_reason and escape(money_text(blocked.budget_blocked_reason)) in html
    assert "limit by $0.5000: approving budget override" in html  # its money as money
    # the inbox's overrides of its project: the unfiltered list's 50 rows may not reach it
    assert f'href="/review/?kind=override&amp;project={project.pk}#override-{blocked.budget_override_id}"' in html
    assert f'id="override-{blocked.budget_override_id}"' in html  # the override is in the inbox too


def test_a_budget_override_is_decided_from_the_inbox(project, agent, reviewer):
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("2.0000")})
    blocked = make_call(project, agent, action="expensive call", cost="2.5000")
    url = f"/review/budget-overrides/{blocked.budget_override_id}/decide"
    client = web(reviewer)
    # reject without a reason: refused, shown, nothing decided
    r = client.post(url, {"decision": "reject", "reason": ""}, HTTP_HX_REQUEST="true")
    assert r.status_code == 200 and "Check the form: A rejection needs a reason." in r.content.decode()
    assert "The reason: A rejection" not in r.content.decode()  # the message names its field itself
    assert BudgetOverrideRequest.objects.get(pk=blocked.budget_override_id).status == "pending"
    r = client.post(url, {"decision": "approve"}, HTTP_HX_REQUEST="true")
    assert r.status_code == 200 and "approved" in r.content.decode()
    # the outcome goes to the area outside the live list (out of band): the list's next refresh,
    # which the decision's own event sets off, no longer wipes it
    assert '<div id="inbox-outcome" hx-swap-oob="innerHTML">' \
           '<p class="outcome outcome-success">Budget override +$0.5000 (Daily cost limit) for Demo approved.</p>' in r.content.decode()
    assert "outcome" not in client.get("/review/inbox/items", HTTP_HX_REQUEST="true").content.decode()
    assert BudgetOverrideRequest.objects.get(pk=blocked.budget_override_id).status == "approved"
    blocked.refresh_from_db()
    assert blocked.budget_state == "reserved"
    # a second decision: 409 as a message on the page, not a 500
    r = client.post(url, {"decision": "approve"})
    assert r.status_code == 409 and "Not possible now" in r.content.decode()


def test_an_override_of_a_stopped_project_has_no_buttons_that_would_answer_423(project, agent, reviewer):
    from budgets.services import budget_override_create

    override = budget_override_create(project_id=project.pk, actor=agent, violation_type="daily_cost_limit",
                                      requested_amount=Decimal("5.0000"), justification="release day")
    html = web(reviewer).get("/review/").content.decode()
    assert f"/review/budget-overrides/{override.pk}/decide" in html
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="drill", actor=reviewer)
    html = web(reviewer).get("/review/").content.decode()
    assert f"override-{override.pk}" in html and "overrides are decided once a recovery lifts it" in html
    assert f"/review/budget-overrides/{override.pk}/decide" not in html
    r = web(reviewer).post(f"/review/budget-overrides/{override.pk}/decide", {"decision": "approve"})
    assert r.status_code == 423 and BudgetOverrideRequest.objects.get(pk=override.pk).status == "pending"


def test_an_outsider_cannot_decide_an_override(project, agent, outsider):
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("2.0000")})
    blocked = make_call(project, agent, cost="2.5000")
    r = web(outsider).post(f"/review/budget-overrides/{blocked.budget_override_id}/decide", {"decision": "approve"})
    assert r.status_code == 404
    assert BudgetOverrideRequest.objects.get(pk=blocked.budget_override_id).status == "pending"


def test_the_pages_own_requests_get_a_note_when_signed_out_not_the_login_page(reviewer):
    """htmx followed the login redirect and pasted the login form into the inbox list or the
    decision panel; now a signed-out page's own requests get 401 with a plain note, which
    live.js shows, and a navigation still goes to the login page."""
    htmx = {"HTTP_HX_REQUEST": "true"}
    for path in ("/review/inbox/items", "/review/stop-banners", "/review/session"):
        r = Client().get(path, **htmx)
        assert r.status_code == 401 and r["Content-Type"].startswith("text/plain"), path
        assert "You are signed out: nothing was changed" in r.content.decode()
    r = Client().post(f"/review/agent-approvals/{uuid.uuid4()}/decide", {"decision": "approve"}, **htmx)
    assert r.status_code == 401
    assert Client().get("/review/session").status_code == 302
    assert web(reviewer).get("/review/session", **htmx).status_code == 204


def test_a_post_whose_csrf_token_rotated_gets_a_plain_note(reviewer, project, agent):
    """Signed in again in another tab (a new CSRF token): the decision button's post was answered
    with Django's CSRF page, which the debug script then put in place of the whole page."""
    call = make_call(project, agent)
    client = Client(enforce_csrf_checks=True)
    client.force_login(reviewer)
    r = client.post(f"/review/agent-approvals/{call.pk}/decide", {"decision": "approve"}, HTTP_HX_REQUEST="true")
    assert r.status_code == 403 and r["Content-Type"].startswith("text/plain")
    assert "Your session changed" in r.content.decode()
    call.refresh_from_db()
    assert call.status == "pending"
    # a plain form post (JavaScript off, the question page, the stop and recovery forms): a page of
    # ours saying the same, with the way back to the page it was on (it was Django's bare 403 page)
    r = client.post(f"/review/agent-approvals/{call.pk}/decide", {"decision": "approve"},
                    HTTP_REFERER=f"http://testserver/review/agent-approvals/{call.pk}")
    html = r.content.decode()
    assert r.status_code == 403 and "CSRF" in html and "Nothing was decided or changed." in html
    assert f'href="http://testserver/review/agent-approvals/{call.pk}"' in html and "Back to the page" in html
    r = client.post(f"/review/agent-approvals/{call.pk}/decide", {"decision": "approve"},
                    HTTP_REFERER="https://evil.example/review/x")
    assert 'href="/review/"' in r.content.decode()  # only a page of ours to go back to
    call.refresh_from_db()
    assert call.status == "pending"
    r = client.post("/admin/login/", {"username": "x", "password": "y"})  # the admin: Django's own page
    assert r.status_code == 403 and "Nothing was decided" not in r.content.decode()


def test_no_debug_script_replaces_a_page_on_a_refused_request(reviewer, settings):
    """django-htmx's debug script (loaded with DEBUG on, as by make run) replaced the whole page
    with Django's error page on any 4xx, before live.js could say what was refused."""
    settings.DEBUG = True
    html = web(reviewer).get("/review/").content.decode()
    assert "django-htmx.js" not in html and "/static/django_htmx/htmx-2.min.js" in html


def test_responses_and_recovery_steps_are_listed(project, agent, reviewer, manager):
    from approvals.services import agent_approval_start, response_approval_submit

    call = make_call(project, agent, action="write the parser")
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
    agent_approval_start(approval_id=call.pk, actor=agent)
    response = response_approval_submit(
        submitter=agent, project_id=project.pk, task_id=call.task_id, agent_type="coder",
        call_approval_id=call.pk, agent_response={"files": [{"path": "p.py", "content": "print(1)\n"}]},
        response_summary="The parser is written", next_steps=["test it"], tokens_used=50,
        actual_cost=Decimal("0.0050"))
    html = web(reviewer).get("/review/").content.decode()
    assert "The parser is written" in html and f"/review/response-approvals/{response.pk}" in html

    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="test stop", actor=reviewer)
    session = recovery_start(project_id=project.pk, actor=manager, recovery_type="manual")
    html = web(reviewer).get("/review/").content.decode()
    assert f'href="/review/recovery/{session.pk}"' in html and "Recovery step" in html
    first = session.steps.order_by("order").first()
    assert f"Step 1 of {session.total_steps}: {step_title(first.action)} — " in html  # its title, not its code
    assert f": {first.action} —" not in html
    assert "Project Demo is under an emergency stop" in html  # the red banner
    # who started the recovery may not approve its steps: not in their inbox (it was, with no buttons)
    assert [item.kind for item in inbox_items(user=manager)] == []  # the stop cancelled the response
    assert [item.kind for item in inbox_items(user=reviewer)] == ["recovery"]


def test_the_stop_banner_partial(project, agent, reviewer, outsider):
    client = web(reviewer)
    assert "emergency stop" not in client.get("/review/stop-banners").content.decode()
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="smoke", actor=reviewer)
    part = client.get("/review/stop-banners").content.decode()
    assert "Project Demo is under an emergency stop" in part and 'role="alert"' in part
    assert "emergency stop" not in web(outsider).get("/review/stop-banners").content.decode()
    type(project).objects.filter(pk=project.pk).update(name="Project Alpha")  # not "Project Project Alpha"
    part = client.get("/review/stop-banners").content.decode()
    assert "<strong>Project Alpha is under an emergency stop.</strong>" in part


def test_many_stopped_projects_make_three_banners_and_a_line(admin_user):
    """Found on a phone: with 21 projects stopped, 21 banners put the page's Approve six screens
    down. Three banners, then one naming the others."""
    from projects.services import project_create

    for i in range(6):
        stopped = project_create(actor=admin_user, name=f"Fleet {i}", slug=f"fleet-{i}")
        emergency_stop_trigger(project_id=stopped.pk, condition="manual_stop", reason="drill", actor=admin_user)
    part = web(admin_user).get("/review/stop-banners").content.decode()
    assert part.count('class="banner banner-stop"') == 3 and part.count('role="alert"') == 4
    assert "3 more projects under an emergency stop:" in part and "Fleet 3, Fleet 4, Fleet 5" in part
    assert 'href="/review/projects/"' in part


def test_the_admin_shows_the_same_stop_banner(project, agent, reviewer, outsider):
    """Reviewers in the admin's queue see a stop as they do on the reviewer pages."""
    client = web(reviewer)
    assert "emergency stop" not in client.get("/admin/").content.decode()
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="smoke", actor=reviewer)
    for url in ("/admin/", "/admin/approvals/agentcallapproval/"):
        html = client.get(url).content.decode()
        assert "Project Demo is under an emergency stop" in html and 'role="alert"' in html, url
        assert f'href="/review/projects/{project.pk}"' in html


def test_the_top_bar_logs_out_and_leads_to_the_admin(reviewer, agent):
    client = Client(enforce_csrf_checks=True)
    client.force_login(reviewer)
    html = client.get("/review/").content.decode()
    form = re.search(r'<form class="logout" method="post" action="/admin/logout/">(.*?)</form>', html).group(1)
    assert ">Log out</button>" in form and 'name="next" value="/review/"' in form
    assert 'href="/admin/">Admin</a>' in html  # reviewers are staff
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)  # the form carries its token
    out = client.post("/admin/logout/", {"csrfmiddlewaretoken": token, "next": "/review/"})
    assert out.status_code == 302 and out["Location"] == "/review/"  # back to the login, then the inbox
    assert client.get("/review/").status_code == 302  # logged out: back to the login


def test_the_counts_say_one_or_many(project, agent, reviewer):
    make_call(project, agent)
    html = web(reviewer).get("/review/").content.decode()
    assert re.search(r'<span class="count-n">1</span> Agent call</a></li>', html)
    assert re.search(r'<span class="count-n">0</span> Budget overrides</a></li>', html)


def test_metrics_from_known_decisions(project, agent, reviewer):
    now = timezone.now()
    durations = [10, 20, 30, 40, 50, 60, 70, 80, 90, 600]  # seconds
    for i, seconds in enumerate(durations):
        call = make_call(project, agent, action=f"call {i}")
        agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve" if i % 2 else "reject",
                              reason="no")
        AgentCallApproval.objects.filter(pk=call.pk).update(
            created_at=now - timedelta(hours=1, seconds=seconds), responded_at=now - timedelta(hours=1))
    old = make_call(project, agent, action="long ago")  # decided 30 h ago: outside the window
    agent_approval_decide(approval_id=old.pk, decider=reviewer, decision="approve")
    AgentCallApproval.objects.filter(pk=old.pk).update(created_at=now - timedelta(hours=31),
                                                       responded_at=now - timedelta(hours=30))
    for i in range(2):
        late = make_call(project, agent, action=f"late {i}")
        AgentCallApproval.objects.filter(pk=late.pk).update(expires_at=now - timedelta(minutes=5))
        assert agent_approval_time_out(approval_id=late.pk)
    still_pending = make_call(project, agent, action="pending")  # not closed: not counted
    assert still_pending.status == "pending"
    # approved, then cancelled (its task ended): a person decided it, in 60 s; it was left out
    from approvals.services import agent_approval_cancel

    cancelled = make_call(project, agent, action="approved then cancelled")
    agent_approval_decide(approval_id=cancelled.pk, decider=reviewer, decision="approve")
    agent_approval_cancel(approval_id=cancelled.pk, actor=agent)
    AgentCallApproval.objects.filter(pk=cancelled.pk).update(created_at=now - timedelta(hours=1, seconds=60),
                                                             responded_at=now - timedelta(hours=1))
    withdrawn = make_call(project, agent, action="cancelled while pending")  # nobody decided it
    agent_approval_cancel(approval_id=withdrawn.pk, actor=agent)
    assert AgentCallApproval.objects.filter(status="cancelled").count() == 2

    metrics = reviewer_metrics(user=reviewer, now=now + timedelta(seconds=1))
    assert metrics.decided == 11 and metrics.timed_out == 2
    assert metrics.median_seconds == pytest.approx(60.0)
    assert metrics.p90_seconds == pytest.approx(90.0)  # nearest rank: the 10th of 11
    assert metrics.timeout_rate == pytest.approx(2 / 13)
    html = web(reviewer).get("/review/").content.decode()
    assert 'data-metric="median">1 min 0 s<' in html
    assert 'data-metric="p90">1 min 30 s<' in html
    assert 'data-metric="timeout-rate">15.4 %<' in html


def test_metrics_without_data_show_dashes(reviewer):
    html = web(reviewer).get("/review/").content.decode()
    assert 'data-metric="median">—<' in html and 'data-metric="timeout-rate">—<' in html


def test_the_page_carries_what_live_updates_need(project, agent, reviewer):
    make_call(project, agent)
    html = web(reviewer).get("/review/").content.decode()
    assert 'data-ws-url="/ws/events/"' in html
    assert re.search(r'data-last-event-id="\d+"', html)
    assert 'data-session-url="/review/session"' in html and re.search(r'data-server-now="\d+"', html)
    assert re.search(r'class="time-left[^"]*" data-expires="\d{4}-\d\d-\d\dT[\d:.]+Z"', html)  # counts down
    assert 'hx-trigger="hitl:inbox from:body' in html and 'hx-get="/review/inbox/items"' in html
    assert 'id="stop-banners"' in html and 'hx-get="/review/stop-banners"' in html
    assert "X-CSRFToken" in html
    assert "/static/review/live.js" in html and "htmx" in html and "unpkg" not in html and "cdn" not in html


def test_an_item_whose_time_out_warning_is_due_is_shown_in_red_in_the_inbox_and_on_its_page(project, agent,
                                                                                             reviewer):
    """Red from the moment its approval_timeout_warning goes out (a fifth of its time left), or
    under five minutes left, as the inbox and the decision page count it down."""
    from review.selectors import expiring_soon

    calm, warned = make_call(project, agent, action="plenty of time"), make_call(project, agent, action="warned")
    AgentCallApproval.objects.filter(pk=warned.pk).update(warn_at=timezone.now() - timedelta(seconds=1))
    part = web(reviewer).get("/review/inbox/items").content.decode()
    spans = dict(re.findall(r'<a class="item-link" href="/review/agent-approvals/([0-9a-f-]+)".*?'
                            r'<span class="(time-left[^"]*)"', part, re.S))
    assert spans == {str(calm.pk): "time-left", str(warned.pk): "time-left urgent"}, spans
    for call, red in ((calm, False), (warned, True)):
        page = web(reviewer).get(f"/review/agent-approvals/{call.pk}").content.decode()
        assert ('class="time-left urgent"' in page) is red
        assert 'class="time-left' in page

    now = timezone.now()
    warned.refresh_from_db()
    assert expiring_soon(warned, now=now) and not expiring_soon(calm, now=now)
    assert expiring_soon(calm, now=calm.expires_at - timedelta(minutes=4))  # under five minutes left
    assert not expiring_soon(None, None, now=now)  # no deadline (a budget override)


def test_no_page_shows_a_call_pending_past_its_deadline_while_beat_is_late(project, agent, reviewer):
    """Checked on real servers with beat stopped: the inbox listed a call past its deadline and its
    page showed it pending with live buttons (a decision got 410). The page times it out first, as
    the API's reads do, and the inbox leaves it out, as it does questions past theirs."""
    from events.models import Event

    call = make_call(project, agent, action="too late now")
    AgentCallApproval.objects.filter(pk=call.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert "too late now" not in web(reviewer).get("/review/").content.decode()
    html = web(reviewer).get(f"/review/agent-approvals/{call.pk}").content.decode()
    call.refresh_from_db()
    assert call.status == "timed_out" and "failed closed" in html
    assert Event.objects.filter(event_type="approval_timed_out", data__approval_id=str(call.pk)).count() == 1


def test_with_javascript_off_the_pages_say_they_do_not_update_by_themselves(reviewer):
    html = web(reviewer).get("/review/").content.decode()
    note = html[html.index("<noscript>"):html.index("</noscript>")]
    assert "JavaScript is off: this page does not update by itself" in note
    assert "#live-status, .live-only { display: none; }" in note               # not "Connecting…" for ever
    assert '<span class="live-only">The list updates live.</span>' in html


def test_a_long_queue_of_overrides_lists_the_riskiest_then_the_oldest(project, agent, manager, monkeypatch):
    """Every pending override was built into a row on every read of the list (1,000 of them took
    0.3 s), of which 50 at most are shown: only the first of each risk are built now, and the list
    is the same: those a manager must decide (high) first, then the others, oldest first."""
    from budgets.services import budget_override_create
    from review import views

    monkeypatch.setattr(views, "INBOX_SHOWN", 3)
    made = [budget_override_create(project_id=project.pk, actor=agent, violation_type="daily_cost_limit",
                                   requested_amount=Decimal(amount), justification=f"#{i}")
            for i, amount in enumerate(["5", "500", "6", "600", "7", "700", "8", "800"])]
    html = web(manager).get("/review/").content.decode()
    listed = re.findall(r'class="item-link" href="[^"]*#override-([0-9a-f-]+)"', html)
    assert listed == [str(made[1].pk), str(made[3].pk), str(made[5].pk)]
    assert re.search(r'<span class="count-n">8</span> Budget overrides', html)
    assert "5 more pending items not listed here" in html


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_inbox_counts_and_lists_one_moment_of_the_queue(project, agent, reviewer, monkeypatch):
    """Found with 50 items arriving while another reviewer decided them: the header said
    "37 pending" over a list of 38 rows. The counts and the list are read in separate statements;
    a call committed between the two (here by another connection, right after the counts) was
    listed but not counted. Both are now read from one snapshot."""
    import threading

    from django.db import connection as thread_connection

    from review import selectors as review_selectors

    make_call(project, agent, action="first")
    counted = review_selectors.inbox_counts

    def counts_then_a_commit_elsewhere(**kwargs):
        counts = counted(**kwargs)

        def commit():
            try:
                make_call(project, agent, action="committed between the count and the list")
            finally:
                thread_connection.close()

        writer = threading.Thread(target=commit)
        writer.start()
        writer.join(30)
        return counts

    monkeypatch.setattr(review_selectors, "inbox_counts", counts_then_a_commit_elsewhere)
    html = web(reviewer).get("/review/inbox/items").content.decode()
    listed = re.findall(r'class="item-link" href="/review/agent-approvals/', html)
    assert "<strong>1</strong> pending" in html and len(listed) == 1, (len(listed), html[:600])
    assert AgentCallApproval.objects.filter(status="pending").count() == 2  # the other one did commit
    monkeypatch.setattr(review_selectors, "inbox_counts", counted)
    html = web(reviewer).get("/review/inbox/items").content.decode()  # the next read has both
    assert "<strong>2</strong> pending" in html and html.count('class="item-link"') == 2
