"""The /ws/events/ websocket through the real ASGI application (WebsocketCommunicator)."""
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connection

from access.services import api_key_create
from approvals.services import agent_approval_request
from emergency.services import emergency_stop_trigger
from events.models import Event
from core.tests.test_asgi_handler import serve  # noqa: F401  (a real daphne on the test database)
from events.services import event_emit
from events.tests.writes import slow_write as _slow_write
from projects.services import task_create

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


def app():
    from botarmy_hitl.asgi import application

    return application


def communicator(path, key=None, headers=()):
    headers = list(headers)
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    return WebsocketCommunicator(app(), path, headers=headers)


async def receive_events(comm, n, timeout=10):
    """The next ``n`` events (heartbeats skipped)."""
    events = []
    while len(events) < n:
        message = json.loads(await comm.receive_from(timeout=timeout))
        if message.get("type") == "ping":
            continue
        events.append(message)
    return events


def emit(project, n=1, kind="budget_alert"):
    return [event_emit(project_id=project.pk, event_type=kind, data={"n": i}).id for i in range(n)]


@pytest.fixture
def keys(agent, outsider):
    return {"agent": api_key_create(user=agent, name="ws")[1], "outsider": api_key_create(user=outsider, name="ws")[1]}


def test_anonymous_and_outsiders_are_refused(project, keys):
    async def run():
        anonymous = communicator(f"/ws/events/?project_id={project.pk}")
        connected, _ = await anonymous.connect()
        assert not connected
        outsider = communicator(f"/ws/events/?project_id={project.pk}", keys["outsider"])
        connected, _ = await outsider.connect()
        assert not connected
        # Without a valid key a malformed query is not looked at: the handshake is refused first.
        anonymous_bad = communicator("/ws/events/?last_event_id=-3")
        assert not (await anonymous_bad.connect())[0]
        wrong_key = communicator("/ws/events/", "hitl_nope_" + "x" * 30)
        connected, _ = await wrong_key.connect()
        assert not connected
    async_to_sync(run)()


def test_a_foreign_browser_origin_is_refused(project, keys):
    async def run():
        comm = communicator(f"/ws/events/?project_id={project.pk}", keys["agent"],
                            headers=[(b"origin", b"https://evil.example.net")])
        connected, _ = await comm.connect()
        assert not connected
    async_to_sync(run)()


@pytest.mark.parametrize("origin, host, trusted, allowed", [
    ("http://localhost:8000", "localhost:8000", [], True),           # the page the server served
    ("http://localhost", "localhost", [], True),
    ("https://localhost", "localhost:443", [], True),
    ("http://localhost:9999", "localhost:8000", [], False),         # another port of the same host
    ("http://localhost:8000", "localhost:9999", [], False),
    ("http://evil.example", "evil.example", [], False),             # not one of ALLOWED_HOSTS
    ("null", "localhost:8000", [], False),
    ("http://localhost:8000", "localhost:x", [], False),
    ("https://hitl.example.com", "localhost:8000", ["https://hitl.example.com"], True),    # a trusted origin
    ("https://ops.example.com", "localhost:8000", ["https://*.example.com"], True),
    ("http://ops.example.com", "localhost:8000", ["https://*.example.com"], False),
])
def test_a_browser_may_open_the_stream_from_this_servers_own_origin_only(project, reviewer, settings, origin, host,
                                                                          trusted, allowed):
    """The Origin check compared the host alone: a page on another port of the same host (another
    app: a browser sends the reviewer's session cookie to every port) replayed every event."""
    from django.test import Client

    settings.ALLOWED_HOSTS = ["localhost"]
    settings.CSRF_TRUSTED_ORIGINS = trusted
    client = Client()
    client.force_login(reviewer)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"

    async def run():
        comm = communicator(f"/ws/events/?project_id={project.pk}&last_event_id=0",
                            headers=[(b"cookie", cookie.encode()), (b"origin", origin.encode()),
                                     (b"host", host.encode())])
        connected, _ = await comm.connect()
        if connected:
            await comm.disconnect()
        return connected
    assert async_to_sync(run)() is allowed


def test_replay_after_last_event_id_then_live_without_gaps_or_duplicates(project, keys):
    ids = emit(project, 5)

    async def run():
        comm = communicator(f"/ws/events/?project_id={project.pk}&last_event_id={ids[1]}", keys["agent"])
        connected, _ = await comm.connect()
        assert connected
        replayed = await receive_events(comm, 3)
        assert [e["id"] for e in replayed] == ids[2:]
        assert set(replayed[0]) == {"id", "event_type", "project_id", "task_id", "data", "created_at"}
        live = await database_sync_to_async(emit)(project, 3)
        got = await receive_events(comm, 3)
        assert [e["id"] for e in got] == live
        assert await comm.receive_nothing(timeout=0.5)
        await comm.disconnect()
    async_to_sync(run)()


