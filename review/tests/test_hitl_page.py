"""Questions and checkpoints in the reviewer pages: listed in the inbox, answered on their page."""
import datetime
import re

import pytest
from django.test import Client

from access.services import role_grant
from audit.models import AuditEvent
from hitl.models import HitlRequest
from hitl.services import hitl_request_create

pytestmark = pytest.mark.django_db


def ask(project, agent, **kw):
    return hitl_request_create(asker=agent, project_id=project.pk, request_type=kw.pop("request_type", "question"),
                               question=kw.pop("question", "Which database should we use?"), **kw)


def browser(user):
    client = Client()
    client.force_login(user)
    return client


def test_a_question_is_in_the_inbox_and_answered_with_one_of_its_options(project, agent, reviewer):
    req = ask(project, agent, options=["PostgreSQL", "SQLite"])
    client = browser(reviewer)
    inbox = client.get("/review/").content.decode()
    assert "Which database should we use?" in inbox and f"/review/hitl/{req.pk}" in inbox
    page = client.get(f"/review/hitl/{req.pk}").content.decode()
    assert 'value="PostgreSQL"' in page and 'value="SQLite"' in page
    bad = client.post(f"/review/hitl/{req.pk}/decide", {"action": "approve", "response": "MySQL"})
    assert bad.status_code == 400 and HitlRequest.objects.get(pk=req.pk).status == "pending"
    none = client.post(f"/review/hitl/{req.pk}/decide", {"action": "approve"})    # no option picked: it said nothing
    assert none.status_code == 400 and "Choose one of the options" in none.content.decode()
    assert HitlRequest.objects.get(pk=req.pk).status == "pending"
    ok = client.post(f"/review/hitl/{req.pk}/decide", {"action": "approve", "response": "PostgreSQL"})
    assert ok.status_code == 302
    req.refresh_from_db()
    assert req.status == "approved" and req.response == "PostgreSQL" and req.responded_by == reviewer
    assert AuditEvent.objects.filter(action="hitl_request.approve").exists()
    assert f"/review/hitl/{req.pk}" not in client.get("/review/").content.decode()     # no longer pending
    again = client.post(f"/review/hitl/{req.pk}/decide", {"action": "reject", "response": "late"})
    assert again.status_code == 409 and "already approved" in again.content.decode()


def test_direction_controls_in_an_agents_text_are_shown_and_the_answer_is_the_agents_value(project, agent,
                                                                                            reviewer, admin_user):
    """U+202E made "DROP prod_db \u202ebd_gnigats" read "DROP prod_db staging_db" in the page, and two
    options read alike: every page's text shows each direction control as a mark; the option's
    value (what the form sends) stays the agent's, so answering with it still works."""
    spoofed = "DROP prod_db \u202ebd_gnigats"
    req = ask(project, agent, question="Which database should I wipe? \u2066", options=["staging_db", spoofed])
    client = browser(reviewer)
    page = client.get(f"/review/hitl/{req.pk}").content.decode()
    assert "DROP prod_db ⟦U+202E⟧bd_gnigats" in page and "wipe? ⟦U+2066⟧" in page
    assert f'value="{spoofed}"' in page                              # the form sends the agent's own value
    assert "wipe? ⟦U+2066⟧" in client.get("/review/").content.decode()    # the inbox too
    assert "⟦U+202E⟧" in browser(admin_user).get(f"/admin/hitl/hitlrequest/{req.pk}/change/").content.decode()
    # what a screen reader says of the admin list's checkbox too (it read the agent's controls as they were)
    listed = browser(admin_user).get("/admin/hitl/hitlrequest/").content.decode()
    labels = re.findall(r'aria-label="([^"]*)"', listed)
    assert any("wipe? ⟦U+2066⟧" in label for label in labels) and not any("\u2066" in label for label in labels)
    ok = client.post(f"/review/hitl/{req.pk}/decide", {"action": "approve", "response": spoofed})
    assert ok.status_code == 302
    req.refresh_from_db()
    assert req.response == spoofed
    api = browser(reviewer).get(f"/api/v1/hitl/{req.pk}")     # JSON: as written
    assert api.json()["options"][1] == spoofed


