from django.contrib import admin, messages

from core.admin import ReadOnlyAdminMixin, ask_reason, changed_values
from emergency.models import Condition, EmergencySettings, EmergencyStop
from emergency.services import emergency_settings_save, emergency_stop_trigger
from projects import roles
from projects.admin import ProjectAdmin
from projects.admin_mixins import ProjectScopedAdminMixin
from projects.models import Project
from projects.permissions import has_project_perm


@admin.register(EmergencyStop)
class EmergencyStopAdmin(ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Stops are made by the trigger service (API, the projects' "Emergency stop" action,
    or a tripped condition) and lifted only by the last step of a recovery."""

    list_display = ["project", "conditions", "severity", "triggered_by", "created_at", "resolved_at"]
    list_filter = ["severity", ("resolved_at", admin.EmptyFieldListFilter)]

    @admin.display(description="conditions")
    def conditions(self, obj):
        return ", ".join(obj.triggered_conditions)


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


admin.site.unregister(Project)


@admin.register(Project)
class ProjectWithStopAdmin(ProjectAdmin):
    """The projects admin (projects.admin) plus the emergency stop action, added by this layer."""

    actions = [*(ProjectAdmin.actions or []), "emergency_stop"]

    @admin.action(description="Emergency stop selected projects (asks for a reason)")
    def emergency_stop(self, request, queryset):
        reason, form = ask_reason(self, request, queryset, action="emergency_stop", title="Emergency stop",
                                  question="Stop these projects now? Their tasks are halted, their pending calls "
                                           "cancelled, and no agent call is admitted until a recovery lifts the stop.",
                                  submit_label="Stop now")
        if form is not None:
            return form
        for project in queryset:
            if not has_project_perm(request.user, roles.REVIEW, project):
                self.message_user(request, f"{project}: you may not stop this project.", messages.ERROR)
                continue
            stop, created = emergency_stop_trigger(project_id=project.pk, condition=Condition.MANUAL_STOP, reason=reason,
                                                   actor=request.user)
            self.message_user(request, f"{project}: {'stopped' if created else 'already stopped; reason added'} "
                              f"({len(stop.stopped_tasks)} tasks halted, {len(stop.cancelled_approvals)} calls "
                              f"cancelled).", messages.SUCCESS)
        return None
