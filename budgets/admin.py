from django.contrib import admin

from budgets.models import (
    BudgetAlert,
    BudgetOverrideRequest,
    BudgetWindow,
    ProjectBudget,
    UsageEntry,
)
from budgets.services import budget_limits_update
from core.admin import ReadOnlyAdminMixin, changed_values
from projects.admin_mixins import ProjectScopedAdminMixin


@admin.register(ProjectBudget)
class ProjectBudgetAdmin(admin.ModelAdmin):
    """Limits (admins here; managers through PATCH /api/v1/budgets/{project_id}). Audited."""

    list_display = ["project", "daily_token_limit", "monthly_token_limit", "daily_cost_limit", "monthly_cost_limit",
                    "warning_percent", "critical_percent", "emergency_percent"]

    def save_model(self, request, obj, form, change):
        values = {k: v for k, v in changed_values(form).items() if k != "project"}
        budget_limits_update(project=obj.project, actor=request.user, values=values)


@admin.register(BudgetWindow)
class BudgetWindowAdmin(ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["project", "kind", "start", "end", "spent_tokens", "spent_cost", "reserved_tokens",
                    "reserved_cost", "allowance_cost", "closed_at"]
    list_filter = ["kind", "project"]


@admin.register(UsageEntry)
class UsageEntryAdmin(ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """The append-only ledger every window total comes from (`manage.py reconcile_budgets`)."""

    list_display = ["created_at", "project", "approval", "kind", "reserved_tokens", "reserved_cost", "spent_tokens",
                    "spent_cost"]
    list_filter = ["kind", "project"]


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["triggered_at", "project", "alert_type", "threshold_type", "threshold_value", "current_value"]
    list_filter = ["alert_type", "threshold_type"]


@admin.register(BudgetOverrideRequest)
class BudgetOverrideAdmin(ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["created_at", "project", "violation_type", "requested_amount", "requires_manager_approval",
                    "status", "requested_by", "approved_by"]
    list_filter = ["status", "violation_type"]
