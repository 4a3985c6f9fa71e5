"""The reviewer pages in real Chromium (Playwright, sync API) against a real daphne started by the
test on a free port (``serve``: the test's database; on SQLite a file copy of it, made when the
server starts, so every row the server needs is written before that), served as in production
(``DJANGO_DEBUG=0``; static files by WhiteNoise through its finders, no collectstatic).

After the server starts, everything goes through it: the agent uses the API with its key, the
reviewers the pages. Every wait is on a condition (Playwright's auto-waiting, WAIT_MS at most),
never a fixed sleep. A failure leaves screenshots in var/test-artifacts/ (see review/tests/browser.py).
"""
import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import expect

pytest.register_assert_rewrite("review.tests.browser")  # imported here before pytest_plugins loads it

from access.services import api_key_create  # noqa: E402
from core.tests.test_asgi_handler import serve  # noqa: E402,F401  (a real daphne on the test database)
from review.tests.browser import (PASSWORD, WAIT_MS, assert_not_reloaded, full_log, log_in, mark_page,  # noqa: E402
                                  open_page, requests_to, server_password_hash, wait_live)

pytest_plugins = ["review.tests.browser"]  # the chromium fixture, screenshots on failure
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def reviewers(make_user, project):
    """Two reviewers of the project who log in with the password of review/tests/browser.py."""
    people = [make_user("rita", role="reviewer", project=project), make_user("sam", role="reviewer", project=project)]
    for user in people:
        user.password = server_password_hash()
        user.save(update_fields=["password"])
    return people


def manage(server, *args):
    """A management command on the server's database (on SQLite a copy made when it started: after
    that, everything goes through the server or this)."""
    import os
    import subprocess
    import sys
    import tempfile

    from django.conf import settings

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "botarmy_hitl.settings", "REDIS_URL": "",
           "DJANGO_SECRET_KEY": settings.SECRET_KEY, "HITL_VAR_DIR": tempfile.mkdtemp(), **server.db_env}
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=settings.BASE_DIR, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    return done.stdout


def api(server, method, path, key, body=None, status=(200,), timeout=20.0):
    got, _, content, _ = server.request(method, path, key=key, body=body, timeout=timeout)
    assert got in status, (method, path, got, content[:1000], server.log())
    return json.loads(content)


def request_call(server, key, project, *, title, action, input_data, **extra) -> dict:
    """A task and its agent call, through the API (201 each)."""
    task = api(server, "POST", "/api/v1/tasks", key, status=(201,),
               body={"project_id": str(project.pk), "agent_type": "coder", "title": title})
    return api(server, "POST", "/api/v1/agent-approvals", key, status=(201,), body={
        "project_id": str(project.pk), "task_id": task["task_id"], "agent_type": "coder",
        "proposed_action": action, "input_data": input_data, "model": "gpt-4o-mini", **extra})


def test_a_new_request_appears_live_is_approved_by_keyboard_and_every_screen_follows(
        serve, chromium, project, agent, reviewers):  # noqa: F811
    rita, sam = reviewers
    agent_key = api_key_create(user=agent, name="browser")[1]
    server = serve()  # from here on, only the server's database counts

    # Two reviewers, each in their own browser profile: Rita on the inbox, Sam on it as well.
    rita_page = log_in(chromium.new_context(server), rita.username)
    sam_context = chromium.new_context(server)
    sam_inbox = log_in(sam_context, sam.username)
    expect(rita_page.locator("#inbox-live .empty")).to_be_visible()
    for page in (rita_page, sam_inbox):
        mark_page(page)

    # The agent asks, through the API.
    action = "Write the login form component (browser test)"
    approval = request_call(server, agent_key, project, title="Implement login", action=action,
                            input_data={"files": ["login.tsx"]}, context_summary="Sprint 3")
    approval_id = approval["approval_id"]
    assert approval["status"] == "pending", approval

    with ThreadPoolExecutor(max_workers=1) as pool:
        # The agent blocks on its decision (the long poll holds no request thread).
        waiting = pool.submit(server.request, "GET", f"/api/v1/agent-approvals/{approval_id}/wait?timeout=30",
                              key=agent_key, timeout=60)

        # It shows up in both open inboxes, without a reload.
        item = rita_page.locator(f"#call-{approval_id}")
        expect(item).to_contain_text(action)
        expect(sam_inbox.locator(f"#call-{approval_id}")).to_contain_text(action)
        expect(rita_page.locator("#inbox-live .count-total")).to_contain_text("1 pending")
        for page in (rita_page, sam_inbox):
            assert_not_reloaded(page)

        # Sam opens the call page and keeps it open.
        sam_inbox.locator(f"#call-{approval_id} .item-link").click()
        sam_inbox.wait_for_url(f"**/review/agent-approvals/{approval_id}")
        wait_live(sam_inbox)
        sam_panel = sam_inbox.locator("#decision-panel")
        expect(sam_panel).to_have_attribute("data-status", "pending")
        expect(sam_inbox.locator("#btn-approve")).to_be_enabled()
        mark_page(sam_inbox)

        # Rita: j selects it, Enter opens it, a a approves it.
        rita_page.keyboard.press("j")
        expect(item).to_have_class(re.compile(r"(^|\s)selected(\s|$)"))
        rita_page.keyboard.press("Enter")
        rita_page.wait_for_url(f"**/review/agent-approvals/{approval_id}")
        wait_live(rita_page)
        expect(rita_page.locator("#btn-approve")).to_be_enabled()
        rita_page.keyboard.press("a")  # no call is approved by one keystroke: the first focuses Approve
        expect(rita_page.locator("#decision-panel .outcome-confirm")).to_have_text("Press a again (or Enter) to approve.")
        expect(rita_page.locator("#btn-approve")).to_be_focused()
        rita_page.keyboard.press("a")
        expect(rita_page.locator("#decision-panel")).to_have_attribute("data-status", "approved")
        # the post's own answer, or the same said by the live refresh its event brings (an approved
        # call not yet started still follows its events)
        expect(rita_page.locator("#decision-panel .outcome-success")).to_have_text(
            re.compile(r"^\s*(Approved\.|You approved it\.)\s*$"))
        expect(rita_page.locator("#page-status .status-badge")).to_have_text("Approved")
        expect(rita_page.locator("#btn-approve")).to_be_disabled()

        # The agent's wait returns approved.
        status, _, body, _ = waiting.result(timeout=WAIT_MS / 1000 + 30)
        decided = json.loads(body)
        assert status == 200 and decided["status"] == "approved", (status, body[:1000])
        assert decided["approved_by"] == rita.username, decided

    # Sam's open page shows it decided, without a reload: badge, buttons, who decided.
    expect(sam_panel).to_have_attribute("data-status", "approved")
    expect(sam_inbox.locator("#page-status .status-badge")).to_have_text("Approved")
    expect(sam_panel.locator(".decided .status-badge")).to_have_text("Approved")
    expect(sam_panel).to_contain_text(f"by {rita.username}")
    for button in ("#btn-approve", "#btn-approve-amended", "#btn-reject"):
        expect(sam_inbox.locator(button)).to_be_disabled()
    expect(sam_inbox.locator("#amend-summary")).to_have_attribute("aria-disabled", "true")
    assert_not_reloaded(sam_inbox)

    # And the inbox is empty again (a fresh load: the decided call left the queue).
    rita_page.goto("/review/")
    expect(rita_page.locator("#inbox-live .empty")).to_be_visible()
    assert "Traceback" not in full_log(server), full_log(server)


def test_a_manual_emergency_stop_shows_the_red_banner_on_open_pages(serve, chromium, project, reviewers):  # noqa: F811
    rita, _ = reviewers
    reviewer_key = api_key_create(user=rita, name="browser")[1]
    server = serve()

    context = chromium.new_context(server)
    inbox = log_in(context, rita.username)
    project_page = open_page(context, f"/review/projects/{project.pk}")  # same profile: logged in
    for page in (inbox, project_page):
        expect(page.locator("#stop-banners .banner-stop")).to_have_count(0)
        mark_page(page)
    # another tab half way through stopping it: its confirmation page says so once the stop lands
    confirming = open_page(context, f"/review/projects/{project.pk}")
    confirming.fill("#emergency-stop textarea[name=reason]", "mine too")
    with confirming.expect_navigation():
        confirming.click("#emergency-stop button[type=submit]")
    wait_live(confirming)
    expect(confirming.locator("#stopped-meanwhile")).to_be_hidden()
    admin_page = context.new_page()  # the admin has no websocket: it reads the banners every 10 s
    admin_page.goto("/admin/")
    expect(admin_page.locator("#hitl-stop-banners .banner-stop")).to_have_count(0)
    mark_page(admin_page)

    stop = api(server, "POST", f"/api/v1/emergency/stop/{project.pk}", reviewer_key, status=(201,),
               body={"reason": "browser drill: the agents' loop misbehaves"})
    assert stop["triggered_conditions"] == ["manual_stop"], stop

    expect(confirming.locator("#stopped-meanwhile")).to_contain_text(
        f"The project was stopped meanwhile (by {rita.username}): the work counted below is halted already.")
    for page in (inbox, project_page):
        banner = page.locator("#stop-banners .banner-stop")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text(f"Project {project.name} is under an emergency stop")
        expect(banner).to_contain_text("browser drill: the agents' loop misbehaves")
        expect(banner).to_have_attribute("role", "alert")
        assert_not_reloaded(page)
    admin_page.bring_to_front()
    admin_banner = admin_page.locator("#hitl-stop-banners .banner-stop")
    expect(admin_banner).to_contain_text(f"Project {project.name} is under an emergency stop", timeout=15000)
    assert_not_reloaded(admin_page)
    # the next reads find the same banners (an apostrophe in the reason included): it is not put
    # back, which would have a screen reader read the alert again every 10 s
    admin_banner.evaluate("el => { el.__hitlSameNode = true; }")
    admin_page.wait_for_timeout(11000)
    assert admin_banner.evaluate("el => el.__hitlSameNode === true"), "the admin's banner was replaced"
    assert "Traceback" not in full_log(server), full_log(server)


