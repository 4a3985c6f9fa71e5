"""GET /api/v1/agent-approvals/{id}/wait, /api/v1/response-approvals/{id}/wait and
/api/v1/hitl/{id}/wait: the long poll of a waiting agent.

Served by Channels (not Django's request handler), so a waiting agent costs one coroutine and
an ``asyncio.Event`` (core.wakeup): no thread and no database connection is held while it
waits. Database reads run briefly through ``database_sync_to_async``. The decision services
wake the approval's group after commit; as a fallback, one query every HITL_WAIT_POLL_SECONDS
checks all approvals waited on in the process, so a lost push (or a decision made in another
process on the in-process layer) only delays the answer, and an approval whose deadline
passed is timed out on the spot even if beat is late.
"""
import asyncio
import functools
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from importlib import import_module
from types import SimpleNamespace
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.http import AsyncHttpConsumer
from django.conf import settings
from django.contrib import auth
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Q
from django.utils import timezone
from django.http import HttpRequest, QueryDict
from rest_framework.exceptions import APIException, AuthenticationFailed, NotAcceptable, NotFound
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.settings import api_settings

from access.authentication import api_key_check
from approvals.models import AgentCallApproval, ResponseApproval
from approvals.serializers import AgentCallApprovalOutputSerializer, ResponseApprovalOutputSerializer
from approvals.services import (
    agent_approval_time_out,
    approval_group,
    project_stop_group,
    response_approval_time_out,
    response_group,
)
from core.api import JsonFirstNegotiation, parse_uuid
from core.rawrows import by_pk_with
from core.middleware import disallowed_host_body
from core.errors import (
    DomainError,
    api_exception_handler,
    error_body,
    retry_after_seconds,
    transient_db_error_kind,
    unavailable_body,
)
from events.api import EventListApi
from events.selectors import event_page
from hitl.models import HitlRequest
from hitl.serializers import HitlRequestOutputSerializer
from hitl.services import hitl_group, hitl_request_time_out
from projects.permissions import may_see, project_for_user
from core.request_cache import request_scope
from core.wakeup import BatchLoader, BatchPoller, wakeup

log = logging.getLogger(__name__)

# A few threads of their own for the waits' database reads: many waiters are served in
# parallel, none holds a thread while it waits, and the event loop's default executor stays free.
_DB_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hitl-wait-db")


def db_read(func):
    """Run briefly in the waits' database threads, with Channels' connection clean-up around it,
    in a request scope of its own (core.request_cache): the roles the API key's lookup reads are
    reused by the visibility check of the same trip, as in a request served by Django."""
    @functools.wraps(func)
    def scoped(*args, **kwargs):
        with request_scope():
            return func(*args, **kwargs)

    return database_sync_to_async(scoped, thread_sensitive=False, executor=_DB_THREADS)


MAX_WAIT_SECONDS = 60.0
DEFAULT_WAIT_SECONDS = 30.0


class HttpError(Exception):
    def __init__(self, status: int, body: dict, headers=()):
        self.status, self.body, self.headers = status, body, list(headers)


_SECONDS_RX = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def _parse_timeout(query_string: bytes) -> float:
    """``timeout``: seconds as ASCII digits with an optional fraction (``30``, ``2.5``), as the
    API's other numbers are read: Python's float() also took ``1_0``, other scripts' digits and
    ``1e1``."""
    values = parse_qs(query_string.decode("latin-1")).get("timeout")
    if not values:
        return DEFAULT_WAIT_SECONDS
    timeout = float(values[-1]) if _SECONDS_RX.fullmatch(values[-1]) else -1.0
    if not timeout >= 0 or timeout == float("inf"):
        raise HttpError(400, error_body("invalid", "Invalid input.",
                                        fields={"timeout": ["Must be a number of seconds (at most 60 are waited)."]}))
    return min(timeout, MAX_WAIT_SECONDS)


def _authenticate(scope):
    headers = dict(scope.get("headers") or [])
    auth = headers.get(b"authorization", b"").split()
    if auth and auth[0].lower() == b"bearer":
        try:
            if len(auth) != 2:
                raise AuthenticationFailed("Authorization header must be 'Bearer <api key>'.")
            return api_key_check(auth[1].decode("ascii")).user
        except (AuthenticationFailed, UnicodeDecodeError) as exc:
            detail = str(getattr(exc, "detail", "Invalid API key."))
            raise HttpError(401, error_body("unauthenticated", detail),
                            [(b"WWW-Authenticate", b'Bearer realm="api"')]) from None
    user = scope.get("user")
    if user is not None and user.is_authenticated and user.is_active:
        return user
    raise HttpError(401, error_body("unauthenticated", "Authentication credentials were not provided."),
                    [(b"WWW-Authenticate", b'Bearer realm="api"')])


