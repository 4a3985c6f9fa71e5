"""Django under ASGI with one thread hop per request, a bounded pool of threads, and a 503
instead of an unbounded queue.

Django's own ASGIHandler runs the middleware chain in async mode: every middleware built on
MiddlewareMixin (all of Django's) then runs its process_request and process_response through
``sync_to_async``, the request_started and request_finished signals and the response's close
hop too, and each request gets a thread of its own (ThreadSensitiveContext). About fifteen
hops between the event loop and a new thread per request cost more CPU than the request's own
work. ``OneHopASGIHandler`` keeps Django's body spooling and response sending, but runs the
request's whole sync part (request_started, the sync middleware chain, the view, rendering,
close and request_finished, which hands the database connection back to the pool) in one call
on a thread of a fixed pool (HITL_WEB_THREADS per process). An async view is served by
Django's own async path, so it never holds a thread while it waits.

Two middleware chains: a request to /api/ that authenticates with ``Authorization: Bearer``
(an agent) runs through HITL_API_MIDDLEWARE, without the browser's middleware (sessions, CSRF,
the session user, messages, framing, htmx), which would only cost it CPU; every other request
runs through MIDDLEWARE. And the path is resolved once per request, by Django: when no URL
pattern routes to an async view (today none does: long polls are Channels consumers), the
handler does not resolve it a second time to choose the async path.

Backpressure: at most HITL_WEB_THREADS requests run at once per process; a request that
waits longer than HITL_QUEUE_TIMEOUT_SECONDS for its turn is answered 503 ``unavailable``
with ``Retry-After`` (API.md's error shape) instead of piling up threads and database waits.

The health check (the URL named ``health``) has a thread of its own, outside that pool: while
every web thread waits for a locked project's row (up to HITL_DB_LOCK_TIMEOUT each), a monitor
still hears whether the database answers, instead of a 503 "busy" that reads as the node down.
"""
import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.db import close_old_connections
from django.http import HttpResponse, JsonResponse
from django.urls import Resolver404, get_resolver, reverse, set_script_prefix

from core import broadcast
from core.errors import error_body, is_api_path, retry_after_seconds

log = logging.getLogger(__name__)


def _saturated_response(path: str):
    if is_api_path(path):
        response = JsonResponse(error_body("unavailable", "The server is saturated; retry the request shortly."),
                                status=503)
    else:
        response = HttpResponse("The server is busy; retry shortly.", status=503, content_type="text/plain")
    response["Retry-After"] = str(retry_after_seconds())
    return response


def _sync_handler(middleware: list[str] | None = None) -> BaseHandler:
    """A BaseHandler whose sync chain is ``middleware`` (settings.MIDDLEWARE when None).
    BaseHandler.load_middleware reads settings.MIDDLEWARE: it is swapped for the time of that
    call only, once, while the process starts (before any request runs)."""
    handler = BaseHandler()
    if middleware is None:
        handler.load_middleware(is_async=False)
        return handler
    full = settings.MIDDLEWARE
    settings.MIDDLEWARE = list(middleware)
    try:
        handler.load_middleware(is_async=False)
    finally:
        settings.MIDDLEWARE = full
    return handler


def _async_views(patterns) -> bool:
    """True when some URL pattern (in any include) routes to an async view."""
    for pattern in patterns:
        if hasattr(pattern, "url_patterns"):
            if _async_views(pattern.url_patterns):
                return True
            continue
        view = pattern.callback
        if asyncio.iscoroutinefunction(view) or getattr(view, "view_is_async", False):
            return True
    return False


def bearer_api_request(scope) -> bool:
    """A request to /api/ with an ``Authorization: Bearer`` header (HITL_API_MIDDLEWARE's chain)."""
    if not scope["path"].startswith("/api/"):
        return False
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            return value[:7].lower() == b"bearer "
    return False


