"""The reviewers' approval queue in the Django admin. Every decision goes through
approvals.services (per object, with its permission check, lock, audit row and event);
nothing here writes ``status``."""
import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Case, IntegerField, Value, When
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from projects import roles
from projects.permissions import has_project_perm, project_visible_to
from approvals.models import AgentCallApproval, FlagSuppression, ModelPrice, ResponseApproval, RuleSetting
from approvals.services import (
    agent_approval_decide,
    agent_approval_expire_overdue,
    agent_approval_settle_due,
    budget_override_respond,
    flag_suppression_revoke,
    response_approval_decide,
    response_approval_expire_overdue,
    response_approval_settle_due,
    rule_precision,
    rule_code_clean,
    rule_setting_save,
)
from approvals.services.calibration import PRECISION_DAYS
from approvals.services.prices import model_price_delete, model_price_save
from budgets.admin import BudgetOverrideAdmin
from budgets.models import BudgetOverrideRequest
from core.admin import (
    QueueColumnsMixin,
    ReadOnlyAdminMixin,
    SelectedIdsMixin,
    ask_reason,
    confirm_risky,
    back_to_messages,
    changed_values,
    refusal_text,
    refuse_on_page,
)
from projects.admin_mixins import ProjectManagerEditsMixin, ProjectScopedAdminMixin, VisibleProjectListFilter
from core.errors import DomainError, InvalidInput
from core.parsers import json_to_edit, loads_strict
from core.text import FORM_ERROR_NOTE, plural

PAST = {"approve": "approved", "reject": "rejected"}
RISK_COLOURS = {"low": "#1b5e20", "medium": "#8a5a00", "high": "#b23c00", "critical": "#b71c1c"}  # 4.5:1 or more on white (WCAG AA)




class RiskLevelFilter(admin.SimpleListFilter):
    title = "risk level"
    parameter_name = "risk"

    def lookups(self, request, model_admin):
        return [(level, level) for level in RISK_COLOURS]

    def queryset(self, request, queryset):
        if self.value() in RISK_COLOURS:
            return queryset.filter(risk_assessment__level=self.value())
        return queryset


# --- decisions on an approval's own page (change view) ---------------------------------
def _textarea(rows: int, **attrs):
    return forms.Textarea(attrs={"rows": rows, "cols": 80, **attrs})


class _DecisionForm(forms.Form):
    """One decision posted from an approval's change page. Each decision has its own HTML form
    (prefixed with the decision's name, so the page can carry all of them); the hidden
    ``decision`` input names the one posted. The service still checks everything again."""

    DECISIONS: dict[str, dict[str, str]] = {}  # decision -> {field: label}; a field not listed is left out
    REQUIRED: dict[str, str] = {}              # decision -> the field it cannot go without

    reason = forms.CharField(required=False, strip=True, widget=_textarea(3))

    def __init__(self, *args, decision: str, **kwargs):
        super().__init__(*args, prefix=decision, **kwargs)
        self.decision = decision
        labels = self.DECISIONS[decision]
        for name in list(self.fields):
            if name not in labels:
                del self.fields[name]
            else:
                self.fields[name].label = labels[name]
        required = self.REQUIRED.get(decision)
        if required:
            self.fields[required].widget.attrs["required"] = True

    def clean(self):
        cleaned = super().clean()
        required = self.REQUIRED.get(self.decision)
        if required and required not in self.errors:
            value = cleaned.get(required)
            if value is None or (isinstance(value, str) and not value.strip()):
                self.add_error(required, "This is required.")
        return cleaned


class AgentCallDecisionForm(_DecisionForm):
    DECISIONS = {
        "approve": {"reason": "Note (optional)"},
        "amend": {"amended_input": "Input to run instead (a JSON object)", "reason": "Why it was amended (optional)"},
        "reject": {"reason": "Reason (required; the agent is told)"},
    }
    REQUIRED = {"amend": "amended_input", "reject": "reason"}

    amended_input = forms.CharField(required=False, strip=False,
                                    widget=_textarea(14, spellcheck="false", style="font-family:monospace;width:100%"))

    def clean_amended_input(self):
        text = self.cleaned_data.get("amended_input") or ""
        if self.decision != "amend" or not text.strip():
            return None
        try:
            value = loads_strict(text)
        except ValueError as err:
            raise forms.ValidationError(f"Not valid JSON: {err}.") from err
        if not isinstance(value, dict):
            raise forms.ValidationError(f"Must be a JSON object ({{...}}), not a {type(value).__name__}.")
        return value

    def service_kwargs(self) -> dict:
        data = self.cleaned_data
        if self.decision == "amend":
            return {"decision": "approve", "amended_input_data": data["amended_input"],
                    "reason": data.get("reason", "")}
        return {"decision": self.decision, "reason": data.get("reason", "")}


