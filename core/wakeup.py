"""Wake long-polling requests when a channel-layer group gets a message.

One hub per event loop (one per daphne process) owns a single channel-layer channel and one
receive loop that is never cancelled; each waiting request only holds an ``asyncio.Event``.
That keeps a waiting request down to a coroutine, and avoids cancelling channel-layer
receives (a cancelled channels-redis receive can drop a message meant for another waiter).

Senders put the group name in the message: ``{"type": ..., "group": group}`` (see
``wakeup_on_commit``). A lost message only delays a waiter, which also re-reads the database.
"""
import asyncio
import logging
import weakref
from contextlib import asynccontextmanager

from channels.layers import get_channel_layer
from django.db import transaction

from core import broadcast

log = logging.getLogger(__name__)


def _receive_timeout_types() -> tuple:
    types = [asyncio.TimeoutError, TimeoutError]
    try:
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # no Redis client installed: the in-process layer does not time out
        pass
    else:
        types.append(RedisTimeoutError)
    return tuple(types)


_RECEIVE_TIMEOUTS = _receive_timeout_types()


def wakeup_on_commit(group: str, **data) -> None:
    """After the current transaction commits, wake every request waiting on ``group``."""
    message = {"type": "hitl.wakeup", "group": group, **data}

    transaction.on_commit(lambda: broadcast.group_send(group, message), robust=True)


SUBSCRIBE_WAIT_SECONDS = 0.5