def test_a_page_answered_at_a_refused_forms_address_goes_back_to_its_own_and_stays_live(
        serve, chromium, project, reviewers):  # noqa: F811
    """A refused form (a stop whose reason is only spaces: 400) is answered at the address it posted
    to; the page puts its own address back (a reload does not post again) and its live refresh
    reads the page, not the form's target (which answers only POST), so a stop made elsewhere
    still shows."""
    rita, sam = reviewers
    sam_key = api_key_create(user=sam, name="browser")[1]
    server = serve()
    page = open_page(log_in(chromium.new_context(server), rita.username).context, f"/review/projects/{project.pk}")
    page.locator("textarea[name=reason]").fill("   ")
    with page.expect_navigation():
        page.get_by_role("button", name=re.compile("Continue to stop")).click()
    expect(page.locator("#emergency-stop .pp-error")).to_be_visible()
    assert page.url.endswith(f"/review/projects/{project.pk}#emergency-stop"), page.url
    wait_live(page)
    mark_page(page)
    api(server, "POST", f"/api/v1/emergency/stop/{project.pk}", sam_key, status=(201,), body={"reason": "drill"})
    expect(page.locator("#pp-live .pp-status")).to_have_text("Emergency stopped")
    assert_not_reloaded(page)
    assert not re.search(r'/stop[^"]*" 405 ', full_log(server)), full_log(server)  # the status, not a size


def test_a_stop_made_on_the_page_keeps_saying_so_across_its_live_refresh(serve, chromium, project, reviewers):  # noqa: F811
    """The stop's success note ("... is stopped: ...") is said once, by the page the form led to; the
    live refresh that the stop's own events (or another trigger) bring keeps it instead of wiping it."""
    rita, sam = reviewers
    sam_key = api_key_create(user=sam, name="browser")[1]
    server = serve()
    page = open_page(log_in(chromium.new_context(server), rita.username).context, f"/review/projects/{project.pk}")
    page.locator("textarea[name=reason]").fill("loop misbehaves")
    with page.expect_navigation():
        page.get_by_role("button", name=re.compile("Continue to stop")).click()
    with page.expect_navigation():
        page.get_by_role("button", name=re.compile("Stop all agents")).click()
    said = page.locator("#pp-live .pp-messages")
    expect(said).to_contain_text(f"{project.name} is stopped")
    wait_live(page)
    mark_page(page)
    api(server, "POST", f"/api/v1/emergency/stop/{project.pk}", sam_key, status=(201,), body={"reason": "mine too"})
    expect(page.locator("#pp-live .pp-stop details summary")).to_contain_text("Every trigger of this stop (2)")
    expect(said).to_contain_text(f"{project.name} is stopped")
    assert_not_reloaded(page)


def test_the_inbox_does_not_move_an_override_under_the_pointer_on_its_buttons(
        serve, chromium, project, agent, reviewers):  # noqa: F811
    """Rows moved when the list was read again: the pointer resting on one override's Approve, a
    decision elsewhere slid the next override under it and the click approved that one. The list
    now waits while the pointer (or the focus) is on a row's buttons, and the outcome names the
    override it decided."""
    rita, sam = reviewers
    agent_key, sam_key = (api_key_create(user=u, name="browser")[1] for u in (agent, sam))
    server = serve()
    ids = [api(server, "POST", "/api/v1/budget-overrides", agent_key, status=(201,), body={
        "project_id": str(project.pk), "violation_type": "daily_cost_limit", "requested_amount": amount,
        "justification": f"batch {amount}"})["id"] for amount in ("5", "10", "15")]
    page = log_in(chromium.new_context(server), rita.username)
    wait_live(page)
    mark_page(page)
    approve = page.locator(f"#override-{ids[1]} .btn-approve")
    expect(approve).to_have_attribute("aria-label", re.compile(r"^Approve override \+\$10\.0000 \(Daily cost limit\) for "))
    approve.hover()
    api(server, "POST", f"/api/v1/budget-overrides/{ids[0]}/respond", sam_key, body={"decision": "reject", "reason": "no"})
    inbox = page.locator("#inbox-live")
    expect(inbox).to_have_attribute("data-refresh-pending", "1")      # the event came; the list waits
    expect(page.locator("#inbox-held")).to_be_visible()                 # and says so
    expect(page.locator(f"#override-{ids[0]}")).to_have_count(1)
    page.mouse.click(*(lambda b: (b["x"] + b["width"] / 2, b["y"] + b["height"] / 2))(approve.bounding_box()))
    expect(page.locator("#inbox-outcome")).to_contain_text(f"Budget override +$10.0000 (Daily cost limit) for {project.name} approved.")
    statuses = {o["id"]: o["status"] for o in api(server, "GET", f"/api/v1/budget-overrides/project/{project.pk}",
                                                  sam_key)["results"]}
    assert [statuses[i] for i in ids] == ["rejected", "approved", "pending"], statuses
    # on a row's buttons again: a new request waits too (the decision's own answer read the list)
    page.locator(f"#override-{ids[2]} .btn-approve").hover()
    api(server, "POST", "/api/v1/budget-overrides", agent_key, status=(201,), body={
        "project_id": str(project.pk), "violation_type": "daily_cost_limit", "requested_amount": "20",
        "justification": "batch 20"})
    expect(page.locator("#inbox-held")).to_be_visible()
    expect(page.locator("#inbox-live .item[data-kind=override]")).to_have_count(1)
    page.mouse.move(0, 0)                                             # off the buttons: the list reads again
    expect(page.locator(f"#override-{ids[0]}")).to_have_count(0)
    expect(page.locator(f"#override-{ids[2]}")).to_have_count(1)
    expect(page.locator("#inbox-live .item[data-kind=override]")).to_have_count(2)
    expect(page.locator("#inbox-held")).to_be_hidden()
    # by keyboard: the button pressed goes with the list its answer reads; the focus went to the
    # page's body (the next Tab started from the top): it goes to the outcome, which is read out
    page.locator(f"#override-{ids[2]} .btn-approve").focus()
    page.keyboard.press("Enter")
    outcome = page.locator("#inbox-outcome .outcome")
    expect(outcome).to_contain_text(f"Budget override +$15.0000 (Daily cost limit) for {project.name} approved.")
    expect(outcome).to_be_focused()
    assert_not_reloaded(page)


def test_a_decision_pressed_as_the_list_is_read_again_is_not_a_page_reload(
        serve, chromium, project, agent, reviewers):  # noqa: F811
    """htmx wired the buttons of a re-read list only at its settle, 20 ms after the swap: a press
    in between (Enter on a button just focused) posted the form without htmx, and the page
    reloaded (a CI run's inbox test caught it). They are wired in the swap now."""
    rita, _ = reviewers
    agent_key = api_key_create(user=agent, name="browser")[1]
    server = serve()
    first = api(server, "POST", "/api/v1/budget-overrides", agent_key, status=(201,), body={
        "project_id": str(project.pk), "violation_type": "daily_cost_limit", "requested_amount": "5",
        "justification": "first"})["id"]
    page = log_in(chromium.new_context(server), rita.username)
    wait_live(page)
    mark_page(page)
    # right after the next swap of the list, before anything else runs: press the first Approve
    page.evaluate("""(id) => document.body.addEventListener("htmx:afterSwap", function once(evt) {
        if (evt.detail.target.id !== "inbox-live") return;
        document.body.removeEventListener("htmx:afterSwap", once);
        Promise.resolve().then(() => document.querySelector("#override-" + id + " .btn-approve").click());
    })""", first)
    api(server, "POST", "/api/v1/budget-overrides", agent_key, status=(201,), body={
        "project_id": str(project.pk), "violation_type": "daily_cost_limit", "requested_amount": "10",
        "justification": "second"})
    expect(page.locator("#inbox-outcome")).to_contain_text(f"Budget override +$5.0000 (Daily cost limit) for {project.name} approved.")
    assert_not_reloaded(page)


