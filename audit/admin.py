from django.contrib import admin

from audit.models import AuditEvent
from core.admin import ReadOnlyAdminMixin


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only: the trail is written by services only."""

    list_display = ["created_at", "actor_repr", "action", "object_type", "object_id", "project_id", "seq",
                    "key_id"]
    list_filter = ["action", "object_type"]
    search_fields = ["action", "object_id", "actor_repr", "reason"]
    date_hierarchy = "created_at"

