"""Adapters between the HTTP server (daphne) and Django, so that every API error keeps the
JSON error shape of API.md, however malformed the request.

- ``request_middleware`` (Django middleware, sync and async): the request-scoped cache, and a
  chunked request given its Content-Length.
- ``disable_server_form_parsing()``: daphne's Twisted request parses every multipart/form-data
  POST body itself before the application sees it (into ``request.args``, which daphne never
  uses) and answers a body it cannot parse with a bare, empty 400. The API takes JSON only, so
  that parsing is switched off: the body reaches Django, which answers 400 ``invalid`` in JSON.
  Applied when this module is imported (Django imports it to build its handler, in daphne's
  process before it serves; see MIDDLEWARE).
- ``answer_oversized_heads()``: a request line or header over Twisted's 16 KB makes daphne close
  the socket without an answer (all headers over 16 KB: a bare 400); patched to answer 414 / 431
  (400 for another malformed head) with the API's JSON error before closing.
- ``answer_stalled_requests()``: Twisted closes a connection after ``HITL_HTTP_IDLE_TIMEOUT``
  seconds (60) with nothing received; a client that stalled in the middle of a request (its head
  or its body) got no answer. Patched to answer 408 ``request_timeout`` in JSON first. An idle
  keep-alive connection between requests is still closed without a word: an answer to no
  request would be read as the answer to its next one.
- ``bound_request_bodies()``: Twisted keeps a request's whole body (in a temporary file past
  100 KB) before daphne hands it on, however large: one client's endless upload filled the disk.
  Only the first ``DATA_UPLOAD_MAX_MEMORY_SIZE`` + 1 bytes are kept, the rest is read and
  dropped: Django still sees a body past the limit and answers its 400 as before. Under uvicorn
  (which streams a body to the application) ``ApiErrorGuard`` bounds it the same way.
- ``name_every_status()``: the reason phrase of a status Twisted has no name for (423, 429)
  was "Unknown Status"; it is the standard one now ("423 Locked").
- ``ApiErrorGuard`` (ASGI middleware, wraps the whole ASGI application): a request head Django
  cannot even turn into a request (a Content-Type with an RFC 2231 parameter in an unknown
  charset, a query string that is not UTF-8) gets 400 ``invalid`` in JSON instead of an
  exception inside the application (a 500 HTML page from daphne) or an empty 400; and an
  exception escaping the application before it answered an API path gets a JSON 500 (503
  ``unavailable`` for a transient database error).
"""
import asyncio
import contextlib
import inspect
import json
import logging
import os
from http import HTTPStatus
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpResponseBadRequest, JsonResponse
from django.utils.decorators import sync_and_async_middleware
from django.utils.http import parse_header_parameters

from core.bidi import shown_in_response
from core.request_cache import request_scope

from whitenoise.middleware import WhiteNoiseMiddleware

from core.errors import error_body, is_api_path, retry_after_seconds, transient_db_error_kind, unavailable_body

log = logging.getLogger(__name__)


def _give_chunked_body_its_length(request) -> None:
    # META, not request.headers: building that parses every header, on every request.
    if not request.META.get("CONTENT_LENGTH") and \
            "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        try:
            stream = request._stream
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(0)
            request.META["CONTENT_LENGTH"] = str(size)
        except (AttributeError, OSError, ValueError):
            pass


def disallowed_host_body(request) -> dict | None:
    """The API's 400 body when ``request``'s Host is not in ALLOWED_HOSTS (None when it is), as
    Django's own check (``get_host``) decides; the refusal is logged as Django logs it. Also
    used by the API paths that Channels consumers serve (approvals.consumers)."""
    try:
        request.get_host()
    except DisallowedHost as exc:
        logging.getLogger("django.security.DisallowedHost").warning(str(exc))
        return error_body("invalid", "This Host header is not served here (DJANGO_ALLOWED_HOSTS).",
                          fields={"host": ["Not an allowed host."]})
    return None


def _disallowed_host(request):
    """A JSON 400 for an API request whose Host is not in ALLOWED_HOSTS (None otherwise).
    Django would answer it through handler400, which under DEBUG is a text/plain debug page."""
    if not is_api_path(request.path):
        return None
    body = disallowed_host_body(request)
    return None if body is None else JsonResponse(body, status=400)