def principal_of(scope, user_id) -> tuple:
    """What authenticated a long-lived request (a wait, an event stream), to be checked again
    later by ``authenticated_again``: ("bearer", its Authorization header) or ("session", the
    session key, the user's id). Hashable: waits of one principal share one check."""
    header = dict(scope.get("headers") or []).get(b"authorization", b"")
    if header.split()[:1] and header.split()[0].lower() == b"bearer":
        return ("bearer", header)
    return ("session", getattr(scope.get("session"), "session_key", None), user_id)


def authenticated_again(principal):
    """The user of ``principal`` now (HttpError 401 if that has ended): its API key checked again
    (revoked, or its user inactive: refused, as a new request would be) or its session read
    again from the session store (a logout, a password change or a deactivated user ends it)."""
    if principal[0] == "bearer":
        return _authenticate({"headers": [(b"authorization", principal[1])]})
    _, session_key, user_id = principal
    user = auth.get_user(SimpleNamespace(session=import_module(settings.SESSION_ENGINE).SessionStore(session_key))) \
        if session_key else None
    if user is None or not user.is_authenticated or not user.is_active or user.pk != user_id:
        raise HttpError(401, error_body("unauthenticated", "Your session has ended: sign in again."),
                        [(b"WWW-Authenticate", b'Bearer realm="api"')])
    return user


def access_again(keys) -> dict:
    """For each (principal, project id) of waits that ended: None while the principal may still
    see the project, else the HttpError a new request would get (401 for a revoked key, an
    inactive user or an ended session; 404 for a lost role). One check per principal (its key
    read with its roles in one statement), however many of its waits a stop ended at once."""
    users, refused = {}, {}
    for principal, project_id in keys:
        if principal not in users:
            try:
                users[principal] = authenticated_again(principal)
            except HttpError as err:
                users[principal] = err
        user = users[principal]
        if isinstance(user, HttpError):
            refused[(principal, project_id)] = user
        elif not may_see(user, project_id):
            refused[(principal, project_id)] = HttpError(404, error_body("not_found", "Not found."))
        else:
            refused[(principal, project_id)] = None
    return refused


class WaitKind:
    """What a long poll waits on: a model with ``status`` and ``expires_at`` (pending until
    decided) in a project (a user sees those of the projects they may see), the serializer of
    the answer and the users it names (``related``), the time-out service, and the
    channel-layer group its decisions wake."""

    def __init__(self, model, serializer, time_out, group, related):
        self.model, self.serializer, self.related = model, serializer, related
        self.time_out, self.group = time_out, group
        self.pending = model.Status.PENDING

    def open(self, scope, approval_id):
        """Authenticate, load the visible approval (404 otherwise) and, when it is already
        decided, render the answer: one trip to a database thread for a wait that need not wait.
        Returns (approval, answer or None, the principal to check again when the wait ends)."""
        user = _authenticate(scope)
        principal = principal_of(scope, user.pk)
        try:
            pk = parse_uuid(approval_id)
        except NotFound:
            raise HttpError(404, error_body("not_found", "Not found.")) from None
        # One hand-written statement (the ORM's three-way select_related cost a millisecond to build).
        approval = by_pk_with(self.model, pk, self.related)
        if approval is None or not may_see(user, approval.project_id):
            raise HttpError(404, error_body("not_found", "Not found."))
        if approval.status == self.pending and timezone.now() < approval.expires_at:
            return approval, None, principal
        if approval.status == self.pending:  # past its deadline: timed out here and then
            self.statuses([approval.pk])
            return approval, self.renders([approval.pk])[approval.pk], principal
        data = self.serializer(approval).data
        return approval, json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":")).encode(), principal

    def statuses(self, approval_ids) -> dict:
        """Current status of each approval (one query); pending ones past their deadline are
        timed out here and then."""
        rows = dict((pk, (status, expires_at)) for pk, status, expires_at in self.model.objects.filter(
            pk__in=approval_ids).values_list("pk", "status", "expires_at"))
        now = timezone.now()
        statuses = {}
        for pk, (status, expires_at) in rows.items():
            if status == self.pending and now >= expires_at:
                self.time_out(approval_id=pk)
                status = self.model.objects.values_list("status", flat=True).get(pk=pk)
            statuses[pk] = status
        return statuses

    def renders(self, approval_ids) -> dict:
        """Each approval's JSON answer (one query)."""
        approvals = list(self.model.objects.filter(pk__in=approval_ids).select_related(*self.related))
        rendered = self.serializer(approvals, many=True).data  # one serializer for the batch
        return {a.pk: json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":")).encode()
                for a, data in zip(approvals, rendered)}

    def due_for_release(self, approval_ids) -> list:
        """Of the approvals being waited on, those decided or past their deadline (one query)."""
        return list(self.model.objects.filter(pk__in=approval_ids).filter(
            ~Q(status=self.pending) | Q(expires_at__lte=timezone.now())).values_list("pk", flat=True))