class _Hub:
    def __init__(self, layer):
        self.layer = layer
        self.channel = None
        self.waiters: dict[str, set[asyncio.Event]] = {}
        self.added: set[str] = set()   # the groups the layer has been told of
        self.adding: dict[str, asyncio.Future] = {}  # the groups it is being told of
        self.lock = asyncio.Lock()
        self.task = None
        self.refresher = None
        self.closing = False

    async def _ensure_started(self):
        if self.channel is None:
            self.channel = await self.layer.new_channel()
            self.task = asyncio.ensure_future(self._run())
            self.refresher = asyncio.ensure_future(self._refresh())

    async def _run(self):
        loop = asyncio.get_running_loop()
        failing = reported = False
        timeouts = 0
        while True:
            if failing:
                # Back only once the layer takes the groups again: a restarted Redis has forgotten
                # them (a receive alone would then wait for a message that never comes).
                if not await self._add_all(quiet=True):
                    await asyncio.sleep(1)
                    continue
                log.info("wake-up receive works again; its %d groups are added again", len(self.waiters))
                failing = False
            started = loop.time()
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except _RECEIVE_TIMEOUTS as exc:
                # An idle receive that timed out (a socket read timeout not above the layer's
                # blocking pop; see CHANNEL_LAYERS): normal, receive again. At worst a wake-up
                # is lost, and the waiters' database poll covers that.
                timeouts += 1
                log.debug("wake-up receive timed out: %r", exc)
                if timeouts == 3:  # once per streak, no traceback
                    log.warning("wake-up receives keep timing out (%r): the channel layer's socket timeout "
                                "should exceed its blocking receive (see CHANNEL_LAYERS)", exc)
                if loop.time() - started < 1:  # never spin on a timeout raised at once
                    await asyncio.sleep(1)
                continue
            except Exception:  # noqa: BLE001 - keep serving; waiters fall back to polling
                if not reported:  # the traceback once per outage, not every second
                    log.exception("wake-up receive failed; waiters fall back to polling the database")
                failing = reported = True
                await asyncio.sleep(1)
                continue
            timeouts, reported = 0, False
            if self.closing:
                return
            for event in self.waiters.get(message.get("group"), ()):
                event.set()

    async def subscribe(self, group: str, event: asyncio.Event) -> None:
        """Never raises, and never waits long: with the channel layer down, or hung (a Redis that
        neither answers nor refuses), the waiter relies on its database poll until the layer is
        back (the receive loop then adds the group, see ``_add_all``). The layer is told of the
        group outside the hub's lock, so one slow call does not hold up every other waiter."""
        async with self.lock:
            try:
                await self._ensure_started()
            except Exception:  # noqa: BLE001
                log.warning("wake-up hub could not start; the waiter falls back to polling", exc_info=True)
                return
            self.waiters.setdefault(group, set()).add(event)
            adding = self.adding.get(group)
            if group in self.added:
                return
            if adding is None:
                adding = self.adding[group] = asyncio.ensure_future(self._add(group))
        # normally done in a millisecond; the waiter does not wait longer than this for a hung layer
        await asyncio.wait({adding}, timeout=SUBSCRIBE_WAIT_SECONDS)

    async def _add(self, group: str) -> None:
        try:
            await self.layer.group_add(group, self.channel)
        except Exception:  # noqa: BLE001
            log.warning("wake-up subscribe to %s failed; the waiter falls back to polling", group, exc_info=True)
            return
        finally:
            self.adding.pop(group, None)
        async with self.lock:
            if group in self.waiters:  # not left meanwhile
                self.added.add(group)

    async def _add_all(self, quiet: bool = False) -> bool:
        """Tell the layer of every group waited on (again); False if it refused one."""
        for group in list(self.waiters):
            try:
                await self.layer.group_add(group, self.channel)
                if group in self.waiters:  # not left meanwhile (its discard may have run during the add)
                    self.added.add(group)
            except Exception:  # noqa: BLE001 - the next recovery or refresh adds it
                self.added.discard(group)
                if not quiet:
                    log.warning("wake-up re-add of %s failed", group, exc_info=True)
                return False
        return True

    async def unsubscribe(self, group: str, event: asyncio.Event) -> None:
        async with self.lock:
            events = self.waiters.get(group)
            if events is None:
                return
            events.discard(event)
            if events:
                return
            del self.waiters[group]
            self.added.discard(group)
        try:  # outside the lock, as the add
            await self.layer.group_discard(group, self.channel)
        except Exception as exc:  # noqa: BLE001 - the group expires on its own
            # no traceback: at a server's shutdown the loop closes under the discard (a cancelled
            # long poll's), and a traceback of redis-py's teardown read as a failure of the stop
            log.warning("wake-up unsubscribe from %s failed (%s: %s); the group expires on its own",
                        group, type(exc).__name__, exc)
        async with self.lock:  # waited on again meanwhile: the discard may have come after its add
            again = group in self.waiters and group not in self.adding
            if again:
                self.added.discard(group)
                self.adding[group] = asyncio.ensure_future(self._add(group))

    async def _refresh(self):
        """Groups expire in the channel layer (group_expiry, a day by default): re-add the ones
        still waited on well before that."""
        period = max(60.0, getattr(self.layer, "group_expiry", 86400) / 4)
        while True:
            await asyncio.sleep(period)
            await self._add_all()

    async def close(self, timeout: float = 10.0) -> None:
        """Stop the receive loop by sending it a message, not by cancelling its receive: on
        Python 3.11, redis-py's ``asyncio.wait_for`` around a send can swallow a cancellation,
        and the cancelled receive then loops in channels-redis for ever."""
        self.closing = True
        if self.refresher is not None:
            self.refresher.cancel()
        if self.task is None or self.task.done():
            return
        try:
            await self.layer.send(self.channel, {"type": "hitl.wakeup.close"})
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except Exception:  # noqa: BLE001 - the layer is down or slow: cancel after all
            self.task.cancel()


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Hub]" = weakref.WeakKeyDictionary()


async def close_wakeups() -> None:
    """Stop this event loop's hub (a clean shutdown; tests call it before their loop ends).
    Waiters still inside ``wakeup()`` fall back to their database poll."""
    hub = _hubs.pop(asyncio.get_running_loop(), None)
    if hub is not None:
        await hub.close()


def _loop_hub():
    layer = get_channel_layer()
    if layer is None:
        return None
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None or hub.layer is not layer:
        hub = _hubs[loop] = _Hub(layer)
    return hub


async def wakeup_subscribe(group: str, event: asyncio.Event) -> None:
    """A long-lived subscription (``wakeup`` is the per-request form): ``event`` is set whenever
    ``group`` gets a message. Never raises (without a working layer the caller polls)."""
    hub = _loop_hub()
    if hub is not None:
        await hub.subscribe(group, event)


