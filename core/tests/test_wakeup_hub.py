"""The wake-up hub's receive loop on a scripted channel layer (no Redis needed): a receive that
times out is normal (no traceback, receive again); a failing layer logs one traceback per
outage, not one per second."""
import asyncio
import logging
import types

import pytest
from asgiref.sync import async_to_sync
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core import wakeup as wakeup_module


class ScriptedLayer:
    """receive() raises the scripted errors in turn, then returns the queued messages."""

    group_expiry = 86400

    def __init__(self, errors):
        self.errors = list(errors)
        self.messages = asyncio.Queue()

    async def new_channel(self):
        return "hub!test"

    async def group_add(self, group, channel):
        pass

    async def group_discard(self, group, channel):
        pass

    async def receive(self, channel):
        if self.errors:
            raise self.errors.pop(0)
        return await self.messages.get()


@pytest.fixture
def hub_on(monkeypatch):
    def use(layer):
        monkeypatch.setattr(wakeup_module, "get_channel_layer", lambda: layer)
        # core.wakeup's own asyncio, with its 1 s pauses after a failed receive made instant
        monkeypatch.setattr(wakeup_module, "asyncio", types.SimpleNamespace(**{**vars(asyncio), "sleep": _no_pause}))
    return use


_real_sleep = asyncio.sleep


async def _no_pause(delay, result=None):
    return await _real_sleep(0 if delay <= 1 else delay, result)


def _woken_after_errors(layer) -> bool:
    async def scenario():
        async with wakeup_module.wakeup("g") as event:
            while layer.errors:
                await _real_sleep(0.001)
            await layer.messages.put({"type": "hitl.wakeup", "group": "g"})
            await asyncio.wait_for(event.wait(), timeout=5)
            return event.is_set()

    return async_to_sync(scenario)()


def test_receive_timeouts_are_normal(hub_on, caplog):
    caplog.set_level(logging.DEBUG, logger="core.wakeup")
    layer = ScriptedLayer([RedisTimeoutError("Timeout reading from redis:6379"), asyncio.TimeoutError()])
    hub_on(layer)
    assert _woken_after_errors(layer)
    records = [r for r in caplog.records if r.name == "core.wakeup"]
    assert records and all(r.levelno == logging.DEBUG and not r.exc_info for r in records), records


def test_timeouts_that_keep_coming_get_one_warning_without_traceback(hub_on, caplog):
    layer = ScriptedLayer([RedisTimeoutError("Timeout reading")] * 10)
    hub_on(layer)
    assert _woken_after_errors(layer)
    warnings = [r for r in caplog.records if r.name == "core.wakeup" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING and not warnings[0].exc_info
    assert "socket timeout" in warnings[0].getMessage()


def test_an_outage_logs_one_traceback(hub_on, caplog):
    layer = ScriptedLayer([RedisConnectionError("Connection refused")] * 5)
    hub_on(layer)
    assert _woken_after_errors(layer)
    errors = [r for r in caplog.records if r.name == "core.wakeup" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info


def test_closing_the_hub_stops_its_receive_without_cancelling_it(monkeypatch):
    from channels.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    monkeypatch.setattr(wakeup_module, "get_channel_layer", lambda: layer)

    async def scenario():
        async with wakeup_module.wakeup("g"):
            hub = wakeup_module._hubs[asyncio.get_running_loop()]
        await wakeup_module.close_wakeups()
        return hub.task.done() and not hub.task.cancelled() and hub.refresher.cancelled()

    assert async_to_sync(scenario)()


class HungLayer(ScriptedLayer):
    """A Redis that neither answers nor refuses: adds and discards never return."""

    def __init__(self):
        super().__init__([])
        self.adds = []

    async def group_add(self, group, channel):
        self.adds.append(group)
        await _real_sleep(3600)

    async def group_discard(self, group, channel):
        await _real_sleep(3600)


def test_a_hung_layer_holds_no_waiter_up_and_none_behind_another(monkeypatch):
    """Each subscribe told the layer of its group under the hub's one lock: with a hung Redis (15 s
    per call) waiters queued behind one another and long polls answered after 90-120 s instead of
    polling the database at once. Now each waits at most SUBSCRIBE_WAIT_SECONDS, side by side."""
    layer = HungLayer()
    monkeypatch.setattr(wakeup_module, "get_channel_layer", lambda: layer)

    async def scenario():
        loop = asyncio.get_running_loop()

        async def wait_on(group):
            async with wakeup_module.wakeup(group):
                return len(set(layer.adds))  # the subscriptions begun when this waiter went on

        begun = await asyncio.gather(*(wait_on(f"g{i}") for i in range(20)))
        hub = wakeup_module._hubs[loop]
        for task in list(hub.adding.values()):
            task.cancel()
        return begun, sorted(set(layer.adds))

    begun, added = async_to_sync(scenario)()
    assert len(begun) == 20 and added == sorted(f"g{i}" for i in range(20))
    # side by side, not one after another: every subscription had begun before any waiter went on
    # (one after another under the lock, the first waiter went on with one begun, the next with two...)
    assert min(begun) == 20, begun
