"""Budgets: reservations at request time, settlement, releases, alerts and overrides.

Every function here runs inside the caller's transaction after the project row is locked
(approvals lock it for the emergency gate), so one project's budget changes are serialised;
the windows are then locked day before month. Money is Decimal throughout."""
from datetime import datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from audit.services import audit_record
from budgets.models import (
    BudgetAlert,
    BudgetOverrideRequest,
    BudgetWindow,
    ProjectBudget,
    UsageEntry,
)
from events.services import event_emit
from projects.notifications import notify_project_on_commit

ZERO = Decimal("0.0000")
FOUR_PLACES = Decimal("0.0001")
CRITICAL_FACTOR = Decimal("1.5")


class BudgetCritical(Exception):
    """Projected daily cost over 1.5 x the limit: the caller rolls back and stops the project."""

    def __init__(self, projected: Decimal, limit: Decimal):
        super().__init__(f"projected daily cost {projected} over 1.5 x {limit}")
        self.projected, self.limit = projected, limit


# --- windows -------------------------------------------------------------------------
def window_bounds(tz_name: str, kind: str, now) -> tuple[datetime, datetime]:
    """[start, end) of the local day or month containing ``now``, as UTC datetimes. A day
    starts at local midnight (23 or 25 hours long on daylight-saving days); a month on the 1st."""
    tz = ZoneInfo(tz_name)
    local = now.astimezone(tz)
    if kind == BudgetWindow.Kind.DAY:
        first = local.date()
        following = first + timedelta(days=1)
    else:
        first = local.date().replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    start = datetime.combine(first, time(), tzinfo=tz).astimezone(ZoneInfo("UTC"))
    end = datetime.combine(following, time(), tzinfo=tz).astimezone(ZoneInfo("UTC"))
    return start, end


def _window(project, kind: str, now, lock: bool) -> BudgetWindow:
    start, end = window_bounds(project.timezone, kind, now)
    qs = (BudgetWindow.objects.select_for_update(of=("self",)) if lock else BudgetWindow.objects).order_by()
    window = qs.filter(project=project, kind=kind, start=start).first()
    if window is None:
        try:
            with transaction.atomic():
                BudgetWindow.objects.create(project=project, kind=kind, start=start, end=end)
        except IntegrityError:
            pass  # made concurrently
        window = qs.get(project=project, kind=kind, start=start)
    return window


def current_windows(project, now=None, lock: bool = True) -> tuple[BudgetWindow, BudgetWindow]:
    """The day and month windows of ``now`` (created on first use), locked day then month."""
    now = now or timezone.now()
    return _window(project, BudgetWindow.Kind.DAY, now, lock), _window(project, BudgetWindow.Kind.MONTH, now, lock)


def _add(window: BudgetWindow, *, reserved_tokens=0, reserved_cost=ZERO, spent_tokens=0, spent_cost=ZERO) -> None:
    """Change a locked window's totals in Python Decimal (exact on every database: SQLite would
    do F() arithmetic on floats) and save them."""
    window.reserved_tokens += reserved_tokens
    window.reserved_cost = (window.reserved_cost + reserved_cost).quantize(FOUR_PLACES)
    window.spent_tokens += spent_tokens
    window.spent_cost = (window.spent_cost + spent_cost).quantize(FOUR_PLACES)
    window.save(update_fields=["reserved_tokens", "reserved_cost", "spent_tokens", "spent_cost"])


def budget_for(project) -> ProjectBudget:
    budget, _ = ProjectBudget.objects.get_or_create(project=project)
    return budget