CALLS = WaitKind(AgentCallApproval, AgentCallApprovalOutputSerializer,
                 agent_approval_time_out, approval_group, ("approved_by", "requested_by"))
RESPONSES = WaitKind(ResponseApproval, ResponseApprovalOutputSerializer,
                     response_approval_time_out, response_group, ("approved_by", "submitted_by"))
HITL = WaitKind(HitlRequest, HitlRequestOutputSerializer,
                lambda approval_id: hitl_request_time_out(request_id=approval_id), hitl_group,
                ("asked_by", "responded_by"))


_RENDERERS = tuple(renderer() for renderer in api_settings.DEFAULT_RENDERER_CLASSES)  # the API's


def head_refused(scope) -> HttpError | None:
    """What Django and DRF refuse for an API request before its view, for the paths consumers
    serve: a Host not in ALLOWED_HOSTS (400 ``invalid``, ``fields.host``; Django's own check) and
    an Accept the API's renderers cannot satisfy (406 ``not_acceptable``; DRF's negotiation)."""
    request = HttpRequest()
    server = scope.get("server") or ("", "")
    request.META = {"SERVER_NAME": str(server[0] or ""), "SERVER_PORT": str(server[1] or "")}
    for name, value in scope.get("headers") or ():
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        value = value.decode("latin-1")
        request.META[key] = f"{request.META[key]},{value}" if key in request.META else value
    body = disallowed_host_body(request)
    if body is not None:
        return HttpError(400, body)
    try:
        JsonFirstNegotiation().select_renderer(Request(request), _RENDERERS)
    except NotAcceptable as exc:
        return HttpError(406, error_body("not_acceptable", str(exc.detail)))
    return None


class JsonHttpConsumer(AsyncHttpConsumer):
    """An HTTP consumer that answers in API.md's JSON shape: ``answer()`` returns (status, body
    bytes); an HttpError is its own answer, a transient database error 503 with Retry-After (as
    core.errors does), anything else a JSON 500.

    No channel of its own on the channel layer (``channel_layer_alias`` names none): a wait is
    woken through core.wakeup's one subscription per process, so the channel and the receive
    that Channels would open on Redis for every request would only cost it time."""

    channel_layer_alias = None
    answer_headers: tuple | list = ()  # headers an answer adds (set per request by ``answer``)

    async def answer(self) -> tuple[int, bytes]:
        raise NotImplementedError

    async def handle(self, body):
        headers = []
        self.answer_headers = []
        try:
            refused = head_refused(self.scope)
            if refused is not None:
                raise refused
            status, payload = await self.answer()
            headers = self.answer_headers
        except HttpError as err:
            status, payload, headers = err.status, json.dumps(err.body, separators=(",", ":")).encode(), err.headers
        except Exception as exc:  # noqa: BLE001 - the answer keeps the API's JSON error shape
            kind = transient_db_error_kind(exc)
            if kind is None:
                log.exception("Internal Server Error: %s", self.scope.get("path"))
                status, body_ = 500, error_body("server_error", "Internal server error.")
            else:  # a deadlock, lock timeout, exhausted pool...: retry shortly
                log.warning("transient database error, answered 503: %s: %s", kind, exc)
                status, body_ = 503, unavailable_body(kind)
                headers = [(b"Retry-After", str(retry_after_seconds()).encode())]
            payload = json.dumps(body_, separators=(",", ":")).encode()
        await self.send_response(status, payload, headers=[(b"Content-Type", b"application/json"), *headers])


