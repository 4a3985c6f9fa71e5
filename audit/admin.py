from django.contrib import admin
from django.http import HttpResponseRedirect

from audit.models import AuditEvent
from core.admin import ReadOnlyAdminMixin


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only: the trail is written by services only."""

    list_display = ["created_at", "actor_repr", "action", "object_type", "object_id", "project_id", "seq",
                    "key_id"]
    list_filter = ["action", "object_type"]
    search_fields = ["action", "object_id", "actor_repr", "actor__username", "reason"]  # the name then, or now
    date_hierarchy = "created_at"

    def changelist_view(self, request, extra_context=None):
        try:
            return super().changelist_view(request, extra_context)
        except (OverflowError, ValueError) as exc:  # a date far past any calendar (the date hierarchy lets it
            # through: its year 9999 ends in year 10000, "year 10000 is out of range")
            if isinstance(exc, ValueError) and "out of range" not in str(exc):
                raise
            return HttpResponseRedirect(f"{request.path}?e=1")  # the admin's "bad filter" answer