# --- reservation -----------------------------------------------------------------------
def _violations(budget: ProjectBudget, day: BudgetWindow, month: BudgetWindow, tokens: int, cost: Decimal):
    """The limits this call would pass: [(violation_type, window, excess)]."""
    checks = [
        ("daily_token_limit", day, Decimal(budget.daily_token_limit + day.allowance_tokens),
         Decimal(day.spent_tokens + day.reserved_tokens + tokens)),
        ("monthly_token_limit", month, Decimal(budget.monthly_token_limit + month.allowance_tokens),
         Decimal(month.spent_tokens + month.reserved_tokens + tokens)),
        ("daily_cost_limit", day, budget.daily_cost_limit + day.allowance_cost,
         day.spent_cost + day.reserved_cost + cost),
        ("monthly_cost_limit", month, budget.monthly_cost_limit + month.allowance_cost,
         month.spent_cost + month.reserved_cost + cost),
    ]
    # A limit of 0 means "no limit" (as for the alerts and the 1.5 x rule).
    return [(kind, window, used - limit) for kind, window, limit, used in checks
            if used > limit and limit - _allowance(window, kind) > 0]


def _allowance(window: BudgetWindow, violation: str) -> Decimal:
    return Decimal(window.allowance_tokens) if violation.endswith("token_limit") else window.allowance_cost


def budget_reserve(*, approval, now=None) -> BudgetOverrideRequest | None:
    """Reserve the call's estimate against today's and this month's windows, all or nothing.
    If it would pass a limit, nothing is reserved: a BudgetOverrideRequest is created and
    linked, and the call stays blocked until a person approves the override. Raises
    BudgetCritical when the projected daily cost passes 1.5 x the daily cost limit."""
    now = now or timezone.now()
    project = approval.project
    budget = budget_for(project)
    day, month = current_windows(project, now)
    tokens, cost = approval.estimated_tokens, approval.estimated_cost
    projected = day.spent_cost + day.reserved_cost + cost
    if budget.daily_cost_limit and projected > budget.daily_cost_limit * CRITICAL_FACTOR:  # overrides do not lift it
        raise BudgetCritical(projected, budget.daily_cost_limit)
    violations = _violations(budget, day, month, tokens, cost)
    if violations:
        violation, window, excess = violations[0]
        amount = excess.quantize(Decimal("0.0001"))
        override = BudgetOverrideRequest.objects.create(
            project=project, window=window, violation_type=violation, requested_amount=amount,
            justification=f"Automatic: the call {approval.pk} ({approval.agent_type}: "
                          f"{approval.proposed_action[:200]}) would pass the {violation.replace('_', ' ')} by {amount}.",
            requires_manager_approval=_needs_manager(budget, violation, amount), requested_by=approval.requested_by)
        approval.budget_override_id = override.pk
        approval.save(update_fields=["budget_override_id", "updated_at"])
        audit_record(actor=approval.requested_by, action="budget_override.request", obj=override,
                     project_id=project.pk, after=override_payload(override))
        event_emit(project_id=project.pk, task_id=approval.task_id, event_type="budget_override_requested",
                   data={**override_payload(override), "approval_id": str(approval.pk)})
        return override
    UsageEntry.objects.create(project=project, approval=approval, kind=UsageEntry.Kind.RESERVE, day_window=day,
                              month_window=month, reserved_tokens=tokens, reserved_cost=cost)
    for window in (day, month):
        _add(window, reserved_tokens=tokens, reserved_cost=cost)
    _check_alerts(project, budget, [day.pk, month.pk])
    return None


def _needs_manager(budget: ProjectBudget, violation: str, amount: Decimal) -> bool:
    """Cost overrides above the manager threshold need a manager (token overrides: a reviewer)."""
    return violation.endswith("cost_limit") and amount > budget.manager_threshold


