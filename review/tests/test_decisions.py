"""The decision pages: /review/agent-approvals/<id> and /review/response-approvals/<id>. Login,
per-project visibility (404 for outsiders), decisions through the services (status and audit),
refusals shown on the page (400 / 403 / 409 / 410, never a 500), CSRF, precedent and diff."""
import json
import re
from datetime import timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone
from django.utils.html import escape

from approvals.models import AgentCallApproval, ResponseApproval
from approvals.services import (
    agent_approval_decide,
    agent_approval_request,
    agent_approval_start,
    agent_approval_time_out,
    response_approval_submit,
)
from access.services import role_revoke_all
from audit.models import AuditEvent
from budgets.models import ProjectBudget
from emergency.services import emergency_stop_trigger
from projects.services import task_create
from review.templatetags.review_format import money_text

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


def make_call(project, agent, *, action="Write the login form", input_data=None, cost="0.0100", tokens=100):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=action)
    return agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action=action, input_data=input_data or {"files": ["login.tsx"]},
                                  estimated_tokens=tokens, estimated_cost=Decimal(cost))


def web(user, **kwargs):
    client = Client(**kwargs)
    client.force_login(user)
    return client


def page(call):
    return f"/review/agent-approvals/{call.pk}"


def decide_url(call):
    return f"/review/agent-approvals/{call.pk}/decide"


def audited(obj, action):
    return AuditEvent.objects.filter(object_id=str(obj.pk), action=action).exists()


@pytest.fixture
def call(project, agent):
    return make_call(project, agent, input_data={"path": "src/login.tsx", "max_tokens": 50,
                                                 "notes": "<script>alert(1)</script>"})


# --- the approval page ------------------------------------------------------------------------
def test_pages_need_a_login(call):
    for url in (page(call), f"{page(call)}/panel"):
        r = Client().get(url)
        assert r.status_code == 302 and r["Location"].startswith("/admin/login/")
    r = Client().post(decide_url(call), {"decision": "approve"})
    assert r.status_code == 302
    call.refresh_from_db()
    assert call.status == "pending"


def test_outsiders_get_404_and_decide_nothing(call, outsider):
    client = web(outsider)
    assert client.get(page(call)).status_code == 404
    assert client.get(f"{page(call)}/panel").status_code == 404
    assert client.post(decide_url(call), {"decision": "approve"}).status_code == 404
    call.refresh_from_db()
    assert call.status == "pending"


def test_a_reviewer_whose_role_was_removed_is_told_so_by_the_pages_own_requests(call, reviewer, project):
    client = web(reviewer)
    assert client.get(page(call)).status_code == 200          # the page open, then the role removed
    role_revoke_all(user=reviewer, project=project)
    for r in (client.post(decide_url(call), {"decision": "approve"}, **HTMX), client.get(f"{page(call)}/panel", **HTMX)):
        assert r.status_code == 404 and r["Content-Type"].startswith("text/plain")
        assert "your role in its project was removed" in r.content.decode()
    assert client.get(page(call)).status_code == 404          # a navigation: Django's own 404
    call.refresh_from_db()
    assert call.status == "pending"


def test_the_page_shows_the_call(call, reviewer):
    r = web(reviewer).get(page(call))
    assert r.status_code == 200
    html = r.content.decode()
    assert "Write the login form" in html
    assert escape('"path": "src/login.tsx",') in html              # pretty-printed JSON
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html   # escaped
    assert "Estimated tokens" in html and "$0.0100" in html
    assert 'id="btn-approve"' in html and 'id="amended-input"' in html and 'id="reject-reason"' in html
    assert 'for="reject-reason"' in html and 'for="amended-input"' in html    # labels
    assert 'aria-live="polite"' in html
    assert 'data-live-approval="%s"' % call.pk in html
    # the amend editor is prefilled with the pretty input
    editor = re.search(r'<textarea id="amended-input"[^>]*>(.*?)</textarea>', html, re.S).group(1)
    assert json.loads(editor.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                      .replace("&#x27;", "'").replace("&amp;", "&")) == call.input_data


