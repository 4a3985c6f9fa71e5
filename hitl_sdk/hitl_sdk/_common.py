"""What the sync and the async client share: configuration, the retry policy, the websocket
wrappers, and how a decided request becomes a result or an exception."""
from __future__ import annotations

import asyncio
import json
import math
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Dict, Optional, Tuple
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx

from .errors import (ApprovalCancelled, ApprovalRejected, ApprovalTimedOut, BudgetOverrideRequired,
                     EmergencyStopped, HitlError, ModificationRequired, error_from_response)
from .models import AgentApproval, HitlRequest, ResponseApproval

USER_AGENT = "hitl-sdk/0.1"
DECIDED_EVENTS = {
    "agent": frozenset({"agent_approval_decided", "approval_timed_out"}),
    "response": frozenset({"response_approval_decided", "approval_timed_out"}),
    "hitl": frozenset({"hitl_decided", "approval_timed_out"}),
}
PATHS = {"agent": "/agent-approvals/", "response": "/response-approvals/", "hitl": "/hitl/"}
# What ``_create_or_undo`` sends and reads back, by kind: the create's path and the made object's id.
CREATES = {"agent": ("/agent-approvals", "approval_id"), "hitl": ("/hitl", "id"), "task": ("/tasks", "task_id")}
MODELS: Dict[str, Any] = {"agent": AgentApproval, "response": ResponseApproval, "hitl": HitlRequest}
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
# What ends a wait with nobody left to act on its answer: Ctrl-C, or the task running it cancelled
# (a fleet shutting down, ``asyncio.wait_for`` around it). The call or question waited for is then
# withdrawn (``_withdraw``): it stayed pending until its time-out, its budget reservation held, and
# a reviewer could approve work no process would run.
INTERRUPTS = (KeyboardInterrupt, asyncio.CancelledError)
INTERRUPTED = "its agent was interrupted while it waited (Ctrl-C, or its task cancelled): nobody will act on it"
WITHDRAW_SECONDS = 5.0  # how long an interrupted wait spends withdrawing what it waited for, at most


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter for network errors, 5xx and 429.

    ``attempts`` bounds an ordinary request; a wait retries until its own deadline. ``Retry-After``
    (seconds) is honoured as the least wait, up to ``retry_after_max``: a ``Retry-After: 0`` still
    gets the backoff (six attempts within milliseconds would not let a busy server recover)."""
    attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 10.0
    retry_after_max: float = 60.0

    def delay(self, attempt: int, retry_after: Optional[float] = None) -> float:
        backoff = random.uniform(0, min(self.backoff_max, self.backoff_base * (2 ** min(max(attempt - 1, 0), 30))))
        if retry_after is not None and math.isfinite(retry_after):
            return min(max(retry_after, backoff), self.retry_after_max)
        return backoff


def retry_after_seconds(response: httpx.Response) -> Optional[float]:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP date: use our own backoff


def not_json_body(response: httpx.Response, base_url: str) -> Dict[str, Any]:
    """The error body of an answer that is not the API's JSON (a proxy's page, another server's
    404): said in one sentence a model can act on, not the page's HTML."""
    kind = (response.headers.get("Content-Type") or "no content type").split(";")[0].strip()
    return {"error": "bad_response",
            "detail": f"The server answered HTTP {response.status_code} with {kind}, not the API's JSON: "
                      f"check that {base_url} is the HITL server's address."}


def resolve_api_key(api_key: Optional[str]) -> Optional[str]:
    """The key given, else ``HITL_API_KEY``; the whitespace around it dropped (a key read from a
    file keeps its newline, which no HTTP header may carry: every request failed inside the
    client, retried as a network error, its message holding the whole key). A key with other
    characters a header cannot carry is a ValueError at once, which never shows the key."""
    key = api_key if api_key is not None else os.environ.get("HITL_API_KEY")
    if key is None:
        return None
    key = key.strip()
    if not all(" " < ch < "\x7f" for ch in key):
        raise ValueError("api_key holds a character an HTTP header cannot carry (a space, a line break, a "
                         "control or non-ASCII character): pass the key exactly as it was printed")
    return key


def redacted(text: str, api_key: Optional[str]) -> str:
    """``text`` (an error's message) with the API key, if it is in it, cut to its prefix."""
    if not api_key or api_key not in text:
        return text
    return text.replace(api_key, api_key[:10] + "…")


