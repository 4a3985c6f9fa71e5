"""The admin queue of questions and checkpoints: pending first, answered on the request's page
through the respond service."""
import pytest
from django.urls import reverse

from access.services import role_grant
from hitl.models import HitlRequest
from hitl.services import hitl_request_respond

pytestmark = pytest.mark.django_db
LIST = reverse("admin:hitl_hitlrequest_changelist")


def page(req):
    return reverse("admin:hitl_hitlrequest_change", args=[req.pk])


def messages_of(response):
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def browser(client, reviewer):
    client.force_login(reviewer)
    return client


def test_the_queue_lists_pending_first_for_the_projects_of_the_reviewer(browser, ask, reviewer, client, outsider):
    answered = ask(question="Answered already?")
    hitl_request_respond(request_id=answered.pk, responder=reviewer, action="approve")
    pending = ask(question="Still waiting?")
    html = browser.get(LIST).content.decode()
    assert html.index("Still waiting?") < html.index("Answered already?")
    assert "time left" in html.lower()
    client.force_login(outsider)
    assert "Still waiting?" not in client.get(LIST).content.decode()
    assert client.get(page(pending)).status_code == 302  # not visible: the admin's "does not exist"


def test_a_question_past_its_deadline_is_timed_out_when_its_page_is_opened(browser, ask):
    """As the call's page: beat stopped, the question's page showed it pending and answerable."""
    from datetime import timedelta

    from django.utils import timezone

    req = ask()
    HitlRequest.objects.filter(pk=req.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    browser.get(page(req))
    assert HitlRequest.objects.get(pk=req.pk).status == "timed_out"


def test_the_page_offers_the_options_and_approves_through_the_service(browser, ask):
    req = ask(options=["PostgreSQL", "SQLite"])
    html = browser.get(page(req)).content.decode()
    for action in ("approve", "reject", "amend"):
        assert f'name="action" value="{action}"' in html
    assert 'value="PostgreSQL"' in html and 'value="SQLite"' in html
    assert html.count(">Answer</h2>") == 1  # the forms' section; the read-only one is "Answer on record"
    r = browser.post(page(req), {"_decide": "1", "action": "approve", "approve-response": "SQLite"}, follow=True)
    assert r.redirect_chain[-1][0].endswith("#content-start")  # lands on the outcome's message
    req.refresh_from_db()
    assert req.status == "approved" and req.response == "SQLite" and req.history[-1]["by"] == "reviewer"
    assert any("approved" in m for m in messages_of(r))
    assert "nothing left to answer" in r.content.decode()


def test_amend_from_the_page_takes_json_or_text(browser, ask):
    as_json, as_text = ask(), ask(question="Name?")
    browser.post(page(as_json), {"_decide": "1", "action": "amend", "amend-amended_content": '{"use": "pg"}'})
    browser.post(page(as_text), {"_decide": "1", "action": "amend", "amend-amended_content": "call it Atlas"})
    as_json.refresh_from_db(), as_text.refresh_from_db()
    assert (as_json.status, as_json.amended_content) == ("amended", {"use": "pg"})
    assert (as_text.status, as_text.amended_content) == ("amended", "call it Atlas")
    # JSON the API refuses is refused here too (it was sent on as a plain string, without a word)
    refused = ask(question="How many rows?")
    r = browser.post(page(refused), {"_decide": "1", "action": "amend", "amend-amended_content": '{"rows": 1e400}'})
    assert r.status_code == 200 and "This JSON is refused: the number 1e400 is out of range" in r.content.decode()
    refused.refresh_from_db()
    assert refused.status == "pending"


def test_a_form_error_decides_nothing(browser, ask):
    req = ask()
    r = browser.post(page(req), {"_decide": "1", "action": "amend", "amend-amended_content": "  "})
    assert r.status_code == 200 and "This is required" in r.content.decode()
    decide = r.content.decode().split('id="decide"')[1]   # said where the form's post lands
    assert '<p class="errornote" role="alert" id="decide-refusal" tabindex="-1">Nothing was decided: correct the form below.' \
        in decide
    req.refresh_from_db()
    assert req.status == "pending"


def test_the_asker_cannot_answer_from_the_page(client, ask, make_user, project):
    both = make_user("both", role="agent", project=project)
    role_grant(user=both, project=project, role="reviewer")
    req = ask(asker=both)
    client.force_login(both)
    assert "You asked this" in client.get(page(req)).content.decode()
    r = client.post(page(req), {"_decide": "1", "action": "reject", "reject-response": "x"}, follow=True)
    req.refresh_from_db()
    assert req.status == "pending" and any("not rejected" in m and m.endswith("Nothing was decided.")
                                           for m in messages_of(r))
    decide = r.content.decode().split('id="decide"')[1]  # the service's refusal, where the post lands
    assert '<p class="errornote" role="alert" id="decide-refusal" tabindex="-1">Nothing was decided: ' in decide


def test_bulk_reject_asks_for_a_reason(browser, ask):
    a, b = ask(), ask(question="Another?")
    data = {"action": "reject_selected", "_selected_action": [str(a.pk), str(b.pk)]}
    r = browser.post(LIST, data)
    assert r.status_code == 200 and "reason" in r.content.decode()
    browser.post(LIST, {**data, "apply": "1", "reason": "out of scope"})
    assert set(HitlRequest.objects.values_list("status", "response")) == {("rejected", "out of scope")}