class ResponseDecisionForm(_DecisionForm):
    DECISIONS = {
        "approve": {"reason": "Note (optional)"},
        "requires_modification": {"modifications": "What must change (required; the agent redoes the work)"},
        "reject": {"reason": "Reason (required; the agent is told)"},
    }
    REQUIRED = {"requires_modification": "modifications", "reject": "reason"}

    modifications = forms.CharField(required=False, strip=True, widget=_textarea(4))

    def service_kwargs(self) -> dict:
        data = self.cleaned_data
        if self.decision == "requires_modification":
            return {"decision": self.decision, "modifications_required": data["modifications"]}
        return {"decision": self.decision, "reason": data.get("reason", "")}


class DecisionPageMixin:
    """Approve / reject (and the like) on the change page of one approval, each through the
    decide service, its outcome or refusal shown as an admin message. Once decided (here or
    elsewhere) the page is shown again by a redirect; a form error (bad JSON, a missing reason)
    or a refusal that leaves it pending shows the page again with what was typed, and decides
    nothing. Other POSTs to the page get the admin's usual refusal (the rows are read-only here)."""

    decision_form_class: type[_DecisionForm]
    decision_past: dict[str, str]

    def changelist_view(self, request, extra_context=None):
        if request.method == "GET":  # beat late or down: no row listed pending past its deadline (the
            self.expire_overdue()    # reviewer pages' lists and the API's do the same)
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        bound = None
        if request.method == "POST" and "_decide" in request.POST:
            obj = self.get_object(request, unquote(object_id))
            if obj is None:  # not visible to this user: the admin's own answer (index, "does not exist")
                return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
            decision = request.POST.get("decision", "")
            if decision not in self.decision_form_class.DECISIONS:
                self.message_user(request, f"Unknown decision {decision!r}.", messages.ERROR)
                return back_to_messages(request)
            bound = self.decision_form_class(request.POST, decision=decision)
            refusal = FORM_ERROR_NOTE
            if bound.is_valid():
                outcome, refusal = self._decide_from_page(request, obj, bound)
                obj.refresh_from_db(fields=["status"])
                if outcome == "decided" or obj.status != obj.Status.PENDING:
                    return back_to_messages(request)
            # Still pending after a form error or a refusal (an amendment too large, a budget
            # block): show the page again with what was typed, and say why where it lands (#decide).
            extra_context = {**(extra_context or {}), "decide_refusal": refusal}
            request.method = "GET"
        obj = self.get_object(request, unquote(object_id))
        if obj is not None and self.settle_due(obj):  # beat late or down: not shown pending (and decidable) past
            obj = self.get_object(request, unquote(object_id))  # its deadline, as the reviewer pages and the API
        context = dict(extra_context or {})
        if obj is not None:
            context.update(self.decision_context(request, obj, bound))
        return super().change_view(request, object_id, form_url, context)

    def _decide_from_page(self, request, obj, form) -> tuple[str, str]:
        """(outcome, why nothing was decided): decided, form_error or refused."""
        label = f"“{self.page_label(obj)}” ({obj.pk})"
        past = self.decision_past[form.decision]
        try:
            self.decide_service(approval_id=obj.pk, decider=request.user, **form.service_kwargs())
        except InvalidInput as err:
            fields = err.extra.get("fields") or {}
            for name, errors in fields.items():
                form.add_error(name if name in form.fields else None, errors)
            if not fields:
                form.add_error(None, err.detail)
            return "form_error", FORM_ERROR_NOTE
        except DomainError as err:
            return "refused", refuse_on_page(self, request, label=label, past=past, err=err)
        self.message_user(request, f"{label}: {past}.", messages.SUCCESS)
        return "decided", ""

    def decision_context(self, request, obj, bound) -> dict:
        pending = obj.status == obj.Status.PENDING
        may_decide = has_project_perm(request.user, roles.REVIEW, obj.project)
        own = request.user.pk in (getattr(obj, "requested_by_id", None), getattr(obj, "submitted_by_id", None))
        decision_forms = {}
        for decision in self.decision_form_class.DECISIONS:
            if bound is not None and bound.decision == decision:
                decision_forms[decision] = bound
            else:
                decision_forms[decision] = self.decision_form_class(
                    decision=decision, initial=self.decision_initial(obj, decision))
        if not pending:
            why_not = (f"This {obj._meta.verbose_name} is settled ({obj.get_status_display().lower()}): "
                       f"nothing left to decide.")
        elif not may_decide:
            why_not = f"You may see this {obj._meta.verbose_name} but not decide it (no reviewer role on " \
                      f"project {obj.project.slug})."
        elif own:
            why_not = "You made this request: someone else must decide it."
        else:
            why_not = ""
        return {"decision_forms": decision_forms, "can_decide": not why_not, "cannot_decide_reason": why_not}

    def decision_initial(self, obj, decision) -> dict:
        return {}


