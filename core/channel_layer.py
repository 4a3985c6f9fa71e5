"""channels_redis's layer with a group send that makes fewer trips to Redis.

Every write of the API pushes its outbox events to its project's group, and a decision wakes the
agents waiting on a call through the call's group (core/broadcast.py sends them after the
commit). channels_redis 4.3's ``group_send`` makes two round trips to Redis before it knows
whether anyone listens (drop the members past ``group_expiry``, then read the members) and two
more per Redis connection when someone does (drop the messages past ``expiry``, then a Lua script
sent in full that adds the message where there is room). Here the first two go as one pipeline
and the last two as one script, called by its SHA: one round trip for a group nobody listens to,
two when someone does. What is sent, to whom, and the capacity and expiry rules are channels_redis's
own (the same helpers build the messages); only the trips are fewer.

Used when REDIS_URL is set (settings.CHANNEL_LAYERS); ``channels_redis`` is pinned in
requirements.txt, and core/tests/test_channel_layer.py checks the delivery against real Redis.
"""
import time

from channels_redis.core import RedisChannelLayer as _RedisChannelLayer, logger

# For each channel key: drop its messages past the expiry, then add the message unless the key
# holds its capacity already (channels_redis's rule), and renew the key's expiry.
# KEYS: the channel keys; ARGV: the messages, then the capacities, then now, expiry, expiry cutoff.
_SEND_LUA = """
local n = #KEYS
local now, expiry, cutoff = ARGV[2 * n + 1], ARGV[2 * n + 2], ARGV[2 * n + 3]
local over_capacity = 0
for i = 1, n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, cutoff)
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[n + i]) then
        redis.call('ZADD', KEYS[i], now, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        over_capacity = over_capacity + 1
    end
end
return over_capacity
"""


class RedisChannelLayer(_RedisChannelLayer):
    async def group_send(self, group, message):
        assert self.require_valid_group_name(group), "Group name not valid"
        key = self._group_key(group)
        connection = self.connection(self.consistent_hash(group))
        pipe = connection.pipeline(transaction=False)
        pipe.zremrangebyscore(key, min=0, max=int(time.time()) - self.group_expiry)
        pipe.zrange(key, 0, -1)
        _, members = await pipe.execute()
        if not members:
            return
        channel_names = [member.decode("utf8") for member in members]
        by_connection, messages, capacities = self._map_channel_keys_to_connection(channel_names, message)
        for index, channel_keys in by_connection.items():
            now = time.time()
            script = self.connection(index).register_script(_SEND_LUA)
            over = await script(keys=channel_keys, args=[
                *(messages[k] for k in channel_keys), *(capacities[k] for k in channel_keys),
                now, int(self.expiry), int(now) - int(self.expiry)])
            if over:
                logger.info("%s of %s channels over capacity in group %s", over, len(channel_names), group)
