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
