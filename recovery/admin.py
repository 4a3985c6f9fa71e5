"""Recoveries in the Django admin. A session's page walks a reviewer through its plan: the
assessment as readable sections, every step in order with the next one named before it runs, and
Approve-and-run / Reject buttons. Every decision (page or list action) goes through
recovery.services.recovery_step_respond, the service the API uses; a refusal is an admin message."""
import uuid

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db.models import OuterRef, Subquery
from django.urls import reverse
from django.utils.html import format_html

from core.admin import ReadOnlyAdminMixin, action_page, ask_reason, back_to_messages
from core.errors import DomainError, InvalidInput
from core.text import has_nul
from emergency.admin import EmergencyStopAdmin, stop_preview
from emergency.models import EmergencyStop
from projects import roles
from projects.admin_mixins import ProjectScopedAdminMixin
from projects.permissions import has_project_perm
from recovery.models import RecoverySession, RecoveryStep
from recovery.selectors import lifted_later_by, open_work_a_stop_cancels
from recovery.presentation import assessment_sections, conditions_since, step_result_rows, step_title
from recovery.services import STEPS, recovery_start, recovery_step_respond

OPEN = RecoverySession.OPEN_STATUSES


def _refusal(err: DomainError) -> str:
    """A service's refusal as one sentence (an InvalidInput's field messages, else its detail)."""
    fields = err.extra.get("fields") if isinstance(err, InvalidInput) else None
    if fields:
        return " ".join(str(m) for msgs in fields.values() for m in (msgs if isinstance(msgs, list) else [msgs]))
    return err.detail


def _step_name(step: RecoveryStep) -> str:
    return f"step {step.order}, {step_title(step.action)} ({step.action})"


def _next_pending(session: RecoverySession):
    return session.steps.filter(status=RecoveryStep.Status.PENDING).order_by("order").first()


