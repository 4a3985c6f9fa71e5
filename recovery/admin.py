from django.contrib import admin, messages

from core.admin import ReadOnlyAdminMixin, ask_reason
from projects.admin_mixins import ProjectScopedAdminMixin
from core.errors import DomainError
from emergency.admin import EmergencyStopAdmin
from emergency.models import EmergencyStop
from recovery.models import RecoverySession, RecoveryStep
from recovery.services import recovery_start, recovery_step_respond


class RecoveryStepInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = RecoveryStep
    fields = ["order", "action", "description", "status", "approved_by", "reason", "result", "finished_at"]
    readonly_fields = fields
    extra = 0


@admin.register(RecoverySession)
class RecoverySessionAdmin(ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Sessions are opened by managers (API, or "Start a recovery session" on a stop); each
    step is approved or rejected here or through the API, always by the step service."""

    list_display = ["project", "status", "steps_completed", "total_steps", "recovery_type", "created_by",
                    "created_at", "completed_at"]
    list_filter = ["status"]
    inlines = [RecoveryStepInline]
    actions = ["approve_next_step", "reject_next_step"]

    def _respond_next(self, request, queryset, decision: str, reason: str = ""):
        for session in queryset:
            step = session.steps.filter(status=RecoveryStep.Status.PENDING).order_by("order").first()
            if step is None:
                self.message_user(request, f"{session}: no step is waiting.", messages.WARNING)
                continue
            try:
                session = recovery_step_respond(session_id=session.pk, step_id=step.pk, actor=request.user,
                                                decision=decision, reason=reason)
            except DomainError as err:
                self.message_user(request, f"{session}: step {step.order} ({step.action}): {err.detail}",
                                  messages.WARNING)
                continue
            step.refresh_from_db()
            self.message_user(request, f"{session.project}: step {step.order} ({step.action}) {step.status}; "
                              f"recovery {session.status}.", messages.SUCCESS)

    @admin.action(description="Approve and run the next step")
    def approve_next_step(self, request, queryset):
        self._respond_next(request, queryset, "approve")

    @admin.action(description="Reject the next step (asks for a reason)")
    def reject_next_step(self, request, queryset):
        reason, form = ask_reason(self, request, queryset, action="reject_next_step", title="Reject recovery steps",
                                  question="Reject the next step of these recoveries? The recovery fails and the "
                                           "emergency stop stays.", submit_label="Reject")
        if form is not None:
            return form
        self._respond_next(request, queryset, "reject", reason)
        return None


admin.site.unregister(EmergencyStop)


@admin.register(EmergencyStop)
class EmergencyStopWithRecoveryAdmin(EmergencyStopAdmin):
    """The stops admin (emergency.admin) plus starting a recovery, added by this layer."""

    actions = [*(EmergencyStopAdmin.actions or []), "start_recovery"]

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
