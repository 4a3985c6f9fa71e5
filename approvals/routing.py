"""HTTP routes served by Channels consumers rather than Django views (see consumers.py), and the
websocket routes (event_stream.py)."""
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import re_path

from approvals.consumers import (
    AgentApprovalWaitConsumer,
    EventFeedConsumer,
    HitlRequestWaitConsumer,
    ResponseApprovalWaitConsumer,
)
from approvals.event_stream import EventStreamConsumer


class BearerOrSession:
    """Agents sending ``Authorization: Bearer`` go straight to the consumer, which checks their key
    (no session lookup, no extra trip to a database thread); browsers go through Channels' session
    stack."""

    def __init__(self, app):
        self.app = app
        self.with_session = AuthMiddlewareStack(app)

    async def __call__(self, scope, receive, send):
        for name, value in scope.get("headers") or ():
            if name.lower() == b"authorization" and value[:7].lower() == b"bearer ":
                return await self.app(scope, receive, send)
        return await self.with_session(scope, receive, send)


class GetOr:
    """GET (and HEAD) to an async consumer, every other method to ``fallback`` (Django's view, which
    answers them as before: 405, OPTIONS...)."""

    def __init__(self, app, fallback):
        self.app, self.fallback = app, fallback

    async def __call__(self, scope, receive, send):
        if scope.get("method") in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        return await self.fallback(scope, receive, send)


def http_urlpatterns(django_app) -> list:
    """Routes served by consumers, in front of ``django_app`` (which serves the rest)."""
    return [
        re_path(r"^api/v1/agent-approvals/(?P<approval_id>[^/]+)/wait$",
                BearerOrSession(AgentApprovalWaitConsumer.as_asgi())),
        re_path(r"^api/v1/response-approvals/(?P<approval_id>[^/]+)/wait$",
                BearerOrSession(ResponseApprovalWaitConsumer.as_asgi())),
        re_path(r"^api/v1/hitl/(?P<approval_id>[^/]+)/wait$", BearerOrSession(HitlRequestWaitConsumer.as_asgi())),
        re_path(r"^api/v1/events$", GetOr(BearerOrSession(EventFeedConsumer.as_asgi()), django_app)),
    ]


class BrowserOriginOnly:
    """Websockets: a browser always sends ``Origin``, which must be one of ALLOWED_HOSTS (no
    cross-site page can use a reviewer's session cookie); agents and other programs send none
    and authenticate with their API key."""

    def __init__(self, app):
        self.app = app
        self.validated = AllowedHostsOriginValidator(app)

    async def __call__(self, scope, receive, send):
        if any(name.lower() == b"origin" for name, _ in scope.get("headers") or ()):
            return await self.validated(scope, receive, send)
        return await self.app(scope, receive, send)


async def no_such_socket(scope, receive, send):
    """A websocket handshake on a path with no socket (``/api/v1/projects``, a wrong base URL's
    ``/foo/ws/events/``): refused before it is accepted (the server answers HTTP 403), never the
    500 of Channels' "No route found for path"."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 4404})


def websocket_application():
    return BrowserOriginOnly(BearerOrSession(URLRouter([
        re_path(r"^ws/events/?$", EventStreamConsumer.as_asgi()),
        re_path(r"", no_such_socket),
    ])))
