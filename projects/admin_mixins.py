"""Admin helpers that know projects (core/admin.py holds the project-agnostic ones)."""
from django.contrib import admin, messages
from django.contrib.admin import helpers

from core.admin import SelectedIdsMixin
from core.text import plural
from projects import roles
from projects.permissions import has_project_perm, project_visible_to


class ProjectScopedAdminMixin(SelectedIdsMixin):
    """Staff see the rows of the projects they hold a role on, and nothing else.
    ``project_lookup`` names the project of a row ("pk" when the rows are projects).

    It only widens *viewing* (Django's model permissions are not used: roles are per project);
    whether a row may be changed is left to the admin class (ReadOnlyAdminMixin, or
    ProjectManagerEditsMixin below)."""

    project_lookup = "project"

    def _project_id_of(self, obj):
        return obj.pk if self.project_lookup == "pk" else getattr(obj, f"{self.project_lookup}_id")

    def get_queryset(self, request):
        return super().get_queryset(request).filter(
            **{f"{self.project_lookup}__in": project_visible_to(user=request.user)})

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff

    def response_action(self, request, queryset):
        """Django's bulk actions drop selected rows the user may not see without a word (ids
        edited by hand, or a role lost since the list was loaded): say how many were left out."""
        selected = set(request.POST.getlist(helpers.ACTION_CHECKBOX_NAME))
        ids = {value for value in selected if self.an_id(value)}  # the others are left out (SelectedIdsMixin)
        hidden = 0
        if selected and request.POST.get("select_across") != "1":
            hidden = len(selected) - (self.get_queryset(request).filter(pk__in=ids).count() if ids else 0)
            # The rows ticked, whatever the list's filters say now: Django acts on the filtered list,
            # so a call approved by someone else since a "pending" list was loaded was left out
            # without a word; the action now reports it ("already approved") as it does unfiltered.
            queryset = self.get_queryset(request)
        response = super().response_action(request, queryset)
        # also on an action's confirmation page (a reason asked for), which lists the visible ones only
        if hidden > 0 and (response is None or response.status_code in (200, 301, 302, 303)):
            self.message_user(request, f"{plural(hidden, 'selected item')} {'is' if hidden == 1 else 'are'} not "
                                       f"visible to you and {'was' if hidden == 1 else 'were'} not changed.",
                              messages.WARNING)
        return response

    def has_view_permission(self, request, obj=None):
        if not (request.user.is_active and request.user.is_staff):
            return False
        return obj is None or project_visible_to(user=request.user).filter(pk=self._project_id_of(obj)).exists()


class ProjectManagerEditsMixin(ProjectScopedAdminMixin):
    """Rows of a project that its managers (``manage_project``) and admins may add and change;
    everyone else with a role on the project only sees them. Deleting is left to no one here.
    Saving is up to the admin class (through a service, audited)."""

    def manages(self, request, project_id) -> bool:
        return request.user.is_active and request.user.is_staff and has_project_perm(
            request.user, roles.MANAGE, project_id)

    def managed_projects(self, request):
        if not (request.user.is_active and request.user.is_staff):
            return project_visible_to(user=request.user).none()
        visible = project_visible_to(user=request.user)
        if request.user.is_superuser:
            return visible
        return visible.filter(pk__in=[p for p in visible.values_list("pk", flat=True)
                                      if has_project_perm(request.user, roles.MANAGE, p)])

    def has_add_permission(self, request, obj=None):
        return self.managed_projects(request).exists()

    def has_change_permission(self, request, obj=None):
        if obj is None:  # the list: editable if the user manages any project
            return self.has_add_permission(request)
        return self.manages(request, self._project_id_of(obj))

    def has_delete_permission(self, request, obj=None):
        return False

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == self.project_lookup:
            kwargs["queryset"] = self.managed_projects(request)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class VisibleProjectListFilter(admin.RelatedFieldListFilter):
    """The "by project" list filter offering only the projects the user can see (Django's own
    lists every project, naming projects an outsider must not know of)."""

    def field_choices(self, field, request, model_admin):
        return [(p.pk, str(p)) for p in project_visible_to(user=request.user)]

    def has_output(self):
        """Also with one project to choose from when the URL names one: Django hides a filter of
        one choice and drops its parameter unapplied, so a list asked for another project's rows
        listed all of the user's own (and "select all" then acted on them); applied, it lists none."""
        return super().has_output() or bool(self.used_parameters)
