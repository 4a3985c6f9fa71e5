"""One display of money, tokens and times on every reviewer page (review/templatetags/review_format.py),
wide tables that scroll inside their card, keyboard hints marked for touch screens, and the input that
runs shown first on an amended call."""
import datetime
import json
import re
from decimal import Decimal

import pytest
from django.template import Context, Template
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals.services import (agent_approval_decide, agent_approval_request, agent_approval_start,
                                response_approval_submit)
from audit.services import audit_record
from budgets.models import BudgetAlert, ProjectBudget
from emergency.services import emergency_stop_trigger
from projects.services import task_create
from recovery.models import RecoveryStep
from recovery.services import recovery_start, recovery_step_respond
from review.templatetags.review_format import budget_amount, iso, money, money_text, time_left, tokens, when

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}
WHEN = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"  # the one format of a moment on the pages


def web(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def make_call(project, agent, *, cost="0.0125", tokens_=12345, action="Write the parser", input_data=None):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=action)
    return agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action=action, input_data=input_data or {"path": "src/parse.py"},
                                  estimated_tokens=tokens_, estimated_cost=Decimal(cost))


def text_of(html: str) -> str:
    """What a person reads: the <main> and the banners, tags (and their attributes) removed."""
    body = html[html.index("<body"):]
    body = re.sub(r"<script.*?</script>", " ", body, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


def assert_one_format(html: str) -> None:
    """Every moment a person reads is YYYY-MM-DD HH:MM:SS UTC; every amount of money $0.0000 (no
    bare four-place decimal, no USD); a token count has its thousands separated."""
    text = text_of(html)
    for moment in re.finditer(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d[^ ;,)]*(?: [A-Z]{3,4}\b)?", text):
        assert re.fullmatch(WHEN, moment.group(0)), (moment.group(0), text[max(0, moment.start() - 80):moment.end() + 40])
    for amount in re.finditer(r"(?<![\w.])\$?-?[\d,]+\.\d+", text):
        value = amount.group(0)
        if "." in value and len(value.split(".")[1]) == 4 or value.startswith("$"):
            assert re.fullmatch(r"\$\d{1,3}(,\d{3})*\.\d{4}", value), (value, text[max(0, amount.start() - 80):amount.end() + 40])
    assert " USD" not in text
    for count in re.finditer(r"(\d[\d,]*) tokens?\b", text):
        assert re.fullmatch(r"\d{1,3}(,\d{3})*", count.group(1)), count.group(0)


# --- the filters ----------------------------------------------------------------------------
def test_money_is_dollars_with_four_places_and_thousands():
    assert money(Decimal("0.0125")) == "$0.0125"
    assert money(Decimal("0.5")) == "$0.5000"
    assert money(1234.5) == "$1,234.5000"
    assert money("1,234.5000") == "$1,234.5000"  # the project page's preformatted bars
    assert money("0.00005") == "$0.0001"  # half up
    assert money(Decimal("-2")) == "-$2.0000"
    assert money(None) == "—" and money("") == "—"
    assert money("n/a") == "n/a"


def test_tokens_have_thousands_separators_and_their_unit():
    assert tokens(12345) == "12,345 tokens"
    assert tokens(Decimal("1000000.0000")) == "1,000,000 tokens"  # an alert's value is a decimal column
    assert tokens(1) == "1 token" and tokens(0) == "0 tokens"
    assert tokens(None) == "—"


def test_an_amount_takes_the_unit_its_kind_names():
    assert budget_amount(Decimal("50000.0000"), "token_daily") == "50,000 tokens"
    assert budget_amount(Decimal("150"), "daily_token_limit") == "150 tokens"
    assert budget_amount(Decimal("8.5"), "cost_daily") == "$8.5000"
    assert budget_amount("1,234", "tokens") == "1,234 tokens"


def test_moments_are_utc_to_the_second_whatever_their_zone():
    berlin = datetime.timezone(datetime.timedelta(hours=1))
    moment = datetime.datetime(2026, 12, 5, 15, 7, 33, 721336, tzinfo=berlin)
    assert when(moment) == "2026-12-05 14:07:33 UTC"
    assert when("2026-12-05T14:07:33.721336Z") == "2026-12-05 14:07:33 UTC"  # as the JSON columns keep it
    assert when("2026-12-05T15:07:33+01:00") == "2026-12-05 14:07:33 UTC"
    assert when(datetime.date(2026, 12, 5)) == "2026-12-05"
    assert when(None) == "—" and when("soon") == "soon"
    assert iso(moment) == "2026-12-05T14:07:33.721336Z"


def test_money_in_recorded_text_and_the_countdown():
    assert money_text("daily cost limit: 10.0000; spent today: 1234.5000") == \
        "daily cost limit: $10.0000; spent today: $1,234.5000"
    assert money_text("rate 0.333, 12 tasks, v1.23456, $2.0000") == "rate 0.333, 12 tasks, v1.23456, $2.0000"
    assert money_text("It would pass the daily token limit by 12345: approving budget override x unblocks it.") == \
        "It would pass the daily token limit by 12,345 tokens: approving budget override x unblocks it."
    assert money_text("It would pass the monthly token limit by 7 tokens.") == \
        "It would pass the monthly token limit by 7 tokens."
    # an amount the text itself says is tokens or USD (the manager threshold's refusal) stays as it is
    assert money_text("would add 150,000.0000 tokens, above 100000") == "would add 150,000.0000 tokens, above 100000"
    assert money_text("would add 12.0000 USD, above 10.0000: a manager") == \
        "would add $12.0000, above $10.0000: a manager"
    # found by two reviewers: a refusal's amount before its full stop, and its moments, were left raw
    assert money_text("It would pass the daily cost limit by 0.2016.") == "It would pass the daily cost limit by $0.2016."
    assert money_text("Step 1 is completed (by rev2 at 2026-12-07T12:37:34.860736Z); the next step is 2.") == \
        "Step 1 is completed (by rev2 at 2026-12-07 12:37:34 UTC); the next step is 2."
    assert money_text("ended at 2026-12-07T13:00:00Z, v1.2345.6") == "ended at 2026-12-07 13:00:00 UTC, v1.2345.6"
    assert time_left(timezone.now() + datetime.timedelta(minutes=4, seconds=5, milliseconds=500)) == "4 min 5 s left"
    assert time_left(timezone.now() - datetime.timedelta(seconds=1)) == "expired"


def test_the_filters_load_in_a_template():
    html = Template("{% load review_format %}{{ c|money }} {{ t|tokens }} {{ w|when }}").render(Context(
        {"c": Decimal("0.0125"), "t": 12345, "w": datetime.datetime(2026, 12, 5, 14, 7, tzinfo=datetime.timezone.utc)}))
    assert html == "$0.0125 12,345 tokens 2026-12-05 14:07:00 UTC"


# --- the pages ------------------------------------------------------------------------------
def test_the_inbox_shows_the_estimate_and_the_deadline_in_the_one_format(project, agent, reviewer):
    call = make_call(project, agent)
    html = web(reviewer).get("/review/").content.decode()
    assert f"12,345 tokens · {money(call.estimated_cost)}" in html
    assert re.fullmatch(r"\$\d+\.\d{4}", money(call.estimated_cost))
    assert re.search(rf'title="Expires {WHEN}"', html)
    assert re.search(r'<span class="time-left[^"]*"[^>]*>\d+ min \d+ s left</span>', html)  # the countdown stays
    assert_one_format(html)


def test_an_override_in_the_inbox_names_its_amount_in_its_unit(project, agent, reviewer, manager):
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("2.0000")})
    blocked = make_call(project, agent, cost="2.5000", tokens_=100)
    assert blocked.budget_state == "blocked" and blocked.budget_override_id
    html = web(manager).get("/review/").content.decode()
    assert re.search(r"Daily cost limit: \+\$\d+\.\d{4} —", html), text_of(html)
    assert_one_format(html)
    html = web(reviewer).get(f"/review/agent-approvals/{blocked.pk}").content.decode()
    assert re.search(r"Daily cost limit, \+\$\d+\.\d{4} \(", html)
    assert_one_format(html)


