from django.contrib import admin, messages

from budgets.models import (
    BudgetAlert,
    BudgetOverrideRequest,
    BudgetWindow,
    ProjectBudget,
    UsageEntry,
)
from budgets.services import budget_limits_update, budget_override_respond
from core.admin import (
    ProjectScopedAdminMixin,
    ReadOnlyAdminMixin,
    ask_reason,
    changed_values,
)
from core.errors import DomainError


@admin.register(ProjectBudget)
class ProjectBudgetAdmin(admin.ModelAdmin):
    """Limits (admins here; managers through PATCH /api/v1/budgets/{project_id}). Audited."""

    list_display = ["project", "daily_token_limit", "monthly_token_limit", "daily_cost_limit", "monthly_cost_limit",
                    "manager_threshold"]

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
    list_filter = ["status", "violation_type", "requires_manager_approval"]
    actions = ["approve_selected", "reject_selected"]

    def _respond(self, request, queryset, decision, reason=""):
        for override in queryset:
            try:
                budget_override_respond(override_id=override.pk, actor=request.user, decision=decision, reason=reason)
            except DomainError as err:
                self.message_user(request, f"{override.pk}: {err.detail}", messages.WARNING)
                continue
            self.message_user(request, f"{override.pk}: {'approved' if decision == 'approve' else 'rejected'}.",
                              messages.SUCCESS)

    @admin.action(description="Approve selected overrides")
    def approve_selected(self, request, queryset):
        self._respond(request, queryset, "approve")

    @admin.action(description="Reject selected overrides (asks for a reason)")
    def reject_selected(self, request, queryset):
        reason, form = ask_reason(self, request, queryset, action="reject_selected", title="Reject budget overrides",
                                  question="Reject these overrides? Calls blocked behind them are rejected too.",
                                  submit_label="Reject")
        if form is not None:
            return form
        self._respond(request, queryset, "reject", reason)
        return None
