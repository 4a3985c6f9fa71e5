"""The long poll, driven through the real ASGI application (Channels routes it to a consumer).

The wake-up tests set the database fallback poll to 30 s, so a waiter answered within a couple
of seconds was woken by the push; each has a twin with the push dropped, which must NOT answer
early (so the first one cannot pass on the poll alone).
"""
import asyncio
import json
import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import HttpCommunicator
from django.db import connection
from django.utils import timezone

from access.services import api_key_create
from approvals.models import AgentCallApproval
from approvals.services import agent_approval_decide, agent_approval_request, approval_group, project_stop_group
from core import wakeup as wakeup_module

pytestmark = pytest.mark.django_db(transaction=True)

PUSHED_WITHIN = 2.0  # seconds from the commit to the answer when the push works
LAYERS = [pytest.param("in-memory", id="in-memory"),
          pytest.param("redis", marks=pytest.mark.redis, id="redis")]  # the configured Redis layer


def asgi_app():
    from botarmy_hitl.asgi import application

    return application


async def wait_call(approval_id, key, query="timeout=10"):
    headers = [(b"host", b"localhost")] + ([(b"authorization", f"Bearer {key}".encode())] if key else [])
    comm = HttpCommunicator(asgi_app(), "GET", f"/api/v1/agent-approvals/{approval_id}/wait?{query}",
                            headers=headers)
    response = await comm.get_response(timeout=70)
    await comm.wait(timeout=10)  # the consumer's clean-up, before the test's event loop goes away
    return response["status"], json.loads(response["body"])


@pytest.fixture
def pending(project, task, agent):
    return agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="write code", input_data={"a": 1}, model="gpt-4o-mini")


@pytest.fixture
def agent_key(agent):
    return api_key_create(user=agent)[1]


@pytest.fixture
def slow_poll(settings):
    """The database fallback polls every 30 s only: an answer within seconds came from the push."""
    settings.HITL_WAIT_POLL_SECONDS = 30


@pytest.fixture
def drop_pushes(monkeypatch):
    """``drop_pushes(group, ...)``: wake-ups sent to those groups are lost on the way (dropped
    by the channel layer, whichever module sends them), as when the push is disabled."""

    def drop(*groups):
        layer = get_channel_layer()
        send = layer.group_send

        async def group_send(group, message):
            if group not in groups:
                await send(group, message)

        monkeypatch.setattr(layer, "group_send", group_send)

    return drop