def test_the_call_page_shows_money_tokens_and_times_in_the_one_format(project, agent, reviewer):
    earlier = make_call(project, agent, action="Same action")
    agent_approval_decide(approval_id=earlier.pk, decider=reviewer, decision="approve")  # a precedent row
    call = make_call(project, agent, action="Same action")
    html = web(reviewer).get(f"/review/agent-approvals/{call.pk}").content.decode()
    assert "<dd>12,345 tokens</dd>" in html
    assert f"<dd>{money(call.estimated_cost)}</dd>" in html
    assert re.search(rf'Requested <time datetime="[^"]+Z">{WHEN}</time> by agent', html)
    assert re.search(rf'\(until <time datetime="[^"]+">{WHEN}</time>\)', html)
    assert re.search(rf'<a href="/review/agent-approvals/{earlier.pk}">{WHEN}</a>', html)  # the precedent table
    assert '<div class="table-scroll">\n      <table class="table">' in html
    assert_one_format(html)


def test_the_response_page_shows_estimate_and_usage_in_the_one_format(project, agent, reviewer, manager):
    call = make_call(project, agent)
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
    agent_approval_start(approval_id=call.pk, actor=agent)
    response = response_approval_submit(
        submitter=agent, project_id=project.pk, task_id=call.task_id, agent_type="coder", call_approval_id=call.pk,
        agent_response={"ok": True}, response_summary="done", tokens_used=2500, actual_cost=Decimal("0.0031"))
    html = web(manager).get(f"/review/response-approvals/{response.pk}").content.decode()
    assert f"<dd>12,345 tokens · {money(call.estimated_cost)}</dd>" in html
    assert "<dd>2,500 tokens · $0.0031</dd>" in html
    assert re.search(rf'Submitted <time datetime="[^"]+">{WHEN}</time> by agent', html)
    assert_one_format(html)


