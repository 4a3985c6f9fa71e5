"""HTTP routes served by Channels consumers rather than Django views (see consumers.py)."""
from channels.auth import AuthMiddlewareStack
from django.urls import re_path

from approvals.consumers import AgentApprovalWaitConsumer

http_urlpatterns = [
    re_path(r"^api/v1/agent-approvals/(?P<approval_id>[^/]+)/wait/?$",
            AuthMiddlewareStack(AgentApprovalWaitConsumer.as_asgi())),
]