def test_without_last_event_id_only_new_events_and_only_visible_projects(project, other_project, keys):
    emit(project, 2)

    async def run():
        comm = communicator("/ws/events/", keys["agent"])       # every project the agent can see
        connected, _ = await comm.connect()
        assert connected
        await database_sync_to_async(emit)(other_project, 2)    # not the agent's project
        mine = await database_sync_to_async(emit)(project, 1)
        got = await receive_events(comm, 1)
        assert [e["id"] for e in got] == mine
        assert await comm.receive_nothing(timeout=0.5)
        await comm.disconnect()
    async_to_sync(run)()


def test_an_emergency_stop_reaches_every_connection(project, agent, reviewer, keys):
    reviewer_key = api_key_create(user=reviewer, name="ws")[1]

    async def run():
        streams = [communicator(f"/ws/events/?project_id={project.pk}", keys["agent"]),
                   communicator("/ws/events/", reviewer_key)]
        for comm in streams:
            assert (await comm.connect())[0]
        await database_sync_to_async(emergency_stop_trigger)(project_id=project.pk, condition="manual_stop",
                                                             reason="drill", actor=reviewer)
        for comm in streams:
            kinds = [e["event_type"] for e in await receive_events(comm, 1)]
            assert kinds == ["emergency_stop_triggered"]
            await comm.disconnect()
    async_to_sync(run)()


def test_events_of_a_request_arrive_in_order(project, agent, keys):
    async def run():
        comm = communicator(f"/ws/events/?project_id={project.pk}", keys["agent"])
        assert (await comm.connect())[0]

        def requests():
            for i in range(5):
                task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"t{i}")
                agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                       proposed_action=f"step {i}", input_data={}, model="gpt-4o-mini")
        await database_sync_to_async(requests)()
        got = await receive_events(comm, 5)
        assert [e["data"]["proposed_action"] for e in got] == [f"step {i}" for i in range(5)]
        assert [e["id"] for e in got] == sorted(e["id"] for e in got)
        await comm.disconnect()
    async_to_sync(run)()


def test_a_slow_client_is_resynchronised_from_the_outbox(project, keys, monkeypatch):
    from approvals import event_stream

    monkeypatch.setattr(event_stream, "QUEUE_LIMIT", 3)

    async def run():
        comm = communicator(f"/ws/events/?project_id={project.pk}", keys["agent"])
        assert (await comm.connect())[0]
        ids = await database_sync_to_async(emit)(project, 20)
        got = await receive_events(comm, 20)
        assert [e["id"] for e in got] == ids
        await comm.disconnect()
    async_to_sync(run)()


@pytest.mark.postgres
def test_an_event_written_by_another_process_reaches_the_socket(project, keys):
    """A management command in another process (no Redis: the in-process channel layer cannot carry
    its push) writes an event; the hub's outbox poll delivers it."""
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    code = (f"from events.services import event_emit; "
            f"event_emit(project_id='{project.pk}', event_type='budget_alert', data={{'from': 'another process'}})")

    async def run():
        comm = communicator(f"/ws/events/?project_id={project.pk}", keys["agent"])
        assert (await comm.connect())[0]
        env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": "", "DJANGO_SETTINGS_MODULE": "botarmy_hitl.settings",
               "DJANGO_SECRET_KEY": "test"}
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT,
                                       env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        got = await receive_events(comm, 1, timeout=15)
        assert got[0]["data"] == {"from": "another process"}
        assert got[0]["id"] == await database_sync_to_async(lambda: Event.objects.latest("id").id)()
        await comm.disconnect()
    async_to_sync(run)()


def test_many_clients_each_receive_every_event_in_order(project, keys):
    """The benchmark's load (bench/events.py: 500 clients, 1,000 events) in small."""
    async def run():
        streams = [communicator(f"/ws/events/?project_id={project.pk}", keys["agent"]) for _ in range(30)]
        for comm in streams:
            assert (await comm.connect())[0]
        ids = await database_sync_to_async(emit)(project, 60)
        for comm in streams:
            got = await receive_events(comm, 60)
            assert [e["id"] for e in got] == ids
        for comm in streams:
            await comm.disconnect()
    async_to_sync(run)()


