"""The same application served by uvicorn through ``bin/serve --server uvicorn`` (the documented
alternative to daphne): an agent's whole lifecycle through the SDK (its waits on the websocket),
the event stream, the API's errors, a header that must not pass for the idempotency key, a clean
stop during a long poll, and a stop with a live socket open."""
import json
import re
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from sdk_tests.conftest import approve
from sdk_tests.test_agent import Coder

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world_server() -> str:
    return "uvicorn"


def _call(world, method, path, *, key, body=None, headers=None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(world.url + path, data=data, method=method, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json", "Accept": "application/json",
        **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, answer.headers, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def test_an_agents_lifecycle_through_the_sdk(world, bot):
    reviewer_bot = bot(("agent", approve), ("response", approve))
    coder = Coder(world.client("agent"), world.project_id)
    result = coder.execute_task_sync(title="Implement login", input_data={"files": ["login.py"]})
    reviewer_bot.check()
    assert result.call_approval.status == "approved" and result.call_approval.started_at is not None
    assert result.response_approval.status == "approved" and result.task.status == "completed"
    assert coder.runs[0].input["task"]["input_data"] == {"files": ["login.py"]}
    log = (world.tmp_path / f"daphne-{world.port}.log").read_text()
    assert log.startswith("serve: 1 uvicorn worker(s)") and "Started server process" in log


def test_the_event_stream_sends_a_new_request_live(world):
    agent_key = world.keys["agent"]
    status, _, task = _call(world, "POST", "/api/v1/tasks", key=agent_key, body={
        "project_id": world.project_id, "agent_type": "coder", "title": "Live"})
    assert status == 201, task
    with connect(f"ws://127.0.0.1:{world.port}/ws/events/?project_id={world.project_id}",
                 additional_headers={"Authorization": f"Bearer {agent_key}"}, open_timeout=10) as ws:
        time.sleep(0.3)  # subscribed before the request is made
        status, _, created = _call(world, "POST", "/api/v1/agent-approvals", key=agent_key, body={
            "project_id": world.project_id, "task_id": task["task_id"], "agent_type": "coder",
            "proposed_action": "Write the login form", "input_data": {"files": ["login.py"]},
            "model": "gpt-4o-mini"})
        assert status == 201, created
        deadline = time.monotonic() + 15
        while True:
            event = json.loads(ws.recv(max(deadline - time.monotonic(), 0.1)))
            if event.get("event_type") == "agent_approval_requested":
                break
    assert event["data"]["approval_id"] == created["approval_id"]
    assert event["project_id"] == world.project_id


def _pending_approval(world) -> str:
    key = world.keys["agent"]
    status, _, task = _call(world, "POST", "/api/v1/tasks", key=key, body={
        "project_id": world.project_id, "agent_type": "coder", "title": "Pending"})
    assert status == 201, task
    status, _, created = _call(world, "POST", "/api/v1/agent-approvals", key=key, body={
        "project_id": world.project_id, "task_id": task["task_id"], "agent_type": "coder",
        "proposed_action": "Write the login form", "input_data": {}, "model": "gpt-4o-mini"})
    assert status == 201, created
    return created["approval_id"]


def test_bad_input_is_a_json_4xx_and_sigterm_stops_the_server_during_a_long_poll(world):
    status, _, body = _call(world, "POST", "/api/v1/agent-approvals", key=world.keys["agent"], body=b"{not json")
    assert status == 400 and body["error"] == "invalid", body
    status, _, body = _call(world, "GET", "/api/v1/tasks/not-a-task", key=world.keys["agent"])
    assert status == 404 and body["error"] == "not_found", body
    approval_id = _pending_approval(world)
    answers = []
    polling = threading.Thread(target=lambda: answers.append(_poll_quietly(world, approval_id)), daemon=True)
    polling.start()
    time.sleep(0.5)  # the long poll is waiting in the server
    started = time.monotonic()
    world.proc.send_signal(signal.SIGTERM)
    # HITL_SERVE_GRACE is 5 s here: uvicorn lets the long poll run for 3 s (grace - 2), cancels it,
    # and the worker exits by itself before the launcher's SIGKILL at 5 s.
    assert world.proc.wait(30) == 0, world.log()
    elapsed = time.monotonic() - started
    log = world.log()
    assert "timeout graceful shutdown exceeded" in log, log  # the long poll held the shutdown...
    assert 2.5 <= elapsed < 10, (elapsed, log)  # ...until the grace, not until the SIGKILL
    assert "Finished server process" in log, log
    # The only error is uvicorn's report of the long poll it cancelled; nothing else failed.
    errors = [line.split(None, 1)[1] for line in log.splitlines() if line.startswith("ERROR:")]
    assert errors == ["Cancel 1 running task(s), timeout graceful shutdown exceeded",
                      "Exception in ASGI application"], log
    raised = {line.split(":")[0] for line in log.splitlines() if re.match(r"[\w.]+(Error|Exception)\b", line)}
    assert raised == {"asyncio.exceptions.CancelledError"}, log
    assert "exited with" not in log and "killed" not in log, log  # it stopped with the launcher, by itself
    polling.join(5)
    assert not polling.is_alive()
    # the cancelled long poll was answered in the API's error format (it was uvicorn's plain-text 500)
    status, headers, body = answers[0]
    assert status == 503 and body["error"] == "unavailable" and headers.get("retry-after"), answers


def _poll_quietly(world, approval_id):
    try:
        return _call(world, "GET", f"/api/v1/agent-approvals/{approval_id}/wait?timeout=30", key=world.keys["agent"])
    except (OSError, ValueError) as exc:
        return exc  # the server went away under it


def test_a_header_named_with_an_underscore_is_not_the_idempotency_key(world):
    """Django reads ``Idempotency_Key`` and ``Idempotency-Key`` as the same META key: a worker that
    passed the first on would let it replay (or block) another request's result."""
    key = world.keys["agent"]
    body = {"project_id": world.project_id, "agent_type": "coder", "title": "Once"}
    spoofed = [_call(world, "POST", "/api/v1/tasks", key=key, body=body, headers={"Idempotency_Key": "k-1"})
               for _ in range(2)]
    assert [status for status, _, _ in spoofed] == [201, 201], spoofed
    assert spoofed[0][2]["task_id"] != spoofed[1][2]["task_id"]  # two tasks: no key was seen
    real = [_call(world, "POST", "/api/v1/tasks", key=key, body=body, headers={"Idempotency-Key": "k-1"})
            for _ in range(2)]
    assert [status for status, _, _ in real] == [201, 201], real
    assert real[0][2]["task_id"] == real[1][2]["task_id"]  # the real header replays the first result
    assert real[0][2]["task_id"] not in {spoofed[0][2]["task_id"], spoofed[1][2]["task_id"]}


def _until_requested(ws, approval_id, deadline) -> list:
    """The events received up to and including the request of ``approval_id`` (heartbeats left out)."""
    events = []
    while True:
        event = json.loads(ws.recv(max(deadline - time.monotonic(), 0.1)))
        if event.get("type") != "ping":
            events.append(event)
        if event.get("event_type") == "agent_approval_requested" and event["data"]["approval_id"] == approval_id:
            return events


def test_sigterm_closes_the_event_stream_with_1012_and_a_reconnect_misses_nothing(world):
    """What a live page sees when a uvicorn worker stops: its socket closed at once with 1012
    (service restart), not left to time out; coming back with ``last_event_id`` after the restart,
    it gets the event written while it was away, and no earlier one again."""
    key = world.keys["agent"]
    stream = f"ws://127.0.0.1:{world.port}/ws/events/?project_id={world.project_id}"
    with connect(stream, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=10) as ws:
        time.sleep(0.3)  # subscribed before the request is made
        before = _until_requested(ws, _pending_approval(world), time.monotonic() + 15)[-1]
        started = time.monotonic()
        world.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(10)
        closed_after = time.monotonic() - started
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012, closed.value
    assert closed_after < 2, closed_after  # at once, not at the grace's end (5 s)
    assert world.proc.wait(30) == 0, world.log()
    world.start()  # the same port and database
    missed = _pending_approval(world)
    with connect(f"{stream}&last_event_id={before['id']}", additional_headers={"Authorization": f"Bearer {key}"},
                 open_timeout=10) as ws:
        replayed = _until_requested(ws, missed, time.monotonic() + 15)
    assert all(event["id"] > before["id"] for event in replayed), (before, replayed)  # none again
    assert [event["id"] for event in replayed] == sorted({event["id"] for event in replayed})  # in order, once
