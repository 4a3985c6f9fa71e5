"""The long poll, driven through the real ASGI application (Channels routes it to a consumer)."""
import asyncio
import json
import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator
from django.utils import timezone

from access.services import api_key_create
from approvals.models import AgentCallApproval
from approvals.services import agent_approval_decide, agent_approval_request

pytestmark = pytest.mark.django_db(transaction=True)


def asgi_app():
    from botarmy_hitl.asgi import application

    return application


async def wait_call(approval_id, key, query="timeout=10"):
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    comm = HttpCommunicator(asgi_app(), "GET", f"/api/v1/agent-approvals/{approval_id}/wait?{query}",
                            headers=headers)
    response = await comm.get_response(timeout=70)
    return response["status"], json.loads(response["body"])


@pytest.fixture
def pending(project, task, agent):
    return agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="write code", input_data={"a": 1}, model="gpt-4o-mini")


@pytest.fixture
def agent_key(agent):
    return api_key_create(user=agent)[1]


def test_wait_returns_as_soon_as_the_decision_is_made(pending, agent_key, reviewer):
    async def scenario():
        waiting = asyncio.ensure_future(wait_call(pending.pk, agent_key, "timeout=30"))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        started = time.monotonic()
        await database_sync_to_async(agent_approval_decide)(approval_id=pending.pk, decider=reviewer,
                                                            decision="approve")
        status, body = await waiting
        return status, body, time.monotonic() - started

    status, body, released_after = async_to_sync(scenario)()
    assert status == 200 and body["status"] == "approved" and body["approved_by"] == "reviewer"
    assert released_after < 5  # woken by the push, long before the 30 s timeout


def test_wait_returns_at_once_when_already_decided(pending, agent_key, reviewer):
    agent_approval_decide(approval_id=pending.pk, decider=reviewer, decision="reject", reason="no")
    status, body = async_to_sync(wait_call)(pending.pk, agent_key, "timeout=60")
    assert status == 200 and body["status"] == "rejected" and body["rejection_reason"] == "no"


def test_wait_times_out_with_the_pending_approval(pending, agent_key):
    status, body = async_to_sync(wait_call)(pending.pk, agent_key, "timeout=0.3")
    assert status == 200 and body["status"] == "pending" and body["approval_id"] == str(pending.pk)


def test_wait_times_out_an_expired_approval_even_if_beat_is_late(pending, agent_key):
    AgentCallApproval.objects.filter(pk=pending.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    status, body = async_to_sync(wait_call)(pending.pk, agent_key, "timeout=5")
    assert status == 200 and body["status"] == "timed_out"


def test_a_timeout_over_sixty_seconds_waits_sixty(pending, agent_key, reviewer):
    from approvals.consumers import _parse_timeout

    assert _parse_timeout(b"timeout=3600") == 60 and _parse_timeout(b"") == 30


@pytest.mark.parametrize("query", ["timeout=-1", "timeout=abc", "timeout=nan", "timeout=inf"])
def test_bad_timeout_is_400(pending, agent_key, query):
    status, body = async_to_sync(wait_call)(pending.pk, agent_key, query)
    assert status == 400 and body["error"] == "invalid" and "timeout" in body["fields"]


def test_wait_needs_credentials_and_visibility(pending, outsider):
    status, body = async_to_sync(wait_call)(pending.pk, None)
    assert status == 401 and body["error"] == "unauthenticated"
    status, body = async_to_sync(wait_call)(pending.pk, "hitl_0000_bad")
    assert status == 401
    outsider_key = api_key_create(user=outsider)[1]
    status, body = async_to_sync(wait_call)(pending.pk, outsider_key)
    assert status == 404 and body["error"] == "not_found"
    status, body = async_to_sync(wait_call)("not-a-uuid", outsider_key)
    assert status == 404


def test_other_paths_still_reach_django(agent_key, project):
    async def get():
        comm = HttpCommunicator(asgi_app(), "GET", f"/api/v1/projects/{project.pk}",
                                headers=[(b"authorization", f"Bearer {agent_key}".encode()), (b"host", b"localhost")])
        return await comm.get_response(timeout=10)

    response = async_to_sync(get)()
    assert response["status"] == 200 and json.loads(response["body"])["slug"] == "demo"


def test_a_lost_push_only_delays_the_release(pending, agent_key, reviewer, settings, monkeypatch):
    """A decision made elsewhere (another process on the in-process layer, or Redis down):
    the batch poll finds it."""
    import approvals.services

    settings.HITL_WAIT_POLL_SECONDS = 0.2
    monkeypatch.setattr(approvals.services, "wakeup_on_commit", lambda *args, **kwargs: None)

    async def scenario():
        waiting = asyncio.ensure_future(wait_call(pending.pk, agent_key, "timeout=30"))
        await asyncio.sleep(0.5)
        await database_sync_to_async(agent_approval_decide)(approval_id=pending.pk, decider=reviewer,
                                                            decision="approve")
        started = time.monotonic()
        status, body = await waiting
        return status, body, time.monotonic() - started

    status, body, released_after = async_to_sync(scenario)()
    assert status == 200 and body["status"] == "approved"
    assert released_after < 5


def test_many_waiters_share_one_poll_query(project, agent, agent_key, reviewer, settings, django_assert_max_num_queries):
    from approvals.consumers import _due_for_release
    from projects.services import task_create

    approvals = []
    for i in range(5):
        task = task_create(actor=agent, project_id=project.pk, agent_type="tester", title=f"w{i}")
        approvals.append(agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk,
                                                agent_type="tester", proposed_action="run tests", input_data={},
                                                model="gpt-4o-mini"))
    agent_approval_decide(approval_id=approvals[2].pk, decider=reviewer, decision="approve")
    with django_assert_max_num_queries(1):
        ready = _due_for_release([a.pk for a in approvals])
    assert ready == [approvals[2].pk]
