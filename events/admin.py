from django.contrib import admin

from core.admin import ReadOnlyAdminMixin
from events.models import Event


@admin.register(Event)
class EventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "event_type", "project", "task", "created_at"]
    list_filter = ["event_type", "project"]