def _year_out_of_range(request):
    """A plain 400 for a page whose query string filters by a year Python's dates cannot hold
    (``?created_at__year=99999`` or ``0``: the admin's lists take any lookup on a model's own
    fields, and the year's bounds are computed only when the list is rendered: a 500)."""
    if request.path.startswith("/api/") or not request.GET:
        return None
    for key, values in request.GET.lists():
        if not {"year", "iso_year"} & set(key.split("__")[1:]):
            continue
        for value in values:
            try:
                year = int(value)
            except ValueError:
                continue  # not a number: the admin refuses that one itself
            if not 1 <= year <= 9999:
                return HttpResponseBadRequest(f"{key}: a year from 1 to 9999.",
                                              content_type="text/plain; charset=utf-8")
    return None


def _form_too_large(request):
    """A page's form past the body limit (an amended input prefilled indented from a large one)
    says so in plain text, which the reviewer pages show in the decision panel: Django's answer was
    a bare "Bad Request (400)", or under DEBUG (``make run``) its debug page."""
    if request.method != "POST" or request.path.startswith("/api/") or \
            not request.META.get("CONTENT_TYPE", "").startswith(("application/x-www-form-urlencoded",
                                                                  "multipart/form-data")):  # no page takes files
        return None
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None or length <= limit:
        return None
    return HttpResponseBadRequest(f"The form sent is larger than this server takes ({limit:,} bytes, "
                                  f"HITL_MAX_BODY_BYTES): nothing was done. An amended input this large is sent "
                                  f"through the API, as compact JSON.", content_type="text/plain; charset=utf-8")


def _api_error_shape(request, response):
    """Under DEBUG (``make run``) Django answers an unexpected exception with its HTML debug page,
    also on /api/ (handler500, core.views.server_error, only runs without DEBUG): the API keeps
    its error format there too. The traceback is in the log (django.request), not in the answer."""
    if response.status_code == 500 and settings.DEBUG and request.path.startswith("/api/") and \
            not response.get("Content-Type", "").startswith("application/json"):
        return JsonResponse(error_body("server_error", "Internal server error."), status=500)
    return response


@sync_and_async_middleware
def request_middleware(get_response):
    """Our one Django middleware, sync and async capable (so the chain never switches threads
    for it): a request-scoped cache (core.request_cache) around the request, a chunked body
    given its Content-Length, an API 500 kept JSON under DEBUG, and an HTML page's direction
    controls made visible (core.bidi). DRF reads a body only when Content-Length is set; Django
    has already spooled the whole body (ASGI), so BoundedJSONParser then parses it and enforces
    the size limit like any other body."""
    if iscoroutinefunction(get_response):
        async def middleware(request):
            # the length first: a chunked page form past the limit (kept to the limit + 1 byte)
            # was parsed as a smaller form and acted on
            _give_chunked_body_its_length(request)
            if (refused := _disallowed_host(request) or _year_out_of_range(request) or _form_too_large(request)) \
                    is not None:
                return refused
            with request_scope():
                return shown_in_response(_api_error_shape(request, await get_response(request)))
    else:
        def middleware(request):
            # the length first: a chunked page form past the limit (kept to the limit + 1 byte)
            # was parsed as a smaller form and acted on
            _give_chunked_body_its_length(request)
            if (refused := _disallowed_host(request) or _year_out_of_range(request) or _form_too_large(request)) \
                    is not None:
                return refused
            with request_scope():
                return shown_in_response(_api_error_shape(request, get_response(request)))
    return middleware


# --- daphne: no form parsing in the server -------------------------------------------------
def disable_server_form_parsing() -> bool:
    """Make daphne's Twisted requests skip their own multipart / urlencoded body parsing
    (Twisted's ``parsePOSTFormSubmission``). Idempotent; True when it is (now) off."""
    try:
        from daphne.http_protocol import WebRequest
        from twisted.web.http import Request
    except ImportError:  # not served by daphne
        return False
    if getattr(WebRequest, "_hitl_form_parsing_off", False):
        return True
    if "parsePOSTFormSubmission" not in inspect.signature(Request.__init__).parameters:
        log.warning("this Twisted cannot turn off its multipart parsing: a malformed multipart body "
                    "gets an empty 400 from the server")
        return False
    original_init = WebRequest.__init__

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("parsePOSTFormSubmission", False)
        original_init(self, *args, **kwargs)

    __init__.__wrapped__ = original_init
    WebRequest.__init__ = __init__
    WebRequest._hitl_form_parsing_off = True
    return True


