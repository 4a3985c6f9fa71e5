"""A cancelled agent stops: the SDK's clean-up after a run never swallows the cancellation of
the task that runs it (Ctrl-C, a fleet shutting down). No server needed: the watcher is a stub."""
import asyncio
from decimal import Decimal

import pytest

from hitl_sdk import AsyncHitlClient, RunResult, SafetyEnhancedBaseAgent
from hitl_sdk.agent import RunContext


class Quick(SafetyEnhancedBaseAgent):
    agent_type = "coder"

    async def run(self, task, context):
        return RunResult(output={"done": True}, tokens_used=1, actual_cost=Decimal("0"))


def test_a_cancel_that_arrives_while_the_run_cleans_up_ends_the_task():
    """The run is done; its stop watcher takes a moment to close (a websocket's close
    handshake); the caller is cancelled in that moment. It must end cancelled, not go on with
    the run's result as if nobody had asked it to stop."""
    async def scenario():
        client = AsyncHitlClient("http://127.0.0.1:9", "hitl_unused")
        closing = asyncio.Event()

        async def watch_emergency_stop(project_id):
            try:
                await asyncio.sleep(3600)
            finally:
                closing.set()
                await asyncio.sleep(0.3)  # closing its socket

        client.watch_emergency_stop = watch_emergency_stop
        agent = Quick(client, "00000000-0000-0000-0000-000000000000")
        context = RunContext(input={}, approval=None, amended=False, round=1, modifications=[], extra={})
        outer = asyncio.ensure_future(agent._run_watched(None, context))
        await closing.wait()  # the run returned; the watcher is being closed
        outer.cancel()
        done, _ = await asyncio.wait({outer}, timeout=5)
        await client.aclose()
        assert outer in done
        return outer.cancelled()

    assert asyncio.run(scenario()) is True


class _Conn:
    """A websocket connection whose next message the test hands over."""

    def __init__(self):
        self.message = asyncio.get_running_loop().create_future()

    async def recv(self):  # cancel-safe, as websockets' own: the message waits for the next receive
        return await asyncio.shield(self.message)


def _ws():
    from hitl_sdk._common import _AsyncWS

    return _AsyncWS(_Conn())


def test_a_receive_cancelled_just_as_its_message_arrives_ends_cancelled():
    """Before Python 3.12, asyncio.wait_for returned the message and swallowed the cancellation
    when the message came in the same turn of the loop (gh-86296): an agent told to stop went
    on waiting for its approval. The message is already there; the cancel lands after 0 to 5
    turns of the loop: a receive not yet done when cancelled must end cancelled."""
    async def scenario(turns):
        ws = _ws()
        ws.conn.message.set_result('{"id": 1}')
        waiting = asyncio.ensure_future(ws.recv(30))
        for _ in range(turns):
            await asyncio.sleep(0)
        done_before = waiting.done()
        waiting.cancel()
        await asyncio.wait({waiting}, timeout=5)
        return done_before or waiting.cancelled()

    for turns in range(6):
        assert asyncio.run(scenario(turns)), f"cancelled after {turns} turn(s), the receive went on"


def test_a_receive_cancelled_after_its_socket_dropped_leaves_no_unretrieved_error():
    """Seen in the demo fleet's log at a SIGTERM: "Task exception was never retrieved ...
    ConnectionClosedError: no close frame", a traceback per wait. The socket dropped (the receive
    failed) and the wait was cancelled before it read the failure: nobody ever looked at it."""
    import gc

    from hitl_sdk._common import _AsyncWS
    from websockets.exceptions import ConnectionClosedError

    class Dropped:
        async def recv(self):
            raise ConnectionClosedError(None, None)

    async def scenario(turns):
        unseen: list = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: unseen.append(context["message"]))
        waiting = asyncio.ensure_future(_AsyncWS(Dropped()).recv(30))
        for _ in range(turns):
            await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.wait({waiting}, timeout=5)
        del waiting
        gc.collect()  # an unretrieved error is reported when its task is collected
        await asyncio.sleep(0)
        return unseen

    for turns in range(4):
        assert asyncio.run(scenario(turns)) == [], f"cancelled after {turns} turn(s)"


def test_a_receive_gives_the_message_or_none_after_its_timeout():
    async def scenario():
        ws = _ws()
        assert await ws.recv(0.05) is None
        asyncio.get_running_loop().call_later(0.02, ws.conn.message.set_result, "hello")
        return await ws.recv(5)

    assert asyncio.run(scenario()) == "hello"


def test_a_close_cancelled_just_as_its_handshake_ends_ends_cancelled():
    """The websocket's close runs in clean-ups (a stop watcher, a wait that ended). It was
    asyncio.wait_for, which before Python 3.12 swallows a cancellation that comes as the
    handshake ends: the task went on after it was told to stop. The handshake ends; the cancel
    lands after 0 to 5 turns of the loop: a close not yet done when cancelled must end cancelled."""
    async def scenario(turns):
        ws = _ws()
        handshake = asyncio.get_running_loop().create_future()

        async def close():
            await asyncio.shield(handshake)

        ws.conn.close = close
        closing = asyncio.ensure_future(ws.close())
        await asyncio.sleep(0)
        handshake.set_result(None)
        for _ in range(turns):
            await asyncio.sleep(0)
        done_before = closing.done()
        closing.cancel()
        await asyncio.wait({closing}, timeout=5)
        return done_before or closing.cancelled()

    for turns in range(6):
        assert asyncio.run(scenario(turns)), f"cancelled after {turns} turn(s), the close went on"