@admin.register(AgentCallApproval)
class AgentCallApprovalAdmin(DecisionPageMixin, QueueColumnsMixin, ProjectScopedAdminMixin, ReadOnlyAdminMixin,
                             admin.ModelAdmin):
    list_display = ["short_action", "project", "agent_type", "status", "budget", "risk", "estimated_cost", "age",
                    "time_left", "requested_by"]
    list_display_links = ["short_action"]
    list_filter = ["status", "budget_state", "agent_type", RiskLevelFilter, ("project", VisibleProjectListFilter)]
    search_fields = ["proposed_action", "context_summary"]
    list_per_page = 50
    actions = ["approve_selected", "reject_selected"]
    fieldsets = [
        (None, {"fields": ["status", "project_name", "task_title", "agent_type", "requester", "model",
                           "proposed_action", "context_summary"]}),
        ("Risk", {"fields": ["risk_summary", "risk_flags"]}),
        ("Input", {"fields": ["input_pretty", "amended_pretty", "input_digest"]}),
        ("Cost", {"fields": ["budget_state", "budget_blocked_reason", "estimated_tokens", "estimated_cost",
                             "budget_override_id", "usage_flags"]}),
        ("Decision on record", {"fields": ["decider", "rejection_reason", "created_at", "responded_at",
                                           "expires_at", "time_left", "started_at"]}),
    ]
    readonly_fields = [f for fs in fieldsets for f in fs[1]["fields"]]

    # --- decisions on the detail page (DecisionPageMixin) -------------------------------
    change_form_template = "admin/approvals/agentcallapproval/change_form.html"
    decision_form_class = AgentCallDecisionForm
    decision_past = {"approve": "approved", "amend": "approved with amended input", "reject": "rejected"}
    decide_service = staticmethod(agent_approval_decide)
    settle_due = staticmethod(agent_approval_settle_due)
    expire_overdue = staticmethod(agent_approval_expire_overdue)

    def page_label(self, obj):
        return self.short_action(obj)

    def decision_initial(self, obj, decision):
        if decision == "amend":
            return {"amended_input": json_to_edit(obj.input_data)}
        return {}

    def decision_context(self, request, obj, bound):
        context = super().decision_context(request, obj, bound)
        context["budget_block"] = self.budget_block(obj)
        return context

    def budget_block(self, obj) -> dict | None:
        """A call blocked by its budget: why, and what unblocks it (its override), for the top of
        its page. None when the call is not blocked."""
        if obj.budget_state != AgentCallApproval.BudgetState.BLOCKED:
            return None
        override = None
        if obj.budget_override_id:
            override = BudgetOverrideRequest.objects.filter(pk=obj.budget_override_id).first()
        return {
            "reason": obj.budget_blocked_reason or "Over a budget limit of its project.",
            "pending": obj.status == AgentCallApproval.Status.PENDING,
            "override": override,
            "override_url": reverse("admin:budgets_budgetoverriderequest_change", args=[override.pk])
            if override else None,
            "overrides_url": reverse("admin:budgets_budgetoverriderequest_changelist")
            + "?status__exact=pending",
        }

    # --- visibility: reviewers see the projects they hold a role on --------------------
    def get_queryset(self, request):
        return super().get_queryset(request).select_related("project", "requested_by", "approved_by")

    def get_ordering(self, request):
        # The queue: pending first, oldest first.
        pending_first = Case(When(status=AgentCallApproval.Status.PENDING, then=Value(0)), default=Value(1),
                             output_field=IntegerField())
        return [pending_first.asc(), "created_at"]

    # --- columns --------------------------------------------------------------------
    @admin.display(description="action", ordering="proposed_action")
    def short_action(self, obj):
        text = obj.proposed_action
        return text if len(text) <= 80 else text[:77] + "…"

    @admin.display(description="budget", ordering="budget_state")
    def budget(self, obj):
        """Blocked calls show it before anyone tries to approve them, with what unblocks them."""
        if obj.budget_state == AgentCallApproval.BudgetState.BLOCKED:
            if obj.status != AgentCallApproval.Status.PENDING:
                return format_html('<span title="{}">was blocked by budget</span>', obj.budget_blocked_reason)
            return format_html('<strong style="color:#b00" title="{}">blocked by budget</strong><br>'
                               '<small style="color:#b00">approve its override first</small>',
                               obj.budget_blocked_reason)
        return obj.budget_state

    @admin.display(description="risk")
    def risk(self, obj):
        level = (obj.risk_assessment or {}).get("level", "?")
        return format_html('<b style="color:{}">{}</b>', RISK_COLOURS.get(level, "#555"), level)


    @admin.display(description="requested by")
    def requester(self, obj):
        return obj.requested_by.get_username()

    @admin.display(description="decided by")
    def decider(self, obj):
        return obj.approved_by.get_username() if obj.approved_by_id else "—"

    @admin.display(description="risk")
    def risk_summary(self, obj):
        ra = obj.risk_assessment or {}
        level = ra.get("level", "?")
        return format_html('<b style="color:{}">{}</b> (score {})', RISK_COLOURS.get(level, "#555"), level,
                           ra.get("score", "?"))

    @admin.display(description="flags")
    def risk_flags(self, obj):
        return _flag_table((obj.risk_assessment or {}).get("flags"))

    @admin.display(description="input data")
    def input_pretty(self, obj):
        return format_html('<pre style="white-space:pre-wrap;max-height:30em;overflow:auto">{}</pre>',
                           json.dumps(obj.input_data, indent=2, ensure_ascii=False))

    @admin.display(description="amended input")
    def amended_pretty(self, obj):
        if obj.amended_input_data is None:
            return "—"
        return format_html('<pre style="white-space:pre-wrap">{}</pre>',
                           json.dumps(obj.amended_input_data, indent=2, ensure_ascii=False))

    # --- bulk decisions -------------------------------------------------------------
    def _decide_each(self, request, queryset, decision: str, reason: str = ""):
        done = 0
        for approval in queryset:
            label = f"“{self.short_action(approval)}” ({approval.pk})"
            if not has_project_perm(request.user, roles.REVIEW, approval.project):
                self.message_user(request, f"{label}: you may not decide calls in project {approval.project}.",
                                  messages.ERROR)
                continue
            try:
                agent_approval_decide(approval_id=approval.pk, decider=request.user, decision=decision, reason=reason)
            except DomainError as err:
                self.message_user(request, f"{label}: not {PAST[decision]}: {refusal_text(err)}", messages.WARNING)
                continue
            done += 1
            self.message_user(request, f"{label}: {PAST[decision]}.", messages.SUCCESS)
        return done

    @admin.action(description="Approve selected calls (asks first for a high or critical risk)")
    def approve_selected(self, request, queryset):
        page = confirm_risky(self, request, queryset, action="approve_selected", title="Approve agent calls",
                             submit_label="Approve", level_of=lambda call: (call.risk_assessment or {}).get("level"),
                             undecided=queryset.filter(status=queryset.model.Status.PENDING))
        if page is not None:
            return page
        self._decide_each(request, queryset, "approve")
        return None

    @admin.action(description="Reject selected calls (asks for a reason)")
    def reject_selected(self, request, queryset):
        reason, form = ask_reason(self, request, queryset, action="reject_selected", title="Reject agent calls",
                                  question=f"Reject {plural(queryset.count(), 'agent call')}? The agents are told "
                                           f"the reason.", submit_label="Reject")
        if form is not None:
            return form
        self._decide_each(request, queryset, "reject", reason=reason)
        return None


