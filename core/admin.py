from django.contrib import admin

from core.models import Heartbeat


@admin.register(Heartbeat)
class HeartbeatAdmin(admin.ModelAdmin):
    list_display = ["name", "last_seen"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class ReadOnlyAdminMixin:
    """For rows only services write (audit trail, outbox, tasks, approvals): the admin lists
    and shows them, and never adds, edits or deletes one."""

    def get_readonly_fields(self, request, obj=None):
        return list(super().get_readonly_fields(request, obj)) or [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