def test_a_close_error_is_not_raised():
    async def scenario():
        ws = _ws()

        async def close():
            raise ConnectionResetError("gone")

        ws.conn.close = close
        await ws.close()
        return True

    assert asyncio.run(scenario())


class _NoStopClient(AsyncHitlClient):
    def __init__(self):
        super().__init__("http://127.0.0.1:9", "hitl_unused")

    async def watch_emergency_stop(self, project_id):
        await asyncio.sleep(3600)


def _context():
    return RunContext(input={}, approval=None, amended=False, round=1, modifications=[], extra={})


def test_a_cancelled_execute_task_does_not_wait_for_its_sync_run():
    """Ctrl-C (or a fleet's shutdown) cancels execute_task while a sync ``run`` is busy in its
    thread: ``asyncio.run`` returns at once (``asyncio.to_thread`` made it join the thread first)
    and the run's ``stop_event`` tells it to wind down."""
    import threading

    running, release, finished, contexts = threading.Event(), threading.Event(), threading.Event(), []

    class Busy(SafetyEnhancedBaseAgent):
        def run(self, task, context):
            contexts.append(context)
            running.set()
            release.wait(20)
            finished.set()
            return {"late": True}

    async def scenario():
        client = _NoStopClient()
        outer = asyncio.ensure_future(Busy(client, "p")._run_watched(None, _context()))
        while not running.is_set():
            await asyncio.sleep(0.01)
        outer.cancel()
        done, _ = await asyncio.wait({outer}, timeout=5)
        await client.aclose()
        return outer in done and outer.cancelled()

    try:
        assert asyncio.run(scenario()) is True
        assert not finished.is_set(), "asyncio.run waited for the run's thread to end"
        assert contexts[0].stop_event.is_set()
    finally:
        release.set()
    assert finished.wait(5)


def test_a_sync_run_gives_its_result_or_its_exception():
    class Returns(SafetyEnhancedBaseAgent):
        def run(self, task, context):
            return {"value": 42}

    class Raises(SafetyEnhancedBaseAgent):
        def run(self, task, context):
            raise KeyError("missing")

    class StopsIterating(SafetyEnhancedBaseAgent):
        def run(self, task, context):
            raise StopIteration

    async def outcome(agent_class):
        client = _NoStopClient()
        try:
            return await agent_class(client, "p")._run_watched(None, _context())
        except Exception as exc:  # noqa: BLE001 - the test looks at which
            return exc
        finally:
            await client.aclose()

    assert asyncio.run(outcome(Returns)) == {"value": 42}
    raised = asyncio.run(outcome(Raises))
    assert isinstance(raised, KeyError) and raised.args == ("missing",)
    assert isinstance(asyncio.run(outcome(StopsIterating)), RuntimeError)


def test_without_the_websocket_the_stop_watcher_polls_the_status(monkeypatch):
    """``use_websocket=False``: the run's stop watcher reads the stop status (every
    ``recheck_seconds / 3``, at least 1 s) and never opens a websocket."""
    import httpx

    from hitl_sdk import _async_client

    reads, opened = [], []

    def answer(request):
        reads.append(request.url.path)
        stopped = len(reads) >= 3
        return httpx.Response(200, json={"project_id": "p", "stopped": stopped,
                                         "active_stop": {"id": "s1", "stop_reason": "halt"} if stopped else None})

    async def no_websocket(*args, **kwargs):
        opened.append(args)
        raise OSError("no websocket here")

    monkeypatch.setattr(_async_client._AsyncWS, "connect", no_websocket)

    async def scenario():
        client = AsyncHitlClient("http://hitl.test", "hitl_unused", use_websocket=False, recheck_seconds=3,
                                 transport=httpx.MockTransport(answer))
        try:
            return await asyncio.wait_for(client.watch_emergency_stop("p"), 10)
        finally:
            await client.aclose()

    stop = asyncio.run(scenario())
    assert stop.id == "s1" and reads == ["/api/v1/emergency/status/p"] * 3 and opened == []


def test_a_socket_whose_task_is_cancelled_while_it_drains_is_closed_all_the_same():
    """close() reads what is already there before the closing handshake; a cancellation of its task
    during that read skipped the handshake, and the socket stayed open (a ResourceWarning, and a
    keepalive task destroyed with its event loop)."""
    from hitl_sdk._common import _AsyncWS

    class Conn:
        closed = False

        async def recv(self):
            await asyncio.sleep(0.001)
            return '{"id": 1}'  # the server keeps talking: the read goes on for its half second

        async def close(self):
            self.closed = True

    async def main():
        conn = Conn()
        closing = asyncio.ensure_future(_AsyncWS(conn).close())
        await asyncio.sleep(0.05)
        assert not closing.done()  # still reading
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert conn.closed

    asyncio.run(main())
