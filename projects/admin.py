from django.contrib import admin
from guardian.admin import GuardedModelAdmin

from audit.admin import AuditEventAdmin
from audit.models import AuditEvent
from core.admin import ReadOnlyAdminMixin
from projects.admin_mixins import ProjectScopedAdminMixin, VisibleProjectListFilter
from projects.permissions import project_visible_to
from projects.models import AgentState, Project, ProjectNotifier, Task


class AgentStateInline(admin.TabularInline):
    model = AgentState
    fields = ["agent_type", "status", "current_task", "updated_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


class ProjectNotifierInline(admin.TabularInline):
    model = ProjectNotifier
    fields = ["kind", "target", "secret", "active"]
    extra = 0


@admin.register(Project)
class ProjectAdmin(ProjectScopedAdminMixin, GuardedModelAdmin):
    """Status is changed only by the emergency and recovery services, never edited here.
    'Object permissions' (top right of a project) shows and edits who holds which role."""

    list_display = ["slug", "name", "status", "timezone", "created_at"]
    list_filter = ["status"]
    search_fields = ["slug", "name"]
    readonly_fields = ["id", "status", "created_at", "updated_at"]
    inlines = [AgentStateInline, ProjectNotifierInline]

    project_lookup = "pk"  # staff see the projects they hold a role on; only admins edit them

    def get_readonly_fields(self, request, obj=None):
        # Creation goes through the API or this form's save_model → project_create.
        return self.readonly_fields + (["slug"] if obj else [])

    def save_model(self, request, obj, form, change):
        from projects.services import project_create, project_update

        if change:
            project_update(actor=request.user, project_id=obj.pk, name=obj.name, timezone_name=obj.timezone,
                           allowed_link_hosts=obj.allowed_link_hosts)
        else:
            created = project_create(actor=request.user, name=obj.name, slug=obj.slug, timezone_name=obj.timezone)
            obj.pk = created.pk
            obj._state.adding = False


@admin.register(Task)
class TaskAdmin(ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["title", "project", "agent_type", "status", "open_questions", "created_at", "finished_at"]
    list_filter = ["status", "agent_type", ("project", VisibleProjectListFilter)]
    search_fields = ["title", "id"]


admin.site.unregister(AuditEvent)


@admin.register(AuditEvent)
class ProjectAuditEventAdmin(ProjectScopedAdminMixin, AuditEventAdmin):
    """The audit trail (audit.admin) limited, by this layer, to the projects the user holds a role
    on; the rows of no project (users, keys, roles) are for admins only."""

    def get_queryset(self, request):
        rows = AuditEventAdmin.get_queryset(self, request)
        if request.user.is_superuser:
            return rows
        return rows.filter(project_id__in=project_visible_to(user=request.user).values("pk"))

    def _project_id_of(self, obj):
        return obj.project_id

    def has_view_permission(self, request, obj=None):
        if request.user.is_active and request.user.is_superuser:
            return True
        return obj is None or obj.project_id is not None and super().has_view_permission(request, obj)

