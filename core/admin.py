import hashlib
import json

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import ValidationError
from django.http import HttpResponseRedirect
from django.utils import timezone

from core.models import Heartbeat
from core.text import has_nul


def refusal_text(err) -> str:
    """A service's refusal (a DomainError) as one sentence: its detail, and the status the
    refused item keeps unless the detail already says it ("Its task is completed (still
    pending).")."""
    text = err.detail.strip()
    status = err.extra.get("status")
    if status and str(status) not in text and str(status).replace("_", " ") not in text:
        text = f"{text.rstrip('.')} (still {status})."
    return text if text.endswith((".", "!", "?")) else f"{text}."


def refuse_on_page(model_admin, request, *, label: str, past: str, err) -> str:
    """A decision page's refusal: said in the admin's messages, and returned as the note shown
    where the page lands (#decide)."""
    why = refusal_text(err)
    model_admin.message_user(request, f"{label}: not {past}: {why} Nothing was decided.", messages.ERROR)
    return f"Nothing was decided: {why}"


def back_to_messages(request) -> HttpResponseRedirect:
    """After a decision from a page whose forms post to #decide: the same page, landing on the
    admin's messages (its outcome) at the top of the content; a redirect keeps the form's
    fragment unless it names its own."""
    return HttpResponseRedirect(f"{request.get_full_path()}#content-start")


class SelectedIdsMixin:
    """A bulk action acts on the ticked values that are ids of the list's model: one that is not
    (edited by hand: ``x``, a UUID on a list of numbers) is left out, where Django's own filter
    raised it (a 500). It takes at most ``HITL_ADMIN_BULK_MAX`` rows: "select all" over more is
    refused with a message, nothing done (each row goes through its service in this request)."""

    def response_action(self, request, queryset):
        selected = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        ids = [value for value in selected if self.an_id(value)]
        most = settings.HITL_ADMIN_BULK_MAX
        count = queryset.count() if request.POST.get("select_across") == "1" else len(ids)
        if count > most:
            self.message_user(request, f"{count} rows selected: a bulk action takes at most {most} at once (each "
                                       f"goes through its service while you wait). Narrow the list with its filters "
                                       f"(status pending, a project, a date) and select again. Nothing was done.",
                              messages.ERROR)
            return None
        if len(ids) != len(selected):
            request.POST = request.POST.copy()
            request.POST.setlist(helpers.ACTION_CHECKBOX_NAME, ids)
        return super().response_action(request, queryset)

    def an_id(self, value) -> bool:
        pk = self.model._meta.pk
        try:
            pk.run_validators(pk.to_python(value))  # an integer past the column's range too (an OverflowError)
            return True
        except (ValidationError, ValueError, TypeError):
            return False


@admin.register(Heartbeat)
class HeartbeatAdmin(SelectedIdsMixin, admin.ModelAdmin):
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

    def has_add_permission(self, request, obj=None):  # obj: inlines pass the parent
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def _action_page(model_admin, request, queryset, *, action: str, title: str, question: str, submit_label: str,
                 template: str = "admin/reason_form.html", **context):
    """The intermediate page of an admin action (admin/reason_form.html, or a template extending
    it): the selection, a question and the button that submits the action again with ``apply``."""
    from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
    from django.template.response import TemplateResponse

    return TemplateResponse(request, template, {
        **model_admin.admin_site.each_context(request), "title": title, "question": question,
        "submit_label": submit_label, "queryset": queryset, "opts": model_admin.model._meta, "action": action,
        "action_checkbox_name": ACTION_CHECKBOX_NAME, **context})


def ask_reason(model_admin, request, queryset, *, action: str, title: str, question: str, submit_label: str,
               **page):
    """For an admin action that needs a reason: the reason when the intermediate form was
    submitted with one, else the form to render (return it from the action). ``page``: the
    page's own template and context (``_action_page``)."""
    reason = (request.POST.get("reason") or "").strip()
    nul = has_nul(reason)  # the database cannot store U+0000: asked again, nothing decided
    if "apply" in request.POST and reason and not nul:
        return reason, None
    return None, _action_page(model_admin, request, queryset, action=action, title=title, question=question,
                              submit_label=submit_label, reason_needed=True, nul_reason=nul,
                              missing_reason="apply" in request.POST and not nul, **page)


