"""Reviewer pages for one project, its recovery and the audit log (issue 11).

Reads go through the domains' selectors (budgets.selectors.budget_summary, projects.permissions);
every write goes through a service (emergency_stop_trigger, recovery_start, recovery_step_respond)
and a refused one (core.errors.DomainError) is shown with its message, never a 500. Forms post back
and redirect (no JavaScript needed); a page the user may not act on answers 403 with a clear message,
a project they cannot see 404."""
import datetime
import json
import threading
from pathlib import Path
from zoneinfo import ZoneInfo
from collections import Counter
from decimal import Decimal

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from approvals.models import AgentCallApproval, ResponseApproval
from audit.models import AuditEvent
from audit.services import audit_verify_report, chain_key
from budgets.models import BudgetAlert, BudgetOverrideRequest
from budgets.selectors import budget_summary
from core.errors import DomainError
from core.text import clipped
from emergency.models import SEVERITY_MEANINGS, Condition, EmergencyStop, Severity
from emergency.services import emergency_stop_trigger
from hitl.models import HitlRequest
from projects import roles
from projects.models import AgentState, Project, Task
from projects.permissions import has_project_perm, project_visible_to
from recovery.models import RecoverySession, RecoveryStep
from recovery.presentation import assessment_sections, conditions_since, step_result_rows, step_title
from recovery.selectors import lifted_later_by, open_work_a_stop_cancels
from recovery.services import STEPS, flagged_cancelled, recovery_start, recovery_step_respond
from review.auth import post_only, signed_in
from review.selectors import inbox_counts_by_project, inbox_query

AUDIT_PAGE_SIZE = 50
RECENT_TASKS = 15
ALERT_HISTORY = 20
OPEN_RECOVERY = RecoverySession.OPEN_STATUSES

SEVERITY_HELP = {severity: f"{severity.label}: {meaning}" for severity, meaning in SEVERITY_MEANINGS.items()}
# The assessment is read at the recovery's start; on this page the live sections say so.
NOW_TITLES = {"Tasks by status": "Tasks by status now", "Error rate": "Error rate now",
              "Resource use": "Resource use now"}


# --- forms ----------------------------------------------------------------------------
class StopForm(forms.Form):
    reason = forms.CharField(label="Why stop every agent now?", max_length=5000, strip=True,
                             widget=forms.Textarea(attrs={"rows": 3}),
                             error_messages={"required": "Give a reason: it goes into the audit trail and "
                                                         "the alerts, and the recovery starts from it."})
    severity = forms.ChoiceField(label="Severity", choices=Severity.choices, initial=Severity.HIGH,
                                 widget=forms.RadioSelect)


class RecoveryStartForm(forms.Form):
    recovery_type = forms.ChoiceField(choices=RecoverySession.Type.choices, initial=RecoverySession.Type.MANUAL)


class StepDecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approve", "approve"), ("reject", "reject")])
    reason = forms.CharField(required=False, max_length=5000, strip=True)
    option = forms.CharField(required=False, max_length=50)