def test_risk_flags_are_marked_at_their_keys(project, agent, reviewer):
    call = make_call(project, agent, action="Send the report",
                     input_data={"to": "jane.doe@acme-corp.io", "body": "hello"})
    flags = call.risk_assessment["flags"]
    assert any(f.get("location") == "input_data.to" for f in flags), flags
    html = web(reviewer).get(page(call)).content.decode()
    line = re.search(r'<span class="ln flagged sev-(\w+)" id="input-L(\d+)">([^\n]*)', html)
    assert line and "jane.doe" in line.group(3) and "(input_data.to)" in line.group(3)
    assert f'href="#input-L{line.group(2)}"' in html                 # the flag list links to the line


def test_approve_through_the_page(call, reviewer):
    r = web(reviewer).post(decide_url(call), {"decision": "approve"}, **HTMX)
    assert r.status_code == 200
    html = r.content.decode()
    assert "Approved." in html and 'data-status="approved"' in html and "<html" not in html
    assert re.search(r'id="btn-approve"[^>]*disabled', html)          # the buttons are off now
    call.refresh_from_db()
    assert call.status == "approved" and call.approved_by == reviewer
    assert audited(call, "agent_approval.approve")


def test_approve_without_htmx_redirects_and_shows_the_outcome(call, reviewer):
    client = web(reviewer)
    r = client.post(decide_url(call), {"decision": "approve"})
    assert r.status_code == 302 and r["Location"] == page(call)
    assert "Approved." in client.get(page(call)).content.decode()


def test_approve_with_amended_input(call, reviewer):
    amended = {"path": "src/login.tsx", "max_tokens": 20}
    r = web(reviewer).post(decide_url(call), {"decision": "approve", "amended_input_data": json.dumps(amended)},
                           **HTMX)
    assert "Approved with amended input." in r.content.decode()
    call.refresh_from_db()
    assert call.status == "approved" and call.amended_input_data == amended
    assert audited(call, "agent_approval.approve_amended")


@pytest.mark.parametrize("text, error", [
    ('{"path": "src/login.tsx",', "not valid JSON"),
    ('["a", "list"]', "must be a JSON object"),
    ('{"x": NaN}', "not valid JSON"),                 # the database refused it: a 500 page
    ("Infinity", "not valid JSON"),
    ('{"a": ' * 3000 + "1" + "}" * 3000, "nesting is deeper than 64 levels"),  # was a RecursionError
    ('{"a": "nul \\u0000 here"}', "NUL character"),
])
def test_an_amendment_that_is_not_a_json_object_decides_nothing(call, reviewer, text, error):
    r = web(reviewer).post(decide_url(call), {"decision": "approve", "amended_input_data": text})
    assert r.status_code == 400
    html = r.content.decode()
    assert error in html and "Nothing was decided" in html
    assert escape(text)[:500] in html                                  # what they typed is kept
    assert '<details class="amend" id="amend" open>' in html and 'aria-invalid="true"' in html
    r = web(reviewer).post(decide_url(call), {"decision": "approve", "amended_input_data": text}, **HTMX)
    assert r.status_code == 200 and error in r.content.decode()
    call.refresh_from_db()
    assert call.status == "pending" and call.amended_input_data is None
    assert not audited(call, "agent_approval.approve_amended")


def test_an_amendment_the_service_refuses_is_shown(call, reviewer):
    from budgets.models import ProjectBudget

    ProjectBudget.objects.update_or_create(project=call.project, defaults={"daily_token_limit": 1000})
    too_big = {"path": "src/login.tsx", "notes": "x " * 5000}  # the growth would pass the daily token limit
    r = web(reviewer).post(decide_url(call), {"decision": "approve", "amended_input_data": json.dumps(too_big)})
    assert r.status_code == 409 and "more than the call reserved" in r.content.decode()
    call.refresh_from_db()
    assert call.status == "pending"


