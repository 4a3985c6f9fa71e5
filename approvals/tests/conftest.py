import pytest

from projects.services import task_create


@pytest.fixture
def task(project, agent):
    return task_create(actor=agent, project_id=project.pk, agent_type="coder", title="Implement the login form")


@pytest.fixture
def request_body(project, task):
    def make(**overrides):
        body = {"project_id": str(project.pk), "task_id": str(task.pk), "agent_type": "coder",
                "proposed_action": "Write the login form component", "input_data": {"files": ["login.tsx"]},
                "context_summary": "Sprint 3", "model": "gpt-4o-mini"}
        body.update(overrides)
        return body

    return make


@pytest.fixture
def agent_client(agent, client_for):
    return client_for(agent)


@pytest.fixture
def reviewer_client(reviewer, client_for):
    return client_for(reviewer)


@pytest.fixture
def requested(agent_client, request_body, django_capture_on_commit_callbacks):
    """A pending approval made through the API; returns its JSON. What the request does after
    its commit (the agent state's refresh, wake-ups) runs too, as in a server."""
    with django_capture_on_commit_callbacks(execute=True):
        r = agent_client.post("/api/v1/agent-approvals", request_body(), format="json")
    assert r.status_code == 201, r.content
    return r.json()