@admin.register(ModelPrice)
class ModelPriceAdmin(SelectedIdsMixin, admin.ModelAdmin):
    """Every project's cost estimates follow these prices: each change and deletion is audited."""

    list_display = ["model", "input_per_million", "output_per_million", "default_output_tokens", "updated_at"]
    list_editable = ["input_per_million", "output_per_million", "default_output_tokens"]
    search_fields = ["model"]

    def save_model(self, request, obj, form, change):
        model_price_save(price=obj, actor=request.user, before=changed_values(form, initial=True) if change else None,
                         after=changed_values(form))

    def delete_model(self, request, obj):
        model_price_delete(price=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for price in queryset:
            model_price_delete(price=price, actor=request.user)


def _named(obj) -> str:
    """An object's name opening a message: "Override of daily cost limit (+$5.0000) in demo"."""
    name = str(obj)
    return name[:1].upper() + name[1:]


admin.site.unregister(BudgetOverrideRequest)


@admin.register(BudgetOverrideRequest)
class BudgetOverrideDecideAdmin(BudgetOverrideAdmin):
    """The overrides admin (budgets.admin) plus approve / reject, added by this layer: deciding
    an override admits or rejects the calls blocked behind it."""

    actions = ["approve_selected", "reject_selected"]

    def _respond(self, request, queryset, decision, reason=""):
        for override in queryset:
            try:
                budget_override_respond(override_id=override.pk, actor=request.user, decision=decision,
                                        reason=reason)
            except DomainError as err:
                self.message_user(request, f"{_named(override)}: {err.detail}", messages.WARNING)
                continue
            self.message_user(request, f"{_named(override)}: {'approved' if decision == 'approve' else 'rejected'}.",
                              messages.SUCCESS)

    @admin.action(description="Approve selected overrides")
    def approve_selected(self, request, queryset):
        self._respond(request, queryset, "approve")

    @admin.action(description="Reject selected overrides (asks for a reason)")
    def reject_selected(self, request, queryset):
        reason, form = ask_reason(self, request, queryset, action="reject_selected", title="Reject budget overrides",
                                  question="Reject these overrides? Calls blocked behind them are rejected too.",
                                  submit_label="Reject")
        if form is not None:
            return form
        self._respond(request, queryset, "reject", reason)
        return None


def _flag_table(flags, empty="none"):
    if not flags:
        return empty
    rows = format_html_join(
        "", '<tr><td style="color:{}"><b>{}</b></td><td>{}</td><td>{}</td><td><code>{}</code></td>'
            '<td><code title="fingerprint (for a suppression)">{}</code></td></tr>',
        ((RISK_COLOURS.get(f.get("severity"), "#555"), f.get("severity"), f.get("code"), f.get("message"),
          f.get("location", ""), f.get("fingerprint", "")) for f in flags))
    return format_html("<table><tr><th>severity</th><th>check</th><th>finding</th><th>where</th><th>id</th></tr>"
                       "{}</table>", rows)


RESPONSE_PAST = {"approve": "approved", "reject": "rejected", "requires_modification": "sent back for modification"}


@admin.register(ResponseApproval)
class ResponseApprovalAdmin(DecisionPageMixin, QueueColumnsMixin, ProjectScopedAdminMixin, ReadOnlyAdminMixin,
                            admin.ModelAdmin):
    """The queue of agents' outputs waiting for a person, with the analyzer's findings."""

    list_display = ["short_summary", "project", "agent_type", "status", "risk", "safety", "flag_count", "age",
                    "time_left", "submitted_by"]
    list_display_links = ["short_summary"]
    list_filter = ["status", "agent_type", ("project", VisibleProjectListFilter)]
    search_fields = ["response_summary"]
    list_per_page = 50
    actions = ["approve_selected", "reject_selected", "send_back_selected"]
    fieldsets = [
        (None, {"fields": ["status", "project_name", "task_title", "agent_type", "submitter", "call_action",
                           "response_summary", "next_steps_list"]}),
        ("Analysis", {"fields": ["risk", "safety", "confidence", "flags", "observed", "suppressed", "quality",
                                 "recommendations", "tools"]}),
        ("Output", {"fields": ["response_pretty"]}),
        ("Usage", {"fields": ["tokens_used", "actual_cost"]}),
        ("Decision on record", {"fields": ["decider", "rejection_reason", "modifications_required",
                                           "modification_round", "created_at", "responded_at", "expires_at",
                                           "time_left"]}),
    ]
    readonly_fields = [f for fs in fieldsets for f in fs[1]["fields"]]

    # --- decisions on the detail page (DecisionPageMixin) -------------------------------
    change_form_template = "admin/approvals/responseapproval/change_form.html"
    decision_form_class = ResponseDecisionForm
    decision_past = RESPONSE_PAST
    decide_service = staticmethod(response_approval_decide)
    settle_due = staticmethod(response_approval_settle_due)
    expire_overdue = staticmethod(response_approval_expire_overdue)

    def page_label(self, obj):
        return self.short_summary(obj)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("project", "task", "submitted_by", "approved_by",
                                                            "agent_call_approval")

    def get_ordering(self, request):
        pending_first = Case(When(status=ResponseApproval.Status.PENDING, then=Value(0)), default=Value(1),
                             output_field=IntegerField())
        return [pending_first.asc(), "safety_score", "created_at"]

    @admin.display(description="summary", ordering="response_summary")
    def short_summary(self, obj):
        text = obj.response_summary or f"({obj.agent_type} output)"
        return text if len(text) <= 80 else text[:77] + "…"

    @admin.display(description="risk")
    def risk(self, obj):
        level = (obj.analysis or {}).get("level", "low")
        return format_html('<b style="color:{}">{}</b>', RISK_COLOURS.get(level, "#555"), level)

    @admin.display(description="safety", ordering="safety_score")
    def safety(self, obj):
        return f"{obj.safety_score:.2f}"

    @admin.display(description="confidence")
    def confidence(self, obj):
        return f"{obj.confidence_score:.2f}"

    @admin.display(description="flags")
    def flag_count(self, obj):
        return len(obj.risk_flags or ())


    @admin.display(description="submitted by")
    def submitter(self, obj):
        return obj.submitted_by.get_username()

    @admin.display(description="approved call")
    def call_action(self, obj):
        return f"{obj.agent_call_approval.proposed_action[:200]} ({obj.agent_call_approval_id})"

    @admin.display(description="next steps")
    def next_steps_list(self, obj):
        return format_html("<ol>{}</ol>", format_html_join("", "<li>{}</li>", ((s,) for s in obj.next_steps or ())))

    @admin.display(description="flags (scored)")
    def flags(self, obj):
        return _flag_table(obj.risk_flags)

    @admin.display(description="observed (rules in observe mode or under threshold)")
    def observed(self, obj):
        return _flag_table((obj.analysis or {}).get("observed_flags"))

    @admin.display(description="suppressed by a reviewer")
    def suppressed(self, obj):
        return _flag_table((obj.analysis or {}).get("suppressed_flags"))

    @admin.display(description="quality")
    def quality(self, obj):
        return ", ".join(f"{k}: {v}" for k, v in sorted((obj.quality_metrics or {}).items())) or "—"

    @admin.display(description="recommendations")
    def recommendations(self, obj):
        items = (obj.analysis or {}).get("recommendations") or []
        return format_html("<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((r,) for r in items))) if items else "—"

    @admin.display(description="analyzers and tools")
    def tools(self, obj):
        analysis = obj.analysis or {}
        return format_html("<code>{}</code>", json.dumps({"analyzers": analysis.get("analyzers"),
                                                         "tools": analysis.get("tools")}, sort_keys=True))

    @admin.display(description="agent output")
    def response_pretty(self, obj):
        return format_html('<pre style="white-space:pre-wrap;max-height:40em;overflow:auto">{}</pre>',
                           json.dumps(obj.agent_response, indent=2, ensure_ascii=False))

    @admin.display(description="decided by")
    def decider(self, obj):
        return obj.approved_by.get_username() if obj.approved_by_id else "—"

    def _decide_each(self, request, queryset, decision: str, reason: str = ""):
        for response in queryset:
            label = f"“{self.short_summary(response)}” ({response.pk})"
            if not has_project_perm(request.user, roles.REVIEW, response.project):
                self.message_user(request, f"{label}: you may not decide responses in project {response.project}.",
                                  messages.ERROR)
                continue
            try:
                response_approval_decide(
                    approval_id=response.pk, decider=request.user, decision=decision,
                    reason=reason if decision != "requires_modification" else "",
                    modifications_required=reason if decision == "requires_modification" else None)
            except DomainError as err:
                self.message_user(request, f"{label}: not {RESPONSE_PAST[decision]}: {refusal_text(err)}",
                                  messages.WARNING)
                continue
            self.message_user(request, f"{label}: {RESPONSE_PAST[decision]}.", messages.SUCCESS)

    @admin.action(description="Approve selected responses (asks first for a high or critical risk)")
    def approve_selected(self, request, queryset):
        page = confirm_risky(self, request, queryset, action="approve_selected", title="Approve agent outputs",
                             submit_label="Approve", level_of=lambda response: (response.analysis or {}).get("level"),
                             undecided=queryset.filter(status=queryset.model.Status.PENDING))
        if page is not None:
            return page
        self._decide_each(request, queryset, "approve")
        return None

    @admin.action(description="Reject selected responses (asks for a reason)")
    def reject_selected(self, request, queryset):
        reason, form = ask_reason(self, request, queryset, action="reject_selected", title="Reject agent outputs",
                                  question=f"Reject {plural(queryset.count(), 'output')}? The agents are told the "
                                           f"reason.", submit_label="Reject")
        if form is not None:
            return form
        self._decide_each(request, queryset, "reject", reason)
        return None

    @admin.action(description="Send selected back for modification (asks what must change)")
    def send_back_selected(self, request, queryset):
        reason, form = ask_reason(self, request, queryset, action="send_back_selected",
                                  title="Send agent outputs back for modification",
                                  question="What must change? The agents redo the work under a new call approval.",
                                  submit_label="Send back")
        if form is not None:
            return form
        self._decide_each(request, queryset, "requires_modification", reason)
        return None


class RuleSettingForm(forms.ModelForm):
    class Meta:
        model = RuleSetting
        fields = ["project", "code", "mode", "threshold", "note"]

    def clean_code(self):
        try:
            return rule_code_clean(self.cleaned_data.get("code"))
        except InvalidInput as exc:
            raise forms.ValidationError(exc.extra["fields"]["code"]) from None


@admin.register(RuleSetting)
class RuleSettingAdmin(ProjectManagerEditsMixin, admin.ModelAdmin):
    """Analyzer rules per project: each rule's precision over the last 30 days (from reviewers'
    decisions) above the list; a manager turns a noisy rule to ``observe`` or raises its
    threshold. Saved through approvals.services.rule_setting_save (audited)."""

    change_list_template = "admin/approvals/rulesetting/change_list.html"
    form = RuleSettingForm
    list_display = ["code", "project", "mode", "threshold", "note", "updated_by", "updated_at"]
    list_filter = ["mode", ("project", VisibleProjectListFilter)]
    fields = ["project", "code", "mode", "threshold", "note"]

    def get_readonly_fields(self, request, obj=None):
        return ["project", "code"] if obj is not None else []

    def save_model(self, request, obj, form, change):
        if not self.manages(request, obj.project_id):
            raise PermissionDenied
        saved = rule_setting_save(actor=request.user, project_id=obj.project_id, code=obj.code, mode=obj.mode,
                                  threshold=obj.threshold, note=obj.note)
        obj.pk = saved.pk

    def changelist_view(self, request, extra_context=None):
        projects = list(project_visible_to(user=request.user).values_list("pk", flat=True))
        return super().changelist_view(request, extra_context={
            **(extra_context or {}), "precision_days": PRECISION_DAYS,
            "precision_rows": rule_precision(project_ids=projects)})


@admin.register(FlagSuppression)
class FlagSuppressionAdmin(ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Findings reviewers marked false positives (made through the API, audited)."""

    list_display = ["code", "fingerprint", "project", "reason", "expires_at", "created_by", "revoked_at"]
    list_filter = [("project", VisibleProjectListFilter)]
    actions = ["revoke_selected"]

    @admin.action(description="Revoke selected suppressions")
    def revoke_selected(self, request, queryset):
        for row in queryset:
            try:
                flag_suppression_revoke(actor=request.user, suppression_id=row.pk)
            except DomainError as err:
                self.message_user(request, f"{row}: {err.detail}", messages.WARNING)
                continue
            self.message_user(request, f"{row}: revoked.", messages.SUCCESS)
