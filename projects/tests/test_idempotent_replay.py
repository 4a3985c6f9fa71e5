"""An ``Idempotency-Key`` replay is an answer about a project: after the caller lost every role
on it, the replay is refused as their new request is (404, API.md: no existence leak), on every
create that takes the header. It was looked up by user, key and body before any check."""
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from access.services import role_revoke_all
from approvals.models import AgentCallApproval
from budgets.models import BudgetOverrideRequest
from emergency.models import EmergencyStop
from hitl.models import HitlRequest
from projects.models import Project, Task
from projects.services import task_create

pytestmark = pytest.mark.django_db


def _bodies(project, task):
    return {
        "tasks": ("agent", "/api/v1/tasks", {"project_id": str(project.pk), "agent_type": "coder", "title": "t"}, Task),
        "agent-approvals": ("agent", "/api/v1/agent-approvals", {
            "project_id": str(project.pk), "task_id": str(task.pk), "agent_type": "coder",
            "proposed_action": "Write the form", "input_data": {"files": ["a.py"]}, "model": "gpt-4o-mini"},
            AgentCallApproval),
        "hitl": ("agent", "/api/v1/hitl", {"project_id": str(project.pk), "request_type": "question",
                                           "question": "Which branch?"}, HitlRequest),
        "budget-overrides": ("agent", "/api/v1/budget-overrides", {
            "project_id": str(project.pk), "violation_type": "daily_cost_limit", "requested_amount": "5.0000",
            "justification": "a release"}, BudgetOverrideRequest),
        "stop": ("manager", f"/api/v1/emergency/stop/{project.pk}", {"reason": "drill"}, EmergencyStop),
    }


def _started_call(project, agent, reviewer):
    from approvals.services import agent_approval_decide, agent_approval_request, agent_approval_start

    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="run")
    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="write it", input_data={}, estimated_tokens=10,
                                  estimated_cost=Decimal("0.0100"))
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
    return agent_approval_start(approval_id=call.pk, actor=agent)


def test_every_idempotent_answer_names_its_project(project, agent, reviewer, manager, client_for):
    """The replay check reads the stored answer's project: the creates not above (usage, an
    output, a recovery) are refused the same way."""
    call = _started_call(project, agent, reviewer)
    other = _started_call(project, agent, reviewer)
    cases = [
        (agent, f"/api/v1/agent-approvals/{call.pk}/usage", {"tokens_used": 10, "actual_cost": "0.0010"}),
        (agent, "/api/v1/response-approvals", {
            "project_id": str(project.pk), "task_id": str(other.task_id), "agent_type": "coder",
            "original_call_approval_id": str(other.pk), "agent_response": {"text": "done"},
            "response_summary": "done", "next_steps": [], "tokens_used": 20}),
    ]
    for user, url, body in cases:
        client = client_for(user)
        first = client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY=url)
        assert first.status_code in (200, 201), first.content
        assert client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY=url).content == first.content
    managing = client_for(manager)
    assert managing.post(f"/api/v1/emergency/stop/{project.pk}", {"reason": "drill"}, format="json").status_code == 201
    url, body = f"/api/v1/emergency/recovery/{project.pk}", {"recovery_type": "manual"}
    first = managing.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY=url)
    assert first.status_code == 201, first.content
    assert managing.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY=url).content == first.content

    role_revoke_all(user=agent, project=project)
    role_revoke_all(user=manager, project=project)
    for user, url, body in [*cases, (manager, url, body)]:
        replay = client_for(user).post(url, body, format="json", HTTP_IDEMPOTENCY_KEY=url)
        assert replay.status_code == 404 and replay.json()["error"] == "not_found", (url, replay.content)


@pytest.mark.parametrize("endpoint", ["tasks", "agent-approvals", "hitl", "budget-overrides", "stop"])
def test_a_replay_after_the_roles_were_taken_away_is_404(endpoint, project, agent, manager, client_for):
    task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title="work")
    who, url, body, model = _bodies(project, task)[endpoint]
    user = {"agent": agent, "manager": manager}[who]
    client = client_for(user)
    first = client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert first.status_code == 201, first.content
    again = client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="k1")  # still a member: the replay
    assert again.status_code == 201 and again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    count = model.objects.count()

    role_revoke_all(user=user, project=project)
    replay = client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert replay.status_code == 404 and replay.json()["error"] == "not_found", replay.content
    assert "Idempotent-Replayed" not in replay.headers
    fresh = client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="k2")  # what a new request gets
    assert fresh.status_code == 404, fresh.content
    assert model.objects.count() == count  # nothing made


def test_a_project_creation_replayed_after_the_admin_rights_went_is_404(admin_user, client_for):
    client = client_for(admin_user)
    body = {"name": "Fleet", "slug": "fleet"}
    first = client.post("/api/v1/projects", body, format="json", HTTP_IDEMPOTENCY_KEY="p1")
    assert first.status_code == 201, first.content
    assert client.post("/api/v1/projects", body, format="json", HTTP_IDEMPOTENCY_KEY="p1").content == first.content
    get_user_model().objects.filter(pk=admin_user.pk).update(is_superuser=False, is_staff=False)
    replay = client.post("/api/v1/projects", body, format="json", HTTP_IDEMPOTENCY_KEY="p1")
    assert replay.status_code == 404 and replay.json()["error"] == "not_found", replay.content
    assert Project.objects.filter(slug="fleet").count() == 1


def test_a_project_creation_by_staff_allowed_to_add_projects_is_replayed(make_user, client_for):
    """The replay of a project's creation asked for a role on it, which its creator was not given
    then: a staff user with the "add project" permission got 404 on every retry of their 201."""
    from django.contrib.auth.models import Permission

    creator = make_user("creator")
    creator.user_permissions.add(Permission.objects.get(codename="add_project"))
    client = client_for(get_user_model().objects.get(pk=creator.pk))
    body = {"name": "Fleet", "slug": "fleet"}
    first = client.post("/api/v1/projects", body, format="json", HTTP_IDEMPOTENCY_KEY="p1")
    assert first.status_code == 201, first.content
    again = client.post("/api/v1/projects", body, format="json", HTTP_IDEMPOTENCY_KEY="p1")
    assert again.status_code == 201 and again.content == first.content, again.content
    creator.user_permissions.clear()
    gone = client_for(get_user_model().objects.get(pk=creator.pk)).post(
        "/api/v1/projects", body, format="json", HTTP_IDEMPOTENCY_KEY="p1")
    assert gone.status_code == 404, gone.content
