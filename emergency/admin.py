from django.contrib import admin, messages

from access import roles
from access.permissions import has_project_perm, project_visible_to
from audit.services import audit_record
from core.admin import ReadOnlyAdminMixin, changed_values
from core.errors import DomainError
from emergency.models import EmergencySettings, EmergencyStop
from recovery.services import recovery_start


@admin.register(EmergencyStop)
class EmergencyStopAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Stops are made by the trigger service (API, the projects' "Emergency stop" action,
    or a tripped condition) and lifted only by the last step of a recovery."""

    list_display = ["project", "conditions", "severity", "triggered_by", "created_at", "resolved_at"]
    list_filter = ["severity", ("resolved_at", admin.EmptyFieldListFilter)]
    actions = ["start_recovery"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(project__in=project_visible_to(user=request.user))

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff

    def has_view_permission(self, request, obj=None):
        if not (request.user.is_active and request.user.is_staff):
            return False
        return obj is None or has_project_perm(request.user, roles.VIEW, obj.project)

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
        before = changed_values(form, initial=True) if change else None
        super().save_model(request, obj, form, change)
        audit_record(actor=request.user, action="emergency_settings.update", obj=obj, project_id=obj.project_id,
                     before=before, after=changed_values(form))
