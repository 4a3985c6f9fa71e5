"""core.broadcast: pushes after commit leave the request's thread at once, reach the channel layer
in the order they were made, survive a failing send, and are sent at once where no loop is bound."""
import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async

from core import broadcast


class Layer:
    def __init__(self, fail_on=None, delay=0.0):
        self.sent, self.fail_on, self.delay = [], fail_on, delay
        self.threads = set()

    async def group_send(self, group, message):
        self.threads.add(threading.current_thread().name)
        await asyncio.sleep(self.delay)
        if group == self.fail_on:
            raise ConnectionError("redis is down")
        self.sent.append((group, message["n"]))


@pytest.fixture
def layer(monkeypatch):
    fake = Layer()
    monkeypatch.setattr(broadcast, "get_channel_layer", lambda: fake)
    return fake


def test_a_bound_thread_hands_pushes_to_its_loop_in_order_without_waiting(layer):
    layer.delay = 0.05  # each send takes a while: the request's thread must not wait for it

    async def main():
        loop = asyncio.get_running_loop()

        def request_thread():
            broadcast.bind_loop(loop)
            try:
                started = loop.time()
                for n in range(5):
                    broadcast.group_send(f"g{n % 2}", {"n": n})
                return loop.time() - started
            finally:
                broadcast.bind_loop(None)

        spent = await sync_to_async(request_thread, thread_sensitive=False)()
        assert spent < 0.05 and layer.sent == []  # handed over, nothing sent yet
        await broadcast.drained()
        return spent

    asyncio.run(main())
    assert layer.sent == [("g0", 0), ("g1", 1), ("g0", 2), ("g1", 3), ("g0", 4)]
    assert layer.threads == {threading.main_thread().name}  # sent by the loop, not the request's thread


def test_a_failed_send_is_logged_and_the_next_ones_still_go(layer, caplog):
    layer.fail_on = "down"

    async def main():
        loop = asyncio.get_running_loop()

        def request_thread():
            broadcast.bind_loop(loop)
            try:
                broadcast.group_send("up", {"n": 1})
                broadcast.group_send("down", {"n": 2})
                broadcast.group_send("up", {"n": 3})
            finally:
                broadcast.bind_loop(None)

        await sync_to_async(request_thread, thread_sensitive=False)()
        await broadcast.drained()

    asyncio.run(main())
    assert layer.sent == [("up", 1), ("up", 3)]
    assert "push to down failed" in caplog.text


def test_an_unbound_thread_sends_at_once(layer):
    broadcast.group_send("g", {"n": 7})  # a Celery task, a management command, the test client
    assert layer.sent == [("g", 7)]