def test_a_checkpoint_is_amended_with_json_and_the_asker_cannot_answer(project, agent, reviewer):
    req = ask(project, agent, request_type="checkpoint", question="The plan is ready, go on?",
              context={"plan": ["analyse", "design", "build"]})
    role_grant(user=agent, project=project, role="reviewer")  # an asker who may review (staff) still may not answer
    assert browser(agent).post(f"/review/hitl/{req.pk}/decide", {"action": "approve"}).status_code == 403
    client = browser(reviewer)
    assert "&quot;plan&quot;" in client.get(f"/review/hitl/{req.pk}").content.decode()
    r = client.post(f"/review/hitl/{req.pk}/decide", {"action": "amend", "amended_content": '{"plan": ["build"]}'})
    assert r.status_code == 302
    req.refresh_from_db()
    assert req.status == "amended" and req.amended_content == {"plan": ["build"]}


def test_a_refused_amendment_names_the_field_as_the_form_does(project, agent, reviewer):
    """It said "amended_content: This field may not be blank.", the API's field name."""
    req = ask(project, agent, request_type="checkpoint", question="The plan is ready, go on?")
    r = browser(reviewer).post(f"/review/hitl/{req.pk}/decide", {"action": "amend", "amended_content": ""},
                               HTTP_HX_REQUEST="true")
    text = r.content.decode()
    assert r.status_code == 400 and "The amended answer:" in text and "amended_content:" not in text
    req.refresh_from_db()
    assert req.status == "pending"


def test_stopping_at_a_checkpoint_needs_a_reason_on_the_page(project, agent, reviewer):
    """One tap on "Stop here" ended the agent's round with no word why: the page asks for a reason,
    as the call and response pages do (the API keeps it optional, as API.md has it)."""
    req = ask(project, agent, request_type="checkpoint", question="The plan is ready, go on?")
    client = browser(reviewer)
    page = client.get(f"/review/hitl/{req.pk}").content.decode()
    assert re.search(r'<textarea id="reject-reason" name="response" rows="2" required', page)
    assert "Reason for rejecting <span class=\"req\">(required)</span>" in page
    r = client.post(f"/review/hitl/{req.pk}/decide", {"action": "reject", "response": "  "})
    assert r.status_code == 400 and "Give a reason for the rejection. Nothing was decided." in r.content.decode()
    # the reason's box is marked as what to mend, described by the error; the other boxes are not
    refused = r.content.decode()
    assert re.search(r'<p class="outcome outcome-error" id="hitl-outcome">Check the form', refused)
    assert re.search(r'<textarea id="reject-reason" [^>]*aria-invalid="true" aria-describedby="hitl-outcome"', refused)
    assert refused.count('aria-invalid="true"') == 1
    assert HitlRequest.objects.get(pk=req.pk).status == "pending"
    r = client.post(f"/review/hitl/{req.pk}/decide", {"action": "reject", "response": "the plan skips the tests"})
    assert r.status_code == 302
    req.refresh_from_db()
    assert req.status == "rejected" and req.response == "the plan skips the tests"


