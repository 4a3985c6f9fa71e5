from django import forms
from django.contrib import admin
from django.utils.html import format_html_join

from audit.admin import AuditEventAdmin
from audit.models import AuditEvent
from core.admin import ReadOnlyAdminMixin
from core.errors import InvalidInput
from projects import roles
from projects.admin_mixins import ProjectScopedAdminMixin, VisibleProjectListFilter
from projects.permissions import project_visible_to
from projects.services import normalise_hosts, notifier_target_clean, project_notifier_delete, project_notifier_save
from projects.models import AgentState, Project, ProjectNotifier, ProjectUserObjectPermission, Task


class AgentStateInline(admin.TabularInline):
    model = AgentState
    fields = ["agent_type", "status", "current_task", "updated_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


class ProjectNotifierForm(forms.ModelForm):
    """A webhook's secret is never shown again: left blank on a change, it stays as it was;
    "clear secret" removes it (the webhook's requests are then unsigned)."""

    secret = forms.CharField(required=False, max_length=200, strip=False, widget=forms.PasswordInput,
                             help_text="Webhooks: HMAC-SHA256 key for the X-HITL-Signature header "
                                       "(left blank on a change: unchanged)")
    clear_secret = forms.BooleanField(required=False, label="Clear secret",
                                      help_text="Remove the secret: requests are sent unsigned")

    class Meta:
        model = ProjectNotifier
        fields = ["kind", "target", "secret", "clear_secret", "active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kept_secret = self.instance.secret if self.instance.pk else ""
        self.initial["secret"] = ""

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("kind") and "target" in cleaned and (not self.instance.pk or {"kind", "target"} & set(
                self.changed_data)):  # a notifier saved before, left untouched, is not checked again
            try:
                cleaned["target"] = notifier_target_clean(cleaned["kind"], cleaned["target"])
            except InvalidInput as exc:
                for field, messages in exc.extra["fields"].items():
                    self.add_error(field, messages)
        if cleaned.get("clear_secret"):
            if self.data.get(self.add_prefix("secret")):
                self.add_error("clear_secret", "Either type a new secret or clear it, not both.")
            cleaned["secret"] = ""
        else:
            cleaned["secret"] = cleaned.get("secret") or self.kept_secret
        return cleaned

    @property
    def notifier_changes(self) -> list[str]:
        """The notifier's fields this form changes (a cleared secret is a change of ``secret``)."""
        names = [name for name in self.changed_data if name != "clear_secret"]
        if self.cleaned_data.get("clear_secret") and self.kept_secret and "secret" not in names:
            names.append("secret")
        return names


class ProjectNotifierInline(admin.TabularInline):
    """Changes go through projects.services (audited, the secret never written to the trail)."""

    model = ProjectNotifier
    form = ProjectNotifierForm
    fields = ["kind", "target", "secret", "clear_secret", "active"]
    extra = 0


class ProjectForm(forms.ModelForm):
    """The allowed link hosts are checked as the API checks them (a form error, not a 500)."""

    class Meta:
        model = Project
        fields = "__all__"

    def clean_allowed_link_hosts(self):
        try:
            return normalise_hosts(self.cleaned_data.get("allowed_link_hosts") or [])
        except InvalidInput as exc:
            raise forms.ValidationError(exc.extra["fields"]["allowed_link_hosts"]) from None


@admin.register(Project)
class ProjectAdmin(ProjectScopedAdminMixin, admin.ModelAdmin):
    """Status is changed only by the emergency and recovery services, never edited here. Who
    holds which role is shown, not edited: roles change through ``hitl_access`` (whole roles,
    audited), not django-guardian's per-permission page, which wrote no audit row and could grant
    half a role."""

    form = ProjectForm
    list_display = ["slug", "name", "status", "timezone", "created_at"]
    list_filter = ["status"]
    search_fields = ["slug", "name"]
    readonly_fields = ["id", "status", "roles_held", "created_at", "updated_at"]

    @admin.display(description="roles")
    def roles_held(self, obj):
        held: dict[str, set] = {}
        for username, perm in (ProjectUserObjectPermission.objects.filter(content_object=obj)
                               .values_list("user__username", "permission__codename")):
            held.setdefault(username, set()).add(perm)
        named = []
        for username, perms in sorted(held.items()):
            whole = [role for role in ("manager", "reviewer", "agent") if set(roles.ROLES[role]) <= perms]
            if "manager" in whole:
                whole.remove("reviewer")  # a manager reviews too
            named.append((username, " + ".join(whole) or "part of a role"))
        if not named:
            return "Nobody yet: python manage.py hitl_access USERNAME --role ROLE --project SLUG"
        return format_html_join(", ", "{} ({})", named)
    inlines = [AgentStateInline, ProjectNotifierInline]

    project_lookup = "pk"  # staff see the projects they hold a role on; only admins edit them

    def get_readonly_fields(self, request, obj=None):
        # Creation goes through the API or this form's save_model → project_create.
        return self.readonly_fields + (["slug"] if obj else [])

    def has_delete_permission(self, request, obj=None):
        return False  # a project's trail, stops and spending stay: it is never deleted here

    def save_formset(self, request, form, formset, change):
        if formset.model is not ProjectNotifier:
            return super().save_formset(request, form, formset, change)
        # what formset.save() would record, for the admin's own change message
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        for inline_form in formset.forms:
            notifier = inline_form.instance
            if inline_form in formset.deleted_forms:
                if not notifier._state.adding:
                    project_notifier_delete(actor=request.user, notifier=notifier)
                    formset.deleted_objects.append(notifier)
                continue
            if not inline_form.notifier_changes:
                continue
            existed = not notifier._state.adding
            before = {**inline_form.initial, "secret": inline_form.kept_secret} if existed else None
            notifier = inline_form.save(commit=False)
            notifier.project_id = form.instance.pk
            project_notifier_save(actor=request.user, notifier=notifier, before=before,
                                  changed=inline_form.notifier_changes)
            if existed:
                formset.changed_objects.append((notifier, inline_form.notifier_changes))
            else:
                formset.new_objects.append(notifier)

    def save_model(self, request, obj, form, change):
        from projects.services import project_create, project_update

        if change:
            project_update(actor=request.user, project_id=obj.pk, name=obj.name, timezone_name=obj.timezone,
                           allowed_link_hosts=obj.allowed_link_hosts)
        else:
            created = project_create(actor=request.user, name=obj.name, slug=obj.slug, timezone_name=obj.timezone,
                                     allowed_link_hosts=obj.allowed_link_hosts or [])
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