def _close_reservation(*, approval_id, kind: str, tokens_used: int = 0, actual_cost: Decimal = ZERO) -> bool:
    reserve = UsageEntry.objects.filter(approval_id=approval_id, kind=UsageEntry.Kind.RESERVE).first()
    if reserve is None:
        return False  # never reserved (blocked by an override): nothing to close
    windows = list(BudgetWindow.objects.select_for_update().filter(
        pk__in=[reserve.day_window_id, reserve.month_window_id]).order_by("kind"))  # "day" < "month"
    closed = set(UsageEntry.objects.filter(approval_id=approval_id).exclude(kind=UsageEntry.Kind.RESERVE)
                 .values_list("kind", flat=True))
    if kind in closed or (kind == UsageEntry.Kind.RELEASE and closed):
        return False  # already settled or released: a retried report changes nothing
    # A settle after a release (a late report) only adds the spend: the reservation is gone.
    released = UsageEntry.Kind.RELEASE in closed
    give_back_tokens = 0 if released else reserve.reserved_tokens
    give_back_cost = ZERO if released else reserve.reserved_cost
    try:
        with transaction.atomic():
            UsageEntry.objects.create(
                project_id=reserve.project_id, approval_id=approval_id, kind=kind, day_window_id=reserve.day_window_id,
                month_window_id=reserve.month_window_id, reserved_tokens=-give_back_tokens,
                reserved_cost=-give_back_cost, spent_tokens=tokens_used, spent_cost=actual_cost)
    except IntegrityError:
        return False
    for window in windows:
        _add(window, reserved_tokens=-give_back_tokens, reserved_cost=-give_back_cost, spent_tokens=tokens_used,
             spent_cost=actual_cost)
    return True


def budget_release(*, approval_id) -> bool:
    """A rejected, cancelled or timed-out call gives its reservation back (once)."""
    return _close_reservation(approval_id=approval_id, kind=UsageEntry.Kind.RELEASE)


def budget_release_many(*, approval_ids) -> int:
    """Release the open reservations of many calls at once (an emergency stop cancels them
    all): one ledger row each, one update per window. The caller holds the project lock."""
    if not approval_ids:
        return 0
    closed = UsageEntry.objects.filter(approval_id__in=approval_ids).exclude(kind=UsageEntry.Kind.RESERVE)
    reserves = list(UsageEntry.objects.filter(approval_id__in=approval_ids, kind=UsageEntry.Kind.RESERVE)
                    .exclude(approval_id__in=closed.values("approval_id")))
    if not reserves:
        return 0
    window_ids = {r.day_window_id for r in reserves} | {r.month_window_id for r in reserves}
    windows = {w.pk: w for w in BudgetWindow.objects.select_for_update().filter(pk__in=window_ids).order_by("kind", "pk")}
    UsageEntry.objects.bulk_create(UsageEntry(
        project_id=r.project_id, approval_id=r.approval_id, kind=UsageEntry.Kind.RELEASE, day_window_id=r.day_window_id,
        month_window_id=r.month_window_id, reserved_tokens=-r.reserved_tokens, reserved_cost=-r.reserved_cost)
        for r in reserves)
    totals: dict[int, list] = {}
    for r in reserves:
        for window_id in (r.day_window_id, r.month_window_id):
            tokens_cost = totals.setdefault(window_id, [0, ZERO])
            tokens_cost[0] += r.reserved_tokens
            tokens_cost[1] += r.reserved_cost
    for window_id, (tokens, cost) in totals.items():
        _add(windows[window_id], reserved_tokens=-tokens, reserved_cost=-cost)
    return len(reserves)


def budget_settle(*, approval, tokens_used: int, actual_cost: Decimal) -> bool:
    """The call ran: its real usage replaces the reservation, exactly once, even when it is
    larger than the estimate (then an ``overrun`` budget_alert says so)."""
    actual_cost = Decimal(actual_cost).quantize(Decimal("0.0001"))
    with transaction.atomic():
        settled = _close_reservation(approval_id=approval.pk, kind=UsageEntry.Kind.SETTLE, tokens_used=tokens_used,
                                     actual_cost=actual_cost)
        if not settled:
            return False
        reserve = UsageEntry.objects.get(approval_id=approval.pk, kind=UsageEntry.Kind.RESERVE)
        budget = budget_for(approval.project)
        if tokens_used > reserve.reserved_tokens or actual_cost > reserve.reserved_cost:
            alert = BudgetAlert.objects.create(
                project=approval.project, window=reserve.day_window, alert_type=BudgetAlert.AlertType.OVERRUN,
                threshold_type=BudgetAlert.ThresholdType.COST_DAILY, threshold_value=reserve.reserved_cost,
                current_value=actual_cost, detail={"approval_id": str(approval.pk), "estimated_tokens":
                                                   reserve.reserved_tokens, "tokens_used": tokens_used})
            _emit_alert(alert)
        _check_alerts(approval.project, budget, [reserve.day_window_id, reserve.month_window_id])
        audit_record(actor=None, action="budget.settle", obj=approval,
                     after={"tokens_used": tokens_used, "actual_cost": actual_cost,
                            "estimated_tokens": reserve.reserved_tokens, "estimated_cost": reserve.reserved_cost})
    return True


