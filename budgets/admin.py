from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect

from budgets.models import (
    BudgetAlert,
    BudgetOverrideRequest,
    BudgetWindow,
    ProjectBudget,
    UsageEntry,
)
from budgets.services import budget_limits_update
from core.admin import LoadedVersionForm, ReadOnlyAdminMixin, changed_values
from core.errors import DomainError
from projects.admin_mixins import ProjectManagerEditsMixin, ProjectScopedAdminMixin, VisibleProjectListFilter


class ProjectBudgetForm(LoadedVersionForm, forms.ModelForm):
    """The limits, with the version of the row the page was loaded from (LoadedVersionForm): a stale
    page saved put another manager's limit change back."""

    class Meta:
        model = ProjectBudget
        fields = ["project", "daily_token_limit", "monthly_token_limit", "daily_cost_limit", "monthly_cost_limit",
                  "warning_percent", "critical_percent", "emergency_percent"]

    def clean(self):
        # The rule budgets.services.budget_limits_update enforces, shown next to the fields
        # (the service checks it again; the field ranges come from the model's validators).
        cleaned = super().clean()
        for unit in ("token", "cost"):
            daily, monthly = cleaned.get(f"daily_{unit}_limit"), cleaned.get(f"monthly_{unit}_limit")
            if daily and monthly and daily > monthly:
                self.add_error(f"daily_{unit}_limit", f"The daily {unit} limit ({daily}) is above the monthly one "
                                                      f"({monthly}): one day could never use it.")
        percents = [cleaned.get(name) for name in ("warning_percent", "critical_percent", "emergency_percent")]
        if None not in percents and not percents[0] < percents[1] < percents[2]:
            raise forms.ValidationError(
                f"Alert percentages must increase: warning ({percents[0]}) < critical ({percents[1]}) < "
                f"emergency ({percents[2]}).")
        return cleaned


@admin.register(ProjectBudget)
class ProjectBudgetAdmin(ProjectManagerEditsMixin, admin.ModelAdmin):
    """Limits and alert percentages, set by the project's managers (and admins) here or through
    PATCH /api/v1/budgets/{project_id}; reviewers see them. Saved through
    budgets.services.budget_limits_update (validated, audited)."""

    form = ProjectBudgetForm
    list_display = ["project", "daily_token_limit", "monthly_token_limit", "daily_cost_limit", "monthly_cost_limit",
                    "warning_percent", "critical_percent", "emergency_percent"]
    list_filter = [("project", VisibleProjectListFilter)]

    def get_readonly_fields(self, request, obj=None):
        return ["project"] if obj is not None else []

    def save_model(self, request, obj, form, change):
        if not self.manages(request, obj.project_id):
            raise PermissionDenied
        values = {k: v for k, v in changed_values(form).items() if k != "project"}
        try:
            budget = budget_limits_update(project=obj.project, actor=request.user, values=values)
        except DomainError as err:  # refused after the form's own checks (a concurrent change)
            obj._refused = err
            fields = "; ".join(f"{name}: {' '.join(map(str, errors))}"
                               for name, errors in (err.extra.get("fields") or {}).items())
            self.message_user(request, f"Not saved: {err.detail} {fields}".strip(), messages.ERROR)
            return
        obj.pk = budget.pk
        obj._state.adding = False

    def log_addition(self, request, obj, message):
        if not getattr(obj, "_refused", None):
            return super().log_addition(request, obj, message)
        return None

    def log_change(self, request, obj, message):
        if not getattr(obj, "_refused", None):
            return super().log_change(request, obj, message)
        return None

    def response_add(self, request, obj, post_url_continue=None):
        if getattr(obj, "_refused", None):
            return HttpResponseRedirect(request.get_full_path())
        return super().response_add(request, obj, post_url_continue)

    def response_change(self, request, obj):
        if getattr(obj, "_refused", None):
            return HttpResponseRedirect(request.get_full_path())
        return super().response_change(request, obj)


@admin.register(BudgetWindow)
class BudgetWindowAdmin(ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["project", "kind", "start", "end", "spent_tokens", "spent_cost", "reserved_tokens",
                    "reserved_cost", "allowance_cost", "closed_at"]
    list_filter = ["kind", ("project", VisibleProjectListFilter)]


@admin.register(UsageEntry)
class UsageEntryAdmin(ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """The append-only ledger every window total comes from (`manage.py reconcile_budgets`)."""

    list_display = ["created_at", "project", "approval", "kind", "reserved_tokens", "reserved_cost", "spent_tokens",
                    "spent_cost"]
    list_filter = ["kind", ("project", VisibleProjectListFilter)]


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["triggered_at", "project", "alert_type", "threshold_type", "threshold_value", "current_value"]
    list_filter = ["alert_type", "threshold_type"]


@admin.register(BudgetOverrideRequest)
class BudgetOverrideAdmin(ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["created_at", "project", "violation_type", "amount", "requires_manager_approval",
                    "status", "requested_by", "approved_by"]
    list_select_related = ["project", "window", "requested_by", "approved_by"]
    list_filter = ["status", "violation_type"]

    @admin.display(description="requested amount", ordering="requested_amount")
    def amount(self, obj):
        return obj.amount_text  # tokens for a token limit, money for a cost limit