@admin.register(RecoverySession)
class RecoverySessionAdmin(ProjectScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Sessions are opened by managers (API, or "Start a recovery session" on a stop); each
    step is approved or rejected on the session's page, by a list action or through the API,
    always by the step service."""

    list_display = ["project", "status", "progress", "next_step", "recovery_type", "created_by", "created_at",
                    "completed_at"]
    list_filter = ["status"]
    fields = ["project", "emergency_stop", "recovery_type", "status", "steps_completed", "total_steps",
              "created_by", "created_at", "completed_at"]
    readonly_fields = fields
    change_form_template = "admin/recovery/recoverysession/change_form.html"
    actions = ["approve_next_step", "reject_next_step"]

    def get_queryset(self, request):
        pending = RecoveryStep.objects.filter(session=OuterRef("pk"), status=RecoveryStep.Status.PENDING) \
            .order_by("order")
        return super().get_queryset(request).select_related("project", "created_by").annotate(
            next_order=Subquery(pending.values("order")[:1]), next_action=Subquery(pending.values("action")[:1]))

    @admin.display(description="steps done")
    def progress(self, obj):
        return f"{obj.steps_completed} of {obj.total_steps}"

    @admin.display(description="next step")
    def next_step(self, obj):
        if obj.status not in OPEN or getattr(obj, "next_order", None) is None:
            return "—"
        return f"{obj.next_order}. {step_title(obj.next_action)}"

    # --- the session's page: the walk-through ----------------------------------------------
    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method == "POST" and "_step_decision" in request.POST:
            obj = self.get_object(request, unquote(object_id))
            if obj is None:  # not visible to this user: the admin's own answer
                return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
            self._decide_from_page(request, obj)
            return back_to_messages(request)  # the outcome is in the messages
        obj = self.get_object(request, unquote(object_id))
        context = dict(extra_context or {})
        if obj is not None:
            context.update(self.walkthrough_context(request, obj))
        return super().change_view(request, object_id, form_url, context)

    def walkthrough_context(self, request, session: RecoverySession) -> dict:
        steps = list(session.steps.select_related("approved_by").order_by("order"))
        is_open = session.status in OPEN
        next_step = session.current_step(steps)
        user = request.user
        if not is_open:
            why_not = f"This recovery is {session.get_status_display().lower()}: nothing left to decide."
        elif not has_project_perm(user, roles.REVIEW, session.project_id):
            why_not = (f"You may see this recovery but not decide its steps (no reviewer or manager role on "
                       f"project {session.project.slug}).")
        elif session.created_by_id == user.pk:
            why_not = "You started this recovery: another reviewer or manager approves its steps (two people)."
        else:
            why_not = ""
        stop = session.emergency_stop
        failing = next((s for s in steps if s.status in (RecoveryStep.Status.REJECTED, RecoveryStep.Status.FAILED)),
                       None)
        return {
            "walk_steps": [{
                "step": s, "title": step_title(s.action), "is_next": next_step is not None and s.pk == next_step.pk,
                "result_rows": step_result_rows(s.result),
                "automatic": s.status == RecoveryStep.Status.COMPLETED and s.approved_by_id is None,
            } for s in steps],
            "next_step": next_step,
            "next_title": step_title(next_step.action) if next_step else "",
            "next_options": STEPS.get(next_step.action, (None, None, None))[2] if next_step else None,
            "sections": assessment_sections(session.assessment),
            "session_open": is_open,
            "session_completed": session.status == RecoverySession.Status.COMPLETED,
            "session_failed": session.status == RecoverySession.Status.FAILED,
            "lifted_by": lifted_later_by(session=session),
            "failing_step": failing,
            "new_conditions": conditions_since(stop.condition_details, session.created_at)
            if session.status == RecoverySession.Status.FAILED and failing is None else [],
            "stop": stop,
            "can_decide": not why_not,
            "cannot_decide_reason": why_not,
        }

    def _decide_from_page(self, request, session: RecoverySession) -> None:
        decision = request.POST.get("decision", "")
        if has_nul(request.POST.get("reason", ""), request.POST.get("option", "")):
            self.message_user(request, "The reason holds a NUL character (U+0000), which cannot be stored. "
                                       "Nothing was decided.", messages.ERROR)
            return
        if decision not in ("approve", "reject"):
            self.message_user(request, f"Unknown decision {decision!r}.", messages.ERROR)
            return
        try:
            step_id = uuid.UUID(request.POST.get("step_id", ""))
        except ValueError:
            self.message_user(request, "No such step in this recovery.", messages.ERROR)
            return
        step = RecoveryStep.objects.filter(session=session, pk=step_id).first()
        if step is None:
            self.message_user(request, "No such step in this recovery.", messages.ERROR)
            return
        self._respond(request, session, step, decision, reason=request.POST.get("reason", ""),
                      option=request.POST.get("option", ""), option_required=True)  # the page's choice, not a default

    def _respond(self, request, session, step, decision: str, reason: str = "", option: str = "",
                 option_required: bool = False) -> None:
        """One decision through the step service, its outcome or refusal as an admin message."""
        verb = "approved" if decision == "approve" else "rejected"
        try:
            session = recovery_step_respond(session_id=session.pk, step_id=step.pk, actor=request.user,
                                            decision=decision, reason=reason, option=option,
                                            option_required=option_required)
        except DomainError as err:
            self.message_user(request, f"{session.project.name}: {_step_name(step)} not {verb}: {_refusal(err)}",
                              messages.ERROR)
            return
        step.refresh_from_db()
        project = session.project
        if step.status == RecoveryStep.Status.REJECTED:
            self.message_user(request, f"{project.name}: {_step_name(step)} rejected. The recovery failed and the "
                                       f"emergency stop stays; a manager can start a new recovery.", messages.WARNING)
        elif step.status == RecoveryStep.Status.FAILED:
            error = (step.result or {}).get("error", "") if isinstance(step.result, dict) else ""
            self.message_user(request, f"{project.name}: {_step_name(step)} failed{f': {error}' if error else ''}. "
                                       f"The recovery failed and the emergency stop stays.", messages.ERROR)
        elif session.status == RecoverySession.Status.COMPLETED:
            self.message_user(request, f"{project.name}: {_step_name(step)} approved and run. The emergency stop is "
                                       f"lifted: {project.name} is active again and accepts agent calls.",
                              messages.SUCCESS)
        else:
            following = _next_pending(session) if session.status in OPEN else None
            then = f" Next: {_step_name(following)}, waiting for approval." if following else ""
            self.message_user(request, f"{project.name}: {_step_name(step)} approved and run.{then}", messages.SUCCESS)

    # --- list actions: the same service, on the step each session showed -------------------
    # An action's page names the next step of each selected session and carries its id, so the
    # step decided is the one the reviewer read: "approve the next step" ran whatever was next
    # when the form arrived (one approved by someone else meanwhile made the click run the step
    # after it, the stop's lift among them), and chose "resume" for the halted tasks unasked.
    NEXT_STEP_PAGE = "admin/recovery/recoverysession/next_step_form.html"

    def _shown_step(self, request, session):
        """The step the action's page named for ``session`` (its id posted back), else None."""
        try:
            step_id = uuid.UUID(request.POST.get(f"step_{session.pk}", ""))
        except ValueError:
            return None
        return RecoveryStep.objects.filter(session=session, pk=step_id).first()

    def _next_steps(self, request, queryset) -> list[dict]:
        """Each session's next step, for the action's page; the one it named already when the page
        is shown again (a reason left out): the name and the id posted stay the same."""
        rows = []
        for session in queryset:
            step = self._shown_step(request, session) or (_next_pending(session) if session.status in OPEN else None)
            rows.append({"session": session, "step": step, "name": _step_name(step) if step else "",
                         "options": STEPS[step.action][2] if step else None})
        return rows

    def _respond_shown(self, request, queryset, decision: str, reason: str = "") -> None:
        for session in queryset:
            step = self._shown_step(request, session)
            if step is None:  # none was waiting when the page was shown, or it was selected since
                verb = "approved" if decision == "approve" else "rejected"
                self.message_user(request, f"{session}: no step was named for it, so none was {verb}.",
                                  messages.WARNING)
                continue
            self._respond(request, session, step, decision, reason=reason,
                          option=request.POST.get(f"option_{session.pk}", ""), option_required=True)

    @admin.action(description="Approve and run the next step (names it first)")
    def approve_next_step(self, request, queryset):
        if "apply" not in request.POST:
            return action_page(self, request, queryset, action="approve_next_step", template=self.NEXT_STEP_PAGE,
                               title="Approve and run recovery steps", submit_label="Approve and run",
                               question="Approve and run these steps? Each is run as named here; one decided by "
                                        "someone else meanwhile is not run, nor the step after it.",
                               steps=self._next_steps(request, queryset))
        self._respond_shown(request, queryset, "approve")
        return None

    @admin.action(description="Reject the next step (names it, asks for a reason)")
    def reject_next_step(self, request, queryset):
        reason, form = ask_reason(self, request, queryset, action="reject_next_step", title="Reject recovery steps",
                                  question="Reject these steps? The recovery fails and the emergency stop stays.",
                                  submit_label="Reject", template=self.NEXT_STEP_PAGE,
                                  steps=self._next_steps(request, queryset))
        if form is not None:
            return form
        self._respond_shown(request, queryset, "reject", reason)
        return None


admin.site.unregister(EmergencyStop)


@admin.register(EmergencyStop)
class EmergencyStopWithRecoveryAdmin(EmergencyStopAdmin):
    """The stops admin (emergency.admin) plus starting a recovery, added by this layer."""

    actions = [*(EmergencyStopAdmin.actions or []), "start_recovery"]

    @admin.action(description="Start a recovery session (managers)")
    def start_recovery(self, request, queryset):
        for stop in queryset:
            if stop.resolved_at is not None:  # it would have started one for the project's active stop
                self.message_user(request, f"{stop.project.name}: this stop is resolved already: nothing to recover "
                                           f"(a recovery starts from the project's active stop).", messages.WARNING)
                continue
            try:
                session = recovery_start(project_id=stop.project_id, actor=request.user, recovery_type="manual")
            except DomainError as err:
                self.message_user(request, f"{stop.project.name}: {_refusal(err)}", messages.WARNING)
                continue
            first = _next_pending(session)
            self.message_user(request, format_html(
                '{}: recovery started with {} steps; another reviewer or manager approves them in order on '
                '<a href="{}">its page</a>{}.', stop.project.name, session.total_steps,
                reverse("admin:recovery_recoverysession_change", args=[session.pk]),
                f" (first: {_step_name(first)})" if first else ""), messages.SUCCESS)


# The admin's stop confirmation (emergency.admin) lists what the stop cancels in the layers below.
stop_preview.connect(open_work_a_stop_cancels)
