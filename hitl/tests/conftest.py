import pytest

from hitl.services import hitl_request_create
from projects.services import task_create


@pytest.fixture
def task(project, agent):
    return task_create(actor=agent, project_id=project.pk, agent_type="orchestrator", title="Plan the sprint")


@pytest.fixture
def ask(project, agent):
    """``ask(**overrides)``: a pending request made through the service (a question by default)."""

    def make(**overrides):
        kwargs = {"asker": agent, "project_id": project.pk, "request_type": "question",
                  "question": "Which database should we use?"}
        kwargs.update(overrides)
        return hitl_request_create(**kwargs)

    return make


@pytest.fixture
def agent_client(agent, client_for):
    return client_for(agent)


@pytest.fixture
def reviewer_client(reviewer, client_for):
    return client_for(reviewer)