def test_an_amendment_past_the_body_limit_says_so_and_decides_nothing(call, reviewer, settings):
    """An input of 90 KB is prefilled indented (a megabyte): sent back, it passed the body limit and
    the panel said "The server refused this (HTTP 400) ... reload the page", which could not help."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2000
    big = json.dumps({"path": "src/login.tsx", "notes": "x" * 3000}, indent=2)
    for debug, headers in ((False, {}), (False, HTMX), (True, HTMX)):  # make run's DEBUG showed its debug page
        settings.DEBUG = debug
        r = web(reviewer).post(decide_url(call), {"decision": "approve", "amended_input_data": big}, **headers)
        assert r.status_code == 400 and r["Content-Type"].startswith("text/plain"), r.content[:300]
        assert r.content.decode().startswith("The form sent is larger than this server takes (2,000 bytes, "
                                             "HITL_MAX_BODY_BYTES): nothing was done.")
    call.refresh_from_db()
    assert call.status == "pending"


def test_the_amend_editor_of_a_large_input_is_compact_and_can_be_sent_back(project, agent, reviewer, settings):
    """Indented, an input of 90 KB filled the editor with a megabyte, past the body limit: sent back
    unchanged, the form was refused. Past a quarter of the limit the editor holds compact JSON."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 40_000
    small = make_call(project, agent, action="small", input_data={"a": [1, 2]})
    assert '{\n  &quot;a&quot;: [\n    1,' in web(reviewer).get(page(small)).content.decode()  # indented to read
    nested = {"level": {"deeper": {"items": list(range(2500))}}}
    big = make_call(project, agent, action="big", input_data=nested)
    html = web(reviewer).get(page(big)).content.decode()
    compact = json.dumps(nested, separators=(",", ":"))
    assert compact.replace('"', "&quot;") in html
    r = web(reviewer).post(decide_url(big), {"decision": "approve", "amended_input_data": compact})
    assert r.status_code == 302, r.content[:300]
    big.refresh_from_db()
    assert big.status == "approved" and big.amended_input_data == nested


def test_reject_needs_a_reason(call, reviewer):
    client = web(reviewer)
    r = client.post(decide_url(call), {"decision": "reject", "reason": "  "})
    assert r.status_code == 400 and "Give a reason" in r.content.decode()
    call.refresh_from_db()
    assert call.status == "pending"
    r = client.post(decide_url(call), {"decision": "reject", "reason": "Wrong file"}, **HTMX)
    assert "Rejected." in r.content.decode() and "Wrong file" in r.content.decode()
    call.refresh_from_db()
    assert call.status == "rejected" and call.rejection_reason == "Wrong file"
    assert audited(call, "agent_approval.reject")


def test_a_second_decision_is_a_409_message(call, reviewer, manager):
    agent_approval_decide(approval_id=call.pk, decider=manager, decision="approve")
    r = web(reviewer).post(decide_url(call), {"decision": "reject", "reason": "too late"})
    assert r.status_code == 409
    html = r.content.decode()
    assert "already approved (by manager at " in html and 'role="status"' in html  # who beat this reviewer to it
    r = web(reviewer).post(decide_url(call), {"decision": "reject", "reason": "too late"}, **HTMX)
    assert r.status_code == 200 and "already approved" in r.content.decode()
    call.refresh_from_db()
    assert call.status == "approved" and call.approved_by == manager


def test_a_decision_after_the_deadline_is_a_410_message(call, reviewer):
    AgentCallApproval.objects.filter(pk=call.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    r = web(reviewer).post(decide_url(call), {"decision": "approve"})
    assert r.status_code == 410 and "timed out" in r.content.decode()
    call.refresh_from_db()
    assert call.status == "timed_out"


def test_an_emergency_stop_is_a_clear_message(call, reviewer, manager):
    emergency_stop_trigger(project_id=call.project_id, condition="manual_stop", reason="halt", actor=manager)
    r = web(reviewer).post(decide_url(call), {"decision": "approve"})
    assert r.status_code in (409, 423)
    assert "emergency" in r.content.decode().lower()
    assert "Project Demo is under an emergency stop" in r.content.decode()


def test_the_requester_and_an_agent_cannot_decide(call, agent):
    agent.is_staff = True  # signed in (only staff can be): the agent role still decides nothing
    agent.save(update_fields=["is_staff"])
    html = web(agent).get(page(call)).content.decode()
    assert "someone else decides it" in html and re.search(r'id="btn-approve"[^>]*disabled', html)
    r = web(agent).post(decide_url(call), {"decision": "approve"})
    assert r.status_code == 403 and "Not allowed" in r.content.decode()
    call.refresh_from_db()
    assert call.status == "pending"


def test_a_budget_blocked_call_cannot_be_approved_and_says_why(project, agent, reviewer):
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("2.0000")})
    blocked = make_call(project, agent, cost="2.5000")
    html = web(reviewer).get(page(blocked)).content.decode()
    assert "blocked by budget" in html and escape(money_text(blocked.budget_blocked_reason)) in html
    assert "limit by $0.5000: approving budget override" in html  # its money as money
    assert f'href="/review/?kind=override&amp;project={project.pk}#override-{blocked.budget_override_id}"' in html
    assert "It needs a <a" in html and "budget override</a> approved first: Daily cost limit, +$0.5000 (Pending)" in html
    assert re.search(r'id="btn-approve"[^>]*disabled', html)
    assert not re.search(r'id="btn-reject"[^>]*disabled', html)
    r = web(reviewer).post(decide_url(blocked), {"decision": "approve"})
    assert r.status_code == 409
    refusal = re.search(r'class="outcome outcome-error"[^>]*>([^<]*)<', r.content.decode())
    assert refusal and "by $0.5000" in refusal.group(1), refusal  # its money as money, as the page shows it
    blocked.refresh_from_db()
    assert blocked.status == "pending"