disable_server_form_parsing()


# --- daphne: an oversized request head gets an answer ---------------------------------------
def _head_answer(status: int, reason: str, detail: str, code: str = "invalid") -> bytes:
    """The JSON answer to a request head the server will not read; an ``invalid`` one names what
    was wrong under ``fields.request``, as every 400 ``invalid`` names its fields."""
    body = json.dumps(error_body(code, detail, **({"fields": {"request": [detail]}} if code == "invalid" else {})))
    body = body.encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def answer_oversized_heads() -> bool:
    """Make daphne's Twisted channel answer a request head it will not read (a line over 16 KB:
    it closes the socket without a word; all headers over 16 KB: a bare ``400`` with no body)
    with the API's JSON error: 414 for the request line, 431 for the headers, then close.
    Idempotent; True when it is (now) on."""
    try:
        from twisted.web.http import HTTPChannel
    except ImportError:  # not served by daphne
        return False
    if getattr(HTTPChannel, "_hitl_oversized_answered", False):
        return True
    limit = HTTPChannel.MAX_LENGTH // 1024

    def lineLengthExceeded(self, line):
        if getattr(self, "_HTTPChannel__first_line", 0):
            answer = _head_answer(414, "URI Too Long", f"The request line is over {limit} KB.")
        else:
            answer = _head_answer(431, "Request Header Fields Too Large",
                                            f"A request header is over {limit} KB.")
        self.transport.write(answer)
        self.loseConnection()

    def _respondToBadRequestAndDisconnect(self):
        if self._receivedHeaderSize > self.totalHeadersSize:
            self.transport.write(_head_answer(
                431, "Request Header Fields Too Large",
                f"The request's headers are over {self.totalHeadersSize // 1024} KB in all."))
        else:
            self.transport.write(_head_answer(400, "Bad Request", "Malformed request head."))
        self.loseConnection()

    HTTPChannel.lineLengthExceeded = lineLengthExceeded
    HTTPChannel._respondToBadRequestAndDisconnect = _respondToBadRequestAndDisconnect
    HTTPChannel._hitl_oversized_answered = True
    return True


answer_oversized_heads()


def answer_tls_spoken_to_plain_http() -> bool:
    """Make daphne's Twisted channel answer a TLS handshake (a client given ``https://`` for this
    plain-HTTP server) at once: a plain 400 that says so, then close. Twisted waited for a request
    line that never came, so the client's handshake hung until the idle timeout (60 s per try; the
    SDK's retries made it three minutes); now the client fails at once (its TLS library reads the
    answer as "wrong version number"). Idempotent; True when it is (now) on."""
    try:
        from twisted.web.http import HTTPChannel
    except ImportError:  # not served by daphne
        return False
    if getattr(HTTPChannel, "_hitl_tls_answered", False):
        return True
    received = HTTPChannel.dataReceived

    def dataReceived(self, data):
        if not getattr(self, "_hitl_first_bytes_seen", False):
            self._hitl_first_bytes_seen = True
            if data[:2] in (b"\x16\x03", b"\x16\x02"):  # a TLS record: a handshake
                self.transport.write(_head_answer(400, "Bad Request", "This server speaks plain HTTP, not TLS: use "
                                                  "http:// (or put a TLS proxy in front of it)."))
                self.transport.loseConnection()
                return None
        return received(self, data)

    HTTPChannel.dataReceived = dataReceived
    HTTPChannel._hitl_tls_answered = True
    return True


answer_tls_spoken_to_plain_http()


