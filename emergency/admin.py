"""Emergency stops in the Django admin. The stop itself is an action of the projects list,
added by this layer: it asks for a reason and a severity on a confirmation page that says what
will happen to each selected project, then stops each one the user may stop (reviewers and
managers of it) through emergency.services.emergency_stop_trigger, the call the API makes."""
from typing import Protocol

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.validators import MinValueValidator
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from core.admin import LoadedVersionForm, ReadOnlyAdminMixin, changed_values
from core.errors import DomainError, InvalidInput
from core.hooks import Hook
from core.text import first_shown, plural  # noqa: F401  (recovery.admin takes plural from here)
from emergency.models import (SEVERITY_MEANINGS, Condition, EmergencySettings, EmergencyStop, Severity, actor_words,
                              condition_words)
from emergency.services import emergency_settings_save, emergency_stop_trigger
from projects import roles
from projects.admin import ProjectAdmin
from projects.admin_mixins import ProjectManagerEditsMixin, ProjectScopedAdminMixin
from projects.models import Project, Task
from projects.permissions import has_project_perm, project_perms

SEVERITY_HELP = SEVERITY_MEANINGS


class StopPreview(Protocol):
    def __call__(self, *, project: Project) -> list[str]:
        """What stopping ``project`` will do to one domain's open work, counted now, as short
        sentences ("3 agent calls will be cancelled"). Read-only."""


# The domains above this one (calls, responses, requests) say what the stop will cancel of
# theirs; connected where those layers extend this admin (recovery/admin.py).
stop_preview: Hook[StopPreview] = Hook("emergency.admin.stop_preview")