def test_a_free_text_question_is_not_approved_with_no_answer_on_the_page(project, agent, reviewer):
    """"Answer and approve" with the answer left empty approved the question with an empty answer:
    the field is required on the page (a checkpoint's answer stays optional)."""
    req = ask(project, agent, question="Which port should the service listen on?")
    client = browser(reviewer)
    page = client.get(f"/review/hitl/{req.pk}").content.decode()
    assert re.search(r'<textarea id="approve-answer" name="response" rows="3" required', page)
    r = client.post(f"/review/hitl/{req.pk}/decide", {"action": "approve", "response": " "})
    assert r.status_code == 400 and "Type an answer: the agent asked a question. Nothing was decided." in r.content.decode()
    assert HitlRequest.objects.get(pk=req.pk).status == "pending"
    assert client.post(f"/review/hitl/{req.pk}/decide", {"action": "approve", "response": "8080"}).status_code == 302
    assert HitlRequest.objects.get(pk=req.pk).response == "8080"
    checkpoint = ask(project, agent, request_type="checkpoint", question="Go on?")
    assert 'id="approve-answer" name="response" rows="3" required' not in client.get(f"/review/hitl/{checkpoint.pk}").content.decode()
    assert client.post(f"/review/hitl/{checkpoint.pk}/decide", {"action": "approve", "response": ""}).status_code == 302


@pytest.mark.parametrize("text", ["NaN", '{"x": Infinity}', '{"a": ' * 3000 + "1" + "}" * 3000,
                                  '{"batch_size": 100, "max_rows": 1e400}', '{"price": 123456789012345678901234567890.5}',
                                  '{"a": "\\u0000"}'])
def test_an_amendment_of_json_the_api_refuses_is_refused_not_sent_on_as_text(project, agent, reviewer, text):
    """NaN and a 3,000-deep object were a 500 page (the database refused NaN; the parser recursed);
    then they, 1e400 and a NUL were sent on to the agent as a plain string, without a word, where
    the API refuses the same amendment (400). Text that is not written as JSON stays an answer."""
    req = ask(project, agent, request_type="checkpoint", question="Go on?")
    r = browser(reviewer).post(f"/review/hitl/{req.pk}/decide", {"action": "amend", "amended_content": text})
    assert r.status_code == 400 and "This JSON is refused: " in r.content.decode()
    req.refresh_from_db()
    assert req.status == "pending"
    # text that only starts like JSON is text ("NaN values must go" was refused for its NaN)
    r = browser(reviewer).post(f"/review/hitl/{req.pk}/decide",
                               {"action": "amend", "amended_content": "NaN values must go, 1e400 rows at most"})
    assert r.status_code == 302
    req.refresh_from_db()
    assert req.status == "amended" and req.amended_content == "NaN values must go, 1e400 rows at most"


def test_an_amendment_of_json_with_a_key_twice_is_refused_not_sent_on_as_text(project, agent, reviewer):
    """JSON with a key twice is refused (parsers disagree on which counts): an amendment meant as
    JSON was then sent on to the agent as a plain string, without a word."""
    req = ask(project, agent, request_type="checkpoint", question="Go on?")
    r = browser(reviewer).post(f"/review/hitl/{req.pk}/decide",
                               {"action": "amend", "amended_content": '{"env": "staging", "env": "production"}'})
    assert r.status_code == 400 and 'the key &quot;env&quot; appears more than once' in r.content.decode()
    req.refresh_from_db()
    assert req.status == "pending"


def test_outsiders_get_404_and_login_is_required(project, agent, outsider):
    req = ask(project, agent)
    assert Client().get(f"/review/hitl/{req.pk}").status_code == 302
    assert browser(outsider).get(f"/review/hitl/{req.pk}").status_code == 404
    assert browser(outsider).post(f"/review/hitl/{req.pk}/decide", {"action": "reject"}).status_code == 404