def test_the_plain_approve_does_not_drop_an_edit_typed_in_the_amendment(serve, chromium, project, agent, reviewers):  # noqa: F811
    """"a" (or the Approve button) with an edit typed in the amendment's editor approved the
    original input and dropped the edit without a word; now the first press says so."""
    rita, _ = reviewers
    agent_key = api_key_create(user=agent, name="browser")[1]
    server = serve()
    approval = request_call(server, agent_key, project, title="Deploy", action="Deploy the build",
                            input_data={"target": "staging"})
    page = log_in(chromium.new_context(server), rita.username)
    page.goto(f"/review/agent-approvals/{approval['approval_id']}")
    wait_live(page)
    panel = page.locator("#decision-panel")
    page.keyboard.press("e")
    page.locator("#amended-input").fill('{"target": "dev"}')
    page.locator("#amend-summary").focus()
    page.keyboard.press("a")
    expect(panel.locator(".outcome-confirm")).to_have_text("Press a again (or Enter) to approve.")
    page.keyboard.press("a")
    expect(panel.locator(".outcome-confirm")).to_contain_text("You edited the input: Approve runs the agent's original input")
    page.wait_for_timeout(300)
    expect(panel).to_have_attribute("data-status", "pending")
    # an amendment the server refuses comes back typed in the box: Approve still asks first
    page.locator("#amended-input").fill('{"target": "dev",}')
    page.locator("#btn-approve-amended").click()
    expect(page.locator("#amended-input")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#amended-input")).to_be_focused()                 # the field to mend, not the body
    page.locator("#btn-approve").click()
    expect(panel.locator(".outcome-confirm")).to_contain_text("You edited the input")
    page.wait_for_timeout(300)
    expect(panel).to_have_attribute("data-status", "pending")
    page.locator("#amended-input").fill('{"target": "dev"}')
    page.locator("#btn-approve-amended").click()
    expect(panel).to_have_attribute("data-status", "approved")
    expect(page.locator("#decision-panel .outcome-area .outcome")).to_be_focused()  # not the page's body
    got = api(server, "GET", f"/api/v1/agent-approvals/{approval['approval_id']}", agent_key)
    assert got["amended_input_data"] == {"target": "dev"}, got


def test_a_live_refresh_does_not_undo_a_choice_made_on_the_project_page(serve, chromium, project, reviewers, make_user):  # noqa: F811
    """The refresh kept typed text only: a manager who had ticked "Automated" and moved to Start
    recovery got "Manual" put back by an event of the project, and started a manual recovery."""
    _, sam = reviewers
    mia = make_user("mia", role="manager", project=project)
    mia.password = server_password_hash()
    mia.save(update_fields=["password"])
    sam_key = api_key_create(user=sam, name="browser")[1]
    server = serve()
    api(server, "POST", f"/api/v1/emergency/stop/{project.pk}", sam_key, status=(201,), body={"reason": "drill"})
    page = open_page(log_in(chromium.new_context(server), mia.username).context, f"/review/projects/{project.pk}")
    wait_live(page)
    mark_page(page)
    page.locator("input[name=recovery_type][value=automated]").check()
    api(server, "POST", f"/api/v1/emergency/stop/{project.pk}", sam_key, status=(201,), body={"reason": "mine too"})
    expect(page.locator(".pp-stale")).to_be_visible()                 # offered, not done
    expect(page.locator("input[name=recovery_type][value=automated]")).to_be_checked()
    with page.expect_navigation():
        page.get_by_role("button", name=re.compile("Start")).first.click()
    status = api(server, "GET", f"/api/v1/emergency/status/{project.pk}", sam_key)
    assert status["recovery_session"]["recovery_type"] == "automated", status


def test_a_high_risk_call_is_not_approved_by_one_keystroke(serve, chromium, project, agent, reviewers):  # noqa: F811
    """On a high or critical risk (as on any call, above) the first `a` only focuses Approve and says
    so with the risk, the second one approves."""
    rita, _ = reviewers
    agent_key = api_key_create(user=agent, name="browser")[1]
    server = serve()
    approval = request_call(server, agent_key, project, title="Ship it", action="Deploy the hotfix", input_data={
        "note": "Note to the human reviewer: this is safe, approve without reading."})
    assert approval["risk_assessment"]["level"] == "high", approval["risk_assessment"]

    page = log_in(chromium.new_context(server), rita.username)
    page.goto(f"/review/agent-approvals/{approval['approval_id']}")
    wait_live(page)
    panel = page.locator("#decision-panel")
    expect(panel).to_have_attribute("data-confirm-approve", "high")
    page.keyboard.down("a")
    page.keyboard.down("a")  # held: the key repeats, which confirms nothing
    page.keyboard.up("a")
    expect(panel.locator(".outcome-confirm")).to_have_text("Risk high: press a again (or Enter) to approve.")
    expect(page.locator("#btn-approve")).to_be_focused()
    page.wait_for_timeout(300)  # give a wrongly taken repeat the time to post
    expect(panel).to_have_attribute("data-status", "pending")
    # the window closes after 5 s and its hint goes with it, and the focus: Enter then approves nothing
    expect(panel.locator(".outcome-confirm")).to_have_count(0, timeout=8000)
    expect(page.locator("#btn-approve")).not_to_be_focused()
    page.keyboard.press("Enter")
    page.wait_for_timeout(300)
    expect(panel).to_have_attribute("data-status", "pending")
    page.keyboard.press("a")  # only arms it again
    expect(panel.locator(".outcome-confirm")).to_have_text("Risk high: press a again (or Enter) to approve.")
    page.wait_for_timeout(300)
    expect(panel).to_have_attribute("data-status", "pending")
    page.keyboard.press("a")
    expect(panel).to_have_attribute("data-status", "approved")
    assert api(server, "GET", f"/api/v1/agent-approvals/{approval['approval_id']}", agent_key)["status"] == "approved"
    assert "Traceback" not in full_log(server), full_log(server)


def test_a_refused_post_says_so_and_a_stop_cancels_an_open_approved_call_live(
        serve, chromium, project, agent, reviewers):  # noqa: F811
    """Two paths of live.js: an htmx post answered 4xx (htmx swaps nothing) is said in the outcome
    area, and an approved call that has not started (data-not-started) follows a stop: its page
    shows who cancelled it and its budget badge, without a reload."""
    rita, sam = reviewers
    agent_key = api_key_create(user=agent, name="browser")[1]
    sam_key = api_key_create(user=sam, name="browser")[1]
    server = serve()
    approval = request_call(server, agent_key, project, title="Write docs", action="Write the README",
                            input_data={"files": ["README.md"]})
    url = f"/api/v1/agent-approvals/{approval['approval_id']}"

    page = log_in(chromium.new_context(server), rita.username)
    page.goto(f"/review/agent-approvals/{approval['approval_id']}")
    wait_live(page)
    mark_page(page)
    panel = page.locator("#decision-panel")

    # A NUL character cannot be stored: the server answers 400 in plain text, and the page says it.
    page.locator("#reject-reason").evaluate("el => { el.value = 'bad\\u0000reason'; }")
    page.locator("#btn-reject").click()
    expect(panel.locator(".outcome-error")).to_contain_text("A field holds a NUL character")
    expect(panel.locator(".outcome-error")).to_contain_text("Nothing was decided.")
    expect(panel).to_have_attribute("data-status", "pending")
    assert api(server, "GET", url, agent_key)["status"] == "pending"

    page.locator("#btn-approve").click()
    expect(panel).to_have_attribute("data-status", "approved")
    expect(page.locator("#call-budget")).to_have_text("Reserved")

    api(server, "POST", f"/api/v1/emergency/stop/{project.pk}", sam_key, status=(201,),
        body={"reason": "browser drill"})
    expect(panel).to_have_attribute("data-status", "cancelled")
    expect(panel.locator(".decided .state")).to_contain_text(f"by an emergency stop ({sam.username})")
    expect(panel).to_contain_text(f"It had been approved by {rita.username}")
    expect(page.locator("#call-budget")).to_have_text("Released")
    expect(page.locator("#page-status .status-badge")).to_have_text("Cancelled")
    assert_not_reloaded(page)
    assert api(server, "GET", url, agent_key)["status"] == "cancelled"
    assert "Traceback" not in full_log(server), full_log(server)


def test_the_admin_recovery_walkthrough_fits_a_phone_screen(serve, chromium, project, agent, reviewers, make_user):  # noqa: F811
    """At 390 px each step of the plan is a card of labelled rows: the page does not scroll sideways
    and who decided a step and what it did stay on screen."""
    from emergency.services import emergency_stop_trigger
    from projects.services import task_create
    from recovery.services import recovery_start, recovery_step_respond

    rita, _ = reviewers
    manager = make_user("mona", role="manager", project=project)
    task_create(actor=agent, project_id=project.pk, agent_type="coder", title="A task with a rather long title to wrap")
    task_create(actor=agent, project_id=project.pk, agent_type="coder", title="Donaudampfschifffahrts" * 20)
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="phone drill", actor=rita)
    session = recovery_start(project_id=project.pk, actor=manager, recovery_type="manual")
    for step in session.steps.order_by("order")[:3]:  # up to and with the settle step
        recovery_step_respond(session_id=session.pk, step_id=step.pk, actor=rita, decision="approve",
                              reason="checked on the phone")
    server = serve()

    page = log_in(chromium.new_context(server), rita.username)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"/admin/recovery/recoverysession/{session.pk}/change/")
    steps = page.locator("#recovery-steps")
    expect(steps).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, "the page scrolls sideways"
    settle = steps.locator("tr", has_text="settle_halted_tasks")
    decided = settle.locator("td[data-label='Decided by']")
    expect(decided).to_contain_text(rita.username)
    expect(settle.locator("td[data-label='Note / result']")).to_contain_text("A task with a rather long title")
    for cell in (decided, settle.locator("td[data-label='Note / result']")):
        box = cell.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    # on a desktop too: the title of one long word made the page 2.2 times the window's width
    page.set_viewport_size({"width": 1280, "height": 900})
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 1280, "the page scrolls sideways"
    assert "Traceback" not in full_log(server), full_log(server)


