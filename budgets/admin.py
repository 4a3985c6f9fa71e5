from django.contrib import admin, messages

from access.permissions import project_visible_to
from core.admin import ReadOnlyAdminMixin, ask_reason, changed_values
from core.errors import DomainError
from budgets.models import BudgetAlert, BudgetOverrideRequest, BudgetWindow, ProjectBudget, UsageEntry
from budgets.services import budget_override_respond


class VisibleToStaffMixin:
    def get_queryset(self, request):
        return super().get_queryset(request).filter(project__in=project_visible_to(user=request.user))

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_staff and (
            obj is None or project_visible_to(user=request.user).filter(pk=obj.project_id).exists())


@admin.register(ProjectBudget)
class ProjectBudgetAdmin(admin.ModelAdmin):
    """Limits (admins here; managers through PATCH /api/v1/budgets/{project_id}). Audited."""

    list_display = ["project", "daily_token_limit", "monthly_token_limit", "daily_cost_limit", "monthly_cost_limit",
                    "manager_threshold"]

    def save_model(self, request, obj, form, change):
        from audit.services import audit_record

        super().save_model(request, obj, form, change)
        audit_record(actor=request.user, action="budget.update", obj=obj, project_id=obj.project_id,
                     after=changed_values(form))


@admin.register(BudgetWindow)
class BudgetWindowAdmin(VisibleToStaffMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["project", "kind", "start", "end", "spent_tokens", "spent_cost", "reserved_tokens",
                    "reserved_cost", "allowance_cost", "closed_at"]
    list_filter = ["kind", "project"]


@admin.register(UsageEntry)
class UsageEntryAdmin(VisibleToStaffMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """The append-only ledger every window total comes from (`manage.py reconcile_budgets`)."""

    list_display = ["created_at", "project", "approval", "kind", "reserved_tokens", "reserved_cost", "spent_tokens",
                    "spent_cost"]
    list_filter = ["kind", "project"]


@admin.register(BudgetAlert)
class BudgetAlertAdmin(VisibleToStaffMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["triggered_at", "project", "alert_type", "threshold_type", "threshold_value", "current_value"]
    list_filter = ["alert_type", "threshold_type"]


@admin.register(BudgetOverrideRequest)
class BudgetOverrideAdmin(VisibleToStaffMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
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
