"""Admin helpers that know projects (core/admin.py holds the project-agnostic ones)."""
from projects.permissions import project_visible_to


class ProjectScopedAdminMixin:
    """Staff see the rows of the projects they hold a role on, and nothing else.
    ``project_lookup`` names the project of a row ("pk" when the rows are projects)."""

    project_lookup = "project"

    def _project_id_of(self, obj):
        return obj.pk if self.project_lookup == "pk" else getattr(obj, f"{self.project_lookup}_id")

    def get_queryset(self, request):
        return super().get_queryset(request).filter(
            **{f"{self.project_lookup}__in": project_visible_to(user=request.user)})

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff

    def has_view_permission(self, request, obj=None):
        if not (request.user.is_active and request.user.is_staff):
            return False
        return obj is None or project_visible_to(user=request.user).filter(pk=self._project_id_of(obj)).exists()