# --- alerts ----------------------------------------------------------------------------
def alert_payload(alert: BudgetAlert) -> dict:
    return {"alert_type": alert.alert_type, "threshold_type": alert.threshold_type,
            "threshold_value": f"{alert.threshold_value:.4f}", "current_value": f"{alert.current_value:.4f}",
            "triggered_at": alert.triggered_at.isoformat(), "window_start": alert.window.start.isoformat(),
            "detail": alert.detail}


def _emit_alert(alert: BudgetAlert) -> None:
    payload = alert_payload(alert)
    event_emit(project_id=alert.project_id, event_type="budget_alert", data=payload)
    notify_project_on_commit(project_id=alert.project_id, event_type="budget_alert",
                             subject=f"[BotArmy HITL] Budget {alert.alert_type}: {alert.threshold_type} of "
                                     f"{alert.project.slug}", payload=payload)


def _check_alerts(project, budget: ProjectBudget, window_ids) -> list[BudgetAlert]:
    """warning / critical / emergency once per threshold type per window."""
    made = []
    levels = [(BudgetAlert.AlertType.WARNING, budget.warning_percent),
              (BudgetAlert.AlertType.CRITICAL, budget.critical_percent),
              (BudgetAlert.AlertType.EMERGENCY, budget.emergency_percent)]
    fired = set(BudgetAlert.objects.filter(window_id__in=window_ids).values_list("window_id", "threshold_type",
                                                                              "alert_type"))
    for window in BudgetWindow.objects.filter(pk__in=window_ids):
        daily = window.kind == BudgetWindow.Kind.DAY
        measures = [
            ("token_daily" if daily else "token_monthly",
             Decimal(budget.daily_token_limit if daily else budget.monthly_token_limit),
             Decimal(window.spent_tokens + window.reserved_tokens)),
            ("cost_daily" if daily else "cost_monthly", budget.daily_cost_limit if daily else budget.monthly_cost_limit,
             window.spent_cost + window.reserved_cost),
        ]
        for threshold_type, limit, value in measures:
            if not limit:
                continue
            for alert_type, percent in levels:
                threshold = (limit * percent / 100).quantize(Decimal("0.0001"))
                if value < threshold or (window.pk, threshold_type, alert_type) in fired:
                    continue
                try:
                    with transaction.atomic():
                        alert = BudgetAlert.objects.create(project=project, window=window, alert_type=alert_type,
                                                           threshold_type=threshold_type, threshold_value=threshold,
                                                           current_value=value)
                except IntegrityError:
                    continue  # already fired in this window
                _emit_alert(alert)
                made.append(alert)
    return made


# --- overrides -------------------------------------------------------------------------
def override_payload(override: BudgetOverrideRequest) -> dict:
    return {"id": str(override.pk), "project_id": str(override.project_id), "violation_type": override.violation_type,
            "requested_amount": f"{override.requested_amount:.4f}", "justification": override.justification,
            "requires_manager_approval": override.requires_manager_approval, "status": override.status}


def budget_remaining(project) -> Decimal | None:
    """Cost still available today (limit + allowance - spent - reserved), read without locks
    for the risk assessment; None when there is no daily cost limit."""
    budget = budget_for(project)
    if not budget.daily_cost_limit:
        return None
    day, _ = current_windows(project, lock=False)
    return budget.daily_cost_limit + day.allowance_cost - day.spent_cost - day.reserved_cost


@transaction.atomic
def budget_limits_update(*, project, actor, values: dict) -> ProjectBudget:
    """Set limits and thresholds (managers through the API, admins in the admin), audited."""
    budget = ProjectBudget.objects.select_for_update().get(pk=budget_for(project).pk)
    before = {key: getattr(budget, key) for key in values}
    for key, value in values.items():
        setattr(budget, key, value)
    budget.save()
    audit_record(actor=actor, action="budget.update", obj=budget, project_id=project.pk, before=before, after=values)
    return budget


