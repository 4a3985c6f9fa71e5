from django.contrib import admin, messages

from core.admin import ProjectScopedAdminMixin, ReadOnlyAdminMixin, changed_values
from core.errors import DomainError
from emergency.models import EmergencySettings, EmergencyStop
from emergency.services import emergency_settings_save
from recovery.services import recovery_start


@admin.register(EmergencyStop)
class EmergencyStopAdmin(ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Stops are made by the trigger service (API, the projects' "Emergency stop" action,
    or a tripped condition) and lifted only by the last step of a recovery."""

    list_display = ["project", "conditions", "severity", "triggered_by", "created_at", "resolved_at"]
    list_filter = ["severity", ("resolved_at", admin.EmptyFieldListFilter)]
    actions = ["start_recovery"]

    @admin.display(description="conditions")
    def conditions(self, obj):
        return ", ".join(obj.triggered_conditions)

    @admin.action(description="Start a recovery session (managers)")
    def start_recovery(self, request, queryset):
        for stop in queryset:
            try:
                session = recovery_start(project_id=stop.project_id, actor=request.user, recovery_type="manual")
            except DomainError as err:
                self.message_user(request, f"{stop.project}: {err.detail}", messages.WARNING)
                continue
            self.message_user(request, f"{stop.project}: recovery {session.pk} started with {session.total_steps} "
                              f"steps.", messages.SUCCESS)


@admin.register(EmergencySettings)
class EmergencySettingsAdmin(admin.ModelAdmin):
    """Thresholds of the automatic conditions, per project. Changes are audited."""

    list_display = ["project", "error_rate_threshold", "error_window_count", "error_window_seconds",
                    "max_pending_approvals", "stop_on_critical_risk"]
    readonly_fields = ["error_window_reset_at"]

    def save_model(self, request, obj, form, change):
        emergency_settings_save(settings_row=obj, actor=request.user,
                                before=changed_values(form, initial=True) if change else None,
                                after=changed_values(form))
