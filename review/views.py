"""The reviewers' inbox and decision pages. Every view is behind the login; what a user sees is
filtered by their project roles (someone else's approval is 404); every decision goes through
the domain's service, and a refused one (409 / 410 / 423 / 403 / 400) is shown as a message on
the page, never a 500. htmx requests get the swapped fragment; plain form posts the page."""

import uuid
from functools import wraps

from django.contrib import messages
from django.http import Http404, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET

from approvals.selectors import agent_approval_visible_to, response_approval_visible_to
from approvals.services import (agent_approval_decide, agent_approval_settle_due, budget_override_respond,
                                response_approval_decide, response_approval_settle_due)
from core.errors import DomainError, InvalidInput
from core.parsers import json_or_text, json_to_edit, loads_strict
from core.snapshot import one_snapshot
from core.text import FORM_ERROR_NOTE, has_nul, visible_text
from hitl.selectors import hitl_request_visible_to
from hitl.services import hitl_request_respond, hitl_request_settle_due
from projects.models import Project
from review import selectors
from review.auth import is_htmx, post_only, signed_in
from review.templatetags.review_format import money_text

LEVEL_TAGS = {messages.SUCCESS: "success", messages.ERROR: "error"}


def without_nul(view):
    """A posted field with a NUL character (U+0000: PostgreSQL cannot store it; Django's form
    fields refuse it, these views read the post themselves) is a 400 that decides nothing."""
    @wraps(view)
    def guarded(request, *args, **kwargs):
        if has_nul(*(value for _, values in request.POST.lists() for value in values)):
            return HttpResponseBadRequest("A field holds a NUL character (U+0000), which cannot be stored. "
                                          "Nothing was decided.", content_type="text/plain; charset=utf-8")
        return view(request, *args, **kwargs)
    return guarded


FIELD_LABELS = {"amended_content": "The amended answer", "amended_input_data": "The amended input",
                "reason": "The reason", "response": "The answer"}  # as the forms label them


def _field_text(name: str, message: str) -> str:
    """A field's message under the form's label for it, unless the message names the field itself
    ("A rejection needs a reason.", not "The reason: A rejection needs a reason.")."""
    if name.replace("_", " ").lower() in message.lower():
        return message
    return f"{FIELD_LABELS.get(name, name.replace('_', ' ').capitalize())}: {message}"


def _error_text(exc: DomainError) -> str:
    """The service's own words (their money as money, as on the rest of the page), plus field
    messages for a 400."""
    text = money_text(str(exc.detail))
    fields = exc.extra.get("fields") if isinstance(exc.extra, dict) else None
    if fields:
        parts = [_field_text(name, " ".join(map(str, msgs))) for name, msgs in fields.items()]
        text = f"{text} {'; '.join(parts)}" if text and text != "Invalid input." else "; ".join(parts)
    prefix = {409: "Not possible now", 410: "Too late", 423: "Emergency stop", 403: "Not allowed",
              404: "Not found", 400: "Check the form"}.get(exc.status_code)
    return f"{prefix}: {text}" if prefix else text


# --- inbox ----------------------------------------------------------------------------------
INBOX_SHOWN = 50  # items an inbox page lists; the counts are of them all (200 rendered took 0.2 s a re-fetch)


def _inbox_filters(request):
    """The inbox's filters from its query string: ``kind`` (call, response, hitl, override,
    recovery) and ``project`` (the id of a project the user reviews); anything else is no filter.
    With thousands of calls pending, the questions and overrides (and a project's items) behind
    them could not be reached from these pages."""
    kind = request.GET.get("kind")
    kind = kind if kind in selectors.KINDS else None
    project = None
    try:
        wanted = uuid.UUID(request.GET.get("project") or "")
    except ValueError:
        wanted = None
    if wanted is not None and wanted in selectors.reviewable_project_ids(request.user):
        project = Project.objects.filter(pk=wanted).first()
    return kind, project


