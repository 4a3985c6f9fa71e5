"""WebSocket /ws/events/: every event of the projects a user may see, live, without gaps or
duplicates, from ``last_event_id`` on.

The outbox (events.Event) is the source of truth; the channel layer only says "something new".

- One ``EventHub`` per process (per event loop) reads new events for every project some connection
  follows, with one query per wake-up (per 200 projects), and hands each event (serialised once)
  to the connections of its project. It wakes on the channel-layer push that ``events.services.event_emit`` sends after
  commit (through the process's wake-up hub, core.wakeup), and at the latest every
  HITL_WAIT_POLL_SECONDS: an event written by another process on the in-process layer
  (a Celery worker or a management command on the embedded default), or whose push was lost (Redis
  down), arrives on the next poll.
- A connection first subscribes to the hub, then replays from the outbox every event after its
  ``last_event_id``; it sends each project's events in id order (a project's events are committed
  in id order: events.services holds a per-project lock until commit) and never one it already
  sent. A slow client whose queue fills up is resynchronised from the outbox, never skipped.
- A stream of every visible project (no ``project_id``) is resumed after one id across projects,
  and ids are drawn before commit: an event of one project can commit after a higher id of another.
  Such a stream sends an event only once every lower id is settled (events.selectors.
  settled_through: committed, or a gap whose transaction has ended or that is older than
  HITL_EVENT_SETTLE_SECONDS, a rolled-back write),
  so it sends in increasing id order across projects and a resume after the last id loses nothing.
  The hub reads the settled point before each round's events and sends it to those streams after
  them; each holds what it read past that point. A stream of one project sends at once.
- Heartbeats: ``{"type": "ping"}`` every HITL_WS_HEARTBEAT_SECONDS (daphne's protocol pings also
  drop dead connections). Each heartbeat, and each change of access anywhere (a key revoked, a
  role granted or taken, a user changed: ``access.services.access_changed_on_commit``), checks
  the connection's access again: a revoked
  API key, a session logged out (or its user deactivated) closes it (4401), as does losing the
  role on the one project it follows (4403); a stream of every visible project starts following
  a project that became visible and stops sending one that did not stay so, saying so once
  (``{"type": "access_ended", "project_id": ...}``).

Authentication: ``Authorization: Bearer <key>`` in the handshake (agents) or the session cookie
(browsers); anonymous users and projects the user cannot see are refused (the handshake is closed
before it is accepted: HTTP 403, which says nothing of what exists). A user it lets in whose
query is wrong (a ``project_id`` that is not a UUID, a ``last_event_id`` that is not a whole
number or that no event has had yet) is told why: the connection is accepted, sends one
``{"type": "error", "error": "invalid", "detail", "fields"}`` message (the API's error format)
and is closed with code 4400; reconnecting with the same query is refused the same way. Events
are sent as API.md shows them:
``{id, event_type, project_id, task_id, data, created_at}``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
import weakref
from functools import reduce
from operator import or_
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db.models import Max, Q

from access.services import ACCESS_CHANGED_GROUP
from approvals.consumers import HttpError, _authenticate, authenticated_again, principal_of
from events.models import Event
from events.selectors import past_every_event, settled_start, settled_through
from events.services import event_payload, project_group
from core.errors import transient_db_error_kind
from core.request_cache import request_scope
from core.wakeup import wakeup_subscribe, wakeup_unsubscribe
from projects.permissions import project_visible_to

log = logging.getLogger(__name__)

try:   # daphne's "attempt to send on a closed protocol": a client that closed as an event went out
    from autobahn.exception import Disconnected as _Disconnected
    _CLIENT_GONE: tuple = (_Disconnected,)
except ImportError:  # (another ASGI server)
    _CLIENT_GONE = ()

BATCH = 500                 # events read per query
CHUNK = 200                 # projects per query
QUEUE_LIMIT = 5000          # events buffered per connection before it is resynchronised from the outbox


@database_sync_to_async
def _latest_ids(project_ids) -> dict:
    rows = Event.objects.filter(project_id__in=project_ids).values("project_id").annotate(last=Max("id"))
    latest = {row["project_id"]: row["last"] for row in rows}
    return {pid: latest.get(pid, 0) for pid in project_ids}


@database_sync_to_async
def _read(cursors: dict) -> tuple[list[dict], bool]:
    """Events after each project's own cursor, in id order, and whether there may be more. Only
    rows past their project's cursor are read: a quiet project's old cursor must not make every
    wake-up read (and drop) a busy project's old events. One query per CHUNK projects (an OR of
    their cursors; SQLite parses a long OR as deep as it is long); when a query comes back full,
    the batch ends at the lowest last id of the full ones, so what is sent stays in id order
    across chunks (a client resumes after the highest id it has seen) and the next read goes on
    from there."""
    batch, cut = [], None
    pids = list(cursors)
    for start in range(0, len(pids), CHUNK):
        after = reduce(or_, (Q(project_id=pid, id__gt=cursors[pid]) for pid in pids[start:start + CHUNK]))
        events = list(Event.objects.filter(after).order_by("id")[:BATCH])
        if len(events) == BATCH:
            cut = events[-1].id if cut is None else min(cut, events[-1].id)
        batch.extend(events)
    if cut is not None:
        batch = [e for e in batch if e.id <= cut]
    batch.sort(key=lambda e: e.id)
    return [event_payload(e) for e in batch], cut is not None


@database_sync_to_async
def _settled(after: int | None) -> tuple[int, bool]:
    return settled_through(settled_start() if after is None else after)


SETTLE_POLL = 0.1           # seconds between reads while an event waits for a lower id to settle


@database_sync_to_async
def _access_now(scope, user_id, project_id) -> list:
    """The projects the connection may follow now (HttpError when it may follow none): its API
    key checked again (a revoked one is refused), or its session read again from the session
    store (a logout, a password change or a deactivated user ends it). One request scope: the
    user's roles, read with the key, are not read again for the projects."""
    with request_scope():
        return _access_in_scope(scope, user_id, project_id)


