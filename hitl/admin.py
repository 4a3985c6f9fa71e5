"""The reviewers' queue of questions and checkpoints in the Django admin. Every answer goes
through hitl.services (with its permission check, lock, history entry, audit row and event);
nothing here writes ``status``."""
import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db.models import Case, IntegerField, Value, When
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from core.admin import QueueColumnsMixin, ReadOnlyAdminMixin, ask_reason, back_to_messages, refuse_on_page
from core.errors import DomainError, InvalidInput
from core.parsers import json_or_text
from core.text import FORM_ERROR_NOTE, plural, visible_text
from hitl.models import HitlRequest
from hitl.services import hitl_request_expire_overdue, hitl_request_respond, hitl_request_settle_due
from projects import roles
from projects.admin_mixins import ProjectScopedAdminMixin, VisibleProjectListFilter
from projects.permissions import has_project_perm

PAST = {"approve": "approved", "reject": "rejected", "amend": "amended"}




def _textarea(rows: int, **attrs):
    return forms.Textarea(attrs={"rows": rows, "cols": 80, **attrs})


class HitlAnswerForm(forms.Form):
    """One answer posted from a request's page (prefixed with its action, so the page carries
    all three). The service checks everything again."""

    LABELS = {
        "approve": {"response": "Answer"},
        "reject": {"response": "Reason (optional; the agent is told)"},
        "amend": {"amended_content": "What to do instead (JSON, or plain text)", "response": "Note (optional)"},
    }

    response = forms.CharField(required=False, strip=True, widget=_textarea(3))
    amended_content = forms.CharField(required=False, strip=False,
                                      widget=_textarea(10, spellcheck="false", style="font-family:monospace"))

    def __init__(self, *args, action: str, options=(), **kwargs):
        super().__init__(*args, prefix=action, **kwargs)
        self.action = action
        labels = self.LABELS[action]
        for name in list(self.fields):
            if name not in labels:
                del self.fields[name]
            else:
                self.fields[name].label = labels[name]
        if action == "approve" and options:
            self.fields["response"] = forms.ChoiceField(label="Answer (one of the options)",
                                                        choices=[(o, o) for o in options],
                                                        widget=forms.RadioSelect)
        if action == "amend":
            self.fields["amended_content"].required = True

    def clean_amended_content(self):
        text = self.cleaned_data.get("amended_content") or ""
        if not visible_text(text):
            raise forms.ValidationError("This is required.")
        try:
            return json_or_text(text)  # plain text is an amendment too
        except ValueError as exc:
            raise forms.ValidationError(f"This JSON is refused: {exc}.") from None

    def service_kwargs(self) -> dict:
        data = self.cleaned_data
        return {"action": self.action, "response": data.get("response") or "",
                "amended_content": data.get("amended_content") if self.action == "amend" else None}