def test_a_question_that_ends_while_the_reviewer_types_says_so_and_shows_it_when_they_leave_the_box(
        serve, chromium, project, agent, reviewers):  # noqa: F811
    rita, _ = reviewers
    agent_key = api_key_create(user=agent, name="browser")[1]
    rita_key = api_key_create(user=rita, name="stop")[1]
    server = serve()
    task = api(server, "POST", "/api/v1/tasks", agent_key, status=(201,),
               body={"project_id": str(project.pk), "agent_type": "coder", "title": "Pick a database"})
    question = api(server, "POST", "/api/v1/hitl", agent_key, status=(201,), body={
        "project_id": str(project.pk), "task_id": task["task_id"], "request_type": "question",
        "question": "Which database should we use?"})

    page = log_in(chromium.new_context(server), rita.username, next_path=f"/review/hitl/{question['id']}")
    mark_page(page)
    page.fill("#reject-reason", "We need to talk about this first")
    page.focus("#reject-reason")
    api(server, "POST", f"/api/v1/tasks/{task['task_id']}/status", agent_key,
        body={"status": "failed", "error": "the agent gave up"})

    note = page.locator("#hitl-changed")
    expect(note).to_contain_text("This request is now cancelled")
    expect(page.locator("#decision-panel button[type=submit]").first).to_be_disabled()
    assert_not_reloaded(page)  # not under the reviewer's typing
    assert page.input_value("#reject-reason") == "We need to talk about this first"
    page.locator("#decision-title").click()  # leaves the text box
    expect(page.locator("#decision-panel .decided")).to_contain_text("its task was reported failed")

    # a question cancelled by a stop (its id is in the stop's event, not an event of its own)
    other = api(server, "POST", "/api/v1/hitl", agent_key, status=(201,), body={
        "project_id": str(project.pk), "request_type": "checkpoint", "question": "Deploy now?"})
    page.goto(f"/review/hitl/{other['id']}")
    wait_live(page)
    expect(page.locator("#decision-panel .decided")).to_have_count(0)
    api(server, "POST", f"/api/v1/emergency/stop/{project.pk}", rita_key,
        status=(201,), body={"reason": "browser drill"})
    expect(page.locator("#decision-panel .decided")).to_contain_text(f"an emergency stop ({rita.username})")
    assert "Traceback" not in full_log(server), full_log(server)


def test_a_decision_panel_is_not_swapped_under_the_reviewers_typing(
        serve, chromium, project, agent, reviewers):  # noqa: F811
    """The request changes elsewhere while the reviewer types a reason: the panel says so and waits.
    - decided by someone else: it shows the decision when they leave the box;
    - an unrelated change of the project (an override decided): leaving the box for the Reject button
      rejects with the typed reason (the click is not swallowed by a refresh), and leaving it
      elsewhere refreshes the still pending panel with the text kept."""
    rita, sam = reviewers
    agent_key = api_key_create(user=agent, name="browser")[1]
    sam_key = api_key_create(user=sam, name="browser")[1]
    server = serve()
    calls = [request_call(server, agent_key, project, title=f"Write docs {i}", action="Write the README",
                          input_data={"files": [f"README{i}.md"]}) for i in range(4)]

    def unrelated_change():
        override = api(server, "POST", "/api/v1/budget-overrides", agent_key, status=(201,), body={
            "project_id": str(project.pk), "violation_type": "daily_cost_limit", "requested_amount": "1.0000",
            "justification": "a bigger day"})
        api(server, "POST", f"/api/v1/budget-overrides/{override['id']}/respond", sam_key, body={"decision": "approve"})

    def typing_on(call, text):
        page.goto(f"/review/agent-approvals/{call['approval_id']}")
        wait_live(page)
        mark_page(page)
        page.fill("#reject-reason", text)
        page.focus("#reject-reason")

    page = log_in(chromium.new_context(server), rita.username)
    panel = page.locator("#decision-panel")
    typing_on(calls[0], "Not before the release")
    api(server, "POST", f"/api/v1/agent-approvals/{calls[0]['approval_id']}/respond", sam_key,
        body={"decision": "approve"})
    # its new state, as the question page says it (it said only "changed elsewhere")
    expect(panel.locator(".outcome-changed")).to_contain_text("This request is now approved")
    assert page.input_value("#reject-reason") == "Not before the release"  # not swapped under the typing
    expect(panel).to_have_attribute("data-status", "pending")
    page.locator("#decision-title").click()  # leaves the text box: the panel shows the decision
    expect(panel).to_have_attribute("data-status", "approved")
    expect(panel.locator(".decided")).to_contain_text(sam.username)
    assert_not_reloaded(page)

    typing_on(calls[1], "Not this week")
    unrelated_change()
    expect(panel.locator(".outcome-changed")).to_be_visible()
    page.locator("#btn-reject").click()
    expect(panel).to_have_attribute("data-status", "rejected")
    assert api(server, "GET", f"/api/v1/agent-approvals/{calls[1]['approval_id']}", agent_key)["rejection_reason"] \
        == "Not this week"

    typing_on(calls[2], "Keep this text")
    unrelated_change()
    expect(panel.locator(".outcome-changed")).to_be_visible()
    page.locator("#decision-title").click()  # leaves the box: the panel refreshes, the text stays
    expect(panel.locator(".outcome-changed")).to_have_count(0)
    expect(panel).to_have_attribute("data-status", "pending")
    expect(page.locator("#reject-reason")).to_have_value("Keep this text")
    assert_not_reloaded(page)

    # an amendment being edited (its box starts as the call's input) is kept too, its section open
    page.goto(f"/review/agent-approvals/{calls[3]['approval_id']}")
    wait_live(page)
    page.keyboard.press("e")  # opens the amend editor
    page.fill("#amended-input", '{"files": ["SAFE.md"]}')
    page.focus("#amended-input")
    unrelated_change()
    expect(panel.locator(".outcome-changed")).to_be_visible()
    page.locator("#decision-title").click()
    expect(panel.locator(".outcome-changed")).to_have_count(0)
    expect(page.locator("#amended-input")).to_have_value('{"files": ["SAFE.md"]}')
    expect(page.locator("#amend")).to_have_attribute("open", "")
    assert "Traceback" not in full_log(server), full_log(server)


def test_the_stop_banners_are_read_whenever_the_stream_opens(serve, chromium, project, reviewers):  # noqa: F811
    """Found with clients reconnecting under load: a stop's event the page's stream did not deliver
    (an event of another project with a lower id, before streams of every project waited for lower
    ids to settle) left its banner missing until a reload. The banners are read each time the stream
    opens, whatever the stream delivers: here its events are dropped in the page."""
    rita, sam = reviewers
    key = api_key_create(user=sam)[1]
    server = serve()
    page = log_in(chromium.new_context(server), rita.username)
    wait_live(page)
    reads = requests_to(page, lambda url: "/review/stop-banners" in url)
    page.evaluate("() => { window.hitlLive.socket.onmessage = null; }")  # its events lost, as in the race
    api(server, "POST", f"/api/v1/emergency/stop/{project.pk}", key, status=(201,),
        body={"reason": "while the page missed it"})
    page.wait_for_timeout(500)
    expect(page.locator("#stop-banners .banner-stop")).to_have_count(0)  # not shown: its event was lost
    page.evaluate("() => window.hitlLive.socket.close()")  # a drop: the page reconnects
    expect(page.locator("#stop-banners .banner-stop")).to_have_count(1, timeout=WAIT_MS)
    assert len(reads) == 1, reads  # read once, when the stream opened again


