from django.contrib import admin

from core.admin import ReadOnlyAdminMixin
from events.models import Event
from projects.admin_mixins import ProjectScopedAdminMixin, VisibleProjectListFilter


@admin.register(Event)
class EventAdmin(ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """The outbox of the projects the user holds a role on."""

    list_display = ["id", "event_type", "project", "task", "created_at"]
    list_select_related = ["project", "task"]  # the task is optional: Django would read each row's alone
    list_filter = ["event_type", ("project", VisibleProjectListFilter)]
