"""Questions and checkpoints in the reviewer pages: listed in the inbox, answered on their page."""
import pytest
from django.test import Client

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
    ok = client.post(f"/review/hitl/{req.pk}/decide", {"action": "approve", "response": "PostgreSQL"})
    assert ok.status_code == 302
    req.refresh_from_db()
    assert req.status == "approved" and req.response == "PostgreSQL" and req.responded_by == reviewer
    assert AuditEvent.objects.filter(action="hitl_request.approve").exists()
    assert f"/review/hitl/{req.pk}" not in client.get("/review/").content.decode()     # no longer pending
    again = client.post(f"/review/hitl/{req.pk}/decide", {"action": "reject", "response": "late"})
    assert again.status_code == 409 and "already approved" in again.content.decode()


def test_a_checkpoint_is_amended_with_json_and_the_asker_cannot_answer(project, agent, reviewer):
    req = ask(project, agent, request_type="checkpoint", question="The plan is ready, go on?",
              context={"plan": ["analyse", "design", "build"]})
    assert browser(agent).post(f"/review/hitl/{req.pk}/decide", {"action": "approve"}).status_code == 403
    client = browser(reviewer)
    assert "&quot;plan&quot;" in client.get(f"/review/hitl/{req.pk}").content.decode()
    r = client.post(f"/review/hitl/{req.pk}/decide", {"action": "amend", "amended_content": '{"plan": ["build"]}'})
    assert r.status_code == 302
    req.refresh_from_db()
    assert req.status == "amended" and req.amended_content == {"plan": ["build"]}


def test_outsiders_get_404_and_login_is_required(project, agent, outsider):
    req = ask(project, agent)
    assert Client().get(f"/review/hitl/{req.pk}").status_code == 302
    assert browser(outsider).get(f"/review/hitl/{req.pk}").status_code == 404
    assert browser(outsider).post(f"/review/hitl/{req.pk}/decide", {"action": "reject"}).status_code == 404