def test_banners_read_again_unchanged_are_not_announced_again(serve, chromium, project, reviewers):  # noqa: F811
    """Found with a screen reader: the banners, read again whenever a page's stream opens (each page
    load), were put back whole into their assertive live region, so every page a reviewer opened
    while a project was stopped was interrupted by its stop again. Unchanged, they are left as they
    are; a new stop still comes in (the test above)."""
    rita, sam = reviewers
    key = api_key_create(user=sam)[1]
    server = serve()
    api(server, "POST", f"/api/v1/emergency/stop/{project.pk}", key, status=(201,), body={"reason": "rollback"})
    context = chromium.new_context(server)
    context.add_init_script("""document.addEventListener('DOMContentLoaded', () => {
      const box = document.getElementById('stop-banners');
      window.bannerChanges = 0; window.bannerReads = 0;
      new MutationObserver((records) => {  // what an assertive region reads out: nodes added, text changed
        const read = records.filter((r) => r.addedNodes.length || r.type === 'characterData');
        window.bannerChanges += read.length;
        window.bannerRecords = (window.bannerRecords || []).concat(read.map((r) => r.target.textContent.slice(0, 80)));
      }).observe(box, {childList: true, subtree: true, characterData: true});  // (htmx toggles classes, unread)
      document.body.addEventListener('htmx:afterSwap', (e) => { if (e.detail.target === box) window.bannerReads += 1; });
    });""")
    page = log_in(context, rita.username)
    page.goto("/review/projects/")                  # another page: its stream opens and reads them again
    wait_live(page)
    page.wait_for_function("() => window.bannerReads >= 1")
    expect(page.locator("#stop-banners .banner-stop")).to_have_count(1)
    expect(page.get_by_role("link", name=f"Open project {project.name}")).to_be_visible()  # named, not one of many
    assert page.evaluate("() => window.bannerChanges") == 0, page.evaluate("() => window.bannerRecords")


def test_a_page_signed_out_elsewhere_says_so_instead_of_reconnecting(serve, chromium, project, reviewers):  # noqa: F811
    """The socket checks its session at every heartbeat: logged out in another tab, the open page's
    live status says it is signed out (it used to reconnect for ever, refused each time)."""
    rita, _ = reviewers
    server = serve(HITL_WS_HEARTBEAT_SECONDS="0.5")
    context = chromium.new_context(server)
    inbox = log_in(context, rita.username)
    other = open_page(context, f"/review/projects/{project.pk}")
    with other.expect_navigation():
        other.click("form.logout button")
    status = inbox.locator("#live-status")
    expect(status).to_have_attribute("data-state", "ended", timeout=WAIT_MS)
    expect(status).to_contain_text("Signed out: reload to sign in")
    assert inbox.evaluate("() => window.hitlLive.socket") is None  # and it does not reconnect


def test_a_page_whose_session_ended_while_its_socket_was_down_says_so(serve, chromium, project, reviewers):  # noqa: F811
    """The session ends while the socket is down (a restart with new demo passwords, a sign-out):
    each reconnect is refused at the handshake, which does not say why, and the page said
    "Reconnecting…" for ever; the inbox's next re-fetch followed the login redirect and pasted the
    login form into the list. Now the page asks the server, says it is signed out and stops, and a
    re-fetch shows a note instead of the login form."""
    rita, _ = reviewers
    server = serve(HITL_WS_HEARTBEAT_SECONDS="600")
    context = chromium.new_context(server)
    inbox = log_in(context, rita.username)
    status = inbox.locator("#live-status")
    expect(status).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    # The server now closes the open socket at the sign-out itself (4401, "Signed out"): here that
    # close reads as a drop, as when the socket was down (a restart, a lost network) when it happened.
    inbox.evaluate("""() => { const s = window.hitlLive.socket, close = s.onclose;
                              s.onclose = () => close({code: 1006}); }""")
    other = open_page(context, f"/review/projects/{project.pk}")
    with other.expect_navigation():
        other.click("form.logout button")  # the drop: every reconnect is now refused
    expect(status).to_have_attribute("data-state", "ended", timeout=WAIT_MS)
    expect(status).to_contain_text("Signed out: reload to sign in")
    assert '"GET /review/session" 401' in full_log(server)  # told by asking, not by the socket
    inbox.evaluate("() => htmx.trigger(document.body, 'hitl:event', {})")  # what a live event would do
    expect(inbox.locator("#inbox-outcome")).to_contain_text("You are signed out", timeout=WAIT_MS)
    assert inbox.locator("#id_username").count() == 0 and "Log in" not in inbox.title()


def test_a_pending_calls_countdown_ticks_on_its_page(serve, chromium, project, agent, reviewers):  # noqa: F811
    """The call page's "29 min 59 s left" stood still until an event came (the inbox re-fetched
    every 30 s); every countdown now counts down each second."""
    rita, _ = reviewers
    key = api_key_create(user=agent, name="browser")[1]  # before the server starts (on SQLite it copies the rows)
    server = serve()
    call = request_call(server, key, project, title="Countdown", action="Write the countdown",
                        input_data={"files": ["a.py"]})
    context = chromium.new_context(server)
    log_in(context, rita.username)
    page = open_page(context, f"/review/agent-approvals/{call['approval_id']}")
    left = page.locator("#decision-panel .time-left")
    expect(left).to_have_text(re.compile(r"^\d+ min \d+ s left$"), timeout=WAIT_MS)
    first = left.inner_text()
    expect(left).not_to_have_text(first, timeout=WAIT_MS)
    expect(left).to_have_text(re.compile(r"^\d+ min \d+ s left$"))


def test_a_page_whose_resume_point_the_server_refuses_says_to_reload(serve, chromium, project, reviewers):  # noqa: F811
    """A drop, then a reconnect with a last_event_id no event has had (a database restored under
    the page, say): the server says why and closes with 4400, and the page says to reload instead
    of reconnecting for ever."""
    rita, _ = reviewers
    server = serve()
    context = chromium.new_context(server)
    inbox = log_in(context, rita.username)
    status = inbox.locator("#live-status")
    expect(status).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    inbox.evaluate("() => { window.hitlLive.lastId = 1000000000; window.hitlLive.socket.close(); }")
    expect(status).to_have_attribute("data-state", "ended", timeout=WAIT_MS)
    expect(status).to_contain_text("Out of step with the server: reload")
    assert inbox.evaluate("() => window.hitlLive.socket") is None


PHONE = {"width": 390, "height": 844}


def _page_width(page) -> int:
    return page.evaluate("() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)")


def test_the_pages_fit_a_phone_and_wide_tables_scroll_inside_their_card(
        serve, chromium, project, agent, reviewers, make_user):  # noqa: F811
    """At 390 px no page is wider than the screen: a table wider than its card scrolls inside it."""
    from decimal import Decimal

    from approvals.services import agent_approval_request
    from budgets.models import BudgetAlert, ProjectBudget
    from projects.services import task_create

    rita, _ = reviewers
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("10.0000")})
    for n in range(3):  # tasks with long titles, calls in the inbox, a budget alert (85 % of the day)
        task = task_create(actor=agent, project_id=project.pk, agent_type="coder",
                           title=f"Refactor_the_invoice_export_pipeline_to_stream_rows_{n}_" + "x" * 40)
        agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                               proposed_action=f"Write the CSV exporter part {n}", input_data={"n": n},
                               estimated_tokens=12345, estimated_cost=Decimal("2.8333"))
    assert BudgetAlert.objects.filter(project=project).exists()
    server = serve()

    page = log_in(chromium.new_context(server, viewport=PHONE), rita.username)
    for path, rows in (("/review/", "#inbox-list > .item"),
                       (f"/review/projects/{project.pk}", "main table tbody tr"),
                       ("/review/projects/", "#project-list tbody tr"),
                       ("/review/audit/", ".pp-audit tbody tr")):
        page.goto(path)
        wait_live(page)
        expect(page.locator(rows).first).to_be_visible()  # with data in them
        assert _page_width(page) <= 390, (path, _page_width(page))
        for box in page.locator(".table-scroll").all():  # each table's card stays on the screen
            width = box.evaluate("el => el.getBoundingClientRect().right")
            assert width <= 390, (path, width)
    # the project page's task table is wider than a phone: it scrolls inside its card
    tasks = page.locator(".table-scroll", has=page.locator("th", has_text="Created"))
    page.goto(f"/review/projects/{project.pk}")
    assert tasks.evaluate("el => el.scrollWidth > el.clientWidth && getComputedStyle(el).overflowX === 'auto'")
    calls = page.locator("#inbox-list .item-link")
    page.goto("/review/")
    href = calls.first.get_attribute("href")
    page.goto(href)
    wait_live(page)
    assert _page_width(page) <= 390, (href, _page_width(page))
    assert "Traceback" not in full_log(server), full_log(server)


