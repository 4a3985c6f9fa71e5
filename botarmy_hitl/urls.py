from django.contrib import admin
from django.urls import include, path, re_path

from approvals.api import (
    AgentApprovalCancelApi,
    AgentApprovalCreateApi,
    AgentApprovalDetailApi,
    AgentApprovalProjectListApi,
    AgentApprovalRespondApi,
    AgentApprovalStartApi,
    AgentApprovalUsageApi,
    BudgetOverrideRespondApi,
    FlagSuppressionCreateApi,
    FlagSuppressionProjectListApi,
    FlagSuppressionRevokeApi,
    ResponseApprovalCreateApi,
    ResponseApprovalDetailApi,
    ResponseApprovalProjectListApi,
    ResponseApprovalRespondApi,
)
from budgets.api import (
    BudgetApi,
    BudgetOverrideCreateApi,
    BudgetOverrideProjectListApi,
    ProjectDetailWithBudgetApi,
)
from core.views import HealthApi, SchemaApi, SwaggerDocs, api_not_found
from emergency.api import EmergencyStopApi
from events.api import EventListApi
from hitl.api import (
    HitlRequestCancelApi,
    HitlRequestCreateApi,
    HitlRequestDetailApi,
    HitlRequestProjectListApi,
    HitlRequestRespondApi,
)
from projects.api import (
    ProjectListCreateApi,
    TaskCreateApi,
    TaskDetailApi,
    TaskStatusApi,
)
from recovery.api import EmergencyStatusApi, RecoveryDetailApi, RecoveryStartApi, RecoveryStepRespondApi

api_v1 = [
    path("health", HealthApi.as_view(), name="health"),
    path("projects", ProjectListCreateApi.as_view(), name="projects"),
    path("projects/<str:project_id>", ProjectDetailWithBudgetApi.as_view(), name="project-detail"),
    path("tasks", TaskCreateApi.as_view(), name="tasks"),
    path("tasks/<str:task_id>", TaskDetailApi.as_view(), name="task-detail"),
    path("tasks/<str:task_id>/status", TaskStatusApi.as_view(), name="task-status"),
    path("events", EventListApi.as_view(), name="events"),
    path("agent-approvals", AgentApprovalCreateApi.as_view(), name="agent-approvals"),
    path("agent-approvals/project/<str:project_id>", AgentApprovalProjectListApi.as_view(),
         name="agent-approvals-project"),
    path("agent-approvals/<str:approval_id>", AgentApprovalDetailApi.as_view(), name="agent-approval-detail"),
    path("agent-approvals/<str:approval_id>/respond", AgentApprovalRespondApi.as_view(),
         name="agent-approval-respond"),
    path("agent-approvals/<str:approval_id>/cancel", AgentApprovalCancelApi.as_view(), name="agent-approval-cancel"),
    path("agent-approvals/<str:approval_id>/start", AgentApprovalStartApi.as_view(), name="agent-approval-start"),
    path("agent-approvals/<str:approval_id>/usage", AgentApprovalUsageApi.as_view(), name="agent-approval-usage"),
    path("response-approvals", ResponseApprovalCreateApi.as_view(), name="response-approvals"),
    path("response-approvals/project/<str:project_id>", ResponseApprovalProjectListApi.as_view(),
         name="response-approvals-project"),
    path("response-approvals/<str:approval_id>", ResponseApprovalDetailApi.as_view(),
         name="response-approval-detail"),
    path("response-approvals/<str:approval_id>/respond", ResponseApprovalRespondApi.as_view(),
         name="response-approval-respond"),
    path("flag-suppressions", FlagSuppressionCreateApi.as_view(), name="flag-suppressions"),
    path("flag-suppressions/project/<str:project_id>", FlagSuppressionProjectListApi.as_view(),
         name="flag-suppressions-project"),
    path("flag-suppressions/<str:suppression_id>/revoke", FlagSuppressionRevokeApi.as_view(),
         name="flag-suppression-revoke"),
    path("budgets/<str:project_id>", BudgetApi.as_view(), name="budget"),
    path("budget-overrides", BudgetOverrideCreateApi.as_view(), name="budget-overrides"),
    path("budget-overrides/project/<str:project_id>", BudgetOverrideProjectListApi.as_view(),
         name="budget-overrides-project"),
    path("budget-overrides/<str:override_id>/respond", BudgetOverrideRespondApi.as_view(),
         name="budget-override-respond"),
    path("emergency/stop/<str:project_id>", EmergencyStopApi.as_view(), name="emergency-stop"),
    path("emergency/status/<str:project_id>", EmergencyStatusApi.as_view(), name="emergency-status"),
    path("emergency/recovery/<str:project_id>", RecoveryStartApi.as_view(), name="emergency-recovery"),
    path("recovery/<str:session_id>", RecoveryDetailApi.as_view(), name="recovery-detail"),
    path("recovery/<str:session_id>/steps/<str:step_id>/respond", RecoveryStepRespondApi.as_view(),
         name="recovery-step-respond"),
    path("hitl", HitlRequestCreateApi.as_view(), name="hitl"),
    path("hitl/project/<str:project_id>", HitlRequestProjectListApi.as_view(), name="hitl-project"),
    path("hitl/<str:request_id>", HitlRequestDetailApi.as_view(), name="hitl-detail"),
    path("hitl/<str:request_id>/respond", HitlRequestRespondApi.as_view(), name="hitl-respond"),
    path("hitl/<str:request_id>/cancel", HitlRequestCancelApi.as_view(), name="hitl-cancel"),
    # hitl/<id>/wait is a Channels consumer too (approvals/routing.py)
    # agent-approvals/<id>/wait and response-approvals/<id>/wait are Channels consumers: see approvals/routing.py and botarmy_hitl/asgi.py
]

admin.site.site_url = "/review/"  # the admin's "View site": the reviewers' pages
admin.site.enable_nav_sidebar = False  # the queues' columns need the width (at 1280 px they scrolled sideways)
admin.site.empty_value_display = "—"  # as our own columns and the reviewer pages write an empty value

urlpatterns = [
    path("", include("core.urls")),
    path("admin/", admin.site.urls),
    path("review/", include("review.urls")),
    path("api/schema/", SchemaApi.as_view(), name="schema"),
    path("api/docs/", SwaggerDocs.as_view(url_name="schema"), name="docs"),
    path("api/v1/", include(api_v1)),
    re_path(r"^api/", api_not_found),  # unknown API paths: JSON 404, never an HTML page
]

handler400 = "core.views.bad_request"
handler404 = "core.views.not_found"
handler500 = "core.views.server_error"