async def _until_waiting(groups, timeout=10.0):
    """Until the wait has subscribed to ``groups`` and blocks on its event (its first database
    read is done), so what happens next can only reach it by a push or by the poll."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        hub = wakeup_module._hubs.get(loop)
        per_group = [list(hub.waiters.get(group, ())) if hub else [] for group in groups]
        # Every group subscribed (not only some: a wait that subscribes later would read its
        # status after the caller acts) and every subscribed wait blocked on its event.
        if all(per_group) and all(getattr(event, "_waiters", True) for events in per_group for event in events):
            return
        assert loop.time() < deadline, f"the wait never subscribed to {groups}"
        await asyncio.sleep(0.01)


def released_after(pending, key, act, *, timeout: float):
    """Start a wait on ``pending`` (``timeout`` seconds), run ``act`` once it waits, and return
    (status, body, seconds from the end of ``act`` to the answer)."""

    async def scenario():
        waiting = asyncio.ensure_future(wait_call(pending.pk, key, f"timeout={timeout}"))
        await _until_waiting([approval_group(pending.pk), project_stop_group(pending.project_id)])
        assert not waiting.done()
        await database_sync_to_async(act)()
        started = time.monotonic()
        status, body = await waiting
        seconds = time.monotonic() - started
        await wakeup_module.close_wakeups()  # not cancelled with the loop (see _Hub.close)
        return status, body, seconds

    return async_to_sync(scenario)()


@pytest.mark.parametrize("layer", LAYERS)
def test_wait_returns_as_soon_as_the_decision_is_made(pending, agent_key, reviewer, slow_poll, layer):
    status, body, seconds = released_after(
        pending, agent_key, lambda: agent_approval_decide(approval_id=pending.pk, decider=reviewer,
                                                          decision="approve"), timeout=30)
    assert status == 200 and body["status"] == "approved" and body["approved_by"] == "reviewer"
    assert seconds < PUSHED_WITHIN  # woken by the push: the poll would take up to 30 s


@pytest.mark.parametrize("layer", LAYERS)
def test_an_emergency_stop_wakes_the_waiting_agent_through_the_project_stop_group(
        pending, agent_key, manager, slow_poll, drop_pushes, layer):
    from emergency.services import emergency_stop_trigger

    drop_pushes(approval_group(pending.pk))  # only the project's stop group can wake it
    status, body, seconds = released_after(
        pending, agent_key, lambda: emergency_stop_trigger(project_id=pending.project_id, condition="manual_stop",
                                                           reason="wake-up test", actor=manager), timeout=30)
    assert status == 200 and body["status"] == "cancelled"
    assert seconds < PUSHED_WITHIN


@pytest.mark.parametrize("act", ["decision", "emergency_stop"])
def test_without_the_push_the_waiter_is_not_answered_early(pending, agent_key, reviewer, manager, slow_poll,
                                                           drop_pushes, act):
    """The control for the two tests above: the same scenario with the push dropped answers only
    at the wait's timeout (then with the decided approval, read afresh). So those two tests
    cannot pass on the database poll."""
    from emergency.services import emergency_stop_trigger

    drop_pushes(approval_group(pending.pk), project_stop_group(pending.project_id))
    if act == "decision":
        def run():
            agent_approval_decide(approval_id=pending.pk, decider=reviewer, decision="approve")
    else:
        def run():
            emergency_stop_trigger(project_id=pending.project_id, condition="manual_stop", reason="no push",
                                   actor=manager)
    status, body, seconds = released_after(pending, agent_key, run, timeout=PUSHED_WITHIN + 2)
    assert seconds >= PUSHED_WITHIN, "answered early without the push: the wake-up tests would prove nothing"
    assert status == 200 and body["status"] == ("approved" if act == "decision" else "cancelled")


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


def test_a_deadline_in_the_waits_last_seconds_ends_it_timed_out_not_pending(pending, agent_key, slow_poll):
    """The poller reads the deadlines of the approvals waited on every HITL_WAIT_POLL_SECONDS: an
    approval whose deadline fell in a wait's last seconds was answered "pending" when the wait
    ended, past its deadline. The wait now reads it at its deadline."""
    AgentCallApproval.objects.filter(pk=pending.pk).update(expires_at=timezone.now() + timedelta(seconds=1))
    status, body = async_to_sync(wait_call)(pending.pk, agent_key, "timeout=4")
    assert status == 200 and body["status"] == "timed_out", body


def test_a_timeout_over_sixty_seconds_waits_sixty(pending, agent_key, reviewer):
    from approvals.consumers import _parse_timeout

    assert _parse_timeout(b"timeout=3600") == 60 and _parse_timeout(b"") == 30
    assert _parse_timeout(b"timeout=2.5") == 2.5 and _parse_timeout(b"timeout=.5") == 0.5
    assert _parse_timeout(b"timeout=0") == 0 and _parse_timeout(b"timeout=7.") == 7


@pytest.mark.parametrize("query", ["timeout=-1", "timeout=abc", "timeout=nan", "timeout=inf", "timeout=1_0",
                                   "timeout=%D9%A3", "timeout=%EF%BC%91", "timeout=1e1", "timeout=+5", "timeout= 5"])
def test_bad_timeout_is_400(pending, agent_key, query):
    status, body = async_to_sync(wait_call)(pending.pk, agent_key, query)
    assert status == 400 and body["error"] == "invalid" and "timeout" in body["fields"]


def test_a_wait_path_with_a_trailing_slash_is_404_as_every_other_api_path(pending, agent_key):
    async def call():
        comm = HttpCommunicator(asgi_app(), "GET", f"/api/v1/agent-approvals/{pending.pk}/wait/?timeout=1",
                                headers=[(b"host", b"localhost"), (b"authorization", f"Bearer {agent_key}".encode())])
        response = await comm.get_response(timeout=20)
        return response["status"], json.loads(response["body"])

    status, body = async_to_sync(call)()
    assert status == 404 and body["error"] == "not_found"


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


def _revoke_key(pending, agent):
    from access.models import ApiKey
    from access.services import api_key_revoke

    (key,) = ApiKey.objects.filter(user=agent)
    api_key_revoke(key_id=key.pk)


def _deactivate(pending, agent):
    agent.is_active = False
    agent.save(update_fields=["is_active"])


def _remove_role(pending, agent):
    from access.services import role_revoke_all

    role_revoke_all(user=agent, project=pending.project)


@pytest.mark.parametrize("lose, answer", [
    (_revoke_key, (401, "unauthenticated", "This API key has been revoked.")),
    (_deactivate, (401, "unauthenticated", "This user is inactive.")),
    (_remove_role, (404, "not_found", "Not found.")),
])
def test_a_wait_whose_access_ends_while_it_waits_is_not_given_the_decision(
        pending, agent, agent_key, reviewer, slow_poll, lose, answer):
    """The access of a waiting agent is checked again when its wait ends: a key revoked, a user
    deactivated or a role removed meanwhile gets what a new request would, not the decided call
    (and any amended input in it)."""
    def act():
        lose(pending, agent)
        agent_approval_decide(approval_id=pending.pk, decider=reviewer, decision="approve")

    status, body, _ = released_after(pending, agent_key, act, timeout=30)
    assert (status, body["error"], body["detail"]) == answer
    assert "input_data" not in body and "status" not in body


@pytest.mark.parametrize("log_out", [True, False], ids=["logged-out-meanwhile", "still-signed-in"])
def test_a_session_wait_is_answered_only_while_its_session_lasts(pending, agent, reviewer, slow_poll, settings,
                                                                 log_out):
    """The same for a wait authenticated by a browser session: logged out while it waited, 401;
    the control, still signed in, is answered with the call."""
    from django.contrib.sessions.models import Session
    from django.test import Client

    agent.is_staff = True  # a session is staff's (the admin's login lets only staff in)
    agent.save(update_fields=["is_staff"])
    client = Client()
    client.force_login(agent)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()

    async def scenario():
        comm = HttpCommunicator(asgi_app(), "GET", f"/api/v1/agent-approvals/{pending.pk}/wait?timeout=30",
                                headers=[(b"host", b"localhost"), (b"cookie", cookie)])
        waiting = asyncio.ensure_future(comm.get_response(timeout=70))
        await _until_waiting([approval_group(pending.pk)])
        if log_out:
            await database_sync_to_async(lambda: Session.objects.all().delete())()
        await database_sync_to_async(agent_approval_decide)(approval_id=pending.pk, decider=reviewer,
                                                             decision="approve")
        response = await waiting
        await comm.wait(timeout=10)
        await wakeup_module.close_wakeups()
        return response["status"], json.loads(response["body"])

    status, body = async_to_sync(scenario)()
    if log_out:
        assert status == 401 and body["error"] == "unauthenticated" and "status" not in body
    else:
        assert status == 200 and body["status"] == "approved"


def test_other_paths_still_reach_django(agent_key, project):
    async def get():
        comm = HttpCommunicator(asgi_app(), "GET", f"/api/v1/projects/{project.pk}",
                                headers=[(b"authorization", f"Bearer {agent_key}".encode()), (b"host", b"localhost")])
        response = await comm.get_response(timeout=10)
        await comm.wait(timeout=10)  # Django closes the request and gives its connection back
        return response

    response = async_to_sync(get)()
    assert response["status"] == 200 and json.loads(response["body"])["slug"] == "demo"


def test_a_lost_push_only_delays_the_release(pending, agent_key, reviewer, settings, drop_pushes):
    """A decision made elsewhere (another process on the in-process layer, or Redis down):
    the batch poll finds it."""
    settings.HITL_WAIT_POLL_SECONDS = 0.2
    drop_pushes(approval_group(pending.pk), project_stop_group(pending.project_id))
    status, body, seconds = released_after(
        pending, agent_key, lambda: agent_approval_decide(approval_id=pending.pk, decider=reviewer,
                                                          decision="approve"), timeout=30)
    assert status == 200 and body["status"] == "approved"
    assert seconds < 5


def test_many_waiters_share_one_poll_query(project, agent, agent_key, reviewer, settings, django_assert_max_num_queries):
    from approvals.consumers import CALLS
    from projects.services import task_create

    approvals = []
    for i in range(5):
        task = task_create(actor=agent, project_id=project.pk, agent_type="tester", title=f"w{i}")
        approvals.append(agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk,
                                                agent_type="tester", proposed_action="run tests", input_data={},
                                                model="gpt-4o-mini"))
    agent_approval_decide(approval_id=approvals[2].pk, decider=reviewer, decision="approve")
    with django_assert_max_num_queries(1):
        ready = CALLS.due_for_release([a.pk for a in approvals])
    assert ready == [approvals[2].pk]


@pytest.mark.skipif(connection.vendor != "postgresql",
                    reason="twenty readers beside a writer: the SQLite test database (in memory, shared cache) "
                           "refuses them with 'database is locked'; set DATABASE_URL")
def test_a_stop_that_wakes_many_waiters_reads_their_calls_in_a_few_batches(
        project, agent, agent_key, manager, slow_poll, monkeypatch):
    """An emergency stop wakes every waiting agent of the project at once: their re-reads of
    the call's status and their answers are coalesced (core.wakeup.BatchLoader), one query for
    many waiters, not one per waiter (20 waiters here: without batching, 20 reads of each kind)."""
    from access.services import api_key_create
    from approvals.consumers import CALLS
    from emergency.services import emergency_stop_trigger
    from projects.services import task_create

    waiters = 20
    keys = [agent_key, api_key_create(user=agent)[1]]  # half the waits on each of the agent's two keys
    calls = []
    for i in range(waiters):
        task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"many {i}")
        calls.append(agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk,
                                            agent_type="coder", proposed_action="write code", input_data={"i": i},
                                            model="gpt-4o-mini"))
    batches = {"statuses": [], "renders": []}
    stopped = []

    def counted(name):
        fetch = getattr(CALLS, name)

        def counting(ids):
            if stopped:
                batches[name].append(len(ids))
            return fetch(ids)

        return counting

    for name in batches:
        monkeypatch.setattr(CALLS, name, counted(name))
    from approvals import consumers

    checks = []  # the access checks of the woken waits: (keys, principals) per batch
    authentications = []  # each principal authenticated again
    access_again, authenticated_again = consumers.access_again, consumers.authenticated_again

    def counted_access(checked):
        checks.append((len(checked), len({principal for principal, _ in checked})))
        return access_again(checked)

    def counted_authentication(principal):
        authentications.append(principal)
        return authenticated_again(principal)

    monkeypatch.setattr(consumers, "access_again", counted_access)
    monkeypatch.setattr(consumers, "authenticated_again", counted_authentication)

    async def scenario():
        waiting = [asyncio.ensure_future(wait_call(call.pk, keys[i % 2], "timeout=30"))
                   for i, call in enumerate(calls)]
        await _until_waiting([approval_group(call.pk) for call in calls])
        stopped.append(True)
        await database_sync_to_async(emergency_stop_trigger)(
            project_id=project.pk, condition="manual_stop", reason="many waiters", actor=manager)
        answers = await asyncio.wait_for(asyncio.gather(*waiting), timeout=PUSHED_WITHIN + 10)
        await wakeup_module.close_wakeups()
        return answers

    answers = async_to_sync(scenario)()
    assert [(status, body["status"]) for status, body in answers] == [(200, "cancelled")] * waiters
    assert sum(batches["statuses"]) == waiters and sum(batches["renders"]) == waiters
    assert len(batches["statuses"]) <= 3, batches
    assert len(batches["renders"]) <= 3, batches
    # every wait's access is checked again, in a few batches, each key once per batch (not once per wait)
    assert 1 <= len(checks) <= 3 and all(checked <= 2 for checked, _ in checks), checks
    assert len(authentications) == sum(principals for _, principals in checks) <= 2 * len(checks), checks
    assert len(set(authentications)) == 2


def test_head_and_options_on_a_wait_are_answered_as_on_the_apis_other_get_paths(pending, agent_key):
    """They were 405 (`Allow: GET`) where every other GET path answers both. HEAD answers at once
    with what a GET would have now (it does not wait: asked to wait 60 s, it is answered within the
    30 s the test gives it), a bad timeout 400 as for a GET; OPTIONS names the methods, to a caller
    who is signed in (401 otherwise, as on the other paths)."""

    async def call(method, query="timeout=60", key=agent_key):
        headers = [(b"host", b"localhost")] + ([(b"authorization", f"Bearer {key}".encode())] if key else [])
        comm = HttpCommunicator(asgi_app(), method, f"/api/v1/agent-approvals/{pending.pk}/wait?{query}",
                                headers=headers)
        response = await comm.get_response(timeout=30)
        await comm.wait(timeout=10)
        return response

    assert async_to_sync(call)("HEAD")["status"] == 200
    assert async_to_sync(call)("HEAD", "timeout=abc")["status"] == 400
    options = async_to_sync(call)("OPTIONS")
    assert options["status"] == 200 and dict(options["headers"])[b"Allow"] == b"GET, HEAD, OPTIONS"
    assert async_to_sync(call)("OPTIONS", key=None)["status"] == 401
    post = async_to_sync(call)("POST")
    assert post["status"] == 405 and json.loads(post["body"])["error"] == "method_not_allowed"