def _access_in_scope(scope, user_id, project_id) -> list:
    return _visible_ids(authenticated_again(principal_of(scope, user_id)), project_id, refused=403)


def _visible_ids(user, project_id, *, refused: int) -> list:
    """The projects ``user`` may see (only ``project_id`` when given: HttpError ``refused`` if not)."""
    visible = project_visible_to(user=user)
    if project_id is not None:
        visible = visible.filter(pk=project_id)
    ids = list(visible.values_list("pk", flat=True))
    if project_id is not None and not ids:
        raise HttpError(refused, {})
    return ids


class EventHub:
    """Per event loop: one reader of the outbox for every followed project (see the module doc)."""

    _hubs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @classmethod
    def for_loop(cls) -> EventHub:
        loop = asyncio.get_running_loop()
        hub = cls._hubs.get(loop)
        if hub is None:
            hub = cls._hubs[loop] = cls()
        return hub

    def __init__(self):
        self.subscribers: dict[uuid.UUID, set] = {}
        self.cursors: dict[uuid.UUID, int] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        # Streams of every visible project, and the id through which every event is settled for
        # them (events.selectors.settled_through): they send nothing past it.
        self.everything: set = set()
        self.horizon: int | None = None
        self.unsettled = False

    async def subscribe(self, stream: EventStreamConsumer, project_ids) -> None:
        if stream.project_filter is None:
            self.everything.add(stream)
            self.wake.set()      # a settled point for it soon, whatever the poll period
        # Cursors for the projects the hub does not read yet. Read until none is missing: a project
        # followed by others when this began may have lost its last follower (and its cursor)
        # during the read (a KeyError then, and the crashed stream left in the project's followers
        # broke every later stream of it in the process). One that got a cursor meanwhile keeps it.
        while missing := [pid for pid in project_ids if pid not in self.cursors]:
            for pid, last in (await _latest_ids(missing)).items():
                self.cursors.setdefault(pid, last)
        # from here to the end of the loop, no await: the cursors read are still there
        new = [pid for pid in project_ids if pid not in self.subscribers]
        for pid in project_ids:
            self.subscribers.setdefault(pid, set()).add(stream)
            # A project the stream did not follow yet starts from what the hub has read of it, set
            # here, before any await: an event the hub delivers meanwhile is pushed, not dropped.
            stream.sent.setdefault(pid, self.cursors[pid])
        for pid in new:   # the process's wake-up hub (core.wakeup): one channel-layer receive loop
            await wakeup_subscribe(project_group(pid), self.wake)
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._run())

    async def _drop_wakeup(self, pid) -> None:
        """The wake-ups of a project no stream follows any more, unless one follows it again by
        then (its subscribe would otherwise come before this and be undone by it)."""
        if pid in self.subscribers:
            return
        await wakeup_unsubscribe(project_group(pid), self.wake)
        if pid in self.subscribers:  # followed again during the unsubscribe: subscribed again
            await wakeup_subscribe(project_group(pid), self.wake)

    def unsubscribe(self, stream: EventStreamConsumer, project_ids=None) -> None:
        """``stream`` stops following ``project_ids`` (all of its projects when None)."""
        if project_ids is None:
            self.everything.discard(stream)
            if not self.everything:
                self.horizon, self.unsettled = None, False
        for pid in list(self.subscribers) if project_ids is None else [p for p in project_ids if p in self.subscribers]:
            self.subscribers[pid].discard(stream)
            if not self.subscribers[pid]:
                del self.subscribers[pid]
                self.cursors.pop(pid, None)
                asyncio.ensure_future(self._drop_wakeup(pid))
        if not self.subscribers and self.task is not None:
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        interval = settings.HITL_WAIT_POLL_SECONDS
        loop = asyncio.get_running_loop()
        last_read = loop.time()
        while self.subscribers:
            woken = True
            try:   # soon again while an event waits for a lower id to settle
                await asyncio.wait_for(self.wake.wait(), timeout=min(interval, SETTLE_POLL) if self.unsettled
                                       else interval)
            except asyncio.TimeoutError:
                woken = False
            self.wake.clear()
            # a settle poll reads the settled point only: the events again only when woken or due
            read = woken or loop.time() - last_read >= interval
            try:
                await self.deliver_new(read=read)
            except Exception:  # noqa: BLE001 - try again on the next round
                log.exception("event hub: reading the outbox failed")
            if read:
                last_read = loop.time()

    async def deliver_new(self, read: bool = True) -> None:
        """Push what is new to the streams of its project; then tell the streams of every project
        through which id they may send. That settled point is read BEFORE the new events: every
        event up to it was committed before the read, so it is in this read or an earlier one, or
        in a stream's own catch-up (events.selectors.settled_through)."""
        horizon = None
        if self.everything:
            horizon, self.unsettled = await _settled(self.horizon)
            # a point that moved is sent only after a read: the events up to it must be read first
            read = read or horizon != self.horizon
        while read and self.subscribers:
            batch, more = await _read(dict(self.cursors))
            for event in batch:
                pid = uuid.UUID(event["project_id"])
                if pid not in self.cursors or event["id"] <= self.cursors[pid]:
                    continue
                self.cursors[pid] = event["id"]
                item = (pid, event["id"], _text(event))     # serialised once for every connection
                for stream in list(self.subscribers.get(pid, ())):
                    stream.push(item)
            if not more:
                break
        if horizon is not None and self.everything and read:
            self.horizon = max(horizon, self.horizon or 0)
            for stream in list(self.everything):     # after this round's events, in each queue
                stream.push((None, self.horizon, None))