def test_csrf_is_enforced(call, reviewer):
    client = web(reviewer, enforce_csrf_checks=True)
    r = client.post(decide_url(call), {"decision": "approve"})
    assert r.status_code == 403
    call.refresh_from_db()
    assert call.status == "pending"
    client.get(page(call))
    token = client.cookies["csrftoken"].value
    r = client.post(decide_url(call), {"decision": "approve"}, HTTP_X_CSRFTOKEN=token, **HTMX)  # htmx's header
    assert r.status_code == 200
    call.refresh_from_db()
    assert call.status == "approved"


def test_the_panel_refreshed_after_ones_own_decision_says_it_as_the_click_did(call, reviewer):
    """The decision's own event refreshes the decider's panel too: it said "This request is now
    approved by <themselves>", replacing their "Approved.", as if someone else had decided."""
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
    html = web(reviewer).get(f"{page(call)}/panel").content.decode()
    assert "You approved it." in html and "This request is now" not in html


def test_the_panel_partial_reflects_a_decision_made_elsewhere(call, reviewer, manager):
    client = web(reviewer)
    assert 'data-status="pending"' in client.get(f"{page(call)}/panel").content.decode()
    agent_approval_decide(approval_id=call.pk, decider=manager, decision="reject", reason="not now")
    html = client.get(f"{page(call)}/panel").content.decode()
    assert 'data-status="rejected"' in html and "manager" in html and "not now" in html
    assert "This request is now rejected by manager." in html           # announced in the aria-live area
    assert 'id="page-status" class="page-status" hx-swap-oob="true"' in html   # the page's header follows
    assert re.search(r'id="btn-approve"[^>]*disabled', html) and re.search(r'id="btn-reject"[^>]*disabled', html)


def test_a_stop_that_cancels_an_approved_call_updates_its_open_page(call, reviewer, manager):
    """An approved call not yet started is still live: its panel asks to be refreshed by a stop
    (data-not-started), and the refresh brings the page's status and budget badges along."""
    client = web(reviewer)
    agent_approval_decide(approval_id=call.pk, decider=manager, decision="approve")
    page_html = client.get(page(call)).content.decode()
    assert 'data-status="approved" data-not-started' in page_html
    assert '<span id="call-budget" class="badge budget-reserved">Reserved</span>' in page_html
    emergency_stop_trigger(project_id=call.project_id, condition="manual_stop", reason="halt", actor=manager)
    html = client.get(f"{page(call)}/panel").content.decode()
    assert 'data-status="cancelled"' in html
    assert '<span id="call-budget" class="badge budget-released" hx-swap-oob="true">Released</span>' in html
    assert 'id="page-status" class="page-status" hx-swap-oob="true"' in html


