"""HTTP routes served by Channels consumers rather than Django views (see consumers.py)."""
from channels.auth import AuthMiddlewareStack
from django.urls import re_path

from approvals.consumers import AgentApprovalWaitConsumer


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


http_urlpatterns = [
    re_path(r"^api/v1/agent-approvals/(?P<approval_id>[^/]+)/wait/?$",
            BearerOrSession(AgentApprovalWaitConsumer.as_asgi())),
]