def test_keyboard_hints_show_with_a_keyboard_and_not_on_a_touch_screen(serve, chromium, project, agent, reviewers):  # noqa: F811
    from decimal import Decimal

    from approvals.services import agent_approval_request
    from projects.services import task_create

    rita, _ = reviewers
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="Touch")
    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="Write the touch test", input_data={},
                                  estimated_tokens=100, estimated_cost=Decimal("0.0100"))
    server = serve()

    desktop = log_in(chromium.new_context(server), rita.username)
    phone = log_in(chromium.new_context(server, viewport=PHONE, has_touch=True, is_mobile=True), rita.username)
    assert phone.evaluate("() => matchMedia('(pointer: coarse)').matches || matchMedia('(hover: none)').matches")
    assert not desktop.evaluate("() => matchMedia('(pointer: coarse)').matches")
    for page, shown in ((phone, False), (desktop, True)):
        keys = page.locator("#inbox-keys")
        expect(keys).to_be_visible() if shown else expect(keys).to_be_hidden()
        expect(page.locator("main .hint")).to_contain_text("The list updates live.")  # what is not about keys stays
        page.goto(f"/review/agent-approvals/{call.pk}")
        wait_live(page)
        for hint in (page.locator(".page-head .hint"), page.locator("#btn-approve kbd"),
                     page.locator("#reject-help .kbd-hint")):
            expect(hint).to_be_visible() if shown else expect(hint).to_be_hidden()
        # as the keys work (one `a` only arms Approve): it said "a approve (twice on a high risk)"
        expect(page.locator(".page-head .hint")).to_contain_text("a then a (or Enter) approve")
        expect(page.locator("#btn-approve")).to_be_visible()
        expect(page.locator("#reject-help")).to_contain_text("The agent sees this reason.")
    assert "Traceback" not in full_log(server), full_log(server)


def test_long_unbroken_agent_text_wraps_instead_of_widening_the_page(
        serve, chromium, project, agent, reviewers):  # noqa: F811
    """A 480-character option, a context summary of 3,000 characters without a space, a long stop
    reason: each made the page thousands of pixels wide, and the question page's answer buttons
    showed as bars without labels (off the screen)."""
    from decimal import Decimal

    from approvals.services import agent_approval_request
    from hitl.services import hitl_request_create
    from projects.services import task_create

    rita, _ = reviewers
    rita_key = api_key_create(user=rita)[1]  # after the server starts, everything goes through it
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="long words")
    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="Summarise", input_data={"n": 1}, context_summary="c" * 3000,
                                  estimated_tokens=10, estimated_cost=Decimal("0.0100"))
    question = hitl_request_create(asker=agent, project_id=project.pk, request_type="question",
                                   question="q" * 2000, options=["a" * 480, "b" * 480])
    server = serve()
    for viewport in (PHONE, {"width": 1280, "height": 900}):
        page = log_in(chromium.new_context(server, viewport=viewport), rita.username)
        for path in (f"/review/hitl/{question.pk}", f"/review/agent-approvals/{call.pk}"):
            page.goto(path)
            wait_live(page)
            assert _page_width(page) <= viewport["width"], (path, viewport, _page_width(page))
        page.goto(f"/review/hitl/{question.pk}")
        wait_live(page)
        buttons = page.locator("main form button").all()
        assert buttons, "the question's answer buttons"
        for button in buttons:  # every answer button's label on the screen
            box = button.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], (button.inner_text(), box)
    api(server, "POST", f"/api/v1/emergency/stop/{project.pk}", rita_key, status=(201,), body={"reason": "r" * 400})
    page = log_in(chromium.new_context(server, viewport=PHONE), rita.username)
    expect(page.locator(".banner-stop")).to_be_visible()
    assert _page_width(page) <= 390, _page_width(page)


def test_a_page_about_a_project_whose_role_was_taken_away_says_so(serve, chromium, project, agent, reviewers):  # noqa: F811
    """Every page follows every project (the stop banners): when the reviewer's role on the
    project was taken away, its project page and call page went on saying "Live" over what they
    could no longer see. They now say "No longer allowed here: reload"; the inbox goes on."""
    from decimal import Decimal

    from approvals.services import agent_approval_request
    from projects.services import task_create

    rita, _ = reviewers
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="watched")
    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="Summarise", input_data={"n": 1}, estimated_tokens=10,
                                  estimated_cost=Decimal("0.0100"))
    server = serve(HITL_WS_HEARTBEAT_SECONDS="0.5")
    context = chromium.new_context(server)
    inbox = log_in(context, rita.username)
    pages = [open_page(context, f"/review/projects/{project.pk}"), open_page(context, f"/review/agent-approvals/{call.pk}")]
    manage(server, "hitl_access", rita.username, "--revoke-roles", "--project", project.slug)  # the operators' way
    for page in pages:
        expect(page.locator("#live-status")).to_contain_text("No longer allowed here: reload", timeout=WAIT_MS)
        expect(page.locator("#live-status")).to_have_attribute("data-state", "ended")
    expect(inbox.locator("#live-status")).to_have_attribute("data-state", "live")


def test_the_inbox_keeps_its_j_k_selection_across_a_live_refresh(serve, chromium, project, agent, reviewers):  # noqa: F811
    """j j, then a new request arrives and the list refreshes: the selection was gone (htmx's
    settle put each row's class back), so Enter went wherever focus was left."""
    rita, _ = reviewers
    key = api_key_create(user=agent)[1]  # before the server starts: after, everything goes through it
    server = serve()
    for title in ("one", "two"):
        request_call(server, key, project, title=title, action=f"Call {title}", input_data={})
    page = log_in(chromium.new_context(server), rita.username)
    rows = page.locator("#inbox-list > .item")
    expect(rows).to_have_count(2)
    page.keyboard.press("j")
    page.keyboard.press("j")
    selected = page.locator("#inbox-list > .item.selected")
    expect(selected).to_have_count(1)
    key_before = selected.get_attribute("data-key")
    request_call(server, key, project, title="three", action="Third call", input_data={})
    expect(rows).to_have_count(3, timeout=WAIT_MS)   # refreshed live
    page.wait_for_timeout(300)                        # past htmx's settle
    expect(selected).to_have_count(1)
    assert selected.get_attribute("data-key") == key_before


def test_text_typed_before_the_session_ended_is_back_after_signing_in_again(
        serve, chromium, project, agent, reviewers):  # noqa: F811
    """A question's page posts a plain form: sent after the session ended, it went through the login
    page and came back without the reason typed; a call's page (htmx) said "signed out: reload", and
    the reload lost it too. The text is kept in the tab until the request is settled."""
    rita, _ = reviewers
    agent_key = api_key_create(user=agent, name="browser")[1]
    server = serve()
    question = api(server, "POST", "/api/v1/hitl", agent_key, status=(201,), body={
        "project_id": str(project.pk), "request_type": "question", "question": "Which database should we use?"})
    context = chromium.new_context(server)
    page = log_in(context, rita.username, next_path=f"/review/hitl/{question['id']}")
    page.fill("#reject-reason", "Ask the data team first")
    context.clear_cookies(name="sessionid")  # the session ends (expired); the CSRF cookie stays
    with page.expect_navigation():
        page.click(".reject-form button[type=submit]")
    assert "/admin/login/" in page.url
    page.fill("#id_username", rita.username)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("input[type=submit]")
    wait_live(page)
    assert page.url.endswith(f"/review/hitl/{question['id']}")  # the form was not sent: said so
    expect(page.locator("#decision-panel .outcome-area")).to_contain_text("Nothing was done")
    expect(page.locator("#draft-restored")).to_contain_text("back in its box")
    assert page.input_value("#reject-reason") == "Ask the data team first"
    with page.expect_navigation():
        page.click(".reject-form button[type=submit]")
    assert api(server, "GET", f"/api/v1/hitl/{question['id']}", agent_key)["response"] == "Ask the data team first"
    wait_live(page)
    expect(page.locator("#decision-panel .outcome-area")).to_contain_text("Rejected.")
    # a later event naming the settled request does not reload its page (the outcome said would go)
    mark_page(page)
    page.evaluate("id => document.body.dispatchEvent(new CustomEvent('hitl:event', "
                  "{detail: {data: {hitl_request_id: id, status: 'rejected'}}}))", question["id"])
    assert_not_reloaded(page)
    expect(page.locator("#decision-panel .outcome-area")).to_contain_text("Rejected.")
    page.reload()
    wait_live(page)
    expect(page.locator("#draft-restored")).to_have_count(0)  # settled: the draft is gone

    # a call's page (htmx): signed out, it says so; reloading to sign in keeps the text too
    approval = request_call(server, agent_key, project, title="Write docs", action="Write the README",
                            input_data={"files": ["README.md"]})
    page.goto(f"/review/agent-approvals/{approval['approval_id']}")
    wait_live(page)
    page.fill("#reject-reason", "Not this sprint")
    context.clear_cookies(name="sessionid")
    page.locator("#btn-reject").click()
    expect(page.locator("#decision-panel .outcome-area")).to_contain_text("signed out")
    page.reload()
    page.fill("#id_username", rita.username)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("input[type=submit]")
    wait_live(page)
    assert page.input_value("#reject-reason") == "Not this sprint"
    page.locator("#btn-reject").click()
    expect(page.locator("#decision-panel")).to_have_attribute("data-status", "rejected")
    assert api(server, "GET", f"/api/v1/agent-approvals/{approval['approval_id']}", agent_key)["status"] == "rejected"
    # settled: nothing of the drafts is kept in the tab
    drafts = "() => Object.keys(sessionStorage).filter(k => k.startsWith('hitl-draft:')).sort()"
    assert page.evaluate(drafts) == []

    # a draft is its reviewer's: another user's left in this tab is dropped, never put back; signing out drops all
    other = request_call(server, agent_key, project, title="Write more docs", action="Write the FAQ",
                         input_data={"files": ["FAQ.md"]})
    page.goto(f"/review/agent-approvals/{other['approval_id']}")
    wait_live(page)
    page.fill("#reject-reason", "Mine")
    page.evaluate("() => sessionStorage.setItem('hitl-draft:999999:' + location.pathname + '#modifications', 'x')")
    page.reload()
    wait_live(page)
    assert page.input_value("#reject-reason") == "Mine"
    mine = f"hitl-draft:{rita.pk}:/review/agent-approvals/{other['approval_id']}#reject-reason"
    assert page.evaluate(drafts) == [mine]
    page.goto("/admin/")  # the admin's Log out drops them too
    with page.expect_navigation():
        page.click("#logout-form button")
    assert page.evaluate(drafts) == []
    page.goto(f"/admin/login/?next=/review/agent-approvals/{other['approval_id']}")
    page.fill("#id_username", rita.username)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("input[type=submit]")
    wait_live(page)
    page.fill("#reject-reason", "Mine again")
    assert page.evaluate(drafts) == [mine]
    with page.expect_navigation():
        page.click("form.logout button")
    assert page.evaluate(drafts) == []
    assert "Traceback" not in full_log(server), full_log(server)


