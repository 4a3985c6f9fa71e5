"""core.broadcast: pushes after commit leave the request's thread at once, reach the channel layer
in the order they were made, survive a failing send, and are sent at once where no loop is bound."""
import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async

from core import broadcast


class Layer:
    def __init__(self, fail_on=None):
        self.sent, self.fail_on = [], fail_on
        self.threads = set()
        self.gate = None  # an asyncio.Event every send waits for, when set up by a test

    async def group_send(self, group, message):
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            await self.gate.wait()
        if group == self.fail_on:
            raise ConnectionError("redis is down")
        self.sent.append((group, message["n"]))


@pytest.fixture
def layer(monkeypatch):
    fake = Layer()
    monkeypatch.setattr(broadcast, "get_channel_layer", lambda: fake)
    return fake


def test_a_bound_thread_hands_pushes_to_its_loop_in_order_without_waiting(layer):
    async def main():
        loop = asyncio.get_running_loop()
        layer.gate = asyncio.Event()  # no send can finish before the request's thread is done

        def request_thread():
            broadcast.bind_loop(loop)
            try:
                for n in range(5):
                    broadcast.group_send(f"g{n % 2}", {"n": n})
            finally:
                broadcast.bind_loop(None)

        # A thread that waited for its sends would wait for ever here: the gate opens after it.
        await asyncio.wait_for(sync_to_async(request_thread, thread_sensitive=False)(), timeout=10)
        assert layer.sent == []  # handed over, nothing sent yet
        layer.gate.set()
        await broadcast.drained()

    asyncio.run(main())
    assert layer.sent == [("g0", 0), ("g1", 1), ("g0", 2), ("g1", 3), ("g0", 4)]
    assert layer.threads == {threading.main_thread().name}  # sent by the loop, not the request's thread


def pushed_from_a_request_thread(pushes) -> None:
    """``pushes`` [(group, n)] made on a request's thread bound to a loop, then sent by it."""
    async def main():
        loop = asyncio.get_running_loop()

        def request_thread():
            broadcast.bind_loop(loop)
            try:
                for group, n in pushes:
                    broadcast.group_send(group, {"n": n})
            finally:
                broadcast.bind_loop(None)

        await sync_to_async(request_thread, thread_sensitive=False)()
        await broadcast.drained()

    asyncio.run(main())


def test_a_failed_send_is_logged_and_the_next_ones_still_go(layer, caplog):
    layer.fail_on = "down"
    pushed_from_a_request_thread([("up", 1), ("down", 2), ("up", 3)])
    assert layer.sent == [("up", 1), ("up", 3)]
    assert "push to down failed" in caplog.text


def test_an_outage_logs_one_traceback_not_one_per_push(layer, caplog):
    """A 25 s Redis outage logged about 23,000 lines: a traceback for every lost push."""
    layer.fail_on = "down"
    with caplog.at_level("WARNING", logger="core.broadcast"):
        pushed_from_a_request_thread([*(("down", n) for n in range(50)), ("up", 50), ("down", 51)])
    assert layer.sent == [("up", 50)]
    records = [r for r in caplog.records if r.name == "core.broadcast"]
    assert [r.exc_info is not None for r in records] == [True, False, True], [r.getMessage() for r in records]
    assert "50 lost meanwhile" in records[1].getMessage()                  # the outage's end, counted
    assert "push to down failed" in records[2].getMessage()                # a new outage: its first again


def test_an_unbound_thread_sends_at_once(layer):
    broadcast.group_send("g", {"n": 7})  # a Celery task, a management command, the test client
    assert layer.sent == [("g", 7)]


def test_an_unbound_thread_sends_on_one_loop_of_its_own_without_a_thread_per_push(layer, monkeypatch):
    """A stop from a Celery task that cancelled 4,400 calls spent 21 s after its commit waking
    their waiters (past the conditions check's 20 s time limit): async_to_sync started a thread
    and a loop (with Redis, a connection) for each push, about 5 ms. The thread's own loop is
    kept and reused: no thread is started for a push, and each goes out before group_send returns."""
    loops, started = set(), []
    real_send = layer.group_send

    async def recording(group, message):
        loops.add(id(asyncio.get_running_loop()))
        await real_send(group, message)

    monkeypatch.setattr(layer, "group_send", recording)
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append(self) or real_start(self))

    def celery_task():
        for n in range(200):
            broadcast.group_send("g", {"n": n})
            assert layer.sent[-1] == ("g", n)  # sent at once, blocking, in order

    worker = threading.Thread(target=celery_task)
    real_start(worker)
    worker.join()
    assert len(layer.sent) == 200 and len(loops) == 1 and started == []


def test_a_thread_sync_to_async_runs_sends_on_that_loop(layer):
    """A consumer's database work (a wait timing its call out) runs in a sync_to_async thread: its
    pushes go out on the consumer's loop, whose in-memory layer queues and Redis connections they
    use, not on a loop of the thread's own."""
    async def consumer():
        outer = id(asyncio.get_running_loop())
        seen = []

        async def recording(group, message):
            seen.append(id(asyncio.get_running_loop()))

        layer.group_send = recording
        await sync_to_async(broadcast.group_send)("g", {"n": 1})
        assert seen == [outer]

    asyncio.run(consumer())
