"""core.channel_layer: channels_redis's layer whose group send makes fewer trips to Redis
delivers what channels_redis's own would, against real Redis: every member of the group gets the
message once (members of one process share a Redis key), members past the group expiry are
dropped, a channel at its capacity gets no more, and the script is loaded again when Redis has
forgotten it."""
import asyncio
import os
import uuid

import pytest
from channels_redis.core import RedisChannelLayer as Upstream

from core.channel_layer import RedisChannelLayer

pytestmark = pytest.mark.redis


def layer(**config):
    return RedisChannelLayer(hosts=[os.environ["REDIS_URL"]], prefix=f"hitl-test-{uuid.uuid4().hex[:8]}", **config)


def run(scenario):
    return asyncio.run(scenario())


async def member(lay, group="g"):
    """A new channel of ``lay``, added to ``group``."""
    channel = await lay.new_channel()
    await lay.group_add(group, channel)
    return channel


def test_every_member_gets_the_message_once_as_with_channels_redis():
    one = layer()
    other = RedisChannelLayer(hosts=[os.environ["REDIS_URL"]], prefix=one.prefix)  # another process
    upstream = Upstream(hosts=[os.environ["REDIS_URL"]], prefix=one.prefix)

    async def scenario():
        a, b, c = await member(one), await member(one), await member(other)
        await one.group_send("g", {"type": "hitl.event", "n": 1})
        await upstream.group_send("g", {"type": "hitl.event", "n": 2})  # the same format on the wire
        got = {}
        for name, (lay, channel) in {"a": (one, a), "b": (one, b), "c": (other, c)}.items():
            got[name] = [await asyncio.wait_for(lay.receive(channel), 5) for _ in range(2)]
        for lay, channel in ((one, a), (one, b), (other, c)):  # nothing more for anyone
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(lay.receive(channel), 0.5)
        await one.flush()
        return got

    got = run(scenario)
    assert got == {name: [{"type": "hitl.event", "n": 1}, {"type": "hitl.event", "n": 2}] for name in "abc"}


def test_a_group_nobody_listens_to_stores_nothing():
    lay = layer()

    async def scenario():
        await lay.group_send("nobody", {"type": "hitl.event"})
        keys = await lay.connection(0).keys(f"{lay.prefix}*")
        await lay.flush()
        return keys

    assert run(scenario) == []


def test_members_past_the_group_expiry_are_dropped_and_not_sent_to():
    lay = layer(group_expiry=1)

    async def scenario():
        channel = await member(lay)
        await asyncio.sleep(2.1)
        await lay.group_send("g", {"type": "hitl.event"})
        members = await lay.connection(0).zrange(lay._group_key("g"), 0, -1)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(lay.receive(channel), 0.5)
        await lay.flush()
        return members

    assert run(scenario) == []


def test_a_channel_at_its_capacity_gets_no_more_and_the_script_survives_a_flush():
    lay = layer(capacity=2)

    async def scenario():
        channel = await member(lay)
        connection = lay.connection(0)
        await connection.script_flush()  # Redis forgot the script: EVALSHA fails, it is loaded again
        for n in range(3):
            await lay.group_send("g", {"type": "hitl.event", "n": n})
        stored = await connection.zcard(lay.prefix + lay.non_local_name(channel))
        received = [await asyncio.wait_for(lay.receive(channel), 5) for _ in range(2)]
        await lay.flush()
        return stored, received

    stored, received = run(scenario)
    assert stored == 2 and [m["n"] for m in received] == [0, 1]
