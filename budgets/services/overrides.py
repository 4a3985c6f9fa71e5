"""Budget overrides: more room in one window, asked for automatically (a call over a limit)
or by a person, decided by a reviewer (up to the manager threshold) or a manager.

Who must approve is decided when the decision is made, from the deployment's settings
(HITL_MANAGER_COST_THRESHOLD for cost limits, in USD; HITL_MANAGER_TOKEN_THRESHOLD for token
limits, in tokens), never frozen at creation. Deciding an override that blocks calls is a flow
of the layer above (approvals.services.overrides), which calls ``override_decide_locked``."""
import logging
from decimal import Decimal, InvalidOperation

from django.utils import timezone

from audit.services import actor_repr, audit_record
from budgets.hooks import budget_limits_changed, budget_windows_ended
from budgets.services.alerts import check_alerts
from budgets.models import MONEY_LIMIT, BudgetOverrideRequest, BudgetWindow, ProjectBudget, manager_threshold
from budgets.services.windows import FOUR_PLACES, budget_for, current_windows, day_cost_past_critical
from core.errors import AlreadyDecided, DomainError, Forbidden, InvalidInput, TransitionError
from core.redaction import redact
from core.text import visible_text
from core.times import iso_utc
from core.uow import retry_transient
from emergency.services import emergency_stop_trigger
from events.services import event_emit
from projects import roles
from projects.models import Project
from projects.permissions import has_project_perm, require_not_requester, require_project_perm
from projects.uow import project_uow

log = logging.getLogger(__name__)


def override_payload(override: BudgetOverrideRequest) -> dict:
    """Its event's data and audit row: the justification with token-like strings masked (every role
    of the project reads the events; the override itself keeps what was written)."""
    return {"id": str(override.pk), "project_id": str(override.project_id), "violation_type": override.violation_type,
            "requested_amount": f"{override.requested_amount:.4f}",
            "justification": redact(override.justification, 2000),
            "requires_manager_approval": override.requires_manager_approval, "status": override.status}


def override_create_locked(*, project, window: BudgetWindow, violation_type: str, requested_amount: Decimal,
                           justification: str, actor, task_id=None, call_id=None) -> BudgetOverrideRequest:
    """Record a pending override inside the caller's unit of work, with its audit row and event."""
    override = BudgetOverrideRequest.objects.create(
        project=project, window=window, violation_type=violation_type, requested_amount=requested_amount,
        justification=justification, requested_by=actor)
    audit_record(actor=actor, action="budget_override.request", obj=override, project_id=project.pk,
                 after=override_payload(override))
    data = override_payload(override)
    if call_id is not None:
        data["approval_id"] = str(call_id)
    event_emit(project_id=project.pk, task_id=task_id, event_type="budget_override_requested", data=data)
    return override


@retry_transient
def budget_override_create(*, project_id, actor, violation_type: str, requested_amount: Decimal,
                           justification: str) -> BudgetOverrideRequest:
    """A person asks for more room in the current window (by hand, through the API). 423 while
    the project is stopped: nothing spends then, and the recovery settles the budget."""
    with project_uow(project_id, gate=True) as uow:
        require_project_perm(actor, roles.VIEW, uow.project, "request budget overrides")
        day, month = current_windows(uow.project, uow=uow)
        return override_create_locked(project=uow.project, window=day if violation_type.startswith("daily") else month,
                                      violation_type=violation_type, requested_amount=requested_amount,
                                      justification=justification, actor=actor)