@admin.register(HitlRequest)
class HitlRequestAdmin(QueueColumnsMixin, ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["short_question", "project", "request_type", "status", "asker", "age", "time_left",
                    "responder"]
    list_display_links = ["short_question"]
    list_filter = ["status", "request_type", ("project", VisibleProjectListFilter)]
    search_fields = ["question", "response"]
    list_per_page = 50
    actions = ["reject_selected"]
    fieldsets = [
        (None, {"fields": ["status", "request_type", "project_name", "task_title", "asker", "question",
                           "options_list", "context_pretty"]}),
        ("Answer on record", {"fields": ["responder", "response", "amended_pretty", "created_at", "responded_at",
                                         "expires_at", "time_left"]}),
        ("History", {"fields": ["history_table"]}),
    ]
    readonly_fields = [f for fs in fieldsets for f in fs[1]["fields"]]
    change_form_template = "admin/hitl/hitlrequest/change_form.html"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("project", "task", "asked_by", "responded_by")

    def get_ordering(self, request):
        # The queue: pending first, oldest first.
        pending_first = Case(When(status=HitlRequest.Status.PENDING, then=Value(0)), default=Value(1),
                             output_field=IntegerField())
        return [pending_first.asc(), "created_at"]

    def changelist_view(self, request, extra_context=None):
        if request.method == "GET":  # beat late or down: no request listed pending past its deadline
            hitl_request_expire_overdue()
        return super().changelist_view(request, extra_context)

    # --- answers on the detail page -------------------------------------------------------
    def change_view(self, request, object_id, form_url="", extra_context=None):
        bound = None
        if request.method == "POST" and "_decide" in request.POST:
            obj = self.get_object(request, unquote(object_id))
            if obj is None:
                return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
            action = request.POST.get("action", "")
            if action not in HitlAnswerForm.LABELS:
                self.message_user(request, f"Unknown action {action!r}.", messages.ERROR)
                return back_to_messages(request)
            bound = HitlAnswerForm(request.POST, action=action, options=obj.options)
            refusal = FORM_ERROR_NOTE
            if bound.is_valid():
                refusal = self._answer(request, obj, bound)
                if not refusal:
                    return back_to_messages(request)
            obj.refresh_from_db(fields=["status"])
            if obj.status != HitlRequest.Status.PENDING:
                return back_to_messages(request)
            # show the page again with what was typed, and why nothing was decided where it lands
            extra_context = {**(extra_context or {}), "decide_refusal": refusal}
            request.method = "GET"
        obj = self.get_object(request, unquote(object_id))
        if obj is not None and hitl_request_settle_due(obj):  # beat late or down: not pending past its deadline
            obj = self.get_object(request, unquote(object_id))
        context = dict(extra_context or {})
        if obj is not None:
            context.update(self.answer_context(request, obj, bound))
        return super().change_view(request, object_id, form_url, context)

    def _answer(self, request, obj, form) -> str:
        """Answer through the service: "" when answered, else why nothing was decided."""
        label = f"“{self.short_question(obj)}” ({obj.pk})"
        try:
            hitl_request_respond(request_id=obj.pk, responder=request.user, **form.service_kwargs())
        except InvalidInput as err:
            for name, errors in (err.extra.get("fields") or {}).items():
                form.add_error(name if name in form.fields else None, errors)
            if not err.extra.get("fields"):
                form.add_error(None, err.detail)
            return FORM_ERROR_NOTE
        except DomainError as err:
            return refuse_on_page(self, request, label=label, past=PAST[form.action], err=err)
        self.message_user(request, f"{label}: {PAST[form.action]}.", messages.SUCCESS)
        return ""

    def answer_context(self, request, obj, bound) -> dict:
        forms_ = {action: bound if bound is not None and bound.action == action
                  else HitlAnswerForm(action=action, options=obj.options) for action in HitlAnswerForm.LABELS}
        if obj.status != HitlRequest.Status.PENDING:
            why_not = f"This request is {obj.get_status_display().lower()}: nothing left to answer."
        elif obj.expires_at <= timezone.now():
            why_not = "This request has expired: it is timed out."
        elif not has_project_perm(request.user, roles.REVIEW, obj.project_id):
            why_not = (f"You may see this request but not answer it (no reviewer role on project "
                       f"{obj.project.slug}).")
        elif request.user.pk == obj.asked_by_id:
            why_not = "You asked this: someone else must answer it."
        else:
            why_not = ""
        return {"answer_forms": forms_, "can_decide": not why_not, "cannot_decide_reason": why_not}

    # --- bulk ------------------------------------------------------------------------------
    @admin.action(description="Reject selected requests (asks for a reason)")
    def reject_selected(self, request, queryset):
        reason, form = ask_reason(self, request, queryset, action="reject_selected",
                                  title="Reject questions and checkpoints",
                                  question=f"Reject {plural(queryset.count(), 'request')}? The agents are told "
                                           f"the reason.", submit_label="Reject")
        if form is not None:
            return form
        for req in queryset:
            label = f"“{self.short_question(req)}” ({req.pk})"
            try:
                hitl_request_respond(request_id=req.pk, responder=request.user, action="reject", response=reason)
            except DomainError as err:
                self.message_user(request, f"{label}: not rejected: {err.detail}", messages.WARNING)
                continue
            self.message_user(request, f"{label}: rejected.", messages.SUCCESS)
        return None

    # --- columns ---------------------------------------------------------------------------
    @admin.display(description="question", ordering="question")
    def short_question(self, obj):
        text = obj.question
        return text if len(text) <= 80 else text[:77] + "…"

    @admin.display(description="asked by")
    def asker(self, obj):
        return obj.asked_by.get_username()

    @admin.display(description="answered by")
    def responder(self, obj):
        return obj.responded_by.get_username() if obj.responded_by_id else "—"


    @admin.display(description="options")
    def options_list(self, obj):
        if not obj.options:
            return "— (a free-text answer)"
        return format_html("<ol>{}</ol>", format_html_join("", "<li>{}</li>", ((o,) for o in obj.options)))

    @admin.display(description="context")
    def context_pretty(self, obj):
        if obj.context is None:
            return "—"
        return format_html('<pre style="white-space:pre-wrap;max-height:30em;overflow:auto">{}</pre>',
                           json.dumps(obj.context, indent=2, ensure_ascii=False))

    @admin.display(description="amended content")
    def amended_pretty(self, obj):
        if obj.amended_content is None:
            return "—"
        return format_html('<pre style="white-space:pre-wrap">{}</pre>',
                           json.dumps(obj.amended_content, indent=2, ensure_ascii=False))

    @admin.display(description="history")
    def history_table(self, obj):
        rows = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                                ((h.get("at"), h.get("status"), h.get("by"), h.get("note")) for h in obj.history or ()))
        return format_html("<table><tr><th>at</th><th>status</th><th>by</th><th>note</th></tr>{}</table>", rows)
