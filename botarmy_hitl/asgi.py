"""ASGI entry point: HTTP goes to Django (long polls to Channels consumers), the /ws/events/
websocket to its consumer.

Served by `daphne botarmy_hitl.asgi:application`.
"""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botarmy_hitl.settings")

from core.asgi import get_asgi_application  # noqa: E402

# Set up Django before importing consumers. One thread hop per request (see core/asgi.py).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from approvals.routing import http_urlpatterns, websocket_application  # noqa: E402
from core.middleware import ApiErrorGuard  # noqa: E402


class HttpRoutes:
    """HTTP: a path a consumer may serve (one ending in ``/wait``, the events feed) goes through
    Channels' URLRouter, which sends what it does not match on to Django; every other path goes
    straight to Django, without the router's pattern list and scope copy."""

    def __init__(self, router, django_app):
        self.router, self.django_app = router, django_app

    async def __call__(self, scope, receive, send):
        path = scope["path"]
        if path.endswith("/wait") or path == "/api/v1/events":
            return await self.router(scope, receive, send)
        return await self.django_app(scope, receive, send)


# ApiErrorGuard: a request Django cannot even build, or an exception escaping before an API answer,
# still gets API.md's JSON error (400, 500, or 503 for a transient database error).
application = ApiErrorGuard(ProtocolTypeRouter(
    {
        # Long polls and the events feed are Channels consumers (no request thread held); the rest is Django.
        "http": HttpRoutes(URLRouter([*http_urlpatterns(django_asgi_app), re_path(r"", django_asgi_app)]),
                           django_asgi_app),
        # /ws/events/ (approvals/event_stream.py): API key or session; a browser's Origin must be allowed.
        "websocket": websocket_application(),
    }
))