@admin.register(EmergencyStop)
class EmergencyStopAdmin(ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Stops are made by the trigger service (API, the projects' "Emergency stop" action,
    or a tripped condition) and lifted only by the last step of a recovery."""

    list_display = ["project", "conditions", "severity", "stop_reason", "by", "created_at", "resolved_at"]
    list_filter = ["severity", ("resolved_at", admin.EmptyFieldListFilter)]
    # people and triggers as the reviewer pages say them, not "rita#2" and a JSON list
    fields = readonly_fields = ["project", "conditions", "severity", "stop_reason", "by", "triggers", "halted",
                                "cancelled", "recovery_session_id", "created_at", "resolved_at",
                                "resolved_by"]

    @staticmethod
    def _ids(ids) -> str:
        """How many, and the first of them (a stop of 9,000 tasks made this page 1 MB)."""
        return f"{len(ids):,}: {first_shown(ids)}" if isinstance(ids, list) and ids else "none"

    @admin.display(description="stopped tasks")
    def halted(self, obj):
        return self._ids(obj.stopped_tasks)

    @admin.display(description="cancelled approvals")
    def cancelled(self, obj):
        return self._ids(obj.cancelled_approvals)

    @admin.display(description="conditions")
    def conditions(self, obj):
        return ", ".join(obj.triggered_conditions)

    @admin.display(description="triggered by", ordering="triggered_by")
    def by(self, obj):
        return actor_words(obj.triggered_by)

    @admin.display(description="every trigger")
    def triggers(self, obj):
        """One line each: ``error rate high (high) by the system (error rate high) at …: reason``."""
        return format_html_join(mark_safe("<br>"), "{} ({}) by {} at {}: {}{}", (
            (condition_words(str(d.get("condition", "?"))), d.get("severity", "?"),
             actor_words(d.get("by") or f"system:{d.get('condition', '?')}"), d.get("at", "?"), d.get("reason", ""),
             "".join(f"; {str(k).replace('_', ' ')}: {v}" for k, v in (d.get("data") or {}).items()))
            for d in obj.condition_details if isinstance(d, dict))) or "—"


class EmergencySettingsForm(LoadedVersionForm, forms.ModelForm):
    """The thresholds, with the version of the row the page was loaded from (LoadedVersionForm)."""

    class Meta:
        model = EmergencySettings
        fields = "__all__"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            # a PositiveIntegerField's form field says "≥ 0" to -1, then the model "≥ 1" to 0: one rule, said once
            if isinstance(field, forms.IntegerField) and field.min_value == 0:
                field.min_value = 1
                field.widget.attrs["min"] = 1
                field.validators = [v for v in field.validators
                                    if not (isinstance(v, MinValueValidator) and v.limit_value == 0)]
        threshold = self.fields.get("error_rate_threshold")
        if threshold is not None:  # "no more than 4 digits in total" said nothing of the three decimals
            threshold.error_messages["max_digits"] = threshold.error_messages["max_decimal_places"] = \
                "Give a rate from 0.001 to 0.999, with at most three decimals."


@admin.register(EmergencySettings)
class EmergencySettingsAdmin(ProjectManagerEditsMixin, admin.ModelAdmin):
    """Thresholds of the automatic conditions, per project: seen by those with a role on the
    project, changed by its managers (audited), deleted by no one (a project keeps its conditions)."""

    form = EmergencySettingsForm
    list_display = ["project", "error_rate_threshold", "error_window_count", "error_window_seconds",
                    "max_pending_approvals", "stop_on_critical_risk"]
    readonly_fields = ["error_window_reset_at"]

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, *(["project"] if obj else [])]  # a row stays its project's

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        """A save the service refuses after the form passed (another manager's edit saved
        meanwhile makes the two together invalid) is said on the page with the current values,
        never a 500."""
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except InvalidInput as err:
            problems = "; ".join(f"{name.replace('_', ' ')}: {' '.join(errors)}"
                                 for name, errors in (err.extra.get("fields") or {}).items())
            self.message_user(request, f"{err.detail} {problems}".strip(), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def save_model(self, request, obj, form, change):
        model_fields = lambda values: {k: v for k, v in values.items() if k != "loaded_version"}  # noqa: E731
        emergency_settings_save(settings_row=obj, actor=request.user,
                                before=model_fields(changed_values(form, initial=True)) if change else None,
                                after=model_fields(changed_values(form)))


class EmergencyStopForm(forms.Form):
    reason = forms.CharField(label="Reason (required)", max_length=5000, strip=True,
                             widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
                             error_messages={"required": "A reason is required: it goes into the audit trail and "
                                                         "the alerts, and the recovery starts from it."})
    severity = forms.ChoiceField(label="Severity", choices=Severity.choices, initial=Severity.HIGH)

    def __init__(self, data=None, **kwargs):
        if data is not None and not data.get("severity"):  # the page always sends one; a bare post means high
            data = data.copy()
            data["severity"] = Severity.HIGH
        super().__init__(data, **kwargs)


admin.site.unregister(Project)


@admin.register(Project)
class ProjectWithStopAdmin(ProjectAdmin):
    """The projects admin (projects.admin) plus the emergency stop action, added by this layer."""

    actions = [*(ProjectAdmin.actions or []), "emergency_stop"]
    stop_confirm_template = "admin/projects/project/emergency_stop_confirm.html"

    def has_emergency_stop_permission(self, request) -> bool:
        """The action is offered to those who may stop at least one project (reviewers, managers,
        admins); each project is checked again when it is stopped."""
        user = request.user
        if not (user.is_active and user.is_staff):
            return False
        return user.is_superuser or any(roles.REVIEW in perms for perms in project_perms(user).values())

    def stop_impact(self, project: Project) -> list[str]:
        """What stopping the project does now, sentence by sentence (this layer's, then the hook's)."""
        if project.status == Project.Status.EMERGENCY_STOPPED:
            return ["It is already stopped: your reason and severity are added to the active stop."]
        tasks = Task.objects.filter(project=project, status__in=Task.OPEN_STATUSES).count()
        lines = [f"{plural(tasks, 'open task')} will be halted."]
        for handler_lines in stop_preview(project=project):
            lines.extend(handler_lines)
        lines.append("Its agents stop; every agent call gets 423 until a recovery lifts the stop.")
        return lines

    @admin.action(description="Emergency stop selected projects (asks for a reason and a severity)",
                  permissions=["emergency_stop"])
    def emergency_stop(self, request, queryset):
        if "apply" in request.POST:
            form = EmergencyStopForm(request.POST)
            if form.is_valid():
                self._stop_each(request, queryset, reason=form.cleaned_data["reason"],
                                severity=form.cleaned_data["severity"])
                return None
        else:
            form = EmergencyStopForm(initial={"severity": Severity.HIGH})
        projects = [{"project": p, "may_stop": has_project_perm(request.user, roles.REVIEW, p),
                     "impact": self.stop_impact(p)} for p in queryset.order_by("name")]
        chosen = form["severity"].value() or Severity.HIGH
        return TemplateResponse(request, self.stop_confirm_template, {
            **self.admin_site.each_context(request), "title": "Emergency stop", "opts": self.model._meta,
            "form": form, "projects": projects, "stoppable": sum(1 for p in projects if p["may_stop"]),
            "severities": [{"value": value, "label": label, "help": SEVERITY_HELP[value], "checked": value == chosen}
                           for value, label in Severity.choices],
            "action": "emergency_stop", "action_checkbox_name": ACTION_CHECKBOX_NAME,
        })

    def _stop_each(self, request, queryset, *, reason: str, severity: str) -> None:
        for project in queryset.order_by("name"):
            if not has_project_perm(request.user, roles.REVIEW, project):
                self.message_user(request, f"{project.name}: not stopped: only its reviewers and managers may stop it.",
                                  messages.ERROR)
                continue
            try:
                stop, created = emergency_stop_trigger(project_id=project.pk, condition=Condition.MANUAL_STOP,
                                                       severity=severity, reason=reason, actor=request.user)
            except DomainError as err:
                self.message_user(request, f"{project.name}: not stopped: {err.detail}", messages.ERROR)
                continue
            if created:
                self.message_user(request, f"{project.name}: stopped (severity {stop.severity}): "
                                  f"{stop.halted_summary}. Agents get 423 "
                                  f"until a recovery lifts the stop.", messages.SUCCESS)
            else:
                self.message_user(request, f"{project.name}: already stopped; your reason was added to the active stop "
                                  f"(severity now {stop.severity}).", messages.WARNING)