class OneHopASGIHandler(ASGIHandler):
    def __init__(self):
        super().__init__()
        self._sync_handler = _sync_handler()
        self._api_handler = _sync_handler(getattr(settings, "HITL_API_MIDDLEWARE", None))
        self._has_async_views = _async_views(get_resolver().url_patterns)
        self.threads = max(int(settings.HITL_WEB_THREADS), 1)
        self.queue_timeout = float(getattr(settings, "HITL_QUEUE_TIMEOUT_SECONDS", 30))
        self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="hitl-web")
        # asgiref's SyncToAsync (not a bare run_in_executor): code in the thread that calls
        # async_to_sync then runs it on this event loop, with its connections, instead of a new
        # loop per call (pushes after commit do not even wait: core.broadcast). Built once.
        self._serve_in_thread = sync_to_async(self._serve, thread_sensitive=False, executor=self._executor)
        self._slots: asyncio.Semaphore | None = None
        # the health check's own thread and slot (one check at a time; the others queue as above)
        self._health_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hitl-health")
        self._serve_health = sync_to_async(self._serve, thread_sensitive=False, executor=self._health_executor)
        self._health_slot: asyncio.Semaphore | None = None
        self._health_path = reverse("health")

    def _is_async_view(self, path: str) -> bool:
        if not self._has_async_views:
            return False
        try:
            view = get_resolver().resolve(path).func
        except Resolver404:
            return False
        return asyncio.iscoroutinefunction(view) or getattr(view, "view_is_async", False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        if self._is_async_view(scope["path"]):
            return await super().__call__(scope, receive, send)
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.threads)
            self._health_slot = asyncio.Semaphore(1)
        path, root = scope["path"], scope.get("root_path") or ""
        health = (path[len(root):] if root and path.startswith(root) else path) == self._health_path
        slots, serve = (self._health_slot, self._serve_health) if health else (self._slots, self._serve_in_thread)
        try:
            if slots.locked():  # every thread busy: wait for a turn, at most queue_timeout
                await asyncio.wait_for(slots.acquire(), timeout=self.queue_timeout)
            else:  # a free thread: taken at once (no timer, no task)
                await slots.acquire()
        except asyncio.TimeoutError:
            body_file.close()
            log.warning("saturated: %s waited %.1f s for a thread, answered 503", scope["path"], self.queue_timeout)
            await self.send_response(_saturated_response(scope["path"]), send)
            return
        except BaseException:
            body_file.close()
            raise
        work = asyncio.ensure_future(serve(scope, body_file, asyncio.get_running_loop()))

        def finished(_):
            # The slot and the body are freed when the thread is done with them, not when this
            # coroutine is cancelled (a client that gave up): a thread still busy keeps its slot.
            slots.release()
            body_file.close()

        work.add_done_callback(finished)
        response = await asyncio.shield(work)
        try:
            await self.send_response(response, send)
        except asyncio.CancelledError:
            pass  # the client went away
        finally:
            if response.streaming:  # the rest was closed in the thread already
                await sync_to_async(response.close, thread_sensitive=False,
                                    executor=self._health_executor if health else self._executor)()

    def _serve(self, scope, body_file, loop=None):
        """The sync part of one request, on one pool thread (its pushes after commit go to
        ``loop``'s sender: core.broadcast)."""
        broadcast.bind_loop(loop)
        try:
            return self._serve_bound(scope, body_file)
        finally:
            broadcast.bind_loop(None)

    def _serve_bound(self, scope, body_file):
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            handler = self._api_handler if bearer_api_request(scope) else self._sync_handler
            response = handler.get_response(request)
        response._handler_class = self.__class__
        if not response.streaming:
            response.content  # render here, in the thread  # noqa: B018
            response.close()  # request_finished: the database connection goes back to the pool
        else:  # closed after it is sent, maybe on another thread: give this thread's connection back now
            close_old_connections()
        return response


def get_asgi_application():
    """django.core.asgi.get_asgi_application with the one-hop handler."""
    import django

    from core.checks import refuse_to_start_on_errors

    django.setup(set_prefix=False)
    refuse_to_start_on_errors("The web process")
    return OneHopASGIHandler()