def answer_stalled_requests() -> bool:
    """Make daphne's Twisted channel time a connection out after ``HITL_HTTP_IDLE_TIMEOUT``
    seconds with nothing received (Twisted's default is 60), and answer a request received only
    in part by then with the API's JSON 408 before closing. Idempotent; True when it is (now) on."""
    try:
        from twisted.web.http import HTTPChannel
    except ImportError:  # not served by daphne
        return False
    if getattr(HTTPChannel, "_hitl_stalled_answered", False):
        return True
    timed_out, made = HTTPChannel.timeoutConnection, HTTPChannel.connectionMade

    def connectionMade(self):
        self.timeOut = settings.HITL_HTTP_IDLE_TIMEOUT  # the idle timer starts in connectionMade
        made(self)

    def timeoutConnection(self):
        # The timer is off while a request received in full is answered (Twisted stops it), so
        # it fires between requests or in the middle of one: its request line begun (a partial
        # line in the line buffer) or read (headers or body still to come).
        started = getattr(self, "_HTTPChannel__first_line", 1) == 0 or bool(getattr(self, "_buffer", b""))
        if started and not getattr(self, "_handlingRequest", False):
            self.transport.write(_head_answer(
                408, "Request Timeout", f"The request was not received in full within "
                f"{self.timeOut:g} seconds of the last data.", code="request_timeout"))
        timed_out(self)

    HTTPChannel.connectionMade = connectionMade
    HTTPChannel.timeoutConnection = timeoutConnection
    HTTPChannel._hitl_stalled_answered = True
    return True


answer_stalled_requests()


def body_room(kept: int, data: bytes) -> bytes:
    """The part of ``data`` to keep after ``kept`` bytes of a request's body: all of it up to
    DATA_UPLOAD_MAX_MEMORY_SIZE + 1 bytes (one past the limit, so the application still sees a
    body too large and refuses it), nothing after."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None:
        return data
    room = limit + 1 - kept
    return data if len(data) <= room else data[:max(room, 0)]


def bound_request_bodies() -> bool:
    """Make daphne's Twisted request keep at most DATA_UPLOAD_MAX_MEMORY_SIZE + 1 bytes of a body
    (``body_room``) and drop the rest as it is read, whatever its Content-Length or chunks say.
    Idempotent; True when it is (now) on."""
    try:
        from twisted.web.http import Request
    except ImportError:  # not served by daphne
        return False
    if getattr(Request, "_hitl_bodies_bounded", False):
        return True
    got_length, content_chunk = Request.gotLength, Request.handleContentChunk

    def gotLength(self, length):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        got_length(self, length if length is None or limit is None else min(length, limit + 1))

    def handleContentChunk(self, data):
        kept = getattr(self, "_hitl_body_kept", 0)
        data = body_room(kept, data)
        if data:
            self._hitl_body_kept = kept + len(data)
            content_chunk(self, data)

    Request.gotLength = gotLength
    Request.handleContentChunk = handleContentChunk
    Request._hitl_bodies_bounded = True
    return True


bound_request_bodies()


def name_every_status() -> bool:
    """Twisted writes "Unknown Status" as the reason phrase of a status it has no name for: 423
    (every agent call under an emergency stop), 429, 422, 431. Its table gets the standard names
    from Python's ``http.HTTPStatus``. Idempotent; True when every status has a name."""
    try:
        from twisted.web.http import RESPONSES
    except ImportError:  # not served by daphne
        return False
    for status in HTTPStatus:
        RESPONSES.setdefault(status.value, status.phrase.encode())
    return True


name_every_status()


# --- ASGI: request heads Django cannot parse, exceptions before an answer ------------------
def request_head_problem(scope) -> tuple[str, str] | None:
    """(field, message) when Django could not build a request from this HTTP scope."""
    try:
        (scope.get("query_string") or b"").decode("utf-8")
    except UnicodeDecodeError:
        return "query", "The query string is not valid UTF-8."
    for name, value in scope.get("headers") or ():
        if name.lower() == b"content-type":
            try:
                parse_header_parameters(value.decode("latin-1"))
            except (ValueError, LookupError, UnicodeError) as exc:
                return "body", f"Malformed Content-Type header: {exc}"
    return None


