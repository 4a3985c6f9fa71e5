"""The response queue and the analyzer rules in the Django admin, through Django's test client."""
import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from approvals.models import FlagLabel, ResponseApproval, RuleSetting
from approvals.services import (
    agent_approval_decide,
    agent_approval_request,
    agent_approval_start,
    response_approval_submit,
)
from audit.models import AuditEvent
from projects.services import task_create

pytestmark = pytest.mark.django_db
QUEUE = reverse("admin:approvals_responseapproval_changelist")
RULES = reverse("admin:approvals_rulesetting_changelist")
RISKY = "Release: git push --force origin main"


def make_response(project, agent, reviewer, title, text):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=title)
    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action=f"Implement {title}", input_data={}, model="gpt-4o-mini")
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
    agent_approval_start(approval_id=call.pk, actor=agent)
    return response_approval_submit(
        submitter=agent, project_id=project.pk, task_id=task.pk, agent_type="coder", call_approval_id=call.pk,
        agent_response={"files": [{"path": "setup.sh", "content": text}]}, response_summary=title,
        next_steps=["review"], tokens_used=100, actual_cost="0.0010")


@pytest.fixture
def responses(project, agent, manager):
    return [make_response(project, agent, manager, "clean script", "echo hello\n"),
            make_response(project, agent, manager, "risky script", RISKY)]


def test_queue_shows_pending_outputs_with_flags_and_locations(client, reviewer, responses):
    client.force_login(reviewer)
    html = client.get(QUEUE).content.decode()
    assert "clean script" in html and "risky script" in html
    detail = client.get(reverse("admin:approvals_responseapproval_change", args=[responses[1].pk])).content.decode()
    assert "destructive.git_force_push" in detail                 # the finding's code
    assert "agent_response.files[0].content" in detail             # and where it is
    assert "git push --force origin main" in detail                # the output itself, for the reviewer


def test_bulk_actions_decide_through_the_service(client, reviewer, responses):
    client.force_login(reviewer)
    r = client.post(QUEUE, {"action": "approve_selected", ACTION_CHECKBOX_NAME: [str(responses[0].pk)]})
    assert r.status_code == 302
    r = client.post(QUEUE, {"action": "send_back_selected", ACTION_CHECKBOX_NAME: [str(responses[1].pk)],
                            "apply": "1", "reason": "Vendor the fixtures instead of piping a download"})
    assert r.status_code == 302
    statuses = dict(ResponseApproval.objects.values_list("response_summary", "status"))
    assert statuses == {"clean script": "approved", "risky script": "requires_modification"}
    assert ResponseApproval.objects.get(pk=responses[1].pk).modifications_required == \
        "Vendor the fixtures instead of piping a download"
    assert AuditEvent.objects.filter(action="response_approval.requires_modification").count() == 1
    # the sent-back output confirms its flags
    assert FlagLabel.objects.filter(object_id=responses[1].pk, outcome="confirmed").exists()


def test_rule_precision_page_and_a_managers_setting(client, reviewer, manager, responses, project):
    client.force_login(manager)
    r = client.post(QUEUE, {"action": "approve_selected", ACTION_CHECKBOX_NAME: [str(responses[1].pk)]})
    assert "rated high or critical risk" in r.content.decode()                  # a risky output: asked first
    client.post(QUEUE, {"action": "approve_selected", "apply": "1", ACTION_CHECKBOX_NAME: [str(responses[1].pk)]})
    html = client.get(RULES).content.decode()
    assert "Rule precision" in html
    code = responses[1].risk_flags[0]["code"]
    assert code in html and "0.00" in html                 # approved with the flag: a false alarm
    r = client.post(reverse("admin:approvals_rulesetting_add"),
                    {"project": str(project.pk), "code": code, "mode": "observe", "threshold": "0", "note": "noisy"})
    assert r.status_code == 302, r.content.decode()[:2000]
    assert RuleSetting.objects.get(project=project, code=code).mode == "observe"
    assert AuditEvent.objects.filter(action="analyzer_rule.update").exists()
    # a reviewer sees the page but may not change rules
    client.force_login(reviewer)
    assert client.get(RULES).status_code == 200
    r = client.post(reverse("admin:approvals_rulesetting_add"),
                    {"project": str(project.pk), "code": "secret", "mode": "observe", "threshold": "0"})
    assert r.status_code == 403
    assert not RuleSetting.objects.filter(code="secret").exists()


def test_the_rule_form_offers_only_the_projects_the_user_manages(client, manager, project, other_project):
    """A manager of one project who only reviews another was offered both, and saving the other
    answered a bare 403 page."""
    from access.services import role_grant

    role_grant(user=manager, project=other_project, role="reviewer")
    client.force_login(manager)
    field = client.get(reverse("admin:approvals_rulesetting_add")).context["adminform"].form.fields["project"]
    assert list(field.queryset) == [project]


def test_a_rule_no_analyzer_reports_is_refused_with_the_known_families(client, manager, project):
    """A typo (``secert``) was saved and silently matched nothing: the manager believed the rule
    was in observe mode."""
    client.force_login(manager)
    r = client.post(reverse("admin:approvals_rulesetting_add"),
                    {"project": str(project.pk), "code": "secert.github_token", "mode": "observe", "threshold": "0"})
    assert r.status_code == 200
    assert "No analyzer reports &#x27;secert&#x27; flags" in r.content.decode() and "secret" in r.content.decode()
    assert not RuleSetting.objects.exists()
    r = client.post(reverse("admin:approvals_rulesetting_add"),
                    {"project": str(project.pk), "code": " secret ", "mode": "observe", "threshold": "0"})
    assert r.status_code == 302
    assert RuleSetting.objects.get(project=project).code == "secret"


@pytest.mark.parametrize("typo", ["pii.emial", "injection.ignore_instructionz", "secret.github_tokenX",
                                  "code.bandit.B60"])
def test_a_rule_whose_name_no_analyzer_reports_is_refused_with_the_names_that_exist(client, manager, project, typo):
    """Only the family was checked: ``pii.emial`` was saved and matched nothing."""
    client.force_login(manager)
    r = client.post(reverse("admin:approvals_rulesetting_add"),
                    {"project": str(project.pk), "code": typo, "mode": "observe", "threshold": "0"})
    assert r.status_code == 200
    family = typo.split(".")[0]
    assert f"No analyzer reports &#x27;{typo}&#x27;" in r.content.decode()
    assert f"{family} alone covers every {family} flag" in r.content.decode()
    assert not RuleSetting.objects.exists()
    for code in ("pii.email", "injection", "secret.github_token", "code.bandit", "code.bandit.B602"):
        r = client.post(reverse("admin:approvals_rulesetting_add"),
                        {"project": str(project.pk), "code": code, "mode": "observe", "threshold": "0"})
        assert r.status_code == 302, code
    assert RuleSetting.objects.filter(project=project).count() == 5