def _inbox_context(request, outcome=None):
    """The inbox: its counts of every pending item (of the project filtered on), and the first
    INBOX_SHOWN of them (of the kind filtered on) in its order (riskiest, then oldest). Listing
    7,000 pending items made a 6 MB page of 2.5 s, fetched again every 30 s and after each burst
    of events, which held the web threads agents needed; reading them all to list 200 still took a
    second: the database counts them and reads INBOX_SHOWN of each kind, by indexes in that order."""
    kind, project = _inbox_filters(request)
    project_id = project.pk if project else None
    with one_snapshot():  # the counts and the list of one moment ("37 pending" over 38 rows, under load)
        counts = selectors.inbox_counts(user=request.user, project_id=project_id)
        items = selectors.inbox_items(user=request.user, limit=INBOX_SHOWN, kind=kind, project_id=project_id)
    total = sum(n for _kind, _label, n in counts)
    shown = next(n for k, _label, n in counts if k == kind) if kind else total
    return {"items": items, "more": max(shown - len(items), 0), "counts": counts, "total": total,
            "now": timezone.now(), "outcome": outcome, "kind": kind, "project_filter": project,
            "kind_label": selectors.KINDS[kind][1] if kind else "", "filter_query": selectors.inbox_query(kind, project_id),
            "project_query": selectors.inbox_query(project_id=project_id)}


@signed_in
@require_GET
def inbox(request):
    context = _inbox_context(request)
    context["metrics"] = selectors.reviewer_metrics(user=request.user)
    return render(request, "review/inbox.html", context)


@signed_in
@require_GET
def inbox_items(request):
    return render(request, "review/partials/inbox_items.html", _inbox_context(request))


@signed_in
@post_only("review:inbox", override_id=None)
@without_nul
def override_decide(request, override_id):
    """Approve or reject a budget override from the inbox (reject needs a reason)."""
    override = selectors.visible_override(user=request.user, override_id=override_id)
    if override is None:
        raise Http404
    decision = request.POST.get("decision", "")
    reason = request.POST.get("reason", "")
    try:
        budget_override_respond(override_id=override.pk, actor=request.user, decision=decision, reason=reason)
        outcome = {"level": "success", "text": f"Budget override {override.amount_text} "
                                               f"({override.get_violation_type_display()}) for {override.project.name} "
                                               f"{'approved' if decision == 'approve' else 'rejected'}."}
        status = 200
    except DomainError as exc:
        outcome = {"level": "error", "text": _error_text(exc)}
        status = exc.status_code
    if is_htmx(request):
        return render(request, "review/partials/inbox_items.html", _inbox_context(request, outcome))
    if status == 200:
        messages.success(request, outcome["text"])
        kind, project = _inbox_filters(request)
        return redirect(reverse("review:inbox") + selectors.inbox_query(kind, project and project.pk))
    context = _inbox_context(request, outcome)
    context["metrics"] = selectors.reviewer_metrics(user=request.user)
    return render(request, "review/inbox.html", context, status=status)


@signed_in
@require_GET
def stop_banners(request):
    return render(request, "review/partials/stop_banners.html")


# --- agent call approval --------------------------------------------------------------------
def _call_for(request, approval_id):
    """The call, as it stands now: past its deadline while beat is late or down, it is timed out
    first (as the API's reads do), so no page shows it pending and decidable."""
    visible = agent_approval_visible_to(user=request.user).select_related("task")
    approval = get_object_or_404(visible, pk=approval_id)
    if agent_approval_settle_due(approval):
        approval = get_object_or_404(visible, pk=approval_id)
    return approval


def _decided_elsewhere(obj, user, cancellation=None):
    """The panel refreshed live (an event named it): say what happened, for the aria-live area.
    The reviewer's own decision (its event arriving after their click's answer) is said as their
    click said it, not as news ("now approved by <themselves>")."""
    if obj.status == "pending":
        return None
    state = {"requires_modification": "sent back for modification"}.get(obj.status, obj.get_status_display().lower())
    if not cancellation and obj.approved_by_id == user.pk:
        said = {"requires_modification": "sent it back for modification"}.get(obj.status, f"{state} it")
        return {"level": "success", "text": f"You {said}."}
    if cancellation:
        who = f" by {cancellation['by']}" if cancellation["by"] else ""
    else:
        who = f" by {obj.approved_by.get_username()}" if obj.approved_by_id else ""
    return {"level": "info", "text": f"This request is now {state}{who}."}