def override_decide_locked(*, uow, override_id, actor, decision: str, reason: str = "",
                           reason_required: bool = True) -> BudgetOverrideRequest:
    """Decide a pending override inside the caller's unit of work (stage "override"): approve
    (raising the allowance of its window only) or reject (with a reason unless
    ``reason_required`` is False, as through the API). A reviewer may approve while the window's
    approved overrides of that kind (tokens or cost), this one included, stay within the manager
    threshold, beyond it only a manager; nobody approves an override they requested."""
    if decision not in ("approve", "reject"):
        raise InvalidInput(fields={"decision": ["Must be approve or reject."]})
    if decision == "reject" and not visible_text(reason) and reason_required:
        raise InvalidInput(fields={"reason": ["A rejection needs a reason."]})
    project = uow.project
    override = uow.lock("override", BudgetOverrideRequest.objects, pk=override_id, project=project)
    require_project_perm(actor, roles.REVIEW, project, "decide budget overrides")
    require_not_requester(decider=actor, requester_id=override.requested_by_id)
    tokens = override.violation_type.endswith("token_limit")
    window = None
    if decision == "approve" and not has_project_perm(actor, roles.MANAGE, project):
        threshold = manager_threshold(override.violation_type)
        if override.requested_amount > threshold:
            raise Forbidden(f"Overrides of the {override.violation_type.replace('_', ' ')} above "
                            f"{threshold} need a manager.")
        # the threshold holds for the window's overrides together (requires_manager_approval),
        # read under the window's lock
        window = override.window = uow.lock("budget_window", BudgetWindow.objects, pk=override.window_id)
        if override.requires_manager_approval:
            total = override.window_granted() + override.requested_amount
            raise Forbidden(f"With this one, the overrides approved in this {window.kind}'s window would add "
                            f"{total:.4f} {'tokens' if tokens else 'USD'}, above {threshold}: a manager approves it.")
    if override.status != BudgetOverrideRequest.Status.PENDING:
        if override.status == BudgetOverrideRequest.Status.REJECTED and override.approved_by_id is None:
            # withdrawn by the system (another override approved first, its call ended, its day over):
            # "already rejected" read as a person's refusal, and the reason was not said
            detail = f"The override was withdrawn: {override.rejection_reason or 'it is no longer needed.'}"
        else:
            detail = f"The override is already {override.status}."
        raise AlreadyDecided(detail, current_status=override.status, decider_id=override.approved_by_id,
                             decided_at=override.responded_at)
    if decision == "approve":
        window = window or uow.lock("budget_window", BudgetWindow.objects, pk=override.window_id)
        if window.end <= timezone.now():  # approved, it raised the allowance of a day (or month) gone by
            # (an override asked for by hand has no call behind it: the text says what happens to one that does)
            then = (f"A call it held was admitted again in the new {window.kind} and is still held there by the "
                    f"day's 1.5 x ceiling, which no override lifts: a manager raises the daily cost limit (the call "
                    f"is then admitted at once), or it is rejected." if window.closed_at else
                    f"A call it held is admitted again in the new {window.kind} within minutes (beat), and asks "
                    f"again there if it still does not fit; one asked for by hand is asked for again there.")
            raise TransitionError(f"The {window.kind} this override was for ended at {iso_utc(window.end)}: "
                                  f"approving it would add to a closed budget. {then}",
                                  current_status=override.status, window_end=iso_utc(window.end))
        if not tokens and window.allowance_cost + override.requested_amount > MONEY_LIMIT:
            # the column's ceiling: it was the generic 409 of a total past the database's range, with
            # `status` null, so a client could not tell this override stays pending
            raise TransitionError(f"With this one, the overrides approved in this {window.kind}'s window would add "
                                  f"{window.allowance_cost + override.requested_amount:.4f} USD, more than a "
                                  f"budget holds ({MONEY_LIMIT}): nothing was changed. Reject it, or ask for "
                                  f"less.", current_status=override.status)
    override.status = BudgetOverrideRequest.Status.APPROVED if decision == "approve" else \
        BudgetOverrideRequest.Status.REJECTED
    override.approved_by, override.responded_at = actor, timezone.now()
    override.rejection_reason = reason.strip() if decision == "reject" else ""
    override.save()
    if decision == "approve":
        if tokens:
            window.allowance_tokens += int(override.requested_amount.to_integral_value(rounding="ROUND_CEILING"))
        else:
            window.allowance_cost += override.requested_amount
        window.save(update_fields=["allowance_tokens", "allowance_cost"])
    audit_record(actor=actor, action=f"budget_override.{decision}", obj=override, project_id=project.pk,
                 reason=reason, after=override_payload(override))
    event_emit(project_id=project.pk, event_type="budget_override_decided", data=override_payload(override))
    return override


def override_withdraw_locked(*, uow, override_ids, reason: str) -> int:
    """Reject pending overrides that nothing waits on any more (their calls ended)."""
    return overrides_withdraw(uow.lock_many("override", BudgetOverrideRequest.objects.filter(
        pk__in=override_ids, status=BudgetOverrideRequest.Status.PENDING)), reason=reason)


def overrides_withdraw(overrides, *, reason: str) -> int:
    """Reject pending overrides the caller's unit of work holds locked (stage "override")."""
    withdrawn = 0
    for override in overrides:
        if override.status != BudgetOverrideRequest.Status.PENDING:
            continue
        override.status, override.rejection_reason = BudgetOverrideRequest.Status.REJECTED, reason
        override.responded_at = timezone.now()
        override.save(update_fields=["status", "rejection_reason", "responded_at"])
        audit_record(actor=None, action="budget_override.withdraw", obj=override, project_id=override.project_id,
                     reason=reason, after=override_payload(override))
        event_emit(project_id=override.project_id, event_type="budget_override_decided",
                   data=override_payload(override))
        withdrawn += 1
    return withdrawn


LIMIT_FIELDS = ("daily_token_limit", "monthly_token_limit", "daily_cost_limit", "monthly_cost_limit")
PERCENT_FIELDS = ("warning_percent", "critical_percent", "emergency_percent")


def _four_places(value):
    if isinstance(value, Decimal) and value.is_finite():
        try:
            return value.quantize(FOUR_PLACES)
        except InvalidOperation:  # too many digits: the checks below refuse it
            return value
    return value


