"""GET /api/v1/hitl/{id}/wait: the long poll, through the real ASGI application (a Channels
consumer, approvals.consumers.HitlRequestWaitConsumer). The database fallback poll is set to
30 s, so an answer within seconds came from the push after the commit."""
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
from core import wakeup as wakeup_module
from emergency.services import emergency_stop_trigger
from hitl.models import HitlRequest
from hitl.services import hitl_group, hitl_request_respond

pytestmark = pytest.mark.django_db(transaction=True)


def asgi_app():
    from botarmy_hitl.asgi import application

    return application


async def wait_for(request_id, key, query="timeout=10"):
    headers = [(b"host", b"localhost")] + ([(b"authorization", f"Bearer {key}".encode())] if key else [])
    comm = HttpCommunicator(asgi_app(), "GET", f"/api/v1/hitl/{request_id}/wait?{query}", headers=headers)
    response = await comm.get_response(timeout=70)
    await comm.wait(timeout=10)
    return response["status"], json.loads(response["body"])


@pytest.fixture
def agent_key(agent):
    return api_key_create(user=agent)[1]


@pytest.fixture
def slow_poll(settings):
    settings.HITL_WAIT_POLL_SECONDS = 30


async def _until_waiting(group, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        hub = wakeup_module._hubs.get(loop)
        events = hub.waiters.get(group, ()) if hub else ()
        if events and all(getattr(event, "_waiters", True) for event in events):
            return
        assert loop.time() < deadline, f"the wait never subscribed to {group}"
        await asyncio.sleep(0.01)


def released_after(req, key, act, *, timeout: float):
    async def scenario():
        waiting = asyncio.ensure_future(wait_for(req.pk, key, f"timeout={timeout}"))
        await _until_waiting(hitl_group(req.pk))
        assert not waiting.done()
        await database_sync_to_async(act)()
        started = time.monotonic()
        status, body = await waiting
        seconds = time.monotonic() - started
        await wakeup_module.close_wakeups()
        return status, body, seconds

    return async_to_sync(scenario)()


def test_wait_returns_as_soon_as_the_request_is_answered(ask, agent_key, reviewer, slow_poll):
    req = ask(options=["PostgreSQL", "SQLite"])
    status, body, seconds = released_after(
        req, agent_key, lambda: hitl_request_respond(request_id=req.pk, responder=reviewer, action="approve",
                                                     response="SQLite"), timeout=30)
    assert status == 200 and body["status"] == "approved" and body["response"] == "SQLite"
    assert body["responded_by"] == "reviewer" and [h["status"] for h in body["history"]] == ["pending", "approved"]
    assert seconds < 2.0  # the push, not the 30 s poll


def test_an_emergency_stop_wakes_the_waiting_agent(ask, agent_key, manager, project, slow_poll):
    req = ask()
    status, body, seconds = released_after(
        req, agent_key, lambda: emergency_stop_trigger(project_id=project.pk, condition="manual_stop",
                                                       reason="wake-up test", actor=manager), timeout=30)
    assert status == 200 and body["status"] == "cancelled" and seconds < 2.0


def test_a_pending_request_is_answered_at_the_timeout(ask, agent_key):
    req = ask()
    status, body = async_to_sync(wait_for)(req.pk, agent_key, "timeout=0.2")
    assert status == 200 and body["status"] == "pending" and body["id"] == str(req.pk)


def test_an_answered_request_returns_at_once(ask, agent_key, reviewer):
    req = ask()
    hitl_request_respond(request_id=req.pk, responder=reviewer, action="reject", response="no")
    started = time.monotonic()
    status, body = async_to_sync(wait_for)(req.pk, agent_key, "timeout=30")
    assert status == 200 and body["status"] == "rejected" and time.monotonic() - started < 5


def test_the_wait_times_out_a_request_past_its_deadline(ask, agent_key):
    req = ask()
    HitlRequest.objects.filter(pk=req.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    status, body = async_to_sync(wait_for)(req.pk, agent_key, "timeout=30")
    assert status == 200 and body["status"] == "timed_out"
    assert [h["status"] for h in body["history"]] == ["pending", "timed_out"]


def test_wait_errors(ask, agent_key, outsider):
    req = ask()
    status, body = async_to_sync(wait_for)(req.pk, api_key_create(user=outsider)[1])
    assert status == 404 and body["error"] == "not_found"
    status, body = async_to_sync(wait_for)(req.pk, None)
    assert status == 401 and body["error"] == "unauthenticated"
    status, body = async_to_sync(wait_for)(req.pk, agent_key, "timeout=soon")
    assert status == 400 and "timeout" in body["fields"]
    status, body = async_to_sync(wait_for)("not-a-uuid", agent_key)
    assert status == 404