class ApprovalWaitConsumer(JsonHttpConsumer):
    """GET .../{approval_id}/wait of one kind of approval (``kind``: CALLS or RESPONSES)."""
    kind: WaitKind = CALLS

    async def answer(self):
        method = self.scope["method"]
        if method == "OPTIONS":  # as the API's other GET paths answer it (it was 405): for a caller who is signed in
            await db_read(_authenticate)(self.scope)
            self.answer_headers = [(b"Allow", b"GET, HEAD, OPTIONS")]
            return 200, b"{}"
        if method not in ("GET", "HEAD"):
            raise HttpError(405, error_body("method_not_allowed", f'Method "{method}" not allowed.'),
                            [(b"Allow", b"GET, HEAD, OPTIONS")])
        try:
            approval_id = parse_uuid(self.scope["url_route"]["kwargs"]["approval_id"])
        except Exception:
            raise HttpError(404, error_body("not_found", "Not found.")) from None
        approval, payload, principal = await db_read(self.kind.open)(self.scope, approval_id)
        # HEAD: the status line and headers a GET would have now (a bad timeout 400 as for a GET), without
        # waiting (the server sends no body)
        timeout = _parse_timeout(self.scope.get("query_string", b""))
        if method == "HEAD":
            timeout = 0.0
        if payload is None:
            await self.wait_for_decision(approval.pk, approval.project_id, timeout, approval.expires_at)
            # Its access checked again, beside the render: a key revoked, a user deactivated or
            # a role removed while it waited gets what a new request would, not the decision.
            refused, payload = await asyncio.gather(
                BatchLoader.for_loop(access_again, db_read).load((principal, approval.project_id)),
                BatchLoader.for_loop(self.kind.renders, db_read).load(approval.pk))
            if refused is not None:
                raise refused
        return 200, payload

    async def _current_status(self, approval_id) -> str:
        return await BatchLoader.for_loop(self.kind.statuses, db_read).load(approval_id)

    async def wait_for_decision(self, approval_id, project_id, timeout: float, expires_at=None) -> None:
        pending = self.kind.pending
        if await self._current_status(approval_id) != pending:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Its own deadline, on the loop's clock: the wait reads it then (and times it out), not at the
        # poller's next pass, which came after the caller's timeout when the deadline fell in its last
        # seconds: the answer was "pending" for an approval past its deadline.
        expiry = None if expires_at is None else \
            loop.time() + max(0.0, (expires_at - timezone.now()).total_seconds()) + 0.005
        poller = BatchPoller.for_loop(self.kind.due_for_release, settings.HITL_WAIT_POLL_SECONDS, db_read)
        async with wakeup(self.kind.group(approval_id), project_stop_group(project_id)) as woken, \
                poller.watch(approval_id, woken):
            while True:
                # Subscribed first, then read: a decision committed in between is not missed.
                if await self._current_status(approval_id) != pending:
                    return
                now = loop.time()
                remaining = deadline - now
                if remaining <= 0:
                    return
                wake_in = remaining if expiry is None else max(0.0, min(remaining, expiry - now))
                try:
                    await asyncio.wait_for(woken.wait(), timeout=wake_in)
                except asyncio.TimeoutError:
                    if loop.time() >= deadline:
                        return
                    expiry = None  # past it now: the status read next times it out
                woken.clear()


class AgentApprovalWaitConsumer(ApprovalWaitConsumer):
    kind = CALLS


class ResponseApprovalWaitConsumer(ApprovalWaitConsumer):
    kind = RESPONSES


class HitlRequestWaitConsumer(ApprovalWaitConsumer):
    """GET /api/v1/hitl/{id}/wait: a question or checkpoint (hitl.HitlRequest)."""
    kind = HITL


# --- GET /api/v1/events: the outbox feed, async end to end --------------------------------------
@db_read
def _event_feed(scope) -> tuple[int, bytes]:
    """(status, JSON body) of one page of a project's events, as events.api.EventListApi answers
    it (same validation, visibility and error shapes), in one trip to a database thread."""
    user = _authenticate(scope)
    try:
        query = QueryDict((scope.get("query_string") or b"").decode("utf-8"))
        s = EventListApi.FilterSerializer(data=query)
        s.is_valid(raise_exception=True)
        project = project_for_user(user=user, project_id=s.validated_data["project_id"])
        page = event_page(project=project, user=user, after=s.validated_data["after"], limit=s.validated_data["limit"])
    except (APIException, DomainError) as exc:
        response = api_exception_handler(exc, {})
        return response.status_code, JSONRenderer().render(response.data)
    return 200, JSONRenderer().render(page)


class EventFeedConsumer(JsonHttpConsumer):
    """GET /api/v1/events without a thread of the request pool: authentication, the query and
    the rendering run in one short database-thread call, the rest in the event loop. Other
    methods go to Django's view (see approvals.routing.GetOr)."""

    async def answer(self):
        return await _event_feed(self.scope)