def test_a_quiet_project_beside_a_busy_one_stalls_no_stream(project, other_project, keys, make_user, monkeypatch):
    """One process's hub follows a project with more old events than one read takes and a project
    with none: both streams still get every new event (the hub used to re-read the busy project's
    old events from the quiet project's cursor on every wake-up, and deliver nothing again)."""
    from approvals import event_stream

    monkeypatch.setattr(event_stream, "BATCH", 5)
    emit(project, 8)
    quiet_key = api_key_create(user=make_user("quiet", role="agent", project=other_project), name="ws")[1]

    async def run():
        busy = communicator(f"/ws/events/?project_id={project.pk}", keys["agent"])
        quiet = communicator(f"/ws/events/?project_id={other_project.pk}", quiet_key)
        assert (await busy.connect())[0] and (await quiet.connect())[0]
        for _ in range(2):
            mine = await database_sync_to_async(emit)(project, 7)
            theirs = await database_sync_to_async(emit)(other_project, 1)
            assert [e["id"] for e in await receive_events(busy, 7)] == mine
            assert [e["id"] for e in await receive_events(quiet, 1)] == theirs
        await busy.disconnect()
        await quiet.disconnect()
    async_to_sync(run)()


@pytest.mark.parametrize("batch", [2, 500])
def test_a_stream_of_projects_read_in_several_queries_keeps_id_order(project, other_project, agent, keys,
                                                                      monkeypatch, batch):
    """Projects are read in chunks (200 per query); what a stream sends stays in id order across
    them, so a client resuming after the highest id it saw misses nothing of another chunk."""
    from access.services import role_grant
    from approvals import event_stream

    monkeypatch.setattr(event_stream, "CHUNK", 1)      # one project per query
    monkeypatch.setattr(event_stream, "BATCH", batch)  # and full queries cut the batch
    role_grant(user=agent, project=other_project, role="agent")
    start = emit(project, 1)[0]
    written = []
    for _ in range(3):
        written += emit(project, 1) + emit(other_project, 1)

    async def run():
        comm = communicator(f"/ws/events/?last_event_id={start}", keys["agent"])
        assert (await comm.connect())[0]
        got = [e["id"] for e in await receive_events(comm, len(written))]
        assert got == written, got
        await comm.disconnect()
    async_to_sync(run)()


@pytest.mark.postgres
@pytest.mark.parametrize("reconnect", [False, True])
def test_a_stream_of_every_project_sends_no_event_before_a_lower_id_commits(project, other_project, agent, keys,
                                                                           settings, reconnect):
    """Ids are drawn before commit: an event of project B (id n) can commit after one of project A
    (id n + 1). A stream of every project sent A's at once, and a client that reconnected after it
    never got B's (API.md: "none is lost"). It now holds A's until B's commits; a client that
    reconnects meanwhile resumes before both."""
    from access.services import role_grant

    settings.HITL_EVENT_SETTLE_SECONDS = 60
    role_grant(user=agent, project=other_project, role="agent")
    start = emit(project, 1)[0]
    thread, release, slow = _slow_write(other_project.pk)
    try:
        later = emit(project, 1)[0]
        assert start < slow < later

        async def run():
            comm = communicator(f"/ws/events/?last_event_id={start}", keys["agent"])
            assert (await comm.connect())[0]
            assert await comm.receive_nothing(timeout=1.5)    # A's event waits for B's lower id
            if reconnect:
                await comm.disconnect()
                comm = communicator(f"/ws/events/?last_event_id={start}", keys["agent"])
                assert (await comm.connect())[0]
            release.set()
            await asyncio.to_thread(thread.join, 30)
            got = await receive_events(comm, 2)
            assert [e["id"] for e in got] == [slow, later]
            assert await comm.receive_nothing(timeout=0.5)
            await comm.disconnect()
        async_to_sync(run)()
    finally:
        release.set()
        thread.join(30)