def test_a_nul_character_in_any_decision_field_is_400_and_decides_nothing(project, agent, reviewer):
    """PostgreSQL cannot store U+0000: a reason, an answer or an amendment holding one was a 500
    page; now every decision view answers 400 before deciding."""
    from approvals.models import AgentCallApproval
    from review.tests.test_decisions import decide_url, make_call, web

    call = make_call(project, agent)
    req = ask(project, agent, request_type="checkpoint", question="Go on?")
    posts = [(decide_url(call), {"decision": "reject", "reason": "bad\x00reason"}),
             (decide_url(call), {"decision": "approve", "amended_input_data": '{"a": "x\x00y"}'}),
             (f"/review/hitl/{req.pk}/decide", {"action": "amend", "amended_content": "a\x00b"}),
             (f"/review/hitl/{req.pk}/decide", {"action": "reject", "response": "a\x00b"})]
    for url, data in posts:
        r = web(reviewer).post(url, data)
        assert r.status_code == 400 and "NUL character" in r.content.decode(), (url, data)
    assert AgentCallApproval.objects.get(pk=call.pk).status == "pending"
    req.refresh_from_db()
    assert req.status == "pending"
    assert not AuditEvent.objects.filter(action__in=("agent_approval.reject", "hitl.amend", "hitl.reject")).exists()


def test_the_history_reads_newest_first_with_readable_times(project, agent, reviewer):
    req = ask(project, agent, request_type="checkpoint", question="Go on?")
    browser(reviewer).post(f"/review/hitl/{req.pk}/decide", {"action": "reject", "response": "not now"})
    req.refresh_from_db()
    html = browser(reviewer).get(f"/review/hitl/{req.pk}").content.decode()
    assert "History <span class=\"muted\">(newest first)</span>" in html
    first, last = req.history[0], req.history[-1]
    assert html.index(f'<time datetime="{last["at"]}">') < html.index(f'<time datetime="{first["at"]}">')
    assert re.search(r'<time datetime="[^"]+">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</time>', html)


def test_a_question_cancelled_by_a_stop_names_the_stop_and_who_set_it_off(project, agent, reviewer, manager):
    """Its history says "system": the page said only "Cancelled"."""
    from emergency.services import emergency_stop_trigger

    req = ask(project, agent)
    stop, _ = emergency_stop_trigger(project_id=project.pk, condition="manual_stop", reason="halt", actor=manager)
    html = browser(reviewer).get(f"/review/hitl/{req.pk}").content.decode()
    stamp = stop.created_at.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    assert f"by <strong>an emergency stop ({manager.username})</strong> at {stamp} UTC" in html
    assert f'<a href="/review/projects/{project.pk}">The project\'s stop and recovery</a>' in html


def test_a_question_its_agent_withdrew_names_the_agent_and_its_reason(project, agent, reviewer):
    from hitl.services import hitl_request_cancel

    req = ask(project, agent)
    hitl_request_cancel(request_id=req.pk, actor=agent, reason="solved it myself")
    html = browser(reviewer).get(f"/review/hitl/{req.pk}").content.decode()
    assert f"by <strong>its agent ({agent.username})</strong> at" in html and "Reason: solved it myself" in html


def test_a_timed_out_question_says_when_and_that_it_failed_closed(project, agent, reviewer):
    """Its panel showed a "Timed out" badge alone, where the call and response pages say when and
    what it means."""
    from django.utils import timezone

    from hitl.services import hitl_request_time_out

    req = ask(project, agent)
    HitlRequest.objects.filter(pk=req.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    assert hitl_request_time_out(request_id=req.pk)
    html = browser(reviewer).get(f"/review/hitl/{req.pk}").content.decode()
    assert "Timed out" in html and "No one answered before" in html and "it failed closed" in html


def test_no_read_shows_a_question_pending_past_its_deadline_while_beat_is_late(project, agent, reviewer, client_for):
    req = ask(project, agent)
    other = ask(project, agent, question="And the cache?")
    from django.utils import timezone

    HitlRequest.objects.filter(pk__in=[req.pk, other.pk]).update(
        expires_at=timezone.now() - datetime.timedelta(seconds=1))
    api = client_for(reviewer)
    assert api.get(f"/api/v1/hitl/{req.pk}").json()["status"] == "timed_out"
    listed = api.get(f"/api/v1/hitl/project/{project.pk}?status=pending").json()
    assert listed["count"] == 0, listed
    assert set(HitlRequest.objects.values_list("status", flat=True)) == {"timed_out"}
