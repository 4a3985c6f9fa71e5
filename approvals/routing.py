"""HTTP routes served by Channels consumers rather than Django views (see consumers.py), and the
websocket routes (event_stream.py)."""
from urllib.parse import urlsplit

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import validate_host
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
    """Websockets: a browser always sends ``Origin``, which must be this server's own origin (the
    handshake's ``Host``, port included, one of ALLOWED_HOSTS) or one of CSRF_TRUSTED_ORIGINS: no page
    of another site, nor of another port of this host (a browser sends the reviewer's session cookie
    to every port), can use a reviewer's session. Channels' AllowedHostsOriginValidator compared the
    host alone. Agents and other programs send no ``Origin`` and authenticate with their API key."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        headers = {name.lower(): value for name, value in scope.get("headers") or ()}
        origin = headers.get(b"origin")
        if origin is None or origin_allowed(origin.decode("latin-1"), headers.get(b"host", b"").decode("latin-1")):
            return await self.app(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)


def _host_and_port(url: str, scheme: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    return (parts.hostname or "").rstrip("."), parts.port or {"http": 80, "https": 443}.get(scheme)


def origin_allowed(origin: str, host_header: str) -> bool:
    """Whether a browser page of ``origin`` may open a websocket to this server (reached as
    ``host_header``): the same host and port, the host one of ALLOWED_HOSTS; or a trusted origin."""
    scheme = origin.partition("://")[0].lower()
    try:
        seen = _host_and_port(origin, scheme)
        own = _host_and_port(f"//{host_header}", scheme)     # no port in Host: the scheme's own
    except ValueError:   # a port that is not a number
        return False
    listed = f"[{own[0]}]" if ":" in own[0] else own[0]     # ALLOWED_HOSTS writes IPv6 in brackets
    if scheme in ("http", "https") and seen[0] and seen == own and validate_host(listed, settings.ALLOWED_HOSTS):
        return True
    for trusted in settings.CSRF_TRUSTED_ORIGINS:   # as Django's CSRF check reads them
        if origin == trusted:
            return True
        trusted_scheme, _, pattern = trusted.partition("://")
        netloc = origin.partition("://")[2]
        if pattern.startswith("*.") and scheme == trusted_scheme and (netloc == pattern[2:]
                                                                       or netloc.endswith(pattern[1:])):
            return True
    return False


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