def ledger_totals(window: BudgetWindow) -> dict:
    """A window's totals recomputed from the ledger."""
    field = "day_window" if window.kind == BudgetWindow.Kind.DAY else "month_window"
    sums = UsageEntry.objects.filter(**{field: window}).aggregate(
        reserved_tokens=Sum("reserved_tokens"), reserved_cost=Sum("reserved_cost"),
        spent_tokens=Sum("spent_tokens"), spent_cost=Sum("spent_cost"))
    # SQLite sums decimals as floats: round back to the 4 places every entry has.
    return {k: (Decimal(str(v or 0)).quantize(FOUR_PLACES) if k.endswith("cost") else int(v or 0))
            for k, v in sums.items()}


def budget_override_withdraw(*, approval_ids, reason: str) -> int:
    """Calls that ended before their override was decided (cancelled, timed out, stopped)
    take it with them: a pending override no other pending call waits on is rejected, so
    approving it later cannot add budget that nothing asked for."""
    from approvals.models import AgentCallApproval

    override_ids = set(AgentCallApproval.objects.filter(pk__in=approval_ids, budget_override_id__isnull=False)
                       .values_list("budget_override_id", flat=True))
    still_waited_on = set(AgentCallApproval.objects.filter(
        budget_override_id__in=override_ids, status=AgentCallApproval.Status.PENDING).values_list(
        "budget_override_id", flat=True))
    withdrawn = 0
    for override in BudgetOverrideRequest.objects.select_for_update().filter(
            pk__in=override_ids - still_waited_on, status=BudgetOverrideRequest.Status.PENDING):
        override.status, override.rejection_reason = BudgetOverrideRequest.Status.REJECTED, reason
        override.responded_at = timezone.now()
        override.save(update_fields=["status", "rejection_reason", "responded_at"])
        audit_record(actor=None, action="budget_override.withdraw", obj=override, project_id=override.project_id,
                     reason=reason, after=override_payload(override))
        event_emit(project_id=override.project_id, event_type="budget_override_decided",
                   data=override_payload(override))
        withdrawn += 1
    return withdrawn


def budget_override_create(*, project_id, actor, violation_type: str, requested_amount: Decimal,
                           justification: str) -> BudgetOverrideRequest:
    """A person asks for more room in the current window (by hand, through the API)."""
    from access import roles
    from access.permissions import require_project_perm
    from projects.models import Project

    with transaction.atomic():
        project = Project.objects.select_for_update().get(pk=project_id)
        require_project_perm(actor, roles.VIEW, project, "request budget overrides")
        budget = budget_for(project)
        day, month = current_windows(project)
        window = day if violation_type.startswith("daily") else month
        override = BudgetOverrideRequest.objects.create(
            project=project, window=window, violation_type=violation_type, requested_amount=requested_amount,
            justification=justification, requires_manager_approval=_needs_manager(budget, violation_type,
                                                                                   requested_amount),
            requested_by=actor)
        audit_record(actor=actor, action="budget_override.request", obj=override, project_id=project.pk,
                     after=override_payload(override))
        event_emit(project_id=project.pk, event_type="budget_override_requested", data=override_payload(override))
    return override


