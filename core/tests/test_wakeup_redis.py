"""The wake-up hub on the real Redis channel layer (the configured CHANNEL_LAYERS, not a test
copy): it idles without errors and still wakes a waiter at once afterwards.

redis-py 8 gives every socket read a 5 s timeout by default, exactly channels-redis's 5 s
blocking pop (BZPOPMIN): an idle receive then raised ``redis.exceptions.TimeoutError`` (and the
hub logged a traceback) about every 6 s. The settings give the channel layer's connections a
read timeout above the blocking pop, so an idle receive simply returns to Redis.
"""
import asyncio
import logging
import os

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from core import wakeup as wakeup_module
from core.wakeup import wakeup

pytestmark = pytest.mark.redis

IDLE_SECONDS = float(os.environ.get("HITL_TEST_IDLE_SECONDS", "13"))


def test_the_configured_redis_layer_reads_longer_than_it_blocks():
    from channels_redis.core import RedisChannelLayer

    layer = get_channel_layer()
    assert isinstance(layer, RedisChannelLayer)
    pool = layer.create_pool(0)
    timeout = pool.connection_class(**pool.connection_kwargs).socket_timeout  # the effective one
    assert timeout is None or timeout > layer.brpop_timeout + 1, (timeout, layer.brpop_timeout)


def test_an_idle_hub_logs_nothing_and_still_wakes_at_once(caplog):
    from channels_redis.core import RedisChannelLayer

    layer = get_channel_layer()
    assert isinstance(layer, RedisChannelLayer), "the redis marker keeps the configured layer"
    # Another process would send the wake-up: a layer instance of its own, same configuration.
    from core.channel_layer import RedisChannelLayer as Configured

    sender = Configured(**settings.CHANNEL_LAYERS["default"].get("CONFIG", {}))
    group = f"hitl.test.idle.{os.getpid()}"
    caplog.set_level(logging.DEBUG)

    async def scenario():
        loop = asyncio.get_running_loop()
        async with wakeup(group) as woken:
            hub = wakeup_module._hubs[loop]
            assert group in hub.waiters and hub.task is not None
            await asyncio.sleep(IDLE_SECONDS)  # several blocking pops come back empty meanwhile
            assert not woken.is_set() and not hub.task.done()
            started = loop.time()
            await sender.group_send(group, {"type": "hitl.wakeup", "group": group})
            await asyncio.wait_for(woken.wait(), timeout=5)
            woken_after = loop.time() - started
        await wakeup_module.close_wakeups()  # stopped, not cancelled with the loop (see _Hub.close)
        assert hub.task.done() and not hub.task.cancelled()
        return woken_after

    try:
        woken_after = async_to_sync(scenario)()
    finally:
        async_to_sync(sender.flush)()
    assert woken_after < 2, woken_after
    problems = [r for r in caplog.records
                if r.levelno >= logging.WARNING or r.exc_info or "timed out" in r.getMessage()]
    assert not problems, [(r.name, r.levelname, r.getMessage(), r.exc_info) for r in problems]