def tls_mismatch(base_url: str, exc: BaseException) -> bool:
    """An ``https://`` URL answered in plain HTTP (the server's own launcher speaks plain HTTP
    unless a proxy in front adds TLS): no retry helps."""
    return base_url.lower().startswith("https:") and "WRONG_VERSION_NUMBER" in repr(exc).upper()


def tls_hint(base_url: str, exc: BaseException) -> str:
    if tls_mismatch(base_url, exc):
        return " (the server at this address speaks plain HTTP: use http://, or put a TLS proxy in front of it)"
    return ""


ATTEMPT_GRACE = 2.0  # a long poll held until the deadline still gets its answer ("pending") back


def attempt_timeout(timeout: float, deadline: Optional[float]) -> float:
    """One HTTP attempt's timeout: ending by the deadline of the call, give or take ATTEMPT_GRACE
    (a wait's ``timeout=5`` against a server that did not answer ran two 30 s attempts)."""
    if deadline is None or not isinstance(timeout, (int, float)):  # an httpx.Timeout is the caller's to set
        return timeout
    return max(1.0, min(timeout, deadline - time.monotonic() + ATTEMPT_GRACE))


def api_root(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/api/v1") else base + "/api/v1"


def server_root(base_url: str) -> str:
    """The server's root of ``base_url`` (with or without ``/api/v1``); a URL that is not http(s)
    is a ValueError at once (a missing scheme was retried as a network error for seconds)."""
    scheme = urlsplit(base_url).scheme.lower() if isinstance(base_url, str) else ""
    if scheme not in ("http", "https"):
        raise ValueError(f"base_url must be an http:// or https:// URL, not {base_url!r}")
    base = base_url.rstrip("/")
    return base[: -len("/api/v1")] if base.endswith("/api/v1") else base


def seg(value: Any) -> str:
    """An id as one path segment, escaped: an id taken from a model's output ("../projects") never
    names another path of the API."""
    segment = quote(str(value), safe="")
    return {".": "%2E", "..": "%2E%2E"}.get(segment, segment)  # a dot segment would be resolved away


def ws_url(base_url: str, project_id: Optional[str], last_event_id: Optional[int]) -> str:
    parts = urlsplit(server_root(base_url))
    scheme = "wss" if parts.scheme == "https" else "ws"
    query: Dict[str, Any] = {}
    if project_id:
        query["project_id"] = project_id
    if last_event_id is not None:
        query["last_event_id"] = last_event_id
    return urlunsplit((scheme, parts.netloc, parts.path + "/ws/events/", urlencode(query), ""))


def json_default(value: Any) -> Any:
    """A ``Decimal`` anywhere in a body (an ``input_data``, a ``context``) is sent as its exact
    decimal string, as the API takes money; anything else JSON cannot hold stays a TypeError."""
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def clean(body: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON body without the optional fields left out (None); a Decimal in it goes as its
    string (``json_default``, as anywhere in a body)."""
    return {k: v for k, v in body.items() if v is not None}


def mentions(data: Any, object_id: str) -> bool:
    if not isinstance(data, dict):
        return False
    return any(str(data.get(k)) == object_id for k in ("approval_id", "id", "hitl_id", "request_id", "hitl_request_id"))


def parse_event(raw: Any) -> Optional[Dict[str, Any]]:
    """An event of the stream, or None (a heartbeat); the stream's error message (a query the
    server refused: ``{"type": "error", "error": "invalid", ...}``, then it closes with 4400)
    raises it as BadRequest: reconnecting with the same query would be refused again."""
    try:
        message = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if isinstance(message, dict) and "event_type" in message and "id" in message:
        return message
    if isinstance(message, dict) and message.get("type") == "error":
        raise StreamRefused(error_from_response(400, message))
    return None  # a heartbeat


class StreamRefused(Exception):
    """The event stream said why it closes (its ``error``): not retried as it was."""

    def __init__(self, error: HitlError) -> None:
        super().__init__(str(error))
        self.error = error


def refuses_resume_point(refused: StreamRefused) -> bool:
    """The stream refused the ``last_event_id`` (no event has had it: a restored database, say),
    not the rest of the query: a waiter resubscribes without one and reads its object again."""
    return "last_event_id" in (refused.error.body.get("fields") or {})


def settled(kind: str, obj: Any, on_budget_block: str) -> bool:
    if obj.status != "pending":
        return True
    return kind == "agent" and on_budget_block == "raise" and getattr(obj, "budget_state", None) == "blocked"


def outcome(kind: str, obj: Any, stop_id: Optional[str]) -> Any:
    """The approved object, or the exception for how it ended."""
    status, oid = obj.status, str(getattr(obj, "approval_id", "") or getattr(obj, "id", ""))
    if stop_id and status in ("pending", "cancelled"):
        raise EmergencyStopped("its request was cancelled by the stop", emergency_stop_id=stop_id,
                               project_id=obj.project_id, status=None)
    if kind == "hitl":
        if status in ("approved", "amended"):
            return obj
        reason = obj.response or (obj.history[-1].note if obj.history else None) or ""
        if status == "rejected":
            raise ApprovalRejected(reason, approval_id=oid, approval=obj, rejected_by=obj.responded_by)
    else:
        if status == "approved":
            return obj
        if status == "rejected":
            raise ApprovalRejected(obj.rejection_reason or "", approval_id=oid, approval=obj,
                                   rejected_by=obj.approved_by)
        if status == "requires_modification":
            raise ModificationRequired(obj.modifications_required, approval_id=oid, approval=obj)
        if status == "pending" and kind == "agent" and obj.budget_state == "blocked":
            raise BudgetOverrideRequired(obj.budget_blocked_reason or "", override_id=obj.budget_override_id,
                                         approval_id=oid, approval=obj)
    if status == "timed_out":
        raise ApprovalTimedOut(approval_id=oid, approval=obj, output=kind == "response")
    if status == "cancelled":
        why = (obj.history[-1].note if obj.history else None) if kind == "hitl" else obj.rejection_reason
        raise ApprovalCancelled(why or "", approval_id=oid, approval=obj, kind=kind)
    raise ApprovalCancelled(f"unexpected status {status!r}", approval_id=oid, approval=obj, kind=kind)


# --- websockets ------------------------------------------------------------------------------
class WSRefused(Exception):
    """The handshake got an HTTP answer (403: not allowed, 404: no websocket here): do not retry."""


def _handshake_error(exc: BaseException) -> BaseException:
    from websockets.exceptions import InvalidStatus

    if isinstance(exc, InvalidStatus):
        code = exc.response.status_code
        if code in (400, 401, 403, 404, 405, 426):
            return WSRefused(code)
    return exc


class _AsyncWS:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, url: str, headers: Dict[str, str], open_timeout: float) -> "_AsyncWS":
        from websockets.asyncio.client import connect

        try:
            return cls(await connect(url, additional_headers=headers, open_timeout=open_timeout,
                                     max_size=2 ** 24, ping_interval=20, ping_timeout=20, close_timeout=2))
        except Exception as exc:  # noqa: BLE001
            raise _handshake_error(exc) from exc

    async def recv(self, timeout: float) -> Optional[str]:
        """A message, or None after ``timeout`` seconds; ConnectionClosed when dropped.

        Not ``asyncio.wait_for``: before Python 3.12 it returns the message, swallowing the
        cancellation, when this task is cancelled just as a message arrives (gh-86296), and an
        agent told to stop went on waiting. ``asyncio.wait`` never swallows it."""
        receiving = asyncio.ensure_future(self.conn.recv())
        try:
            await asyncio.wait({receiving}, timeout=max(timeout, 0.01))
        finally:
            if not receiving.done():  # the time is up, or this task is cancelled: so is the receive
                receiving.cancel()
                await asyncio.wait({receiving})  # cancelling websockets' recv() loses no message
            if receiving.done() and not receiving.cancelled():  # a drop this task, cancelled, will not raise: seen
                receiving.exception()      # (else "Task exception was never retrieved" and a traceback)
        if receiving.cancelled():
            return None
        return receiving.result()  # a message that came as the time ran out is kept; ConnectionClosed raises

    async def close(self) -> None:
        """The closing handshake, bounded by the connection's ``close_timeout`` (2 s); not
        ``asyncio.wait_for``, which can swallow a cancellation that comes as it ends (see recv).
        What is already here is read first (half a second at most), as for the sync socket: past
        the queue (16 messages) the reader pauses and never reaches the server's close frame."""
        try:
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline and await self.recv(0.01) is not None:
                pass
        except Exception:  # noqa: BLE001  (the connection is gone)
            pass
        finally:  # also when this task is cancelled while reading: the socket is never left open
            try:
                await self.conn.close()
            except asyncio.CancelledError:  # cancelled while closing: dropped at once, not left open
                self.conn.transport.abort()
                raise
            except Exception:  # noqa: BLE001
                pass


class _SyncWS:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.forget: Any = lambda: None  # _SyncStreams's: no longer open

    @classmethod
    def connect(cls, url: str, headers: Dict[str, str], open_timeout: float) -> "_SyncWS":
        from websockets.sync.client import connect

        try:
            conn = connect(url, additional_headers=headers, open_timeout=open_timeout, max_size=2 ** 24,
                           close_timeout=2)  # as the async socket's
            return cls(conn.__enter__())  # websockets >= 17.1 warns unless entered like a context manager
        except Exception as exc:  # noqa: BLE001
            raise _handshake_error(exc) from exc

    def recv(self, timeout: float) -> Optional[str]:
        try:
            return self.conn.recv(timeout=max(timeout, 0.01))
        except TimeoutError:
            return None

    def close(self) -> None:
        """The closing handshake. A caller that broke out of a replay leaves messages unread: past
        the connection's queue (16) its reader pauses and never reaches the server's close frame, so
        the close waited its whole ``close_timeout``. Reading what is already here first (for half
        a second at most: a live stream may keep sending) lets it through."""
        try:
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                self.conn.recv(timeout=0)
        except Exception:  # noqa: BLE001  (TimeoutError: nothing more is here; or the connection is gone)
            pass
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass
        self.forget()


CLIENT_CLOSED = "The client was closed while this wait was open: nothing will tell it the decision."


class _AsyncStreams:
    """The event streams an async client's waits listen on: one websocket per project, shared by
    every wait on it of this client and event loop. Each wait opened its own: with 300 waits on
    one project, every event of it was sent and parsed 300 times, and an emergency stop took 6 to
    15 s to reach them all. A wait subscribes (a queue of its own), is handed every message the
    one reader receives, and leaves; the socket closes when the last wait leaves. A dropped socket
    ends every subscription with its error (each wait subscribes again, as it reconnected before).
    A wait that joins an open stream replays nothing: it reads its object once it has subscribed,
    as every wait does, so a decision made before is not missed.

    ``aclose`` (the client's) ends every open subscription with ``HitlError("client_closed")``:
    waits left open on a closed client went on, on connections nobody closed."""

    def __init__(self, base_url: str, headers: Dict[str, str], open_timeout: float) -> None:
        self.base_url, self.headers, self.open_timeout = base_url, headers, open_timeout
        self._loop: Any = None
        self._open: Dict[str, _SharedStream] = {}
        self._opening: Dict[str, asyncio.Lock] = {}

    async def subscribe(self, project_id: str, last_event_id: Optional[int]) -> "_Subscription":
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # the old loop's streams went with it
            self._loop, self._open, self._opening = loop, {}, {}
        async with self._opening.setdefault(project_id, asyncio.Lock()):
            stream = self._open.get(project_id)
            if stream is None or stream.ended:
                ws = await _AsyncWS.connect(ws_url(self.base_url, project_id, last_event_id), self.headers,
                                            self.open_timeout)
                stream = self._open[project_id] = _SharedStream(ws, lambda: self._forget(project_id, stream))
            return stream.join()

    def _forget(self, project_id: str, stream: "_SharedStream") -> None:
        if self._open.get(project_id) is stream:
            del self._open[project_id]

    async def aclose(self) -> None:
        if self._loop is not current_loop():  # another loop's (or none): its tasks can not be awaited here
            self._loop, self._open, self._opening = None, {}, {}
            return
        streams, self._open = list(self._open.values()), {}
        from .errors import HitlError

        for stream in streams:
            await stream.end(HitlError(CLIENT_CLOSED, code="client_closed"))


class _SharedStream:
    """One project's websocket and the subscriptions it feeds (``_AsyncStreams``)."""

    def __init__(self, ws: _AsyncWS, forget: Any) -> None:
        self.ws, self.forget = ws, forget
        self.queues: "set[asyncio.Queue[Any]]" = set()
        self.ended = False
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                message = await self.ws.conn.recv()  # cancel-safe: a cancelled receive loses no message
                for queue in list(self.queues):
                    queue.put_nowait(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001  (dropped, or closed by the server: every wait hears it)
            self._ended_with(exc)

    def _ended_with(self, exc: BaseException) -> None:
        if not self.ended:
            self.ended = True
            self.forget()
        for queue in list(self.queues):
            queue.put_nowait(exc)

    def join(self) -> "_Subscription":
        queue: "asyncio.Queue[Any]" = asyncio.Queue()
        self.queues.add(queue)
        return _Subscription(self, queue)

    async def leave(self, queue: "asyncio.Queue[Any]") -> None:
        self.queues.discard(queue)
        if not self.queues:
            await self.end(None)

    async def end(self, exc: Optional[BaseException]) -> None:
        """Close the socket; the subscriptions still open get ``exc``."""
        if exc is not None:
            self._ended_with(exc)
        elif not self.ended:
            self.ended = True
            self.forget()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.ws.close()


class _Subscription:
    """A wait's share of a project's stream: ``recv`` and ``close`` as a socket of its own had."""

    def __init__(self, stream: _SharedStream, queue: "asyncio.Queue[Any]") -> None:
        self.stream, self.queue = stream, queue

    async def recv(self, timeout: float) -> Optional[str]:
        """A message, or None after ``timeout`` seconds; the stream's error once it ended. Not
        ``asyncio.wait_for`` (see ``_AsyncWS.recv``); a cancelled ``Queue.get`` loses no message."""
        getting = asyncio.ensure_future(self.queue.get())
        try:
            await asyncio.wait({getting}, timeout=max(timeout, 0.01))
        finally:
            if not getting.done():
                getting.cancel()
                await asyncio.wait({getting})
        if getting.cancelled():
            return None
        item = getting.result()
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        await self.stream.leave(self.queue)


class _SyncStreams:
    """The sync client's waits each have a socket of their own (a thread each). ``close`` (the
    client's, from any thread) closes them: a wait reading one ends at once (it went on reading
    until its next re-check, up to 48 s)."""

    def __init__(self, base_url: str, headers: Dict[str, str], open_timeout: float) -> None:
        self.base_url, self.headers, self.open_timeout = base_url, headers, open_timeout
        self._open: "set[_SyncWS]" = set()
        self._lock = threading.Lock()

    def subscribe(self, project_id: str, last_event_id: Optional[int]) -> _SyncWS:
        ws = _SyncWS.connect(ws_url(self.base_url, project_id, last_event_id), self.headers, self.open_timeout)
        with self._lock:
            self._open.add(ws)
        ws.forget = lambda: self._drop(ws)
        return ws

    def _drop(self, ws: _SyncWS) -> None:
        with self._lock:
            self._open.discard(ws)

    def close(self) -> None:
        with self._lock:
            sockets, self._open = list(self._open), set()
        for ws in sockets:
            try:
                ws.conn.close()
            except Exception:  # noqa: BLE001
                pass


class OpenSockets:
    """The sockets of the requests in flight that a close must interrupt (the waits' long polls):
    a socket closed by another thread does not wake a thread blocked reading it, so the sync
    client's close left a long poll hanging until the server answered (28 s and more). Fed by
    httpcore's ``trace`` extension as each connection of the waits' pool is made (kept while the
    pool may reuse it); ``shut()`` shuts them down, which wakes their readers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: "set[Any]" = set()

    def add(self, info: Dict[str, Any]) -> Any:
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with self._lock:
                if len(self._sockets) >= 64:  # the pool's connections come and go: forget the closed ones
                    self._sockets = {s for s in self._sockets if s.fileno() != -1}
                self._sockets.add(sock)
        return sock

    def shut(self) -> None:
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # closed meanwhile
                pass


def _asleep(seconds: float) -> "asyncio.Future[None]":
    return asyncio.sleep(seconds)  # type: ignore[return-value]


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def current_loop() -> Any:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def monotonic() -> float:
    return time.monotonic()


def until(deadline: Optional[float], seconds: float) -> float:
    """A retry's pause, never past the deadline of the call it retries (a wait's backoff of up to
    10 s overran the caller's timeout)."""
    return seconds if deadline is None else max(0.0, min(seconds, deadline - time.monotonic()))


def remaining(deadline: Optional[float], cap: Any) -> Any:
    """The seconds left until ``deadline``, at most ``cap`` (``cap`` itself with no deadline: a
    caller's own timeout, None included)."""
    return cap if deadline is None else max(0.0, min(cap, deadline - time.monotonic()))


def split_start(body: Dict[str, Any]) -> Tuple[AgentApproval, Any]:
    approval = AgentApproval.from_api(body)
    return approval, body.get("input_to_run")