async def wakeup_unsubscribe(group: str, event: asyncio.Event) -> None:
    hub = _hubs.get(asyncio.get_running_loop())
    if hub is not None:
        await hub.unsubscribe(group, event)


@asynccontextmanager
async def wakeup(*groups: str):
    """``async with wakeup(group, ...) as event``: ``event`` is set when any of the groups gets
    a message (with no channel layer configured, it is never set by a push)."""
    event = asyncio.Event()
    layer = get_channel_layer()
    if layer is None:
        yield event
        return
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None or hub.layer is not layer:
        hub = _hubs[loop] = _Hub(layer)
    subscribed = []
    try:
        for group in groups:
            await hub.subscribe(group, event)
            subscribed.append(group)
        yield event
    finally:
        for group in subscribed:  # in the background: the answer need not wait for the clean-up
            asyncio.ensure_future(hub.unsubscribe(group, event))


class BatchPoller:
    """The database fallback for many waiters at once: every ``interval`` seconds, one query
    (``due(keys) -> keys``, a sync function) finds which watched objects need their waiters
    woken, instead of one query per waiter. One poller per event loop and ``due`` function."""

    _pollers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()

    def __init__(self, due, interval: float, run=None):
        from channels.db import database_sync_to_async

        self.due = (run or database_sync_to_async)(due)
        self.interval = interval
        self.watched: dict[object, set[asyncio.Event]] = {}
        self.task = None

    @classmethod
    def for_loop(cls, due, interval: float, run=None) -> "BatchPoller":
        per_loop = cls._pollers.setdefault(asyncio.get_running_loop(), {})
        poller = per_loop.get(due)
        if poller is None or poller.interval != interval:
            poller = per_loop[due] = cls(due, interval, run)
        return poller

    async def _run(self):
        while self.watched:
            await asyncio.sleep(self.interval)
            keys = list(self.watched)
            try:
                ready = await self.due(keys)
            except Exception:  # noqa: BLE001 - try again next round
                log.exception("wake-up poll failed")
                continue
            for key in ready:
                for event in self.watched.get(key, ()):
                    event.set()
        self.task = None

    @asynccontextmanager
    async def watch(self, key, event: asyncio.Event):
        self.watched.setdefault(key, set()).add(event)
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())
        try:
            yield event
        finally:
            events = self.watched.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self.watched[key]


class BatchLoader:
    """Coalesce the database reads of many waiters woken at once (an emergency stop wakes
    every waiting agent of a project): concurrent ``await loader.load(key)`` calls are served
    by one ``fetch_many(keys) -> {key: value}`` call (a sync function run off the event loop)."""

    _loaders: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()

    def __init__(self, fetch_many, run=None):
        from channels.db import database_sync_to_async

        self.fetch_many = (run or database_sync_to_async)(fetch_many)
        self.queue: dict[object, list[asyncio.Future]] = {}
        self.task = None

    @classmethod
    def for_loop(cls, fetch_many, run=None) -> "BatchLoader":
        """``run`` wraps the sync function into a coroutine function (default: Channels'
        database_sync_to_async)."""
        per_loop = cls._loaders.setdefault(asyncio.get_running_loop(), {})
        if fetch_many not in per_loop:
            per_loop[fetch_many] = cls(fetch_many, run)
        return per_loop[fetch_many]

    async def load(self, key):
        future = asyncio.get_running_loop().create_future()
        self.queue.setdefault(key, []).append(future)
        if self.task is None:
            self.task = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self):
        try:
            await asyncio.sleep(0)  # let the other woken waiters queue their keys
            while self.queue:
                batch, self.queue = self.queue, {}
                try:
                    results = await self.fetch_many(list(batch))
                except Exception as exc:  # noqa: BLE001 - each waiter gets the error
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for key, futures in batch.items():
                    for future in futures:
                        if not future.done():
                            future.set_result(results.get(key))
        finally:
            self.task = None
