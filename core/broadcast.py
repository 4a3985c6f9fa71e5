"""Channel-layer messages sent after a commit without holding the request's thread.

A write's pushes (its outbox events to live listeners, the wake-up of agents waiting on a call)
go out after its commit. In a web process the request's thread hands them to its event loop
and returns at once: one sender task per loop sends them in the order they were handed over
(so one transaction's events reach listeners in order), where a blocking ``async_to_sync`` per
message cost the request's thread about a tenth of a millisecond of CPU each, and its wait for
Redis. Anywhere else (Celery, management commands, tests on Django's test client) there is no
loop bound to the thread and the message is sent at once, blocking: on the loop of the
``sync_to_async`` that runs the thread, if one does, else on the thread's own loop.

A push may be lost (Redis down, the process stopping): the database is the truth, and every
reader of it also polls (long polls re-read, the event feed pages by id). So the sender logs a
failure and goes on, and a backlog past MAX_BACKLOG messages (Redis hanging) is dropped, not
hoarded.
"""
import asyncio
import logging
import os
import threading
import weakref

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

MAX_BACKLOG = 10_000

_thread = threading.local()
_senders: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Queue]" = weakref.WeakKeyDictionary()


def bind_loop(loop) -> None:
    """Called by the web handler on a request's thread (None when the request is done): pushes
    made on this thread go to ``loop``'s sender."""
    _thread.loop = loop


def group_send(group: str, message: dict) -> None:
    """Send ``message`` to the channel-layer ``group`` (call it after the commit)."""
    layer = get_channel_layer()
    if layer is None:
        return
    loop = getattr(_thread, "loop", None)
    if loop is None or loop.is_closed():
        if _outer_loop() is not None:  # a thread of an event loop's (sync_to_async): sent on that loop
            async_to_sync(layer.group_send)(group, message)
        else:
            _own_loop().run_until_complete(layer.group_send(group, message))
        return
    loop.call_soon_threadsafe(_enqueue, loop, layer, group, message)


def _outer_loop():
    """The event loop whose ``sync_to_async`` runs this thread, if one does (a consumer's database
    work): its in-memory channel layer's queues and its Redis connections belong to that loop."""
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    if loop is None or loop.is_closed() or getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) != os.getpid():
        return None
    return loop


def _own_loop() -> asyncio.AbstractEventLoop:
    """A plain thread's own event loop for blocking sends, kept for the next one. ``async_to_sync``
    made a thread, a loop and (with Redis) a connection for each message, about 5 ms: a stop that
    cancelled 4,400 calls in a Celery task spent 21 s waking their waiters after its commit, past
    the check's 20 s time limit; one loop sends them in about a second."""
    loop = getattr(_thread, "own_loop", None)
    if loop is None or loop.is_closed():
        loop = _thread.own_loop = asyncio.new_event_loop()
    return loop


def _enqueue(loop, layer, group: str, message: dict) -> None:
    """On the loop: queue the message for the loop's sender (started on first use)."""
    queue = _senders.get(loop)
    if queue is None:
        queue = _senders[loop] = asyncio.Queue()
        loop.create_task(_send_forever(queue))
    if queue.qsize() >= MAX_BACKLOG:
        log.warning("channel layer backlog over %d messages: dropped a push to %s (readers poll)", MAX_BACKLOG, group)
        return
    queue.put_nowait((layer, group, message))


async def _send_forever(queue: asyncio.Queue) -> None:
    failed = 0  # pushes lost in a row: the first one's traceback is logged, then one line when they work again
    while True:
        layer, group, message = await queue.get()
        try:
            await layer.group_send(group, message)
            if failed:
                log.warning("channel layer pushes work again (%d lost meanwhile; readers polled)", failed)
                failed = 0
        except Exception:  # noqa: BLE001 - a lost push only delays readers, who poll the database too
            if not failed:  # a 25 s Redis outage logged 23,000 lines, a traceback per push
                log.warning("push to %s failed; further failures are counted, not logged, until one works",
                            group, exc_info=True)
            failed += 1
        finally:
            queue.task_done()


async def drained() -> None:
    """Wait until this loop's sender has sent what it was handed (tests, orderly shutdown)."""
    queue = _senders.get(asyncio.get_running_loop())
    if queue is not None:
        await queue.join()