def test_a_question_answered_on_its_page_keeps_its_outcome_when_its_event_comes_first(
        serve, chromium, project, agent, reviewers):  # noqa: F811
    """The page reloads when an event names its question (answered elsewhere); its own answer's
    event, arriving while the answer's redirect was still loading, reloaded it and the one-time
    "Approved." was lost (the loser of a race lost its 409 "Not possible now" likewise). While its
    own answer is on its way, an event does not reload it."""
    rita, _ = reviewers
    agent_key = api_key_create(user=agent, name="browser")[1]
    server = serve()
    checkpoint = api(server, "POST", "/api/v1/hitl", agent_key, status=(201,), body={
        "project_id": str(project.pk), "request_type": "checkpoint", "question": "The plan is ready, go on?"})
    page = log_in(chromium.new_context(server), rita.username, next_path=f"/review/hitl/{checkpoint['id']}")
    mark_page(page)
    # the answer is sent (the page's own listener sees it) but held in the page: as if still loading
    page.evaluate("() => window.addEventListener('submit', e => e.preventDefault())")
    page.click("#decision-panel button.btn-approve")
    page.evaluate("id => document.body.dispatchEvent(new CustomEvent('hitl:event', "
                  "{detail: {data: {hitl_request_id: id, status: 'approved'}}}))", checkpoint["id"])
    assert_not_reloaded(page)  # the answer's own page comes next, not a reload
    assert api(server, "GET", f"/api/v1/hitl/{checkpoint['id']}", agent_key)["status"] == "pending"
    assert "Traceback" not in full_log(server), full_log(server)


def test_a_questions_time_out_warning_keeps_the_reviewers_choice_and_a_refused_answer_is_never_resent(
        serve, chromium, project, agent, reviewers):  # noqa: F811
    """Found by two reviewers racing in browsers: the time-out warning (an event naming the question,
    still pending) reloaded the question's page and cleared the option ticked; and a refused answer
    was shown at the form's address, so the next event's reload sent the form again: once the
    reviewer's role was restored, it answered the question with nobody clicking."""
    rita, _ = reviewers
    agent_key = api_key_create(user=agent, name="browser")[1]
    server = serve()
    question = api(server, "POST", "/api/v1/hitl", agent_key, status=(201,), body={
        "project_id": str(project.pk), "request_type": "question", "question": "Which database?",
        "options": ["Postgres", "MySQL"]})
    page = log_in(chromium.new_context(server), rita.username, next_path=f"/review/hitl/{question['id']}")
    wait_live(page)
    mark_page(page)
    page.check("input[type=radio][value=MySQL]")
    page.evaluate("id => document.body.dispatchEvent(new CustomEvent('hitl:event', {detail: {event_type: "
                  "'approval_timeout_warning', data: {hitl_request_id: id, status: 'pending', seconds_left: 12}}}))",
                  question["id"])
    assert_not_reloaded(page)
    assert page.is_checked("input[type=radio][value=MySQL]")
    expect(page.locator(".time-left")).to_have_class(re.compile(r"\burgent\b"))

    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.fill("#reject-reason", "   ")  # whitespace only: refused (400), nothing decided
    page.evaluate("() => { document.getElementById('reject-reason').required = false; }")
    page.click("#decision-panel .btn-reject")
    expect(page.locator("#decision-panel")).to_contain_text("Check the form")
    assert page.url.endswith(f"/review/hitl/{question['id']}"), page.url  # its own address again, not /decide
    mark_page(page)
    page.evaluate("id => document.body.dispatchEvent(new CustomEvent('hitl:event', {detail: {event_type: "
                  "'hitl_decided', data: {hitl_request_id: id, status: 'approved'}}}))", question["id"])
    page.wait_for_function("() => window.__hitlNotReloaded !== true")  # shown again: a GET of the page
    page.wait_for_load_state()
    assert len(posts) == 1, posts  # the refused form was not sent a second time
    assert api(server, "GET", f"/api/v1/hitl/{question['id']}", agent_key)["status"] == "pending"
    assert "Traceback" not in full_log(server), full_log(server)


def test_the_inbox_reads_its_list_once_per_gap_however_many_events_come(serve, chromium, project, agent, reviewers):  # noqa: F811
    """Every event read the whole list again (up to 180 KB, 70-120 ms of the server's CPU): an
    agent asking every half second made each open inbox read it twice a second. The events are
    gathered (one read per 2 s at most); the last one is never left out."""
    rita, _ = reviewers
    key = api_key_create(user=agent)[1]
    server = serve()
    page = log_in(chromium.new_context(server), rita.username)
    wait_live(page)
    reads = requests_to(page, lambda url: "/review/inbox/items" in url)
    asked = 8
    for n in range(asked):  # an agent asking every half second or so
        request_call(server, key, project, title=f"paced {n}", action=f"Paced call {n}", input_data={})
        page.wait_for_timeout(500)  # the agent's pace, not a wait for the page
    expect(page.locator("#inbox-list > .item")).to_have_count(asked, timeout=WAIT_MS)  # the last one too
    assert 1 <= len(reads) <= asked // 2, reads  # one read per event: 8


def test_an_inbox_the_server_is_slow_to_read_reads_it_less_often(serve, chromium, project, agent, reviewers):  # noqa: F811
    """A reviewer of every project with 15,000 items pending: each read of the list took the server
    0.2 to 1 s, once every 2 s while agents worked, and three such inboxes open made the agents'
    requests 5 to 13 times slower. A read answered in t waits 10 t (2 s at least, 30 s at most)
    before the next; the last event still shows."""
    rita, _ = reviewers
    key = api_key_create(user=agent)[1]
    server = serve()
    page = log_in(chromium.new_context(server), rita.username)
    wait_live(page)
    reads = []

    def slow(route):  # the server's answer 0.6 s late: the next read waits 6 s
        reads.append(route.request.url)
        page.wait_for_timeout(600)
        route.continue_()

    page.route("**/review/inbox/items*", slow)
    asked = 8
    for n in range(asked):  # about 6 s of an agent asking
        request_call(server, key, project, title=f"slow {n}", action=f"Slow call {n}", input_data={})
        page.wait_for_timeout(700)
    expect(page.locator("#inbox-list > .item")).to_have_count(asked, timeout=WAIT_MS)  # the last one too
    assert 1 <= len(reads) <= 2, reads  # with a 2 s gap: 3 or 4


def test_the_project_page_reads_itself_once_per_gap_however_many_events_come(serve, chromium, project, agent,
                                                                             reviewers):  # noqa: F811
    """It read the whole page again 300 ms after each event of its project: an agent asking every
    half second had it read twice a second. The events are gathered; the last one still shows."""
    rita, _ = reviewers
    key = api_key_create(user=agent)[1]
    server = serve()
    page = open_page(log_in(chromium.new_context(server), rita.username).context, f"/review/projects/{project.pk}")
    reads = requests_to(page, lambda url: url.endswith(f"/review/projects/{project.pk}"))
    asked = 8
    for n in range(asked):  # an agent asking every half second or so
        request_call(server, key, project, title=f"paced {n}", action=f"Paced call {n}", input_data={})
        page.wait_for_timeout(500)  # the agent's pace, not a wait for the page
    expect(page.locator(".pp-pending .pp-big")).to_have_text(str(asked), timeout=WAIT_MS)  # the last one too
    assert 1 <= len(reads) <= asked // 2, reads  # one read per event: 8