def test_a_call_cancelled_after_its_approval_names_who_cancelled_it_and_when(call, reviewer, manager, agent):
    """The call keeps its approver and approval time: the page used to say "Cancelled by
    <approver> at <approval time>". It names the stop (and who set it off) or the agent."""
    agent_approval_decide(approval_id=call.pk, decider=manager, decision="approve")
    call.refresh_from_db()
    approved_at = call.responded_at
    stop, _ = emergency_stop_trigger(project_id=call.project_id, condition="manual_stop", reason="halt",
                                     actor=reviewer)
    client = web(manager)
    html = client.get(page(call)).content.decode()
    stamp = stop.created_at.astimezone(dt_timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    assert f"by <strong>an emergency stop (reviewer)</strong> at {stamp} UTC" in html
    assert ("It had been approved by <strong>manager</strong> at "
            f"{approved_at.astimezone(dt_timezone.utc).strftime('%Y-%m-%d %H:%M:%S')} UTC") in html
    assert f'<a href="/review/projects/{call.project_id}">The project\'s stop and recovery</a>' in html
    assert "This request is now cancelled by an emergency stop (reviewer)." in \
        client.get(f"{page(call)}/panel").content.decode()


def test_a_call_its_agent_withdrew_after_approval_names_the_agent_and_its_reason(call, manager, agent):
    from approvals.services import agent_approval_cancel

    agent_approval_decide(approval_id=call.pk, decider=manager, decision="approve")
    agent_approval_cancel(approval_id=call.pk, actor=agent, reason="the user closed the ticket")
    html = web(manager).get(page(call)).content.decode()
    assert f"by <strong>its agent ({agent.get_username()})</strong> at" in html
    assert "Reason: the user closed the ticket" in html
    assert "It had been approved by <strong>manager</strong>" in html


def test_a_pending_call_cancelled_by_an_automatic_stop_after_an_earlier_stop(call, project, manager, reviewer):
    """A stop before the call (lifted) is not the one that cancelled it; an automatic stop names its
    condition; a call never approved says nothing of an approval."""
    from emergency.models import EmergencyStop

    EmergencyStop.objects.create(project=project, triggered_conditions=["manual_stop"], stop_reason="old drill",
                                 severity="high", triggered_by=f"{manager.username}#{manager.pk}",
                                 triggered_by_user=manager, resolved_at=timezone.now(), resolved_by=manager)
    EmergencyStop.objects.filter(stop_reason="old drill").update(created_at=call.created_at - timedelta(hours=1))
    stop, _ = emergency_stop_trigger(project_id=call.project_id, condition="security_threat", reason="leak")
    html = web(reviewer).get(page(call)).content.decode()
    stamp = stop.created_at.astimezone(dt_timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    assert f"by <strong>an emergency stop (security threat, automatic)</strong> at {stamp} UTC" in html
    assert "It had been approved" not in html and manager.username not in html.split('id="decision-panel"')[1]


def test_a_call_an_administrator_withdrew_names_the_administrator(call, manager, admin_user):
    from approvals.services import agent_approval_cancel

    agent_approval_decide(approval_id=call.pk, decider=manager, decision="approve")
    agent_approval_cancel(approval_id=call.pk, actor=admin_user, reason="wrong repository")
    html = web(manager).get(page(call)).content.decode()
    assert f"by <strong>{admin_user.username}</strong> at" in html and "its agent" not in html
    assert "Reason: wrong repository" in html


def test_a_lapsed_grant_is_cancelled_by_the_system(call, manager):
    from approvals.services import agent_approval_expire_grant

    agent_approval_decide(approval_id=call.pk, decider=manager, decision="approve")
    assert agent_approval_expire_grant(approval_id=call.pk, now=timezone.now() + timedelta(days=1))
    html = web(manager).get(page(call)).content.decode()
    assert "by <strong>the system</strong> at" in html
    assert "Reason: it was approved but not started in time" in html


# --- precedent ---------------------------------------------------------------------------------
def test_precedent_counts_last_decisions_and_the_diff(project, agent, reviewer, manager):
    action = "Deploy the billing service"
    first = make_call(project, agent, action=action, input_data={"service": "billing", "replicas": 2})
    agent_approval_decide(approval_id=first.pk, decider=manager, decision="approve")
    second = make_call(project, agent, action=action, input_data={"service": "billing", "replicas": 9})
    agent_approval_decide(approval_id=second.pk, decider=reviewer, decision="reject", reason="Too many replicas")
    third = make_call(project, agent, action=action, input_data={"service": "billing", "replicas": 3})
    AgentCallApproval.objects.filter(pk=third.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert agent_approval_time_out(approval_id=third.pk)
    make_call(project, agent, action="Something else", input_data={"service": "x"})  # not the same action
    current = make_call(project, agent, action=action, input_data={"service": "billing", "replicas": 4})

    html = web(reviewer).get(page(current)).content.decode()
    assert re.search(r'data-status="approved"><span class="count-n">1</span> approved', html)
    assert re.search(r'data-status="rejected"><span class="count-n">1</span> rejected', html)
    assert re.search(r'data-status="timed_out"><span class="count-n">1</span> timed out', html)
    assert "Too many replicas" in html and "manager" in html
    assert '<span class="d-del">-  &quot;replicas&quot;: 2</span>' in html
    assert '<span class="d-add">+  &quot;replicas&quot;: 4</span>' in html


def test_a_long_input_is_compared_with_its_precedent_in_one_pass(project, agent, manager, reviewer, monkeypatch):
    """Found by a reviewer at scale: the page of a call with an 800 KB input whose last approved
    precedent had another gave no answer in 120 s and held a web thread at full CPU for minutes
    (difflib's time grows with the product of the two inputs' lines), and any agent may send such
    inputs. Past DIFF_MAX_LINES the page says where the inputs first differ instead."""
    from review import selectors

    calls_made = []
    monkeypatch.setattr(selectors.difflib, "unified_diff", lambda *a, **k: calls_made.append(1) or iter(()))
    rows = [{"i": i, "v": i * 2} for i in range(1000)]  # 4,000 lines indented
    first = make_call(project, agent, action="bulk import", input_data={"rows": rows})
    agent_approval_decide(approval_id=first.pk, decider=manager, decision="approve")
    changed = [dict(row) for row in rows]
    changed[700]["v"] = "changed"
    current = make_call(project, agent, action="bulk import", input_data={"rows": changed})
    html = web(reviewer).get(page(current)).content.decode()
    assert not calls_made  # no line-by-line comparison of 4,004 lines against 4,004
    line = 2 + 700 * 4 + 3  # two opening lines, 700 rows of four lines, then "{", "i" and "v"
    assert f"too long to compare line by line here (4,004 lines against 4,004; at most 2,000): the first " \
           f"difference is at line {line:,}" in html
    assert '<span class="d-del">-      &quot;v&quot;: 1400</span>' in html
    assert '<span class="d-add">+      &quot;v&quot;: &quot;changed&quot;</span>' in html


def test_no_precedent_says_so(call, reviewer):
    html = web(reviewer).get(page(call)).content.decode()
    assert "nothing to compare" in html


# --- response approvals ------------------------------------------------------------------------
@pytest.fixture
def response(project, agent, reviewer):
    call = make_call(project, agent, action="Write the parser")
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
    agent_approval_start(approval_id=call.pk, actor=agent)
    return response_approval_submit(
        submitter=agent, project_id=project.pk, task_id=call.task_id, agent_type="coder", call_approval_id=call.pk,
        agent_response={"files": [{"path": "parser.py", "content": "def parse(s):\n    return s.split(',')\n"}],
                        "code": "print('<b>hi</b>')", "notes": "call me at jane.doe@acme-corp.io"},
        response_summary="Parser written", next_steps=["write tests"], tokens_used=50,
        actual_cost=Decimal("0.0050"))


def test_files_as_a_mapping_of_paths_are_shown_as_code_too():
    """The demo fleet's coder sends ``files`` as {path: content}: its code was only one-line JSON."""
    from review.selectors import code_blocks

    blocks = code_blocks({"files": {"src/app.py": "x = 1\n", "README": 3}, "code": "y = 2"})
    assert blocks == [
        {"name": "src/app.py", "location": 'agent_response.files["src/app.py"]', "content": "x = 1\n"},
        {"name": "code", "location": "agent_response.code", "content": "y = 2"}]


def rpage(response):
    return f"/review/response-approvals/{response.pk}"


def test_the_response_page(response, reviewer, outsider):
    assert Client().get(rpage(response)).status_code == 302
    assert web(outsider).get(rpage(response)).status_code == 404
    html = web(reviewer).get(rpage(response)).content.decode()
    assert "Parser written" in html and "write tests" in html
    assert '<pre class="code" tabindex="0" aria-label="parser.py">def parse(s):' in html   # files[].content
    assert "print(&#x27;&lt;b&gt;hi&lt;/b&gt;&#x27;)" in html                                 # code, escaped
    assert "Safety score" in html and "Confidence" in html
    assert f'href="/review/agent-approvals/{response.agent_call_approval_id}"' in html       # the call it answers
    for flag in response.risk_flags:
        assert flag["code"] in html
    assert 'id="btn-approve"' in html and 'id="btn-modify"' in html and 'for="modifications"' in html


def test_a_cancelled_response_names_the_stop_or_the_report_that_ended_its_task(response, reviewer, manager, agent,
                                                                                project):
    """It used to say "Cancelled by an emergency stop." whatever cancelled it."""
    from projects.services import task_report_outcome

    task_report_outcome(actor=agent, task_id=response.task_id, status="failed", error="gave up")
    html = web(reviewer).get(rpage(response)).content.decode()
    assert "by <strong>its agent (agent)</strong>" in html and "Reason: its task was reported failed" in html
    assert "emergency stop" not in html

    other = make_call(project, agent, action="Write the lexer")
    agent_approval_decide(approval_id=other.pk, decider=reviewer, decision="approve")
    agent_approval_start(approval_id=other.pk, actor=agent)
    stopped = response_approval_submit(
        submitter=agent, project_id=project.pk, task_id=other.task_id, agent_type="coder",
        call_approval_id=other.pk, agent_response={"code": "x = 1"}, response_summary="Lexer", next_steps=[],
        tokens_used=5, actual_cost=Decimal("0.0010"))
    stop, _ = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="halt", actor=manager)
    html = web(reviewer).get(rpage(stopped)).content.decode()
    stamp = stop.created_at.astimezone(dt_timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    assert f"by <strong>an emergency stop (manager)</strong> at {stamp} UTC" in html
    assert "Reason: emergency stop" not in html


def test_response_decisions(response, reviewer, project, agent):
    client = web(reviewer)
    url = f"{rpage(response)}/decide"
    r = client.post(url, {"decision": "reject", "reason": ""})
    assert r.status_code == 400 and "Give a reason" in r.content.decode()
    r = client.post(url, {"decision": "requires_modification", "modifications_required": " "})
    assert r.status_code == 400 and "Say what must change" in r.content.decode()
    response.refresh_from_db()
    assert response.status == "pending"
    r = client.post(url, {"decision": "requires_modification", "modifications_required": "Handle quotes"}, **HTMX)
    html = r.content.decode()
    assert "Sent back for modification." in html and "Handle quotes" in html and 'data-status="requires_modification"' in html
    assert '<span class="badge status-badge status-requires_modification">Requires modification</span>' in html
    response.refresh_from_db()
    assert response.status == "requires_modification" and response.modifications_required == "Handle quotes"
    assert audited(response, "response_approval.requires_modification")
    r = client.post(url, {"decision": "approve"})
    assert r.status_code == 409 and "already decided: requires modification" in r.content.decode()


def test_response_approve_and_reject(response, reviewer, manager):
    r = web(reviewer).post(f"{rpage(response)}/decide", {"decision": "approve"}, **HTMX)
    assert "Approved." in r.content.decode()
    response.refresh_from_db()
    assert response.status == "approved" and response.approved_by == reviewer
    assert audited(response, "response_approval.approve")


def test_response_reject_and_410(response, reviewer):
    ResponseApproval.objects.filter(pk=response.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    r = web(reviewer).post(f"{rpage(response)}/decide", {"decision": "reject", "reason": "bad"})
    assert r.status_code == 410 and "timed out" in r.content.decode()
    response.refresh_from_db()
    assert response.status == "timed_out"


def test_a_response_sent_back_elsewhere_is_announced_in_words(response, reviewer, manager):
    """The live note reads as a sentence, not "is now requires modification"."""
    from approvals.services import response_approval_decide

    response_approval_decide(approval_id=response.pk, decider=manager, decision="requires_modification",
                             modifications_required="Handle quotes")
    html = web(reviewer).get(f"{rpage(response)}/panel").content.decode()
    assert "This request is now sent back for modification by manager." in html, html


def test_the_countdown_turns_red_on_the_response_and_question_pages_when_the_warning_is_due(
        response, reviewer, project, agent):
    from hitl.models import HitlRequest
    from hitl.services import hitl_request_create

    question = hitl_request_create(asker=agent, project_id=project.pk, request_type="question", question="Ship it?")
    pages = {rpage(response): (ResponseApproval, response.pk), f"/review/hitl/{question.pk}": (HitlRequest, question.pk)}
    for url, (model, pk) in pages.items():
        assert 'class="time-left urgent"' not in web(reviewer).get(url).content.decode(), url
        model.objects.filter(pk=pk).update(warn_at=timezone.now() - timedelta(seconds=1))
        assert 'class="time-left urgent"' in web(reviewer).get(url).content.decode(), url