def _text(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"))


def _invalid(field: str, message: str, detail: str = "Invalid input.") -> HttpError:
    return HttpError(400, {"error": "invalid", "detail": detail, "fields": {field: [message]}})


def _query(scope) -> tuple[uuid.UUID | None, int | None]:
    params = parse_qs((scope.get("query_string") or b"").decode("latin-1"))
    project_id = last = None
    if params.get("project_id", [""])[-1]:
        try:
            project_id = uuid.UUID(params["project_id"][-1])
        except ValueError:
            raise _invalid("project_id", "Must be a valid UUID string.") from None
    if params.get("last_event_id", [""])[-1]:
        raw = params["last_event_id"][-1]
        last = int(raw) if raw.isascii() and raw.isdigit() else -1     # int() takes " 5", "1_0", "٥"
        if not 0 <= last < 2**63:
            raise _invalid("last_event_id", "Must be a whole number, 0 or more: the id of the last event received.")
    return project_id, last


@database_sync_to_async
def _open(scope) -> tuple[object, list]:
    """The user and the ids of the projects the stream follows (refused: HttpError; a 400 only
    once the user is known to be let in)."""
    user = _authenticate(scope)
    project_id, last = _query(scope)
    ids = _visible_ids(user, project_id, refused=404)
    said = past_every_event(last, user=user) if last is not None else None
    if said:
        raise _invalid("last_event_id", f"{said} Connect without last_event_id (or with one you received) and keep "
                                        f"the id of the last event each message carries.", detail=said)
    return user, ids


class EventStreamConsumer(AsyncWebsocketConsumer):
    """One client's stream (see the module doc).

    No channel of its own on the channel layer (``channel_layer_alias`` names none): the hub is
    woken through core.wakeup, and a receive of its own on Redis would only end the connection
    (1011) whenever Redis is away, while the outbox poll keeps the stream going."""

    channel_layer_alias = None

    async def connect(self):
        """A database busy or away (no pooled connection within HITL_DB_POOL_TIMEOUT, a connection
        lost) is not a failed handshake (daphne answered it 500 and logged a traceback): the socket
        is accepted and closed with 1013, "try again later", and the client reconnects with its
        backoff (the SDK and the pages do), as an HTTP request gets 503 with Retry-After."""
        self.accepted = False
        try:
            await self._connect()
        except Exception as exc:
            kind = transient_db_error_kind(exc)
            if kind is None:
                raise
            log.warning("event stream: the database is unavailable (%s), closed with 1013: %s", kind,
                        self.scope.get("path"))
            if not self.accepted:
                await self.accept()
            await self.close(code=1013, reason="The database is unavailable: reconnect shortly.")

    async def accept(self, subprotocol=None, headers=None):
        await super().accept(subprotocol, headers)
        self.accepted = True

    async def _connect(self):
        # Told of every change of access from before its own check on: a key revoked or a page signed
        # out just after the handshake is not missed until the next heartbeat (the heartbeat's task
        # subscribed only once it ran).
        self.access_changed = asyncio.Event()
        await wakeup_subscribe(ACCESS_CHANGED_GROUP, self.access_changed)
        try:
            self.user, self.project_ids = await _open(self.scope)
            self.project_filter, last = _query(self.scope)
        except HttpError as err:
            asyncio.ensure_future(wakeup_unsubscribe(ACCESS_CHANGED_GROUP, self.access_changed))
            self.access_changed = None
            log.info("event stream refused (%s %s%s): %s", err.status, err.body.get("error"),
                     "" if err.status == 400 else ", the handshake answered 403", self.scope.get("path"))
            if err.status == 400:  # a user let in, with a wrong query: say what is wrong, then close
                await self.accept()
                await self.send(text_data=_text({"type": "error", **err.body}))
                await self.close(code=4400)
            else:
                await self.close()
            return
        self.queue: asyncio.Queue = asyncio.Queue()
        self.resync = False
        self.held: dict[int, tuple] = {}   # a stream of every project: event id -> (project id, JSON text)
        # Where the stream starts: after last_event_id, or (without one) after what exists now, read
        # before the handshake completes, so an event written once the client is connected is sent.
        if last is None:
            self.sent = await _latest_ids(self.project_ids)
        else:
            self.sent = {pid: last for pid in self.project_ids}
        self.hub = EventHub.for_loop()
        await self.accept()
        # Subscribe, then catch up from the outbox: an event committed in between is read by the
        # catch-up or delivered by the hub (and sent once).
        await self.hub.subscribe(self, self.project_ids)
        self.pump = asyncio.ensure_future(self._pump())
        self.beat = asyncio.ensure_future(self._heartbeat())

    def push(self, item: tuple) -> None:
        """Called by the hub (same event loop) with (project id, event id, JSON text), or with
        (None, settled id, None) for a stream of every project."""
        if self.resync:
            return
        if self.queue.qsize() >= QUEUE_LIMIT:
            self.resync = True       # too slow: drop the buffer, catch up from the outbox
            self.queue = asyncio.Queue()
        self.queue.put_nowait(item)

    async def _send_event(self, pid: uuid.UUID | None, event_id: int, text: str | None) -> None:
        if pid is None:              # the hub's settled point: send what is held up to it, in id order
            for held_id in sorted(i for i in self.held if i <= event_id):
                await self._send_now(*self.held.pop(held_id), held_id)
            return
        if pid not in self.sent or event_id <= self.sent[pid]:
            return                   # no longer followed (its access ended), or already sent
        if self.project_filter is None:
            self.held[event_id] = (pid, text)   # until every lower id is settled (the hub says when)
            return
        await self._send_now(pid, text, event_id)

    async def _send_now(self, pid: uuid.UUID, text: str, event_id: int) -> None:
        if pid not in self.sent or event_id <= self.sent[pid]:
            return                   # no longer followed, or already sent (replay and live overlap)
        self.sent[pid] = event_id
        await self.send(text_data=text)

    async def _catch_up(self) -> None:
        """Send what the outbox holds after ``sent``. A stream of every project sends, after each
        read, what it read up to a settled point taken before that read (every event up to it was
        committed, so the read has it): a backlog goes out as it is read, not held whole until the
        end (a resync during a long catch-up started it again from where it started, for ever)."""
        read = dict(self.sent)       # (what is held is read, not sent)
        while True:
            settled = None
            if self.project_filter is None:
                settled = self.hub.horizon if self.hub.horizon is not None else (await _settled(None))[0]
            batch, more = await _read(read)
            for event in batch:
                pid = uuid.UUID(event["project_id"])
                read[pid] = max(read.get(pid, 0), event["id"])
                await self._send_event(pid, event["id"], _text(event))
            if settled is not None:  # all of it read up to there (a full read: up to its last id)
                await self._send_event(None, min(settled, batch[-1]["id"]) if more else settled, None)
            if not more:
                break
        if self.project_filter is None:
            self.hub.wake.set()      # what the catch-up holds goes out at the hub's next settled point

    async def _pump(self) -> None:
        try:
            await self._catch_up()
            while True:
                if self.resync:
                    self.resync = False
                    await self._catch_up()
                await self._send_event(*await self.queue.get())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the client reconnects with its last id
            if _CLIENT_GONE and isinstance(exc, _CLIENT_GONE):   # it closed as we sent: no traceback
                log.info("event stream: the client had gone (%s)", exc)
            else:
                log.warning("event stream: sending failed, closing", exc_info=True)
            await self.close()

    async def _heartbeat(self) -> None:
        """A ping every HITL_WS_HEARTBEAT_SECONDS, and the access checked again then and whenever
        access changes anywhere (a key revoked, a role granted or taken, a user deactivated:
        ``access.services.access_changed_on_commit``): a revoked key's stream got the project's
        events until its next heartbeat, up to 20 s later."""
        loop = asyncio.get_running_loop()
        changed = self.access_changed  # subscribed in connect
        next_ping = loop.time() + settings.HITL_WS_HEARTBEAT_SECONDS
        try:
            while True:
                waiting = asyncio.ensure_future(changed.wait())
                try:  # not asyncio.wait_for, which can swallow this task's cancellation (Python 3.11)
                    await asyncio.wait({waiting}, timeout=max(0.0, next_ping - loop.time()))
                finally:
                    waiting.cancel()
                changed.clear()
                try:
                    await self._follow(await _access_now(self.scope, self.user.pk, self.project_filter))
                except HttpError as err:
                    log.info("event stream closed: its access ended (%s): %s", err.status, self.scope.get("path"))
                    await self.close(code=4401 if err.status == 401 else 4403)
                    return
                except Exception:  # noqa: BLE001 - the database is away: check again at the next heartbeat
                    log.warning("event stream: its access could not be checked", exc_info=True)
                if loop.time() >= next_ping:
                    next_ping = loop.time() + settings.HITL_WS_HEARTBEAT_SECONDS
                    await self.send(text_data='{"type":"ping"}')
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the connection is gone
            return

    async def _follow(self, ids) -> None:
        """Follow the projects visible now: a new one from its events after now, none of a lost one.
        A lost one is said (``{"type": "access_ended", "project_id": ...}``): a page about that
        project, which follows every project for the stop banners, then says it may no longer
        be seen there instead of showing "Live" over what it can no longer see."""
        gone = [pid for pid in self.project_ids if pid not in ids]
        new = [pid for pid in ids if pid not in self.sent]
        if gone:
            self.hub.unsubscribe(self, gone)
            for pid in gone:
                self.sent.pop(pid, None)
                await self.send(text_data=json.dumps({"type": "access_ended", "project_id": str(pid)}))
        if new:  # from what the hub has read of it (EventHub.subscribe): every later event is pushed here
            await self.hub.subscribe(self, new)
        self.project_ids = list(ids)

    async def receive(self, text_data=None, bytes_data=None):
        return   # clients only listen (a {"type": "pong"} is welcome and ignored)

    async def disconnect(self, code):
        changed = getattr(self, "access_changed", None)
        if changed is not None:  # in the background, as core.wakeup's own: the close need not wait for it
            asyncio.ensure_future(wakeup_unsubscribe(ACCESS_CHANGED_GROUP, changed))
        hub = getattr(self, "hub", None)
        if hub is not None:
            hub.unsubscribe(self)
        for task in (getattr(self, "pump", None), getattr(self, "beat", None)):
            if task is not None:
                task.cancel()