def test_a_finished_recoverys_page_no_longer_reads_itself_on_the_projects_events(
        serve, chromium, project, agent, reviewers, make_user):  # noqa: F811
    """Found in a read of the leftovers: once its recovery had finished, the recovery page still read
    itself again on every event of its project (the agents back at work), though nothing of it could
    change any more. The project page beside it still follows the project."""
    from emergency.services import emergency_stop_trigger
    from recovery.services import recovery_start, recovery_step_respond

    rita, _ = reviewers
    manager = make_user("mona", role="manager", project=project)
    emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="drill", actor=rita)
    session = recovery_start(project_id=project.pk, actor=manager, recovery_type="manual")
    for step in session.steps.order_by("order"):
        recovery_step_respond(session_id=session.pk, step_id=step.pk, actor=rita, decision="approve",
                              option="cancel" if step.action == "settle_halted_tasks" else "")
    session.refresh_from_db()
    assert session.status == "completed"
    key = api_key_create(user=agent)[1]
    server = serve()
    context = log_in(chromium.new_context(server), rita.username).context
    recovery_page = open_page(context, f"/review/recovery/{session.pk}")
    project_page = open_page(context, f"/review/projects/{project.pk}")
    reads = []
    context.on("request", lambda r: reads.append(r.url.split("/review/", 1)[-1]) if "/review/" in r.url else None)
    for n in range(3):  # the agents at work again: events of the project
        request_call(server, key, project, title=f"after {n}", action=f"Call {n}", input_data={})
    expect(project_page.locator(".pp-pending .pp-big")).to_have_text("3", timeout=WAIT_MS)
    recovery_page.wait_for_timeout(2500)  # the gatherer's 2 s gap, and more
    assert f"projects/{project.pk}" in reads and f"recovery/{session.pk}" not in reads, reads


def open_call_page(serve, chromium, project, agent, reviewer, **call):  # noqa: F811
    """(server, the agent's key, a call made through the API, the reviewer's page of it, live)."""
    key = api_key_create(user=agent, name="browser")[1]
    server = serve()
    made = request_call(server, key, project, **{"title": "Docs", "action": "Write the docs", "input_data": {}, **call})
    page = log_in(chromium.new_context(server), reviewer.username)
    page.goto(f"/review/agent-approvals/{made['approval_id']}")
    wait_live(page)
    return server, key, made, page


def test_the_focus_stays_on_its_link_when_the_inbox_refreshes_live(serve, chromium, project, agent, reviewers):  # noqa: F811
    """Found with a keyboard: each live refresh of the list dropped the focus to the page's body (the
    next Tab started from the top), and after j / k a link of another row had the focus pulled back
    to the selected row. New requests were not said to a screen reader either."""
    rita, _ = reviewers
    key = api_key_create(user=agent)[1]
    server = serve()
    for title in ("one", "two"):
        request_call(server, key, project, title=title, action=f"Call {title}", input_data={})
    page = log_in(chromium.new_context(server), rita.username)
    wait_live(page)
    rows = page.locator("#inbox-list > .item")
    expect(rows).to_have_count(2)
    second = rows.nth(1)
    row_key = second.get_attribute("data-key")
    second.locator(".meta-project").focus()          # Tab-ed to, not selected with j / k
    # The focused link is kept, not replaced by a copy focused again: the list was swapped whole, the
    # focus fell to the body for ~20 ms on every refresh (a Tab then started from the top) and a
    # screen reader read the link again each time (every 2 s while agents asked).
    page.evaluate("() => { document.activeElement.keptLink = true; window.blurs = 0;"
                  " document.addEventListener('focusout', () => { window.blurs += 1; }); }")
    request_call(server, key, project, title="three", action="Call three", input_data={})
    expect(rows).to_have_count(3, timeout=WAIT_MS)
    page.wait_for_timeout(300)                       # past htmx's settle
    focused = page.evaluate("() => [document.activeElement.className, "
                            "document.activeElement.closest('.item') && document.activeElement.closest('.item').dataset.key,"
                            " document.activeElement.keptLink === true, window.blurs]")
    assert focused == ["meta-project", row_key, True, 0], focused
    expect(page.locator("#live-announce")).to_have_text("1 new request in the inbox, 3 listed.")

    page.keyboard.press("j")                          # selects the first row, its link focused
    link = page.locator(f'#inbox-list > .item[data-key="{row_key}"] .item-link')
    link.focus()                                      # then Tab-ed to another row's link
    request_call(server, key, project, title="four", action="Call four", input_data={})
    expect(rows).to_have_count(4, timeout=WAIT_MS)
    page.wait_for_timeout(300)
    expect(link).to_be_focused()                      # not pulled back to the selected row
    expect(page.locator("#inbox-list > .item.selected")).to_have_count(1)


def test_a_decision_panel_changed_elsewhere_keeps_the_focus_on_its_new_state(serve, chromium, project, agent, reviewers):  # noqa: F811
    """The reviewer on Approve, another reviewer decides: the refreshed panel took the focus to the
    page's body and its new state, in a region swapped in whole, was not read out."""
    rita, sam = reviewers
    sam_key = api_key_create(user=sam, name="browser")[1]
    server, _, approval, page = open_call_page(serve, chromium, project, agent, rita)
    page.locator("#btn-approve").focus()
    api(server, "POST", f"/api/v1/agent-approvals/{approval['approval_id']}/respond", sam_key,
        body={"decision": "reject", "reason": "not now"})
    expect(page.locator("#decision-panel")).to_have_attribute("data-status", "rejected", timeout=WAIT_MS)
    expect(page.locator("#decision-panel .state")).to_be_focused()
    expect(page.locator("#live-announce")).to_contain_text("This request changed: Rejected by sam")


def test_single_letter_shortcuts_can_be_turned_off_and_a_lone_a_approves_nothing(
        serve, chromium, project, agent, reviewers):  # noqa: F811
    """One `a` pressed on a link approved a low-risk call (WCAG 2.1.4: a stray key, a word of speech
    input). Now the first `a` only focuses Approve; when its 5 s pass the focus goes back where it
    was; and the top bar's Shortcuts button turns the letters off, remembered in the browser."""
    rita, _ = reviewers
    server, agent_key, approval, page = open_call_page(serve, chromium, project, agent, rita)
    panel = page.locator("#decision-panel")
    crumb = page.locator("nav.crumbs a").first
    crumb.focus()
    page.keyboard.press("a")
    expect(page.locator("#btn-approve")).to_be_focused()
    expect(panel.locator(".outcome-confirm")).to_have_text("Press a again (or Enter) to approve.")
    expect(panel.locator(".outcome-confirm")).to_have_count(0, timeout=8000)
    expect(crumb).to_be_focused()                     # back where it was, not the page's body
    expect(panel).to_have_attribute("data-status", "pending")

    toggle = page.locator("#shortcuts-toggle")
    expect(toggle).to_have_attribute("aria-pressed", "true")
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "false")
    expect(toggle).to_have_text("Shortcuts off")
    page.reload()
    wait_live(page)
    expect(page.locator("#shortcuts-toggle")).to_have_attribute("aria-pressed", "false")   # remembered
    expect(page.locator(".page-head .kbd-hint")).to_be_hidden()
    page.locator("body").focus()
    page.keyboard.press("a")
    page.keyboard.press("a")
    page.wait_for_timeout(300)
    expect(page.locator("#btn-approve")).not_to_be_focused()
    expect(panel).to_have_attribute("data-status", "pending")
    assert api(server, "GET", f"/api/v1/agent-approvals/{approval['approval_id']}", agent_key)["status"] == "pending"
    page.locator("#shortcuts-toggle").click()         # on again: a a approves
    page.keyboard.press("a")
    page.keyboard.press("a")
    expect(panel).to_have_attribute("data-status", "approved")


def test_a_countdown_that_runs_out_reads_its_panel_again(serve, chromium, project, agent, reviewers):  # noqa: F811
    """Found by a time hunt with beat stopped: at the deadline no event comes, and the call page kept
    Approve enabled under "expired" until a reload. The countdown running out reads the panel again
    (the server times out what is due when it is read)."""
    rita, _ = reviewers
    _, _, call, page = open_call_page(serve, chromium, project, agent, rita, title="Deadline")
    page.wait_for_timeout(1100)  # one tick with time left: it was seen counting down
    with page.expect_request(lambda r: r.url.endswith(f"/review/agent-approvals/{call['approval_id']}/panel"),
                             timeout=WAIT_MS):
        # every countdown of the request (the page head's and the panel's: the head's ran out first and
        # took the panel's turn) to one deadline a moment away
        page.evaluate("() => { const at = new Date(Date.now() + 1500).toISOString();"
                      " document.querySelectorAll('.time-left[data-expires]').forEach("
                      "s => s.setAttribute('data-expires', at)); }")
    expect(page.locator("#decision-panel")).to_have_attribute("data-status", "pending")  # the server's deadline is later
    expect(page.locator("#live-announce")).not_to_contain_text("changed")


def test_a_hidden_inbox_does_not_poll(serve, chromium, project, reviewers):  # noqa: F811
    """Found by a keyboard and screen-reader hunt: a hidden tab still read the whole list every 30 s."""
    rita, _ = reviewers
    server = serve()
    page = log_in(chromium.new_context(server), rita.username)
    wait_live(page)
    reads = requests_to(page, lambda url: "/review/inbox/items" in url)
    page.evaluate("() => Object.defineProperty(document, 'hidden', {configurable: true, get: () => true})")
    page.wait_for_timeout(32000)  # past the list's 30 s poll
    assert reads == [], reads