def origin_form(scope) -> tuple[dict, str | None]:
    """(scope, problem) for a request whose target came in absolute form (``GET http://host/path``,
    what clients send to a proxy): RFC 9112 3.2.2 has a server accept it, with the target's
    authority (host[:port]) replacing the Host header. Daphne passes the whole URL on as the path,
    which no route matches (an HTML 404 even for an API path). The raw target is parsed, never the
    percent-decoded path (``%2F``, ``%3F`` or ``%40`` must not split it). ``problem`` is a message
    for a 400 when the authority is malformed, names no host or carries user info (RFC 9110
    4.2). Any other scope is returned as it is, with no problem."""
    raw = scope.get("raw_path")
    decoded = not isinstance(raw, bytes)  # a server that sends no raw_path: its decoded path is all there is
    if decoded:
        raw = (scope.get("path") or "").encode("utf-8", "surrogateescape")
    if not raw[:8].lower().startswith((b"http://", b"https://")):
        return scope, None
    try:
        target = urlsplit(raw)
        target.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return scope, "The request target's authority is malformed."
    if not target.hostname or b"@" in target.netloc:
        return scope, "The request target must name a host, without user information."
    path = target.path or b"/"
    headers = [(name, value) for name, value in scope.get("headers") or () if name.lower() != b"host"]
    headers.append((b"host", target.netloc))
    text = path.decode("utf-8", "surrogateescape")
    return {**scope, "path": text if decoded else unquote(text), "raw_path": path, "headers": headers}, None


def _is_api(scope) -> bool:
    return is_api_path(str(scope.get("path", "")))


async def _send_json(send, status: int, body: dict, headers=()) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


class ApiErrorGuard:
    """ASGI middleware around the whole application (``botarmy_hitl/asgi.py``); passes every
    scope other than HTTP straight through."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        scope, target_problem = origin_form(scope)
        problem = ("target", target_problem) if target_problem else request_head_problem(scope)
        if problem is None and not _is_api(scope) and b"\x00" in unquote_to_bytes(scope.get("query_string") or b""):
            # A page's list filter or search would hand it to the database, which cannot store it
            # (a 500 in the admin); the API's own validation names the field instead.
            problem = ("query", "The query string contains a NUL character (%00).")
        if problem is not None:
            field, message = problem
            log.warning("Bad request head: %s: %s", scope.get("path"), message)
            if _is_api(scope) or target_problem:  # an absolute target that cannot be parsed: maybe an API path
                await _send_json(send, 400, error_body("invalid", message, fields={field: [message]}))
            else:
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
                await send({"type": "http.response.body", "body": b"Bad Request"})
            return None
        started, kept = False, 0

        async def tracking_send(message):
            nonlocal started
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        async def bounded_receive():
            # at most the body limit + 1 byte reaches the application (Django and the long polls'
            # consumers alike, which kept a whole body in memory under uvicorn): the rest is read
            # and dropped (``body_room``); the application still sees a body past the limit
            nonlocal kept
            message = await receive()
            data = message.get("body")
            if data:
                room = body_room(kept, data)
                kept += len(room)
                if len(room) != len(data):
                    message = {**message, "body": room}
            return message

        try:
            return await self.app(scope, bounded_receive, tracking_send)
        except asyncio.CancelledError:
            # The server cancels what is left when it stops (uvicorn's graceful shutdown: the long
            # polls): an API request not answered yet gets 503 in JSON with Retry-After, not the
            # server's plain-text 500; the cancellation goes on. A send that cannot go out any
            # more (the client already left) changes nothing.
            if not started and _is_api(scope):
                with contextlib.suppress(Exception):
                    await _send_json(send, 503, error_body("unavailable", "The server is stopping: retry the "
                                                                          "request shortly."),
                                     [(b"retry-after", str(retry_after_seconds()).encode())])
            raise
        except Exception as exc:
            if started or not _is_api(scope):
                raise
            kind = transient_db_error_kind(exc)
            if kind is not None:
                log.warning("transient database error, answered 503: %s: %s", kind, exc)
                await _send_json(send, 503, unavailable_body(kind),
                                 [(b"retry-after", str(retry_after_seconds()).encode())])
            else:
                log.exception("Internal Server Error: %s", scope.get("path"))
                await _send_json(send, 500, error_body("server_error", "Internal server error."))
            return None


# --- static files without a thread hop --------------------------------------------------------
class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise, async capable: WhiteNoise's own middleware is sync only, so under ASGI the
    chain would hop to a thread and back for it on every request. A request for a static file
    is served in a thread; every other one goes on in the chain's mode."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response=None, settings=settings):
        super().__init__(get_response, settings=settings)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _static_file(self, request):
        return self.find_file(request.path_info) if self.autorefresh else self.files.get(request.path_info)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request):
        static_file = self._static_file(request)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)