def action_page(model_admin, request, queryset, **page):
    """The intermediate page of an admin action that asks no reason, to render (return it from the
    action) until it is submitted (``apply``)."""
    return _action_page(model_admin, request, queryset, reason_needed=False, **page)


def confirm_risky(model_admin, request, queryset, *, action: str, title: str, submit_label: str, level_of,
                  undecided=None):
    """For a bulk approval: None to go ahead (nothing selected is rated high or critical, or the
    confirmation page was submitted), else that page to render (return it from the action), listing
    the risky items among ``undecided`` (the selected rows the approval would act on; default all).
    "Select all, approve" approved a high-risk call with the low ones, unasked, where the reviewer
    pages want a second press for one."""
    rows = queryset if undecided is None else undecided
    risky = [(obj, level) for obj in rows if (level := level_of(obj)) in ("high", "critical")]
    if not risky or "apply" in request.POST:
        return None
    return _action_page(model_admin, request, queryset, action=action, title=title, submit_label=submit_label,
                        question=f"Approve {queryset.count()} selected?", risky=risky, reason_needed=False)


class LoadedVersionForm(forms.Form):
    """A ModelForm mixin (``class F(LoadedVersionForm, forms.ModelForm)``) that carries the version
    of the row the page was loaded from: a form loaded before another manager's save posts every
    field as it was, and Django's admin saves what differs from the row as it stands, so saving
    it put their change back without a word (a daily cost limit lowered to stop spending came back
    raised, and the trail said the second manager changed it). Such a form is refused, nothing saved."""
    loaded_version = forms.CharField(widget=forms.HiddenInput, required=False)
    stale_message = ("Another manager changed these settings after this page was loaded: nothing was saved. "
                     "Reload the page to see their values, then make your change again.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.initial["loaded_version"] = self.row_version()

    def row_version(self) -> str:
        """The fields this form edits, as the row holds them now."""
        names = [f.name for f in self.instance._meta.fields if f.editable and f.name in self.fields]
        values = {name: str(getattr(self.instance, name)) for name in names}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:32]

    def clean(self):
        cleaned = super().clean()
        loaded = self.data.get(self.add_prefix("loaded_version"), "")
        if self.instance.pk is not None and loaded != self.row_version():  # none sent: no proof it is current
            raise forms.ValidationError(self.stale_message, code="stale")
        return cleaned


def changed_values(form, *, initial: bool = False) -> dict:
    """A ModelForm's changed fields as JSON-ready values (related objects by primary key)."""
    source = form.initial if initial else form.cleaned_data
    return {name: getattr(source.get(name), "pk", source.get(name)) for name in form.changed_data}


def duration(seconds: float) -> str:
    """42s, 3m 07s, 2h 05m: ages and times left in the queues."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


class QueueColumnsMixin:
    """The columns every approval queue shows (calls, responses, questions): age, time left of a
    pending row (``status``, ``expires_at``), and the project and task as plain text (a reviewer
    may not open the project or task pages)."""

    @admin.display(description="age", ordering="created_at")
    def age(self, obj):
        return duration((timezone.now() - obj.created_at).total_seconds())

    @admin.display(description="time left")
    def time_left(self, obj):
        if obj.status != "pending":
            return "—"
        left = (obj.expires_at - timezone.now()).total_seconds()
        return "expired" if left <= 0 else duration(left)

    @admin.display(description="project")
    def project_name(self, obj):
        return f"{obj.project.name} ({obj.project.slug})"

    @admin.display(description="task")
    def task_title(self, obj):
        return f"{obj.task.title} ({obj.task_id})" if obj.task_id else "—"