@pytest.mark.postgres
def test_a_rolled_back_id_holds_a_stream_of_every_project_only_while_its_transaction_runs(project, other_project,
                                                                                        agent, keys, settings):
    """A write that rolls back leaves a gap in the ids that never fills. Once no transaction that
    began before the event after the gap is running, the gap's own has ended: a stream of every
    project sends what follows at once, not after HITL_EVENT_SETTLE_SECONDS (a helper's load test
    saw every reviewer page's stream stall for the whole settle time after a lock timeout)."""
    from access.services import role_grant

    settings.HITL_EVENT_SETTLE_SECONDS = 120
    role_grant(user=agent, project=other_project, role="agent")
    start = emit(project, 1)[0]
    thread, release, gap = _slow_write(other_project.pk, commit=False)
    after = emit(project, 1)[0]          # written while the gap's transaction still runs

    async def run():
        every = communicator(f"/ws/events/?last_event_id={start}", keys["agent"])
        one = communicator(f"/ws/events/?project_id={project.pk}&last_event_id={start}", keys["agent"])
        assert (await every.connect())[0] and (await one.connect())[0]
        assert [e["id"] for e in await receive_events(one, 1, timeout=5)] == [after]   # one project: at once
        assert await every.receive_nothing(timeout=1)     # every project: not while the gap may fill
        release.set()
        await asyncio.to_thread(thread.join, 30)          # rolled back
        assert gap < after
        assert [e["id"] for e in await receive_events(every, 1, timeout=20)] == [after]
        await every.disconnect()
        await one.disconnect()
    try:
        async_to_sync(run)()
    finally:
        release.set()
        thread.join(30)


def test_a_project_losing_its_last_stream_while_another_subscribes_breaks_nothing(project, other_project, agent,
                                                                                 keys, monkeypatch):
    """A stream subscribing to a project that others followed, while it read the cursors of its
    other projects, found that project's cursor gone (its last stream had closed meanwhile):
    KeyError, a handshake that failed, and that crashed stream left among the project's followers,
    so every later stream of it in the process failed too (a helper's load test saw 1011s until
    the server restarted)."""
    from access.services import role_grant
    from approvals import event_stream

    role_grant(user=agent, project=other_project, role="agent")
    start = emit(project, 1)[0]
    real = event_stream._latest_ids

    async def run():
        entered, gate = asyncio.Event(), asyncio.Event()

        async def held_open(project_ids):
            if other_project.pk in project_ids and not gate.is_set():
                entered.set()
                await gate.wait()
            return await real(project_ids)

        monkeypatch.setattr(event_stream, "_latest_ids", held_open)
        first = communicator(f"/ws/events/?project_id={project.pk}", keys["agent"])
        assert (await first.connect())[0]
        every = communicator(f"/ws/events/?last_event_id={start}", keys["agent"])
        connecting = asyncio.ensure_future(every.connect())
        await asyncio.wait_for(entered.wait(), 10)
        await first.disconnect()                      # the project's last stream goes meanwhile
        gate.set()
        assert (await connecting)[0]
        mine = await database_sync_to_async(emit)(project, 1)
        theirs = await database_sync_to_async(emit)(other_project, 1)
        assert [e["id"] for e in await receive_events(every, 2)] == mine + theirs
        again = communicator(f"/ws/events/?project_id={project.pk}", keys["agent"])
        assert (await again.connect())[0]             # and the next stream of that project works
        more = await database_sync_to_async(emit)(project, 1)
        assert [e["id"] for e in await receive_events(again, 1)] == more
        await every.disconnect()
        await again.disconnect()
    async_to_sync(run)()


@pytest.mark.postgres     # (a writer thread beside the stream: SQLite's shared in-memory test database locks the table)
def test_a_stream_of_every_project_sends_a_long_backlog_while_events_keep_coming(project, keys, monkeypatch):
    """A stream of every project read its whole backlog before sending any of it; events pushed
    meanwhile past its queue's limit started the catch-up again from where it began, for ever:
    nothing was sent (a reviewer's review found it). It now sends each read up to a settled point."""
    import threading

    from django.db import connections

    from approvals import event_stream

    monkeypatch.setattr(event_stream, "QUEUE_LIMIT", 3)
    monkeypatch.setattr(event_stream, "BATCH", 200)
    real_read = event_stream._read

    async def slow_read(cursors):
        await asyncio.sleep(0.05)
        return await real_read(cursors)

    monkeypatch.setattr(event_stream, "_read", slow_read)
    backlog = emit(project, 1000)
    stop = threading.Event()

    def writer():
        try:
            while not stop.is_set():
                event_emit(project_id=project.pk, event_type="budget_alert", data={})
                time.sleep(0.01)
        finally:
            connections.close_all()

    async def run():
        comm = communicator(f"/ws/events/?last_event_id={backlog[0] - 1}", keys["agent"])
        assert (await comm.connect())[0]
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            got = await receive_events(comm, len(backlog), timeout=15)
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 10)
        assert [e["id"] for e in got] == backlog
        await comm.disconnect()
    async_to_sync(run)()


