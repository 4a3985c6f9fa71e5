"""Deciding one approval on its own admin page (issue 11): approve, approve with amended input,
reject with a reason for agent calls; approve, reject, requires-modification for responses.
Each goes through the decide service; its outcome or refusal shows as an admin message."""
from decimal import Decimal

import pytest
from django.urls import reverse

from approvals.models import AgentCallApproval, ResponseApproval
from approvals.services import agent_approval_decide, agent_approval_request, budget_override_respond
from approvals.tests.test_response_admin import make_response
from audit.models import AuditEvent
from budgets.models import BudgetOverrideRequest, ProjectBudget
from projects.services import task_create

pytestmark = pytest.mark.django_db


def ask(project, agent, *, title="t", input_data=None, cost=None, tokens=None):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=title)
    extra = {"model": "gpt-4o-mini"} if cost is None else {"estimated_cost": Decimal(cost),
                                                           "estimated_tokens": tokens or 10}
    return agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action=f"write {title}",
                                  input_data={"files": ["a.py"]} if input_data is None else input_data, **extra)


def page(approval):
    return reverse(f"admin:approvals_{approval._meta.model_name}_change", args=[approval.pk])


def messages_of(response):
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def call(project, agent):
    return ask(project, agent, title="parser")


@pytest.fixture
def browser(client, reviewer):
    client.force_login(reviewer)
    return client