@retry_transient
def budget_limits_update(*, project, actor, values: dict) -> ProjectBudget:
    """Set limits and alert thresholds (managers through the API, admins in the admin), audited.
    Percentages must be in (0, 100] and increase: warning < critical < emergency. The manager
    threshold is not a project setting (see manager_threshold)."""
    unknown = set(values) - set(LIMIT_FIELDS) - set(PERCENT_FIELDS)
    if unknown:
        raise InvalidInput(fields={name: ["Not a budget setting."] for name in sorted(unknown)})
    with project_uow(project.pk) as uow:
        uow.enter_stage("project_state")
        budget = ProjectBudget.objects.select_for_update().get(pk=budget_for(uow.project).pk)
        before = {key: getattr(budget, key) for key in values}
        values = {key: _four_places(value) for key, value in values.items()}  # "1000.0000" in the trail, not "1E+3"
        for key, value in values.items():
            setattr(budget, key, value)
        errors = {}
        for name in LIMIT_FIELDS:
            if getattr(budget, name) is None or getattr(budget, name) < 0:
                errors[name] = ["Must be 0 (no limit) or more."]
        for name in PERCENT_FIELDS:
            value = getattr(budget, name)
            if not isinstance(value, int) or not 0 < value <= 100:
                errors[name] = ["Must be a whole percentage above 0 and at most 100."]
        for unit, daily, monthly in (("token", budget.daily_token_limit, budget.monthly_token_limit),
                                     ("cost", budget.daily_cost_limit, budget.monthly_cost_limit)):
            if not errors and daily and monthly and daily > monthly:
                errors[f"daily_{unit}_limit"] = [f"The daily {unit} limit ({daily}) is above the monthly one "
                                                 f"({monthly}): one day could never use it."]
        if not errors and not budget.warning_percent < budget.critical_percent < budget.emergency_percent:
            errors["non_field_errors"] = [
                f"Alert percentages must increase: warning ({budget.warning_percent}) < critical "
                f"({budget.critical_percent}) < emergency ({budget.emergency_percent})."]
        if errors:
            raise InvalidInput(fields=errors)
        budget.save()
        audit_record(actor=actor, action="budget.update", obj=budget, project_id=uow.project.pk, before=before,
                     after=values)
        budget_limits_changed(uow=uow)
        # What is already spent and reserved, against the new limits: a lowered limit alerts now,
        # not at the next call (each alert still fires once per window).
        check_alerts(uow.project, budget, list(current_windows(uow.project, uow=uow)))
        # A daily limit lowered below what the day already holds (2/3 of its spent + reserved cost
        # or less) is budget_critical now: nothing else would trip it until the next call or report,
        # while the calls already reserved could still be approved and started.
        trip = day_cost_past_critical(uow.project, uow=uow)
        if trip is not None and uow.project.status == Project.Status.ACTIVE:
            emergency_stop_trigger(project_id=uow.project.pk, condition=trip.condition, reason=trip.reason,
                                   severity=trip.severity, data={**trip.data, "limits_changed_by": actor_repr(actor)})
    return budget


def budget_close_past_windows(*, now=None) -> int:
    """Beat: mark windows that have ended as closed, one project's unit of work at a time (a
    late settle may still lock them), and withdraw the overrides still pending for them (those
    of blocked calls through ``budget_windows_ended``, which admits the calls in the new windows;
    then the ones asked for by hand). Usage never depends on this: the current window is always
    found by the instant it covers."""
    now = now or timezone.now()
    closed = 0
    past = BudgetWindow.objects.filter(end__lte=now, closed_at__isnull=True)
    for project_id in list(past.values_list("project_id", flat=True).distinct()[:1000]):
        try:
            with project_uow(project_id) as uow:
                budget_windows_ended(uow=uow, now=now)  # calls blocked for a day gone by: admitted in the new one
                windows = uow.lock_many("budget_window", past.filter(project_id=project_id), order_by=("kind", "pk"))
                closed += BudgetWindow.objects.filter(pk__in=[w.pk for w in windows]).update(closed_at=now)
            with project_uow(project_id) as uow:
                # an override of a day gone by with no call behind it (asked by hand) is withdrawn too:
                # it stayed pending in the inbox for ever, and approving it was refused (409)
                stale = uow.lock_many("override", BudgetOverrideRequest.objects.filter(
                    project_id=project_id, status=BudgetOverrideRequest.Status.PENDING, window__end__lte=now))
                overrides_withdraw(stale, reason="Its budget window ended before a decision: ask again for the "
                                                 "new one if it is still needed.")
        except DomainError as exc:  # one project's refusal (rolled back) holds up no other's windows
            log.warning("closing the ended budget windows of project %s failed: %s", project_id, exc)
    return closed