def test_the_project_pages_show_money_tokens_and_times_in_the_one_format(project, agent, reviewer, manager):
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("10.0000")})
    make_call(project, agent, cost="8.5000", tokens_=1234)  # 85 % of the day: a warning alert
    alert = BudgetAlert.objects.get(project=project, alert_type="warning", threshold_type="cost_daily")
    client = web(reviewer)
    html = client.get(reverse("review:project", args=[project.pk])).content.decode()
    assert f"<td>{money(alert.current_value)}</td><td>{money(alert.threshold_value)}</td>" in html
    assert "$8.5000 of $10.0000" in html and "1,234 of 100,000 tokens" in html
    assert re.search(rf'<time datetime="[^"]+">{WHEN}</time></td>', html)  # alerts and tasks
    assert re.search(rf"\(since {WHEN}: midnight in UTC\)", html)
    assert "When (UTC)" not in html and "Created (UTC)" not in html  # each time says its zone
    assert_one_format(html)

    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="format drill", actor=reviewer)
    emergency_stop_trigger(project_id=project.pk, condition="budget_critical", reason="budget drill",
                           data={"daily_cost": "16.0000", "daily_cost_limit": "10.0000"})  # a confirm_budget step
    session = recovery_start(project_id=project.pk, actor=manager, recovery_type="manual")
    for step in RecoveryStep.objects.filter(session=session).order_by("order"):  # up to confirm_budget
        recovery_step_respond(session_id=session.pk, step_id=step.pk, actor=reviewer, decision="approve")
        if step.action == "confirm_budget":
            break
    html = client.get(reverse("review:project", args=[project.pk])).content.decode()
    assert re.search(rf'<dt>When</dt><dd><time datetime="[^"]+">{WHEN}</time></dd>', html)
    assert " ago" not in text_of(html)  # relative times only for the countdowns
    assert re.search(rf"since {WHEN}", html)  # the banner
    assert_one_format(html)

    html = client.get(reverse("review:recovery", args=[session.pk])).content.decode()
    assert "<dt>Daily cost limit</dt><dd>$10.0000</dd>" in html  # the assessment's budget
    assert "daily cost limit: $10.0000" in html  # what confirm_budget recorded
    assert "<dt>Daily cost</dt><dd>$16.0000</dd>" in html  # what tripped
    assert re.search(rf"Approved by reviewer at {WHEN}", html)
    assert_one_format(html)

    html = client.get(reverse("review:projects")).content.decode()
    assert '<div class="table-scroll"><table class="pp-table" id="project-list">' in html
    assert_one_format(html)