# --- agent calls -----------------------------------------------------------------------
def test_a_call_past_its_deadline_is_timed_out_when_its_page_is_opened(browser, call):
    """Found by a time hunt with beat stopped: the admin's page of a call past its deadline showed it
    pending with its decision forms (the reviewer pages and the API time it out when they read it)."""
    from datetime import timedelta

    from django.utils import timezone

    AgentCallApproval.objects.filter(pk=call.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    html = browser.get(page(call)).content.decode()
    assert AgentCallApproval.objects.get(pk=call.pk).status == "timed_out"
    assert 'name="decision" value="approve"' not in html and "Timed out" in html


def test_the_queue_lists_no_call_pending_past_its_deadline(browser, project, agent):
    """As its page: with beat stopped the queue listed a call past its deadline "Pending / expired"."""
    from datetime import timedelta

    from django.utils import timezone

    late = ask(project, agent, title="late")
    AgentCallApproval.objects.filter(pk=late.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    r = browser.get(reverse("admin:approvals_agentcallapproval_changelist") + "?status__exact=pending")
    assert r.status_code == 200
    assert AgentCallApproval.objects.get(pk=late.pk).status == "timed_out"
    assert f"/{late.pk}/change/" not in r.content.decode()


def test_the_page_of_a_pending_call_offers_its_three_decisions(browser, call):
    html = browser.get(page(call)).content.decode()
    assert 'name="decision" value="approve"' in html
    assert 'name="decision" value="amend"' in html
    assert 'name="decision" value="reject"' in html
    # the editor is prefilled with the input, as formatted JSON
    assert "&quot;files&quot;: [" in html
    assert "blocked by its budget" not in html.lower()
    assert html.count(">Decision</h2>") == 1  # the section with the forms; the record is "Decision on record"
    # an empty value (not responded, not started) reads as our own columns write it, not Django's "-"
    assert '<div class="readonly">—</div>' in html and '<div class="readonly">-</div>' not in html


def test_approve_from_the_page_goes_through_the_service(browser, call):
    r = browser.post(page(call), {"_decide": "1", "decision": "approve", "approve-reason": "fine"}, follow=True)
    call.refresh_from_db()
    assert call.status == "approved" and call.approved_by.username == "reviewer"
    assert AuditEvent.objects.filter(action="agent_approval.approve").count() == 1
    assert any("approved" in m for m in messages_of(r))
    # the form posted to #decide; the page lands on the messages, where the outcome is said
    assert r.redirect_chain[-1][0].endswith("#content-start")
    assert '<main id="content-start"' in r.content.decode()
    # decided: the page says so and offers no buttons any more
    html = r.content.decode()
    assert 'name="decision" value="approve"' not in html and "nothing left to decide" in html


def test_approve_with_amended_input(browser, call):
    r = browser.post(page(call), {"_decide": "1", "decision": "amend", "amend-amended_input": '{"files": []}',
                                  "amend-reason": "no files"}, follow=True)
    call.refresh_from_db()
    assert call.status == "approved" and call.amended_input_data == {"files": []}
    assert any("approved with amended input" in m for m in messages_of(r))


@pytest.mark.parametrize("text, error", [
    ('{"files": [', "Not valid JSON"),
    ('["a list"]', "Must be a JSON object"),
    ('{"x": NaN}', "Not valid JSON"),
    ('{"a": ' * 3000 + "1" + "}" * 3000, "nesting is deeper than 64 levels"),  # was a RecursionError: a 500
    ("", "This is required"),
])
def test_bad_amended_json_is_a_form_error_and_decides_nothing(browser, call, text, error):
    r = browser.post(page(call), {"_decide": "1", "decision": "amend", "amend-amended_input": text})
    assert r.status_code == 200
    html = r.content.decode()
    assert error in html
    assert_refusal_where_the_page_lands(html, "Nothing was decided: correct the form below.")
    if text:
        assert "files&quot;: [" in html or "a list" in html or "NaN" in html or "&quot;a&quot;: {" in html  # kept
    call.refresh_from_db()
    assert call.status == "pending" and call.amended_input_data is None
    assert not AuditEvent.objects.filter(action__startswith="agent_approval.approve").exists()


def assert_refusal_where_the_page_lands(html: str, text: str) -> None:
    """The forms post to #decide: the note opens that section, right under its heading."""
    section = html.split('<section class="hitl-decide" id="decide"')[1]
    heading_end = section.index("</h2>")
    note = section.index('<p class="errornote" role="alert" id="decide-refusal" tabindex="-1">')
    assert heading_end < note < section.index("<form")
    assert text in section[note:section.index("</p>", note)]


def test_reject_needs_a_reason(browser, call):
    r = browser.post(page(call), {"_decide": "1", "decision": "reject", "reject-reason": "  "})
    assert r.status_code == 200 and "This is required" in r.content.decode()
    call.refresh_from_db()
    assert call.status == "pending"
    r = browser.post(page(call), {"_decide": "1", "decision": "reject", "reject-reason": "wrong repo"}, follow=True)
    call.refresh_from_db()
    assert call.status == "rejected" and call.rejection_reason == "wrong repo"
    assert any("rejected" in m for m in messages_of(r))


def test_a_refusal_of_the_service_shows_as_a_message(browser, call, manager):
    agent_approval_decide(approval_id=call.pk, decider=manager, decision="reject", reason="no")
    # a page opened before the decision elsewhere still posts: the service refuses
    r = browser.post(page(call), {"_decide": "1", "decision": "approve"}, follow=True)
    assert any("not approved" in m and "already rejected" in m for m in messages_of(r))
    call.refresh_from_db()
    assert call.status == "rejected" and call.approved_by.username == "manager"


def test_an_amendment_the_service_refuses_keeps_the_editor_text(browser, project, agent):
    from budgets.models import BudgetOverrideRequest, ProjectBudget

    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_token_limit": 100})
    call = ask(project, agent, title="small", cost="0.0001", tokens=1)
    big = '{"files": ["' + "x" * 4000 + '"]}'
    r = browser.post(page(call), {"_decide": "1", "decision": "amend", "amend-amended_input": big})
    assert r.status_code == 200
    assert any("not approved with amended input" in m and "more than the call reserved" in m
               and m.endswith("Nothing was decided.") for m in messages_of(r))
    assert any("(still pending). Nothing was decided." in m for m in messages_of(r)), messages_of(r)
    assert "x" * 4000 in r.content.decode()
    # the page lands at #decide, far below the admin's messages: the refusal is said there too
    assert_refusal_where_the_page_lands(r.content.decode(), "Nothing was decided: ")
    assert "more than the call reserved" in r.content.decode().split('id="decide-refusal"')[1].split("</p>")[0]
    call.refresh_from_db()
    assert call.status == "pending"


def test_an_outsider_cannot_decide_from_the_page(client, call, outsider):
    client.force_login(outsider)
    r = client.post(page(call), {"_decide": "1", "decision": "approve"})
    assert r.status_code == 302  # not visible: sent back to the admin index
    call.refresh_from_db()
    assert call.status == "pending"


def test_other_posts_to_the_page_are_still_refused(browser, call):
    r = browser.post(page(call), {"status": "approved"})
    assert r.status_code == 403
    call.refresh_from_db()
    assert call.status == "pending"


def test_a_call_blocked_by_its_budget_says_so_at_the_top_with_what_unblocks_it(browser, project, agent, manager):
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_cost_limit": Decimal("1.0000")})
    blocked = ask(project, agent, title="big", cost="1.2000")
    assert blocked.budget_state == "blocked" and blocked.budget_override_id
    html = browser.get(page(blocked)).content.decode()
    banner = html.index('id="budget-block"')
    assert banner < html.index('id="content-main"')  # at the top, before the details
    assert "by its budget: this call cannot be approved yet" in html and "What unblocks it" in html
    assert "Approve selected overrides" in html
    assert reverse("admin:budgets_budgetoverriderequest_change", args=[blocked.budget_override_id]) in html
    assert "disabled" in html  # the approve buttons
    # the list says it too
    listing = browser.get(reverse("admin:approvals_agentcallapproval_changelist")).content.decode()
    assert "blocked by budget" in listing and "approve its override first" in listing
    # approving anyway is refused by the service, as a message
    r = browser.post(page(blocked), {"_decide": "1", "decision": "approve"}, follow=True)
    assert any("not approved" in m for m in messages_of(r))
    assert AgentCallApproval.objects.get(pk=blocked.pk).status == "pending"
    # the override unblocks it: the banner goes, the call can be approved
    budget_override_respond(override_id=blocked.budget_override_id, actor=manager, decision="approve")
    html = browser.get(page(blocked)).content.decode()
    assert 'id="budget-block"' not in html
    browser.post(page(blocked), {"_decide": "1", "decision": "approve"})
    assert AgentCallApproval.objects.get(pk=blocked.pk).status == "approved"



def test_a_token_overrides_amount_reads_as_tokens_and_a_cost_overrides_as_money(browser, project, agent):
    ProjectBudget.objects.update_or_create(project=project, defaults={"daily_token_limit": 100})
    blocked = ask(project, agent, title="long", cost="0.0100", tokens=1028)
    override = BudgetOverrideRequest.objects.get(pk=blocked.budget_override_id)
    assert override.violation_type == "daily_token_limit" and override.requested_amount == Decimal("928")
    html = browser.get(page(blocked)).content.decode()
    assert "Daily token limit, +928 tokens" in html and "928.0000" not in html
    listing = browser.get(reverse("admin:budgets_budgetoverriderequest_changelist")).content.decode()
    assert "+928 tokens" in listing and "928.0000" not in listing
    assert "(+928 tokens)" in str(override)
    ProjectBudget.objects.filter(project=project).update(daily_token_limit=0, daily_cost_limit=Decimal("1.0000"))
    costly = ask(project, agent, title="costly", cost="1.2500")
    cost_override = BudgetOverrideRequest.objects.get(pk=costly.budget_override_id)
    assert cost_override.violation_type == "daily_cost_limit"
    assert "Daily cost limit, +$0.2500" in browser.get(page(costly)).content.decode()
    assert "(+$0.2500)" in str(cost_override)

# --- responses -------------------------------------------------------------------------
@pytest.fixture
def response(project, agent, manager):
    return make_response(project, agent, manager, "clean script", "echo hello\n")


def test_the_page_of_a_pending_response_offers_its_three_decisions(browser, response):
    html = browser.get(page(response)).content.decode()
    for decision in ["approve", "reject", "requires_modification"]:
        assert f'name="decision" value="{decision}"' in html


def test_approve_a_response_from_its_page(browser, response):
    r = browser.post(page(response), {"_decide": "1", "decision": "approve"}, follow=True)
    assert ResponseApproval.objects.get(pk=response.pk).status == "approved"
    assert any("approved" in m for m in messages_of(r))


def test_send_a_response_back_with_what_must_change(browser, response):
    r = browser.post(page(response), {"_decide": "1", "decision": "requires_modification",
                                      "requires_modification-modifications": ""})
    assert "This is required" in r.content.decode()
    assert ResponseApproval.objects.get(pk=response.pk).status == "pending"
    r = browser.post(page(response), {"_decide": "1", "decision": "requires_modification",
                                      "requires_modification-modifications": "add tests"}, follow=True)
    row = ResponseApproval.objects.get(pk=response.pk)
    assert row.status == "requires_modification" and row.modifications_required == "add tests"
    assert any("sent back for modification" in m for m in messages_of(r))


def test_reject_a_response_needs_a_reason(browser, response):
    r = browser.post(page(response), {"_decide": "1", "decision": "reject"})
    assert "This is required" in r.content.decode()
    browser.post(page(response), {"_decide": "1", "decision": "reject", "reject-reason": "unsafe"})
    row = ResponseApproval.objects.get(pk=response.pk)
    assert row.status == "rejected" and row.rejection_reason == "unsafe"


def test_an_unknown_decision_decides_nothing(browser, response):
    r = browser.post(page(response), {"_decide": "1", "decision": "delete"}, follow=True)
    assert any("Unknown decision" in m for m in messages_of(r))
    assert ResponseApproval.objects.get(pk=response.pk).status == "pending"


def test_a_refusal_names_the_status_an_item_keeps_once():
    from core.admin import refusal_text
    from core.errors import Expired, TransitionError

    assert refusal_text(TransitionError("Its task is completed.", current_status="pending")) == \
        "Its task is completed (still pending)."
    # a status the detail already says, in words, is not said again (it did not "stay" timed out: it just did)
    assert refusal_text(Expired("The approval timed out before this decision.", status="timed_out")) == \
        "The approval timed out before this decision."