def _call_panel_context(request, approval, *, outcome=None, amend_text=None, amend_error="", reason="",
                        reason_error="", oob=False):
    can_decide = selectors.may_review(request.user, approval.project) and approval.requested_by_id != request.user.pk
    pending = approval.status == approval.Status.PENDING
    blocked = approval.budget_state == approval.BudgetState.BLOCKED
    override = None
    if approval.budget_override_id:
        override = selectors.visible_override(user=request.user, override_id=approval.budget_override_id)
    return {
        "approval": approval, "pending": pending, "can_decide": can_decide, "blocked": blocked,
        "override": override, "override_url": selectors.override_inbox_url(override) if override else "",
        "may_decide_override": bool(override and override.status == "pending" and selectors.may_review(
            request.user, approval.project) and (not override.requires_manager_approval
                                                 or selectors.may_manage(request.user, approval.project))
            and override.requested_by_id != request.user.pk),
        "enabled": pending and can_decide,
        "amend_text": amend_text if amend_text is not None else json_to_edit(approval.input_data),
        "original_text": json_to_edit(approval.input_data),  # what an edit is told from (a refused one stays typed)
        "amend_error": amend_error, "reason": reason, "reason_error": reason_error,
        "amended_pretty": selectors.pretty_json(approval.amended_input_data)
        if approval.amended_input_data is not None else "",
        "outcome": outcome, "oob": oob, "risk_level": (approval.risk_assessment or {}).get("level") or "low",
        "cancellation": selectors.call_cancellation(approval),
    }


def _with_lines(flags: list, lines: list) -> list:
    """Flags (most severe first), each with the number of the line its location points at."""
    first_line = {}
    for number, line in enumerate(lines, start=1):
        first_line.setdefault(line["path"], number)
    flags = [{**f, "line": first_line.get(selectors.flag_path(f.get("location")))} for f in flags
             if isinstance(f, dict)]
    return sorted(flags, key=lambda f: -selectors.risk_rank(f.get("severity")))


def _call_page_context(request, approval, **panel):
    flags = (approval.risk_assessment or {}).get("flags") or []
    lines = selectors.annotate_json(approval.input_data, "input_data", flags)
    action_flags = [f for f in flags if selectors.flag_path(f.get("location")) == "proposed_action"]
    context = _call_panel_context(request, approval, **panel)
    context.update({
        "flags": _with_lines(flags, lines),
        "input_lines": lines, "action_flags": action_flags,
        "other_flags": selectors.unplaced_flags(flags, lines, extra_paths=["proposed_action"]),
        "risk_score": (approval.risk_assessment or {}).get("score"),
        "precedent": selectors.precedent_for(approval),
        "responses": list(approval.response_approvals.order_by("-created_at")[:5]),
    })
    return context


@signed_in
@require_GET
def agent_approval(request, approval_id):
    approval = _call_for(request, approval_id)
    return render(request, "review/agent_approval.html", _call_page_context(request, approval))


@signed_in
@require_GET
def agent_approval_panel(request, approval_id):
    approval = _call_for(request, approval_id)
    context = _call_panel_context(request, approval, oob=True)
    context["outcome"] = _decided_elsewhere(approval, request.user, context["cancellation"])
    return render(request, "review/partials/agent_approval_panel.html", context)


@signed_in
@post_only("review:agent_approval")
@without_nul
def agent_approval_decide_view(request, approval_id):
    approval = _call_for(request, approval_id)
    decision = request.POST.get("decision", "")
    reason = request.POST.get("reason", "")
    amend_raw = request.POST.get("amended_input_data")
    panel: dict = {}
    status = 200
    outcome = None
    amended = None
    if decision == "approve" and amend_raw is not None:
        try:
            amended = loads_strict(amend_raw)
        except ValueError as exc:
            panel.update(amend_text=amend_raw, amend_error=f"This is not valid JSON: {exc}. Nothing was decided.")
            status = 400
        else:
            if not isinstance(amended, dict):
                panel.update(amend_text=amend_raw,
                             amend_error="The amended input must be a JSON object ({...}). Nothing was decided.")
                status = 400
    if decision == "reject" and not visible_text(reason):
        panel.update(reason_error="Give a reason for the rejection. Nothing was decided.")
        status = 400
    if decision not in ("approve", "reject"):
        outcome = {"level": "error", "text": "Choose approve or reject."}
        status = 400
    if status == 200:
        try:
            approval = agent_approval_decide(approval_id=approval.pk, decider=request.user, decision=decision,
                                             reason=reason, amended_input_data=amended)
            verb = ("Approved with amended input" if amended is not None else "Approved") \
                if decision == "approve" else "Rejected"
            outcome = {"level": "success", "text": f"{verb}."}
        except DomainError as exc:
            status = exc.status_code
            outcome = {"level": "error", "text": _error_text(exc)}
            if status == 400 or (decision == "approve" and amended is not None and status == 409):
                panel.update(amend_text=amend_raw, reason=reason)  # keep what the reviewer typed
            elif decision == "reject":
                panel.update(reason=reason)
        approval = _call_for(request, approval_id)  # the state after the decision (or after a refusal)
    elif outcome is None:
        outcome = {"level": "error", "text": FORM_ERROR_NOTE}
        if decision == "reject":
            panel.update(reason=reason)
    if is_htmx(request):
        return render(request, "review/partials/agent_approval_panel.html",
                      _call_panel_context(request, approval, outcome=outcome, oob=True, **panel))
    if status == 200:
        messages.success(request, outcome["text"])
        return redirect("review:agent_approval", approval_id=approval.pk)
    return render(request, "review/agent_approval.html",
                  _call_page_context(request, approval, outcome=outcome, **panel), status=status)