def test_the_audit_log_shows_its_times_in_the_one_format(project, reviewer):
    audit_record(actor=reviewer, action="format.check", obj=project, reason="one format")
    client = web(reviewer)
    html = client.get(reverse("review:audit")).content.decode()
    assert re.search(rf'<td data-label="When"><time datetime="[^"]+">{WHEN}</time></td>', html)
    assert '<div class="table-scroll">\n    <table class="pp-table pp-audit">' in html
    assert_one_format(html)
    html = client.get(reverse("review:audit") + "?verify=1", **HTMX).content.decode()
    assert re.search(rf"Checked {WHEN} in", html)


def test_every_table_of_the_pages_scrolls_inside_its_card(project, agent, reviewer):
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("10.0000")})
    make_call(project, agent, cost="8.5000", tokens_=1234)
    client = web(reviewer)
    for url in ("/review/", reverse("review:projects"), reverse("review:project", args=[project.pk]),
                reverse("review:audit")):
        html = client.get(url).content.decode()
        tables = [m.start() for m in re.finditer(r"<table\b", html)]
        assert tables or url == "/review/", url
        for start in tables:
            assert re.search(r'<div class="table-scroll">\s*$', html[:start]), (url, html[start - 200:start + 80])


def test_keyboard_hints_are_marked_for_touch_screens(project, agent, reviewer):
    call = make_call(project, agent)
    client = web(reviewer)
    html = client.get("/review/").content.decode()
    assert '<span class="kbd-hint" id="inbox-keys"><kbd>j</kbd>' in html
    html = client.get(f"/review/agent-approvals/{call.pk}").content.decode()
    assert '<p class="hint kbd-hint"><kbd>a</kbd> then <kbd>a</kbd> (or <kbd>Enter</kbd>) approve' in html
    kbds = re.findall(r"<kbd\b[^>]*>", html)
    outside = re.sub(r'<(p|span) class="[^"]*kbd-hint[^"]*">.*?</\1>', "", html, flags=re.S)
    assert all('class="kbd-hint"' in k for k in re.findall(r"<kbd\b[^>]*>", outside)), kbds  # every key named
    css = client.get("/static/review/review.css")
    css = b"".join(css.streaming_content if css.streaming else [css.content]).decode()
    assert re.search(r"@media \(hover: none\), \(pointer: coarse\) \{\s*\.kbd-hint \{ display: none", css)


# --- the input that runs --------------------------------------------------------------------
def test_an_amended_call_shows_the_input_that_runs_first(project, agent, reviewer):
    call = make_call(project, agent, input_data={"path": "src/parse.py", "mode": "original-mode"})
    client = web(reviewer)
    html = client.get(f"/review/agent-approvals/{call.pk}").content.decode()
    assert 'class="input-version input-version--runs"' in html and "Input that will run" not in html
    assert re.search(r'<h3 id="input-original-label" class="input-label" hidden>', html)

    amended = {"path": "src/parse.py", "mode": "amended-mode"}
    r = client.post(f"/review/agent-approvals/{call.pk}/decide",
                    {"decision": "approve", "amended_input_data": json.dumps(amended)}, **HTMX)
    fragment = r.content.decode()  # the open page gets the input that runs without a reload
    assert re.search(r'<div id="input-to-run" class="[^"]*is-amended" hx-swap-oob="true">', fragment)
    assert "Input that will run:" in fragment and "amended-mode" in fragment
    assert re.search(r'<h3 id="input-original-label" class="input-label" hx-swap-oob="true">Original input', fragment)
    assert 'href="#input-to-run">amended input</a>: the agent runs it instead of its own' in fragment

    html = client.get(f"/review/agent-approvals/{call.pk}").content.decode()
    section = html[html.index('<h2 id="input-title">'):html.index('id="precedent"')]
    runs, original = section.index("Input that will run:"), section.index("Original input")
    assert runs < original  # what runs comes first
    assert section.index("amended-mode") < original < section.index("original-mode")
    assert "amended by reviewer" in section
    assert 'aria-label="Input that will run (amended), formatted JSON"' in section
    assert 'aria-label="Original input (replaced: it does not run), formatted JSON"' in section
    assert "<details><summary>Approved with amended input" not in html  # no longer hidden in the panel