class AuditFilterForm(forms.Form):
    project = forms.ChoiceField(label="Project", required=False)
    actor = forms.CharField(label="Actor starts with", required=False, max_length=200,
                            widget=forms.TextInput(attrs={"placeholder": "username, or system"}))
    action = forms.CharField(label="Action starts with", required=False, max_length=100,
                             widget=forms.TextInput(attrs={"placeholder": "e.g. emergency_stop"}))
    since = forms.DateField(label="From (UTC day)", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(label="To (UTC day, inclusive)", required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, projects=(), superuser=False, **kwargs):
        super().__init__(*args, **kwargs)
        choices = [("", "All my projects" if not superuser else "All projects")]
        if superuser:
            choices.append(("global", "Global (no project)"))
        choices += [(str(p.pk), p.name) for p in projects]
        self.fields["project"].choices = choices

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            self.add_error("until", "The end date is before the start date.")
        return data


# --- helpers --------------------------------------------------------------------------
def _project_or_404(user, project_id) -> Project:
    project = project_visible_to(user=user).filter(pk=project_id).first()
    if project is None:
        raise Http404("No such project.")
    return project


def _forbidden(request, message: str, project=None):
    return render(request, "review/project_forbidden.html", {"message": message, "project": project}, status=403)


def _inbox_url() -> str:
    try:
        return reverse("review:inbox")
    except NoReverseMatch:  # the inbox is another module's; the page still works without it
        return "/review/"


def _usage(label: str, used, reserved, limit, *, money: bool, warning, critical, allowance=0) -> dict:
    """One budget bar: spent + reserved against the limit (0 = no limit), with what approved
    overrides added to the window (``allowance``: calls may use it past the limit)."""
    used, reserved, limit, allowance = Decimal(used), Decimal(reserved), Decimal(limit), Decimal(allowance)
    total = used + reserved
    percent = (total * 100 / limit) if limit else None
    fmt = (lambda v: f"{v:,.4f}") if money else (lambda v: f"{int(v):,}")
    unit = "USD" if money else "tokens"
    level = "ok"
    if percent is not None:
        level = "over" if percent >= 100 else "critical" if percent >= critical else \
            "warning" if percent >= warning else "ok"
    return {"label": label, "id": "bar-" + label.lower().replace(" ", "-"), "unit": unit,
            "total": fmt(total), "used": fmt(used), "reserved": fmt(reserved), "limit": fmt(limit) if limit else None,
            # <meter> attributes as plain floats (a Decimal may print as 1E+5)
            "value": float(min(total, limit)) if limit else float(total), "max": float(limit),
            "low": float(limit * Decimal(warning) / 100) if limit else None,
            "high": float(limit * Decimal(critical) / 100) if limit else None,
            "percent": percent, "level": level, "has_reserved": reserved > 0,
            "allowance": fmt(allowance) if allowance and limit else None,
            "within_allowance": bool(limit) and allowance > 0 and limit < total <= limit + allowance}


def _budget_bars(summary: dict) -> dict:
    w, c = summary["warning_percent"], summary["critical_percent"]
    day, month = summary["override_allowance_today"], summary["override_allowance_month"]
    return {
        "today": [
            _usage("Tokens today", summary["tokens_used_today"], summary["tokens_reserved"],
                   summary["daily_token_limit"], money=False, warning=w, critical=c, allowance=day["tokens"]),
            _usage("Cost today", summary["cost_incurred_today"], summary["cost_reserved"],
                   summary["daily_cost_limit"], money=True, warning=w, critical=c, allowance=day["cost"]),
        ],
        "month": [
            _usage("Tokens this month", summary["tokens_used_month"], summary["tokens_reserved_month"],
                   summary["monthly_token_limit"], money=False, warning=w, critical=c, allowance=month["tokens"]),
            _usage("Cost this month", summary["cost_incurred_month"], summary["cost_reserved_month"],
                   summary["monthly_cost_limit"], money=True, warning=w, critical=c, allowance=month["cost"]),
        ],
    }


def _pending_counts(project_ids) -> Counter:
    """Per project, everything that waits for a person (as the inbox lists it): calls, responses,
    overrides, questions and checkpoints, and an open recovery (its next step)."""
    counts = Counter()
    for model, status in ((AgentCallApproval, AgentCallApproval.Status.PENDING),
                          (ResponseApproval, ResponseApproval.Status.PENDING),
                          (BudgetOverrideRequest, BudgetOverrideRequest.Status.PENDING),
                          (HitlRequest, HitlRequest.Status.PENDING)):
        counts.update(dict(model.objects.filter(project_id__in=project_ids, status=status).values_list("project_id")
                           .annotate(n=Count("pk")).values_list("project_id", "n")))
    counts.update(RecoverySession.objects.filter(project_id__in=project_ids, status__in=OPEN_RECOVERY)
                  .values_list("project_id", flat=True).distinct())
    return counts


def _active_stop(project):
    return EmergencyStop.objects.filter(project=project, resolved_at__isnull=True).select_related(
        "triggered_by_user").first()


def _project_context(request, project, *, stop_form=None, recovery_form=None, error=None) -> dict:
    user = request.user
    stop = _active_stop(project)
    session = None
    if stop is not None:
        session = RecoverySession.objects.filter(emergency_stop=stop).order_by("-created_at").first()
    summary = budget_summary(project=project)
    agent_states = list(AgentState.objects.filter(project=project).select_related("current_task")
                        .order_by("agent_type"))
    return {
        "project": project,
        "stopped": project.status == Project.Status.EMERGENCY_STOPPED,
        "stop": stop,
        "stop_conditions": stop.condition_details if stop else [],
        "session": session,
        "session_open": session is not None and session.status in OPEN_RECOVERY,
        "agent_states": agent_states,
        "tasks": list(Task.objects.filter(project=project).order_by("-created_at")[:RECENT_TASKS]),
        "task_total": Task.objects.filter(project=project).count(),
        "budget": summary,
        "day_began_at_midnight": _is_local_midnight(summary["last_reset_date"], summary["timezone"]),
        "bars": _budget_bars(summary),
        "alerts": list(BudgetAlert.objects.filter(project=project).order_by("-triggered_at")[:ALERT_HISTORY]),
        "past_stops": list(EmergencyStop.objects.filter(project=project, resolved_at__isnull=False)
                           .order_by("-created_at")[:5]),
        "pending_count": _pending_counts([project.pk])[project.pk],
        "yours_count": inbox_counts_by_project(user=user, project_ids=[project.pk])[project.pk],
        "inbox_url": _inbox_url() + inbox_query(project_id=project.pk),  # its own items (the inbox's filter)
        "can_stop": has_project_perm(user, roles.REVIEW, project),
        "can_manage": has_project_perm(user, roles.MANAGE, project),
        "stop_form": stop_form or StopForm(),
        "severity_help": SEVERITY_HELP,
        "recovery_form": recovery_form or RecoveryStartForm(),
        "error": error,
    }


# --- projects ---------------------------------------------------------------------------
@signed_in
@require_GET
def project_list(request):
    """Every project the user can see, stopped ones first: its status, what waits for a person
    and its open tasks, each a link to its page (the stop button, the recovery, the budget)."""
    projects = list(project_visible_to(user=request.user).order_by("name"))
    ids = [p.pk for p in projects]
    pending = _pending_counts(ids)
    yours = inbox_counts_by_project(user=request.user, project_ids=ids)
    open_tasks = dict(Task.objects.filter(project_id__in=ids, status__in=Task.OPEN_STATUSES).values_list("project_id")
        .annotate(n=Count("pk")).values_list("project_id", "n"))
    rows = [{"project": p, "stopped": p.status == Project.Status.EMERGENCY_STOPPED, "pending": pending[p.pk],
             "open_tasks": open_tasks.get(p.pk, 0), "yours": yours[p.pk]} for p in projects]
    rows.sort(key=lambda row: not row["stopped"])  # stable: by name within each group
    return render(request, "review/projects.html", {"rows": rows})


# --- project page ---------------------------------------------------------------------
@signed_in
@require_GET
def project_detail(request, project_id):
    project = _project_or_404(request.user, project_id)
    return render(request, "review/project.html", _project_context(request, project))


@signed_in
@post_only("review:project")
def project_stop(request, project_id):
    """Two steps, no JavaScript needed: the form (reason, severity) posts here and gets a
    confirmation page; that page posts again with ``confirm=yes`` and only then the project stops."""
    project = _project_or_404(request.user, project_id)
    if not has_project_perm(request.user, roles.REVIEW, project):
        return _forbidden(request, f"Only reviewers and managers of {project.name} may stop its agents.", project)
    form = StopForm(request.POST)
    if not form.is_valid():
        error = None
        if project.status == Project.Status.EMERGENCY_STOPPED:  # its page draws no stop form to show them in
            error = "Nothing was added to the stop: " + " ".join(str(m) for msgs in form.errors.values() for m in msgs)
        return render(request, "review/project.html", _project_context(request, project, stop_form=form, error=error),
                      status=400)
    if request.POST.get("confirm") != "yes":
        return render(request, "review/project_stop_confirm.html", {
            "project": project, "form": form, "severity_label": Severity(form.cleaned_data["severity"]).label,
            "severity_meaning": SEVERITY_MEANINGS[form.cleaned_data["severity"]],
            "open_tasks": Task.objects.filter(project=project, status__in=Task.OPEN_STATUSES).count(),
            "cancels": open_work_a_stop_cancels(project=project),  # as the admin's confirmation says it
            "already_stopped": project.status == Project.Status.EMERGENCY_STOPPED,
        })
    try:
        stop, created = emergency_stop_trigger(project_id=project.pk, condition=Condition.MANUAL_STOP,
                                               reason=form.cleaned_data["reason"],
                                               severity=form.cleaned_data["severity"], actor=request.user)
    except DomainError as exc:
        return render(request, "review/project.html",
                      _project_context(request, project, stop_form=form, error=exc.detail), status=exc.status_code)
    if created:
        messages.success(request, f"{project.name} is stopped: {stop.halted_summary}. Agents get 423 until a "
                                  f"recovery lifts the stop.")
    else:
        messages.warning(request, f"{project.name} was already stopped: your reason was added to the active stop.")
    return redirect("review:project", project_id=project.pk)


@signed_in
@post_only("review:project")
def recovery_start_view(request, project_id):
    project = _project_or_404(request.user, project_id)
    if not has_project_perm(request.user, roles.MANAGE, project):
        return _forbidden(request, f"Only managers of {project.name} may start a recovery.", project)
    form = RecoveryStartForm(request.POST)
    if not form.is_valid():
        return render(request, "review/project.html",
                      _project_context(request, project, recovery_form=form,
                                       error="Choose a recovery type: automated or manual."), status=400)
    try:
        session = recovery_start(project_id=project.pk, actor=request.user,
                                 recovery_type=form.cleaned_data["recovery_type"])
    except DomainError as exc:
        return render(request, "review/project.html",
                      _project_context(request, project, recovery_form=form, error=exc.detail),
                      status=exc.status_code)
    messages.success(request, f"Recovery started ({session.recovery_type}): another reviewer or manager now "
                              f"approves its steps in order.")
    return redirect("review:recovery", session_id=session.pk)


# --- recovery page --------------------------------------------------------------------
def _assessment_sections(assessment: dict) -> list[dict]:
    """recovery.presentation's sections (the admin shows the same), titled for this page."""
    return [{**section, "title": NOW_TITLES.get(section["title"], section["title"])}
            for section in assessment_sections(assessment)]


def _step_view(step: RecoveryStep, next_step, stop) -> dict:
    return {
        "step": step, "title": step_title(step.action),
        # what the review step is about, each linked to its page, before a person approves it
        "to_review": (flagged_cancelled(stop) if step.action == "review_flagged"
                      and step.status == RecoveryStep.Status.PENDING else None),
        "is_next": next_step is not None and step.pk == next_step.pk,
        "options": STEPS.get(step.action, (None, None, None))[2],
        "result_rows": step_result_rows(step.result),
        "automatic": step.status == RecoveryStep.Status.COMPLETED and step.approved_by_id is None,
    }


def _recovery_context(request, session: RecoverySession, *, error=None, invalid=()) -> dict:
    """``invalid``: the next step's fields the error is about ("option", "reason:approve",
    "reason:reject"): marked aria-invalid and described by the error, the first focused."""
    steps = list(session.steps.select_related("approved_by").order_by("order"))
    open_ = session.status in OPEN_RECOVERY
    next_step = session.current_step(steps)
    user = request.user
    return {
        "session": session, "project": session.project, "stop": session.emergency_stop,
        "sections": _assessment_sections(session.assessment),
        "steps": [_step_view(s, next_step, session.emergency_stop) for s in steps], "next_step": next_step,
        "open": open_, "completed": session.status == RecoverySession.Status.COMPLETED,
        "failed": session.status == RecoverySession.Status.FAILED,
        "lifted_by": lifted_later_by(session=session),
        "failing_step": next((s for s in steps if s.status in (RecoveryStep.Status.REJECTED,
                                                               RecoveryStep.Status.FAILED)),
                             None),  # none: a new condition tripped during it
        "new_conditions": conditions_since(session.emergency_stop.condition_details, session.created_at)
        if session.status == RecoverySession.Status.FAILED else [],
        "can_decide": has_project_perm(user, roles.REVIEW, session.project_id),
        "is_starter": session.created_by_id == user.pk,
        "error": error, "invalid": set(invalid),
        "progress_percent": int(session.steps_completed * 100 / session.total_steps) if session.total_steps else 0,
    }


def _session_or_404(user, session_id) -> RecoverySession:
    session = (RecoverySession.objects.filter(pk=session_id, project__in=project_visible_to(user=user))
               .select_related("project", "emergency_stop", "created_by").first())
    if session is None:
        raise Http404("No such recovery.")
    return session


@signed_in
@require_GET
def recovery_detail(request, session_id):
    session = _session_or_404(request.user, session_id)
    return render(request, "review/recovery.html", _recovery_context(request, session))


def _step_fields(errors, decision) -> set:
    """The step form's fields an error names, as the page marks them (a reason per form)."""
    return {f"reason:{decision}" if name == "reason" else name for name in errors}


@signed_in
@post_only("review:recovery", step_id=None)
def recovery_step_decide(request, session_id, step_id):
    """Approve (runs the step) or reject (with a reason) one step; the service enforces the order,
    the second person and the reason, and its refusal is shown on the page."""
    session = _session_or_404(request.user, session_id)
    if not has_project_perm(request.user, roles.REVIEW, session.project_id):
        return _forbidden(request, f"Only reviewers and managers of {session.project.name} may decide "
                                   f"recovery steps.", session.project)
    form = StepDecisionForm(request.POST)
    if not form.is_valid():  # what is wrong (a reason past 5,000 characters was "Choose approve or reject.")
        error = "Choose approve or reject." if "decision" in form.errors else " ".join(
            f"The {name}: {' '.join(messages_)}" for name, messages_ in form.errors.items())
        return render(request, "review/recovery.html",
                      _recovery_context(request, session, error=error,
                                        invalid=_step_fields(form.errors, request.POST.get("decision"))),
                      status=400)
    step = RecoveryStep.objects.filter(session=session, pk=step_id).first()
    try:
        session = recovery_step_respond(session_id=session.pk, step_id=step_id, actor=request.user,
                                        decision=form.cleaned_data["decision"], reason=form.cleaned_data["reason"],
                                        option=form.cleaned_data["option"], option_required=True)
    except DomainError as exc:
        detail = exc.detail
        fields = exc.extra.get("fields") if isinstance(exc.extra, dict) else None
        if fields:
            detail = " ".join(str(m) for msgs in fields.values() for m in (msgs if isinstance(msgs, list) else [msgs]))
        session = _session_or_404(request.user, session_id)
        return render(request, "review/recovery.html",
                      _recovery_context(request, session, error=detail,
                                        invalid=_step_fields(fields or {}, form.cleaned_data["decision"])),
                      status=exc.status_code)
    title = step_title(step.action) if step else "The step"
    if form.cleaned_data["decision"] == "approve":
        if session.status == RecoverySession.Status.COMPLETED:
            messages.success(request, f"{title}: done. The emergency stop is lifted and {session.project.name} "
                                      f"is active again.")
        elif session.status == RecoverySession.Status.FAILED:
            messages.error(request, f"{title} failed: the recovery failed and the stop stays.")
        else:
            messages.success(request, f"Step {step.order if step else ''} approved and run: {title}.")
    else:
        messages.warning(request, f"Step {step.order if step else ''} rejected: the recovery failed and the stop "
                                  f"stays. A manager can start a new one.")
    return redirect("review:recovery", session_id=session.pk)


# --- audit log ------------------------------------------------------------------------
def _changes(value) -> str | None:
    """A row's before or after as the page shows it: the text as written (an emoji, Hebrew), not
    as \\u escapes (the admin's audit page showed it readably, this one did not)."""
    # each list cut to its first few (a stop's row listed its 9,000 tasks: a page of 50 rows was 4 MB)
    return None if value is None else json.dumps(clipped(value), indent=2, sort_keys=True, ensure_ascii=False)


def _audit_rows(user, form: AuditFilterForm, visible_ids):
    rows = AuditEvent.objects.all()
    if not user.is_superuser:
        rows = rows.filter(project_id__in=visible_ids)
    if form.is_valid():
        data = form.cleaned_data
        if data["project"] == "global":
            rows = rows.filter(project_id__isnull=True)
        elif data["project"]:
            rows = rows.filter(project_id=data["project"])
        if data["actor"]:
            # by the name at the time or the user's name now (renamed since: their history was not found)
            rows = rows.filter(Q(actor_repr__istartswith=data["actor"]) | Q(actor__username__istartswith=data["actor"]))
        if data["action"]:
            rows = rows.filter(action__startswith=data["action"])
        tz = timezone.get_current_timezone()
        if data["since"]:
            rows = rows.filter(created_at__gte=datetime.datetime.combine(data["since"], datetime.time.min, tz))
        if data["until"] and data["until"] < datetime.date.max:  # to the last day there is: no end
            end = datetime.datetime.combine(data["until"] + datetime.timedelta(days=1), datetime.time.min, tz)
            rows = rows.filter(created_at__lt=end)
    else:
        rows = rows.none()
    return rows.order_by("-pk")  # insertion order (the primary key index): newest first, cheap at any size


def _chain_named(problem: str, names: dict) -> str:
    """``chain 06c51f44-…: row 3 …`` with its project's name: ``chain 06c51f44-… (Alpha): …``."""
    key, sep, rest = problem.removeprefix("chain ").partition(":")
    if not problem.startswith("chain ") or not sep or key not in names:
        return problem
    return f"chain {key} ({names[key]}):{rest}"


# One walk at a time in a web process: it re-hashes every row it covers (an admin's, the whole
# trail: about 20 s at 200,000 rows), and four presses at once held every thread of two processes
# while agents' requests waited 30 s for a connection and got 503.
_VERIFYING = threading.Lock()


def _is_local_midnight(instant, zone: str) -> bool:
    """Whether the day window began at midnight in the project's time zone (after a change of zone
    the current window runs to its end, begun at midnight in the zone before)."""
    local = instant.astimezone(ZoneInfo(zone))
    return (local.hour, local.minute, local.second, local.microsecond) == (0, 0, 0, 0)


def _verification(user, visible_ids) -> dict:
    """Walk the chains (every row: on demand only): an admin's, every chain; anyone else's, their
    projects' chains only (it walked the whole trail for them). While another walk runs in this
    process, none: ``{"busy": True}``."""
    if not _VERIFYING.acquire(blocking=False):
        return {"busy": True}
    # Against the checkpoints too, when beat has written any: a chain cut short at its end (its head
    # rewritten to match) or deleted whole verified as OK on its own, as `verify_audit` without
    # --checkpoints says; the page said OK where `verify_audit --checkpoints` did not.
    directory = settings.HITL_AUDIT_CHECKPOINT_DIR
    checkpoint_dir = directory if directory and Path(directory).is_dir() else None
    try:
        started = timezone.now()
        report = audit_verify_report(project_ids=None if user.is_superuser else visible_ids,
                                     checkpoint_dir=checkpoint_dir)
        elapsed = (timezone.now() - started).total_seconds()
    finally:
        _VERIFYING.release()
    names = {chain_key(pk): name for pk, name in project_visible_to(user=user).values_list("pk", "name")}
    problems = [_chain_named(problem, names) for problem in report.problems]
    return {"ok": not problems, "problems": problems, "rows": report.rows, "chains": report.chains,
            "checkpoints": report.checkpoints, "seconds": elapsed, "at": timezone.now()}


@signed_in
@require_GET
def audit_log(request):
    user = request.user
    projects = list(project_visible_to(user=user).order_by("name"))
    visible_ids = [p.pk for p in projects]
    params = request.GET.copy()
    for name in ("page", "verify"):
        params.pop(name, None)
    form = AuditFilterForm(params, projects=projects, superuser=user.is_superuser)  # every field optional
    paginator = Paginator(_audit_rows(user, form, visible_ids), AUDIT_PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    names = {p.pk: p.name for p in projects}
    events = [{"row": e, "project_name": names.get(e.project_id) if e.project_id else "global",
               "before": _changes(e.before),
               "after": _changes(e.after)}
              for e in page.object_list]
    verification = _verification(user, visible_ids) if request.GET.get("verify") else None
    context = {"form": form, "page": page, "events": events, "query": params.urlencode(),
               "verification": verification, "total": paginator.count}
    if verification is not None and request.htmx:
        return render(request, "review/project_partials/audit_verification.html", context)
    return render(request, "review/audit.html", context)