def budget_override_respond(*, override_id, actor, decision: str, reason: str = "") -> BudgetOverrideRequest:
    """Approve (raising the allowance of that window only, and unblocking its calls) or reject
    (rejecting its blocked calls). A reviewer may approve up to the manager threshold, above it
    only a manager; nobody approves an override they requested."""
    from access import roles
    from access.permissions import require_not_requester, require_project_perm
    from approvals.models import AgentCallApproval
    from approvals.services import budget_unblock_or_reject
    from core.errors import Forbidden, InvalidInput, TransitionError
    from projects.models import Project

    if decision not in ("approve", "reject"):
        raise InvalidInput(fields={"decision": ["Must be approve or reject."]})
    if decision == "reject" and not (reason or "").strip():
        raise InvalidInput(fields={"reason": ["A rejection needs a reason."]})
    with transaction.atomic():
        project_id = BudgetOverrideRequest.objects.values_list("project_id", flat=True).get(pk=override_id)
        project = Project.objects.select_for_update().get(pk=project_id)
        override = BudgetOverrideRequest.objects.select_for_update().get(pk=override_id)
        require_project_perm(actor, roles.REVIEW, project, "decide budget overrides")
        require_not_requester(decider=actor, requester_id=override.requested_by_id)
        if decision == "approve" and override.requires_manager_approval and \
                not actor.has_perm(f"projects.{roles.MANAGE}", project):
            raise Forbidden(f"Overrides above {budget_for(project).manager_threshold} need a manager.")
        if override.status != BudgetOverrideRequest.Status.PENDING:
            raise TransitionError(f"The override is already {override.status}.", current_status=override.status)
        now = timezone.now()
        override.status = BudgetOverrideRequest.Status.APPROVED if decision == "approve" else \
            BudgetOverrideRequest.Status.REJECTED
        override.approved_by, override.responded_at = actor, now
        override.rejection_reason = reason.strip() if decision == "reject" else ""
        override.save()
        if decision == "approve":
            window = BudgetWindow.objects.select_for_update().get(pk=override.window_id)
            if override.violation_type.endswith("token_limit"):
                window.allowance_tokens += int(override.requested_amount.to_integral_value(rounding="ROUND_CEILING"))
            else:
                window.allowance_cost += override.requested_amount
            window.save(update_fields=["allowance_tokens", "allowance_cost"])
        audit_record(actor=actor, action=f"budget_override.{decision}", obj=override, project_id=project.pk,
                     reason=reason, after=override_payload(override))
        event_emit(project_id=project.pk, event_type="budget_override_decided", data=override_payload(override))
        for approval_id in AgentCallApproval.objects.filter(
                budget_override_id=override.pk, status=AgentCallApproval.Status.PENDING).values_list("pk", flat=True):
            budget_unblock_or_reject(approval_id=approval_id, override=override, actor=actor)
    return override


# --- upkeep ----------------------------------------------------------------------------
def budget_reconcile() -> list[str]:
    """Recompute every window from the ledger; return the differences found (none expected)."""
    problems = []
    for window in BudgetWindow.objects.order_by("project_id", "kind", "start"):
        totals = ledger_totals(window)
        for field, expected in totals.items():
            actual = getattr(window, field)
            if actual != expected:
                problems.append(f"{window}: {field} is {actual}, the ledger says {expected}")
    return problems


def budget_release_stale(*, older_than: timedelta, now=None) -> int:
    """Beat: give back reservations of decided calls that never reported their usage after
    ``older_than``, so they stop holding budget. A report that comes later still counts its spend."""
    from approvals.models import AgentCallApproval

    now = now or timezone.now()
    closed = UsageEntry.objects.exclude(kind=UsageEntry.Kind.RESERVE).values("approval_id")
    open_reserves = UsageEntry.objects.filter(kind=UsageEntry.Kind.RESERVE, created_at__lt=now - older_than).exclude(
        approval_id__in=closed)
    released = 0
    for approval_id, project_id in open_reserves.values_list("approval_id", "project_id")[:1000]:
        with transaction.atomic():
            from projects.models import Project

            Project.objects.select_for_update().get(pk=project_id)  # the project's budget lock
            approval = AgentCallApproval.objects.select_for_update().get(pk=approval_id)
            if approval.status == AgentCallApproval.Status.PENDING:
                continue  # still waiting for a person: its own time-out releases it
            if budget_release(approval_id=approval_id):
                audit_record(actor=None, action="budget.release_stale", obj=approval,
                             after={"status": approval.status, "older_than_seconds": older_than.total_seconds()})
                released += 1
    return released


def budget_close_past_windows(*, now=None) -> int:
    """Beat: mark windows that have ended as closed (usage never depends on this: the current
    window is always found from the clock)."""
    now = now or timezone.now()
    return BudgetWindow.objects.filter(end__lte=now, closed_at__isnull=True).update(closed_at=now)
