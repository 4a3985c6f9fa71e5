"""The inbox and the decision pages (namespace ``review``)."""
from django.urls import path

from review import auth, views

urlpatterns = [
    path("", views.inbox, name="inbox"),
    path("inbox/items", views.inbox_items, name="inbox_items"),
    path("stop-banners", views.stop_banners, name="stop_banners"),
    path("session", auth.session_probe, name="session"),
    path("budget-overrides/<uuid:override_id>/decide", views.override_decide, name="override_decide"),
    path("agent-approvals/<uuid:approval_id>", views.agent_approval, name="agent_approval"),
    path("agent-approvals/<uuid:approval_id>/panel", views.agent_approval_panel, name="agent_approval_panel"),
    path("agent-approvals/<uuid:approval_id>/decide", views.agent_approval_decide_view,
         name="agent_approval_decide"),
    path("response-approvals/<uuid:approval_id>", views.response_approval, name="response_approval"),
    path("hitl/<uuid:request_id>", views.hitl_request, name="hitl_request"),
    path("hitl/<uuid:request_id>/decide", views.hitl_request_decide, name="hitl_request_decide"),
    path("response-approvals/<uuid:approval_id>/panel", views.response_approval_panel,
         name="response_approval_panel"),
    path("response-approvals/<uuid:approval_id>/decide", views.response_approval_decide_view,
         name="response_approval_decide"),
]