# --- response approval ----------------------------------------------------------------------
def _response_for(request, approval_id):
    """The output under review as it stands now (timed out first when past its deadline, as ``_call_for``)."""
    visible = response_approval_visible_to(user=request.user).select_related("agent_call_approval", "task")
    response = get_object_or_404(visible, pk=approval_id)
    if response_approval_settle_due(response):
        response = get_object_or_404(visible, pk=approval_id)
    return response


def _response_panel_context(request, response, *, outcome=None, reason="", reason_error="", modifications="",
                            modifications_error="", oob=False):
    can_decide = selectors.may_review(request.user, response.project) and response.submitted_by_id != request.user.pk
    pending = response.status == response.Status.PENDING
    mods = response.modifications_required
    return {"response": response, "pending": pending, "can_decide": can_decide, "enabled": pending and can_decide,
            "outcome": outcome, "reason": reason, "reason_error": reason_error, "modifications": modifications,
            "modifications_error": modifications_error, "oob": oob, "risk_level": selectors._response_risk(response),
            "cancellation": selectors.response_cancellation(response),
            "modifications_pretty": mods if isinstance(mods, str) or mods is None else selectors.pretty_json(mods)}


def _response_page_context(request, response, **panel):
    flags = response.risk_flags or []
    lines = selectors.annotate_json(response.agent_response, "agent_response", flags)
    analysis = response.analysis or {}
    context = _response_panel_context(request, response, **panel)
    context.update({
        "flags": _with_lines(flags, lines),
        "output_lines": lines,
        "code_blocks": selectors.code_blocks(response.agent_response),
        "observed_flags": analysis.get("observed_flags") or [],
        "suppressed_flags": analysis.get("suppressed_flags") or [],
        "recommendations": analysis.get("recommendations") or [],
        "quality_metrics": sorted((str(k).replace("_", " "), v) for k, v in (response.quality_metrics or {}).items()),
        "next_steps": response.next_steps if isinstance(response.next_steps, list) else [response.next_steps],
        "call": response.agent_call_approval,
    })
    return context


@signed_in
@require_GET
def response_approval(request, approval_id):
    response = _response_for(request, approval_id)
    return render(request, "review/response_approval.html", _response_page_context(request, response))


@signed_in
@require_GET
def response_approval_panel(request, approval_id):
    response = _response_for(request, approval_id)
    context = _response_panel_context(request, response, oob=True)
    context["outcome"] = _decided_elsewhere(response, request.user, context["cancellation"])
    return render(request, "review/partials/response_approval_panel.html", context)


@signed_in
@post_only("review:response_approval")
@without_nul
def response_approval_decide_view(request, approval_id):
    response = _response_for(request, approval_id)
    decision = request.POST.get("decision", "")
    reason = request.POST.get("reason", "")
    modifications = request.POST.get("modifications_required", "")
    panel: dict = {"reason": reason, "modifications": modifications}
    status, outcome = 200, None
    if decision == "reject" and not visible_text(reason):
        panel["reason_error"] = "Give a reason for the rejection. Nothing was decided."
        status = 400
    elif decision == "requires_modification" and not visible_text(modifications):
        panel["modifications_error"] = "Say what must change. Nothing was decided."
        status = 400
    elif decision not in ("approve", "reject", "requires_modification"):
        outcome = {"level": "error", "text": "Choose approve, reject or requires modification."}
        status = 400
    if status == 200:
        try:
            response = response_approval_decide(
                approval_id=response.pk, decider=request.user, decision=decision,
                reason=reason,
                modifications_required=modifications.strip() if decision == "requires_modification" else None)
            outcome = {"level": "success", "text": {"approve": "Approved.", "reject": "Rejected.",
                                                    "requires_modification": "Sent back for modification."}[decision]}
            panel = {}
        except DomainError as exc:
            status = exc.status_code
            outcome = {"level": "error", "text": _error_text(exc)}
        response = _response_for(request, approval_id)
    elif outcome is None:
        outcome = {"level": "error", "text": FORM_ERROR_NOTE}
    if is_htmx(request):
        return render(request, "review/partials/response_approval_panel.html",
                      _response_panel_context(request, response, outcome=outcome, oob=True, **panel))
    if status == 200:
        messages.success(request, outcome["text"])
        return redirect("review:response_approval", approval_id=response.pk)
    return render(request, "review/response_approval.html",
                  _response_page_context(request, response, outcome=outcome, **panel), status=status)