@pytest.mark.redis
def test_a_redis_outage_ends_no_stream_and_pushes_resume_after_it(serve, project, agent, keys, tmp_path):
    """A real daphne on a Redis of its own: the Redis stops, and the open stream is not closed
    (before, each stream's own channel-layer receive failed and daphne closed it with 1011); its
    events come by the outbox poll. The Redis starts again (empty: it forgot every group), and
    events are pushed again within a second, not left to the poll."""
    import shutil
    import time

    import websockets.sync.client

    from core.tests.daphne import free_port

    redis_server = shutil.which("redis-server")
    assert redis_server, "the Redis tests need redis-server"
    port = free_port()

    def start_redis():
        proc = subprocess.Popen([redis_server, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                import socket
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return proc
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    redis = start_redis()
    try:
        server = serve(REDIS_URL=f"redis://127.0.0.1:{port}/0", HITL_WAIT_POLL_SECONDS=6)
        def request_call():  # through the server: its push goes to its Redis (a task has one call pending)
            task_id = json.loads(server.request("POST", "/api/v1/tasks", key=keys["agent"], body={
                "project_id": str(project.pk), "agent_type": "coder", "title": "t"})[2])["task_id"]
            status, _, body, _ = server.request("POST", "/api/v1/agent-approvals", key=keys["agent"], body={
                "project_id": str(project.pk), "task_id": task_id, "agent_type": "coder",
                "proposed_action": "x", "input_data": {}})
            assert status == 201, body
            return json.loads(body)["approval_id"]

        def next_call_event(ws, timeout):
            started = time.monotonic()
            while True:
                message = json.loads(ws.recv(timeout=timeout))
                if message.get("event_type") == "agent_approval_requested":
                    return message["data"]["approval_id"], time.monotonic() - started

        uri = f"ws://127.0.0.1:{server.port}/ws/events/?project_id={project.pk}"
        with websockets.sync.client.connect(uri, additional_headers={"Authorization": f"Bearer {keys['agent']}"},
                                            open_timeout=20) as ws:
            time.sleep(0.5)
            approval = request_call()
            assert next_call_event(ws, 5)[0] == approval
            redis.terminate()
            redis.wait(10)
            time.sleep(1.5)                    # the server's receives fail meanwhile
            approval = request_call()          # the database is the source of truth
            assert next_call_event(ws, 10)[0] == approval, server.log()
            redis = start_redis()
            time.sleep(3)                      # the hub's receive loop finds it again (every second)
            for _ in range(2):                 # two pushes 2 s apart: the 6 s poll cannot answer both in 1 s
                approval = request_call()
                got, seconds = next_call_event(ws, 10)
                assert got == approval and seconds < 1, (seconds, server.log())
                time.sleep(2)
        assert "1011" not in server.log() and "Exception inside application" not in server.log(), server.log()
    finally:
        redis.terminate()
        redis.wait(10)


@pytest.mark.redis
def test_a_push_through_redis_reaches_a_socket_on_another_server_process(serve, project, keys, settings):
    """A real daphne with Redis, its outbox poll set to 30 s: an event written by this process
    arrives within seconds, so it came through the channel layer, not the poll."""
    import websockets.sync.client

    server = serve(REDIS_URL=os.environ["REDIS_URL"], HITL_WAIT_POLL_SECONDS=30)
    uri = f"ws://127.0.0.1:{server.port}/ws/events/?project_id={project.pk}"
    with websockets.sync.client.connect(uri, additional_headers={"Authorization": f"Bearer {keys['agent']}"},
                                        open_timeout=20) as ws:
        import time
        time.sleep(0.5)
        ids = emit(project, 3)
        started = time.monotonic()
        got = []
        while len(got) < 3:
            message = json.loads(ws.recv(timeout=10))
            if "event_type" in message:
                got.append(message["id"])
        assert got == ids
        assert time.monotonic() - started < 10, server.log()


async def told_invalid(comm):
    """Connected, then one error message in the API's format, then closed with 4400: the message."""
    connected, _ = await comm.connect()
    assert connected
    message = json.loads(await comm.receive_from(timeout=5))
    assert message["type"] == "error" and message["error"] == "invalid", message
    assert (await comm.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4400}
    return message


@pytest.mark.parametrize("query, field", [
    ("last_event_id=-3", "last_event_id"),
    ("last_event_id=abc", "last_event_id"),
    ("last_event_id=1_0", "last_event_id"),             # int() takes these three
    ("last_event_id=%D9%A5", "last_event_id"),
    ("last_event_id=+5", "last_event_id"),
    (f"last_event_id={2**63}", "last_event_id"),       # past the column's range
    ("project_id=not-a-uuid", "project_id"),
])
def test_a_malformed_query_is_told_what_is_wrong_and_closed_with_4400(project, keys, query, field):
    async def run():
        told = await told_invalid(communicator(f"/ws/events/?{query}", keys["agent"]))
        assert list(told["fields"]) == [field] and told["fields"][field][0] and told["detail"] == "Invalid input."
    async_to_sync(run)()


def test_a_last_event_id_beyond_every_event_is_refused(project, keys):
    ids = emit(project, 1)

    async def run():
        comm = communicator(f"/ws/events/?project_id={project.pk}&last_event_id={ids[-1] + 10**9}", keys["agent"])
        told = await told_invalid(comm)
        said = f"No event has had the id {ids[-1] + 10**9} yet: the last one you can see is {ids[-1]}."
        assert told["detail"] == said and told["fields"]["last_event_id"][0].startswith(said)
        ok = communicator(f"/ws/events/?project_id={project.pk}&last_event_id={ids[-1]}", keys["agent"])
        assert (await ok.connect())[0]
        await ok.disconnect()
    async_to_sync(run)()



def test_a_resume_point_past_the_projects_one_sees_is_refused(project, other_project, keys):
    """An id that only a project the client may not see has reached is refused like any id no event
    has had: accepting it would let a client find, id by id, how busy other projects are."""
    ids = emit(project, 1)
    theirs = emit(other_project, 3)

    async def run():
        for query in (f"project_id={project.pk}&", ""):
            told = await told_invalid(communicator(f"/ws/events/?{query}last_event_id={theirs[-1]}", keys["agent"]))
            assert told["detail"] == f"No event has had the id {theirs[-1]} yet: the last one you can see is {ids[-1]}."
    async_to_sync(run)()


async def closed_with(comm, timeout=5):
    """The close code the server sent within ``timeout`` seconds (heartbeats skipped); None if it
    sent an event first; "open" if it kept the connection open."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            output = await comm.receive_output(timeout=left)
        except asyncio.TimeoutError:
            break
        if output["type"] == "websocket.close":
            return output.get("code")
        if output["type"] == "websocket.send" and json.loads(output["text"]).get("type") != "ping":
            return None
    return "open"


async def heartbeats_after_now(comm):
    """Drain what was sent, then wait for two pings: the second one's access check began after the
    first was sent, so after now (timing-free on a slow machine)."""
    while not await comm.receive_nothing(timeout=0.05):
        await comm.receive_output()
    for _ in range(2):
        while json.loads(await comm.receive_from(timeout=10)).get("type") != "ping":
            pass


def test_a_revoked_key_or_a_lost_role_ends_an_open_stream(project, agent, reviewer, settings):
    """Access is checked again at each heartbeat: a stream opened with a key revoked since, or by
    a user whose role on its one project was taken away, is closed, not left streaming."""
    from access.services import api_key_revoke, role_revoke_all

    settings.HITL_WS_HEARTBEAT_SECONDS = 0.2
    revoked_key, revoked_raw = api_key_create(user=agent, name="ws, revoked")
    kept_raw = api_key_create(user=agent, name="ws, kept")[1]
    reviewer_raw = api_key_create(user=reviewer, name="ws")[1]

    async def run():
        revoked = communicator(f"/ws/events/?project_id={project.pk}", revoked_raw)
        demoted = communicator(f"/ws/events/?project_id={project.pk}", reviewer_raw)
        kept = communicator(f"/ws/events/?project_id={project.pk}", kept_raw)
        for comm in (revoked, demoted, kept):
            assert (await comm.connect())[0]
        await database_sync_to_async(api_key_revoke)(key_id=revoked_key.pk)
        await database_sync_to_async(role_revoke_all)(user=reviewer, project=project)
        assert await closed_with(revoked) == 4401
        assert await closed_with(demoted) == 4403
        mine = await database_sync_to_async(emit)(project, 1)  # the agent's other key streams on
        assert [e["id"] for e in await receive_events(kept, 1)] == mine
        await kept.disconnect()
    async_to_sync(run)()


def test_a_change_of_access_ends_or_widens_open_streams_at_once_not_at_the_next_heartbeat(
        project, other_project, agent, reviewer, settings):
    """Found in a review of the leftovers: a stream opened with a key revoked since got the project's
    events until its next heartbeat (20 s by default). A revoke, a role taken or granted now makes
    every open stream check its access when it commits (the heartbeat here is a minute away)."""
    from access.services import api_key_revoke, role_grant, role_revoke_all

    settings.HITL_WS_HEARTBEAT_SECONDS = 60
    revoked_key, revoked_raw = api_key_create(user=agent, name="ws, revoked")
    reviewer_raw = api_key_create(user=reviewer, name="ws")[1]
    every_raw = api_key_create(user=agent, name="ws, every project")[1]

    async def run():
        revoked = communicator(f"/ws/events/?project_id={project.pk}", revoked_raw)
        demoted = communicator(f"/ws/events/?project_id={project.pk}", reviewer_raw)
        every = communicator("/ws/events/", every_raw)
        for comm in (revoked, demoted, every):
            assert (await comm.connect())[0]
        await database_sync_to_async(api_key_revoke)(key_id=revoked_key.pk)
        assert await closed_with(revoked, timeout=5) == 4401
        await database_sync_to_async(role_revoke_all)(user=reviewer, project=project)
        assert await closed_with(demoted, timeout=5) == 4403
        await database_sync_to_async(role_grant)(user=agent, project=other_project, role="agent")
        await asyncio.sleep(1)  # the grant's check, long before the next heartbeat
        theirs = await database_sync_to_async(emit)(other_project, 1)  # newly visible: followed already
        assert [e["id"] for e in await receive_events(every, 1)] == theirs
        await every.disconnect()
    async_to_sync(run)()


def test_a_stream_of_every_project_follows_the_roles_as_they_change(project, other_project, agent, keys, settings):
    """Without project_id: a project that became visible is followed from then on, one that
    did not stay visible is no longer sent."""
    from access.services import role_grant, role_revoke_all

    settings.HITL_WS_HEARTBEAT_SECONDS = 0.2

    async def run():
        comm = communicator("/ws/events/", keys["agent"])
        assert (await comm.connect())[0]
        await database_sync_to_async(role_grant)(user=agent, project=other_project, role="agent")
        await database_sync_to_async(role_revoke_all)(user=agent, project=project)
        said = []  # what the next heartbeats send besides pings: the lost project, said once
        while not said or said[-1].get("type") != "access_ended":
            message = json.loads(await comm.receive_from(timeout=10))
            if message.get("type") != "ping":
                said.append(message)
        assert said == [{"type": "access_ended", "project_id": str(project.pk)}], said
        await heartbeats_after_now(comm)
        await database_sync_to_async(emit)(project, 1)        # no longer visible
        theirs = await database_sync_to_async(emit)(other_project, 1)
        assert [e["id"] for e in await receive_events(comm, 1)] == theirs
        with pytest.raises(asyncio.TimeoutError):  # nothing but heartbeats: the other project's event is not sent
            await asyncio.wait_for(receive_events(comm, 1), timeout=0.8)
        await comm.disconnect()
    async_to_sync(run)()


def signed_in_page(settings, user, project):
    """(the browser's Django test client, signed in as ``user``; a communicator of its page's stream)."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    host = settings.ALLOWED_HOSTS[0] if settings.ALLOWED_HOSTS and settings.ALLOWED_HOSTS[0] != "*" else "testserver"
    return client, lambda: communicator(f"/ws/events/?project_id={project.pk}", headers=[
        (b"cookie", cookie.encode()), (b"origin", f"http://{host}".encode()), (b"host", host.encode())])


def test_a_browser_stream_ends_when_its_session_logs_out(project, reviewer, settings):
    from django.contrib.sessions.models import Session

    settings.HITL_WS_HEARTBEAT_SECONDS = 0.2
    _client, stream = signed_in_page(settings, reviewer, project)

    async def run():
        comm = stream()
        assert (await comm.connect())[0]
        mine = await database_sync_to_async(emit)(project, 1)
        assert [e["id"] for e in await receive_events(comm, 1)] == mine
        await database_sync_to_async(lambda: Session.objects.all().delete())()  # logged out elsewhere
        assert await closed_with(comm) == 4401
    async_to_sync(run)()


def test_a_browser_stream_ends_at_once_when_its_user_signs_out(project, reviewer, settings):
    """Signing out (the pages' "Sign out") ends the page's stream when it commits, not at the next
    heartbeat (a minute away here)."""
    settings.HITL_WS_HEARTBEAT_SECONDS = 60
    client, stream = signed_in_page(settings, reviewer, project)

    async def run():
        comm = stream()
        assert (await comm.connect())[0]
        await database_sync_to_async(client.logout)()
        assert await closed_with(comm, timeout=5) == 4401
    async_to_sync(run)()


def test_a_database_away_at_a_heartbeat_does_not_end_the_checks(project, other_project, agent, settings,
                                                                  monkeypatch):
    """A check that fails (the database away while a newly visible project is followed) is tried
    again at the next heartbeat: the revoked key is still caught."""
    from django.db import OperationalError

    from access.services import api_key_revoke, role_grant
    from approvals import event_stream

    settings.HITL_WS_HEARTBEAT_SECONDS = 0.2
    key, raw = api_key_create(user=agent, name="ws")
    real, failed, armed = event_stream._latest_ids, [], []

    async def away_once(project_ids):
        if armed and not failed:
            failed.append(project_ids)
            raise OperationalError("the database is away")
        return await real(project_ids)

    monkeypatch.setattr(event_stream, "_latest_ids", away_once)

    async def run():
        comm = communicator("/ws/events/", raw)
        assert (await comm.connect())[0]
        armed.append(True)
        await database_sync_to_async(role_grant)(user=agent, project=other_project, role="agent")
        await heartbeats_after_now(comm)
        assert failed == [[other_project.pk]]  # the failing check happened, and the heartbeats went on
        theirs = await database_sync_to_async(emit)(other_project, 1)  # followed at a later heartbeat
        assert [e["id"] for e in await receive_events(comm, 1)] == theirs
        await database_sync_to_async(api_key_revoke)(key_id=key.pk)
        assert await closed_with(comm) == 4401
    async_to_sync(run)()


def test_a_client_gone_as_an_event_goes_out_is_one_line_not_a_traceback(project, keys, monkeypatch):
    """A client that closed as an event was sent to it (daphne: "Attempt to send on a closed
    protocol") logged a warning with a whole traceback each time: 40 of them in a helper's load
    test of clients reconnecting. It is one line at info now; the stream is closed as before."""
    import logging

    from autobahn.exception import Disconnected

    from approvals import event_stream

    real_send = event_stream.EventStreamConsumer.send

    async def send(self, text_data=None, bytes_data=None, close=False):
        if text_data and '"event_type"' in text_data:
            raise Disconnected("Attempt to send on a closed protocol")
        return await real_send(self, text_data=text_data, bytes_data=bytes_data, close=close)

    monkeypatch.setattr(event_stream.EventStreamConsumer, "send", send)
    app()   # (configures logging: a handler added before it would be dropped)
    records = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("approvals.event_stream")
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "level", logging.DEBUG)

    async def run():
        comm = communicator(f"/ws/events/?project_id={project.pk}", keys["agent"])
        assert (await comm.connect())[0]
        await database_sync_to_async(emit)(project, 1)
        assert (await comm.receive_output(timeout=5))["type"] == "websocket.close"
    try:
        async_to_sync(run)()
    finally:
        logger.removeHandler(handler)
    said = [r for r in records if "client had gone" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO and not said[0].exc_info
    assert not [r for r in records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("query", ["", "?project_id={project}"])
def test_a_database_away_at_the_handshake_closes_with_try_again_later_not_a_500(project, keys, monkeypatch, query):
    """No pooled connection (the database down for HITL_DB_POOL_TIMEOUT) raised out of the
    handshake: daphne answered it HTTP 500 with a traceback. It is accepted and closed with 1013
    ("try again later"), which the clients reconnect after; the next handshake works."""
    from django.db import OperationalError

    from approvals import event_stream

    real = event_stream._authenticate
    calls = []

    def away_once(scope):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("database is locked")
        return real(scope)

    monkeypatch.setattr(event_stream, "_authenticate", away_once)
    path = "/ws/events/" + query.format(project=project.pk)

    async def run():
        comm = communicator(path, keys["agent"])
        assert (await comm.connect())[0]
        assert await closed_with(comm) == 1013
        comm = communicator(path, keys["agent"])
        assert (await comm.connect())[0]
        ids = await database_sync_to_async(emit)(project, 1)
        assert [e["id"] for e in await receive_events(comm, 1)] == ids
        await comm.disconnect()
    async_to_sync(run)()


@pytest.mark.parametrize("path", ["/foo/ws/events/", "/api/v1/projects", "/ws/events/extra", "/"])
def test_a_handshake_on_a_path_with_no_socket_is_refused_not_a_500(project, keys, path):
    """Channels raised "No route found for path" (a 500 from the server) and the SDK, pointed at
    a wrong base URL, retried for ever; now the handshake is refused as any other (HTTP 403)."""
    async def run():
        for key in (keys["agent"], None):
            comm = communicator(path, key)
            connected, code = await comm.connect()
            assert not connected and code == 4404, (path, key, code)
    async_to_sync(run)()