# --- questions and checkpoints (/api/v1/hitl) ------------------------------------------------
def _hitl_context(request, req, *, outcome=None, form=None):
    can_decide = selectors.may_review(request.user, req.project) and req.asked_by_id != request.user.pk
    pending = req.status == req.Status.PENDING
    return {"req": req, "pending": pending, "can_decide": can_decide, "enabled": pending and can_decide,
            "outcome": outcome, "form": form or {}, "context_pretty": selectors.pretty_json(req.context)
            if req.context not in (None, "", {}, []) else "",
            "amended_pretty": selectors.pretty_json(req.amended_content) if req.amended_content is not None else "",
            "cancellation": selectors.hitl_cancellation(req),
            "history": [{**entry, "at": parse_datetime(str(entry.get("at") or "")), "raw_at": entry.get("at")}
                        for entry in reversed(req.history or [])]}  # newest first, as the page says


@signed_in
@require_GET
def hitl_request(request, request_id):
    req = get_object_or_404(hitl_request_visible_to(user=request.user), pk=request_id)
    if hitl_request_settle_due(req):  # timed out first, as the API's reads do (beat late or down)
        req = get_object_or_404(hitl_request_visible_to(user=request.user), pk=request_id)
    return render(request, "review/hitl_request.html", _hitl_context(request, req))


@signed_in
@post_only("review:hitl_request")
@without_nul
def hitl_request_decide(request, request_id):
    """Approve (with the chosen option or an answer), reject (with a reason) or amend (with what
    to do instead: JSON, or plain text) through hitl.services.hitl_request_respond."""
    req = get_object_or_404(hitl_request_visible_to(user=request.user), pk=request_id)
    action = request.POST.get("action", "")
    answer = request.POST.get("response", "")
    amended_text = request.POST.get("amended_content", "")
    form = {"response": answer, "amended_content": amended_text, "action": action}
    amended = None
    refused = None
    if action == "amend":
        try:
            amended = json_or_text(amended_text)   # plain text is a valid amendment too
        except ValueError as exc:
            refused = f"This JSON is refused: {exc}. Nothing was decided."
    try:
        if refused:
            raise InvalidInput(refused, fields={})
        if action == "reject" and not visible_text(answer):  # as on the call and response pages: the agent is told why
            raise InvalidInput("Give a reason for the rejection. Nothing was decided.", fields={})
        if action == "approve" and req.options and not answer:   # the page came back with no word
            raise InvalidInput("Choose one of the options to answer with. Nothing was decided.", fields={})
        if action == "approve" and req.request_type == "question" and not req.options and not visible_text(answer):
            # the agent asked for an answer: an empty one is no answer (a checkpoint's is optional)
            raise InvalidInput("Type an answer: the agent asked a question. Nothing was decided.", fields={})
        hitl_request_respond(request_id=req.pk, responder=request.user, action=action, response=answer,
                             amended_content=amended)
    except DomainError as exc:
        req = get_object_or_404(hitl_request_visible_to(user=request.user), pk=request_id)
        return render(request, "review/hitl_request.html",
                      _hitl_context(request, req, form=form, outcome={  # a 400 is about the form's field
                          "level": "error", "text": _error_text(exc), "field": exc.status_code == 400}),
                      status=exc.status_code)
    messages.success(request, {"approve": "Approved.", "reject": "Rejected.", "amend": "Amended."}.get(action, "Done."))
    return redirect("review:hitl_request", request_id=req.pk)
