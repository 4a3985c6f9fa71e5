"""The ledger: admission (reserve, or block behind an override), settlement and release.

Every function that writes runs inside the caller's project unit of work (the project row is
locked, so one project's budget changes are serialised) and locks the windows it changes at
stage "budget_window". A call's reservation is closed exactly once, by a settle (the real
usage) or a release; usage reported for a started call always lands in the ledger, whether
its reservation is open, released or was never made."""
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from audit.services import audit_record
from budgets.models import BudgetAlert, BudgetOverrideRequest, BudgetWindow, ProjectBudget, UsageEntry
from budgets.services.alerts import check_alerts, emit_alert
from budgets.services.overrides import override_create_locked
from core import rawrows
from core.snapshot import one_snapshot
from budgets.services.windows import (FOUR_PLACES, ZERO, budget_for, critical_line, current_windows, window_add,
                                      windows_add)


class BudgetCritical(Exception):
    """Projected daily cost over 1.5 x the limit: the caller stops the project."""

    def __init__(self, projected: Decimal, limit: Decimal, day_start=None):
        super().__init__(f"projected daily cost {projected} over 1.5 x {limit}")
        self.projected, self.limit, self.day_start = projected, limit, day_start  # the day window's start


@dataclass
class Admission:
    """The outcome of admitting a call's estimate: reserved, or blocked behind ``override``."""

    reserved: bool
    override: BudgetOverrideRequest | None = None
    reason: str = ""


def _violations(budget: ProjectBudget, day: BudgetWindow, month: BudgetWindow, tokens: int, cost: Decimal):
    """The limits this call would pass: [(violation_type, window, excess)]. A limit of 0 means
    "no limit" (as for the alerts and the 1.5 x rule)."""
    checks = [
        ("daily_token_limit", day, budget.daily_token_limit, day.allowance_tokens,
         Decimal(day.spent_tokens + day.reserved_tokens + tokens)),
        ("monthly_token_limit", month, budget.monthly_token_limit, month.allowance_tokens,
         Decimal(month.spent_tokens + month.reserved_tokens + tokens)),
        ("daily_cost_limit", day, budget.daily_cost_limit, day.allowance_cost,
         day.spent_cost + day.reserved_cost + cost),
        ("monthly_cost_limit", month, budget.monthly_cost_limit, month.allowance_cost,
         month.spent_cost + month.reserved_cost + cost),
    ]
    return [(kind, window, used - Decimal(limit + allowance)) for kind, window, limit, allowance, used in checks
            if limit and used > Decimal(limit + allowance)]


def _critical_projection(budget: ProjectBudget, day: BudgetWindow, cost: Decimal) -> Decimal | None:
    """The day's projected cost with ``cost`` added, when it passes 1.5 x the daily cost limit."""
    projected = day.spent_cost + day.reserved_cost + cost
    line = critical_line(budget)
    return projected if line is not None and projected > line else None


def _first_violation(budget: ProjectBudget, day: BudgetWindow, month: BudgetWindow, tokens: int, cost: Decimal):
    """The first limit ``tokens`` / ``cost`` would pass, as (violation_type, window, amount past
    it: whole tokens rounded up, or cost to 4 places), or None."""
    violations = _violations(budget, day, month, tokens, cost)
    if not violations:
        return None
    violation, window, excess = violations[0]
    amount = excess.quantize(FOUR_PLACES)
    if violation.endswith("token_limit"):
        amount = amount.to_integral_value(rounding="ROUND_CEILING")
    return violation, window, amount


def excess_text(violation: str, amount) -> str:
    """How far past a limit, in its unit: ``12,345 tokens`` or ``0.1234`` (cost, 4 places)."""
    return f"{int(amount):,} tokens" if violation.endswith("token_limit") else f"{amount}"


def budget_admission_preview(call, now=None):
    """What admitting a call's estimate now would do, read without locks or writes: None (it
    fits), "critical" (the projected daily cost passes 1.5 x the limit) or the (violation_type,
    amount) of the override it would need. For a caller that holds its project exclusively (a
    change of limits), so the windows cannot move before it admits for real."""
    budget = budget_for(call.project)
    day, month = current_windows(call.project, now)
    if _critical_projection(budget, day, call.estimated_cost) is not None:
        return "critical"
    first = _first_violation(budget, day, month, call.estimated_tokens, call.estimated_cost)
    return None if first is None else (first[0], first[2])


def budget_admit(*, uow, call, requested_by, now=None) -> Admission:
    """Reserve a call's estimate (``call.estimated_tokens``, ``call.estimated_cost``) against
    the windows covering ``now``, all or nothing; or, when it would pass a limit, reserve
    nothing and open a BudgetOverrideRequest that a person must approve. Raises BudgetCritical
    when the projected daily cost passes 1.5 x the daily cost limit (overrides do not lift it)."""
    now = now or timezone.now()
    project = uow.project
    budget = budget_for(project)
    day, month = current_windows(project, now, uow=uow)
    tokens, cost = call.estimated_tokens, call.estimated_cost
    projected = _critical_projection(budget, day, cost)
    if projected is not None:
        raise BudgetCritical(projected, budget.daily_cost_limit)
    first = _first_violation(budget, day, month, tokens, cost)
    if first:
        violation, window, amount = first
        override = override_create_locked(
            project=project, window=window, violation_type=violation, requested_amount=amount,
            justification=f"Automatic: the call {call.pk} ({call.agent_type}: {call.proposed_action[:200]}) "
                          f"would pass the {violation.replace('_', ' ')} by {excess_text(violation, amount)}.",
            actor=requested_by, task_id=call.task_id, call_id=call.pk)
        return Admission(False, override, f"It would pass the {violation.replace('_', ' ')} by "
                                          f"{excess_text(violation, amount)}: "
                                          f"approving budget override {override.pk} unblocks it.")
    rawrows.insert(UsageEntry(project=project, approval_id=call.pk, kind=UsageEntry.Kind.RESERVE, day_window=day,
                              month_window=month, reserved_tokens=tokens, reserved_cost=cost))
    windows_add([day, month], reserved_tokens=tokens, reserved_cost=cost)
    check_alerts(project, budget, [day, month])
    return Admission(True)


CLOSING_KINDS = (UsageEntry.Kind.SETTLE, UsageEntry.Kind.RELEASE)


def _entries(call_id) -> list[UsageEntry]:
    return list(UsageEntry.objects.filter(approval_id=call_id))


def _reserve_entry(entries: list[UsageEntry]) -> UsageEntry | None:
    """The call's reserve entry (at most one), open or closed."""
    return next((e for e in entries if e.kind == UsageEntry.Kind.RESERVE), None)


def _open_reservation(entries: list[UsageEntry]) -> tuple[UsageEntry | None, int, Decimal]:
    """(the reserve entry, tokens, cost) a call holds: its reserve plus what an amendment added
    (adjust entries before the reservation closed); (None, 0, 0) when closed or never made."""
    reserve = _reserve_entry(entries)
    if reserve is None or any(e.kind in CLOSING_KINDS for e in entries):
        return None, 0, ZERO
    held = [e for e in entries if e.kind in (UsageEntry.Kind.RESERVE, UsageEntry.Kind.ADJUST)]
    return reserve, sum(e.reserved_tokens for e in held), sum((e.reserved_cost for e in held), ZERO)


def budget_reserve_more(*, uow, call, tokens: int, cost: Decimal) -> str:
    """Grow a call's open reservation by ``tokens`` / ``cost`` (a reviewer amended its input into
    a larger one), in the windows of its reservation, all or nothing. Returns "" when reserved,
    else why not (a limit, or the day's cost past 1.5 x its limit): the caller refuses the change."""
    reserve, _, _ = _open_reservation(_entries(call.pk))
    if reserve is None:
        return "The call holds no open reservation to grow."
    windows = {w.pk: w for w in uow.lock_many("budget_window", BudgetWindow.objects.filter(
        pk__in=[reserve.day_window_id, reserve.month_window_id]), order_by=("kind", "pk"))}
    day, month = windows[reserve.day_window_id], windows[reserve.month_window_id]
    budget = budget_for(uow.project)
    projected = _critical_projection(budget, day, cost)
    if projected is not None:
        return f"The day's cost would reach {projected:.4f}, past 1.5 x the daily limit."
    first = _first_violation(budget, day, month, tokens, cost)
    if first:
        violation, _, amount = first
        return f"It would pass the {violation.replace('_', ' ')} by {excess_text(violation, amount)}."
    rawrows.insert(UsageEntry(project_id=uow.project.pk, approval_id=call.pk, kind=UsageEntry.Kind.ADJUST,
                              day_window_id=day.pk, month_window_id=month.pk, reserved_tokens=tokens,
                              reserved_cost=cost))
    windows_add([day, month], reserved_tokens=tokens, reserved_cost=cost)
    check_alerts(uow.project, budget, [day, month])
    return ""


def budget_release(*, uow, call_id) -> bool:
    """A call that will not run gives its open reservation back (once)."""
    reserve, tokens, cost = _open_reservation(_entries(call_id))
    if reserve is None:
        return False
    windows = uow.lock_many("budget_window", BudgetWindow.objects.filter(
        pk__in=[reserve.day_window_id, reserve.month_window_id]), order_by=("kind", "pk"))
    rawrows.insert(UsageEntry(project_id=reserve.project_id, approval_id=call_id, kind=UsageEntry.Kind.RELEASE,
                              day_window_id=reserve.day_window_id, month_window_id=reserve.month_window_id,
                              reserved_tokens=-tokens, reserved_cost=-cost))
    windows_add(windows, reserved_tokens=-tokens, reserved_cost=-cost)
    return True


def budget_release_many(*, uow, call_ids) -> int:
    """Release the open reservations of many calls at once (an emergency stop or the end of their
    task cancels them): one ledger row each, one update per window."""
    if not call_ids:
        return 0
    entries: dict = {}
    for entry in UsageEntry.objects.filter(approval_id__in=call_ids):  # every call's entries in one query
        entries.setdefault(entry.approval_id, []).append(entry)
    held = [held for held in map(_open_reservation, entries.values()) if held[0] is not None]
    if not held:
        return 0
    window_ids = {r.day_window_id for r, _, _ in held} | {r.month_window_id for r, _, _ in held}
    windows = {w.pk: w for w in uow.lock_many("budget_window", BudgetWindow.objects.filter(pk__in=window_ids),
                                              order_by=("kind", "pk"))}
    UsageEntry.objects.bulk_create(UsageEntry(
        project_id=r.project_id, approval_id=r.approval_id, kind=UsageEntry.Kind.RELEASE, day_window_id=r.day_window_id,
        month_window_id=r.month_window_id, reserved_tokens=-tokens, reserved_cost=-cost) for r, tokens, cost in held)
    totals: dict[int, list] = {}
    for r, tokens, cost in held:
        for window_id in (r.day_window_id, r.month_window_id):
            tokens_cost = totals.setdefault(window_id, [0, ZERO])
            tokens_cost[0] += tokens
            tokens_cost[1] += cost
    for window_id, (tokens, cost) in totals.items():
        window_add(windows[window_id], reserved_tokens=-tokens, reserved_cost=-cost)
    return len(held)


@dataclass
class Settlement:
    settled: bool               # False: nothing new (a retried report, or one below what landed)
    flagged: bool = False       # more than HITL_USAGE_FLAG_FACTOR x the estimate
    critical: BudgetCritical | None = None  # the day's cost now passes 1.5 x the daily limit
    recorded: tuple[int, Decimal] | None = None  # a later report: the call's totals in the ledger before it
    below: bool = False         # a later report: less than already landed (nothing changed)


def budget_settle(*, uow, call, tokens_used: int, actual_cost, now=None, price=None) -> Settlement:
    """The call ran: its real usage replaces its reservation, exactly once, even when larger
    than the estimate. With the reservation released (a late report) or never made, the spend
    still lands, in the reservation's windows or else in the windows covering the call's start.

    A report gives the call's total usage so far. A later report repeating the totals changes
    nothing (a retry); one above them lands the difference as an ``adjust`` entry (every token a
    started call reports lands in the ledger); one below them changes nothing (``below``: spend
    never goes back). ``price``: the agent gave no cost, ``actual_cost`` is the server's pricing
    of the tokens and ``price(tokens)`` prices a count at today's prices: a later report then adds
    the price of its new tokens alone (a price changed in between never reprices the tokens that
    already landed), and never counts as less than a cost the agent reported before."""
    now = now or timezone.now()
    actual_cost = Decimal(actual_cost).quantize(FOUR_PLACES)
    entries = _entries(call.pk)
    kinds = {e.kind for e in entries}
    if UsageEntry.Kind.SETTLE in kinds:
        return _settle_again(uow, call, entries, tokens_used=tokens_used, actual_cost=actual_cost, price=price)
    reserve = _reserve_entry(entries)
    released = UsageEntry.Kind.RELEASE in kinds
    _, give_back_tokens, give_back_cost = _open_reservation(entries)
    if reserve is not None:
        windows = uow.lock_many("budget_window", BudgetWindow.objects.filter(
            pk__in=[reserve.day_window_id, reserve.month_window_id]), order_by=("kind", "pk"))
        day_id, month_id = reserve.day_window_id, reserve.month_window_id
    else:
        windows = list(current_windows(uow.project, getattr(call, "started_at", None) or now, uow=uow))
        day_id, month_id = windows[0].pk, windows[1].pk
    try:
        with transaction.atomic():
            rawrows.insert(UsageEntry(
                project_id=uow.project.pk, approval_id=call.pk, kind=UsageEntry.Kind.SETTLE, day_window_id=day_id,
                month_window_id=month_id, reserved_tokens=-give_back_tokens, reserved_cost=-give_back_cost,
                spent_tokens=tokens_used, spent_cost=actual_cost))
    except IntegrityError:
        return Settlement(False)
    windows_add(windows, reserved_tokens=-give_back_tokens, reserved_cost=-give_back_cost,
                spent_tokens=tokens_used, spent_cost=actual_cost)
    day = next(w for w in windows if w.pk == day_id)
    reservation = "open" if give_back_tokens or give_back_cost else (
        "released" if released else ("none" if reserve is None else "empty"))
    return _after_spend(uow, call, windows, day, tokens_used=tokens_used, actual_cost=actual_cost,
                        action="budget.settle", reserved=reserve is not None, audit={"reservation": reservation})


def _settle_again(uow, call, entries, *, tokens_used: int, actual_cost: Decimal, price=None) -> Settlement:
    """A report after the call was settled: the difference above what landed, as one more entry."""
    spent = [e for e in entries if e.kind in (UsageEntry.Kind.SETTLE, UsageEntry.Kind.ADJUST)]  # an amendment's: 0
    recorded = (sum(e.spent_tokens for e in spent), sum((e.spent_cost for e in spent), ZERO))
    if price is not None and tokens_used >= recorded[0]:
        # the server prices it: what landed stays, the new tokens (none for a retry) at today's prices
        new = Decimal(price(tokens_used)) - Decimal(price(recorded[0])) if tokens_used > recorded[0] else ZERO
        actual_cost = (recorded[1] + max(new, ZERO)).quantize(FOUR_PLACES)
    more_tokens, more_cost = tokens_used - recorded[0], actual_cost - recorded[1]
    if more_tokens < 0 or more_cost < 0:
        return Settlement(False, recorded=recorded, below=True)
    if not more_tokens and not more_cost:
        return Settlement(False, recorded=recorded)
    settle = next(e for e in spent if e.kind == UsageEntry.Kind.SETTLE)
    windows = uow.lock_many("budget_window", BudgetWindow.objects.filter(
        pk__in=[settle.day_window_id, settle.month_window_id]), order_by=("kind", "pk"))
    rawrows.insert(UsageEntry(
        project_id=uow.project.pk, approval_id=call.pk, kind=UsageEntry.Kind.ADJUST, day_window_id=settle.day_window_id,
        month_window_id=settle.month_window_id, spent_tokens=more_tokens, spent_cost=more_cost))
    windows_add(windows, spent_tokens=more_tokens, spent_cost=more_cost)
    day = next(w for w in windows if w.pk == settle.day_window_id)
    settlement = _after_spend(uow, call, windows, day, tokens_used=tokens_used, actual_cost=actual_cost,
                              action="budget.adjust", reserved=True,
                              audit={"added_tokens": more_tokens, "added_cost": more_cost})
    settlement.recorded = recorded
    return settlement


def _after_spend(uow, call, windows, day, *, tokens_used: int, actual_cost: Decimal, action: str,
                 reserved: bool, audit: dict) -> Settlement:
    """What a call's spend (its totals now ``tokens_used`` / ``actual_cost``) means: an overrun
    alert past the estimate, the threshold alerts, the audit row, and whether the day now passes
    1.5 x the daily limit."""
    budget = budget_for(uow.project)
    estimated_tokens, estimated_cost = call.estimated_tokens, call.estimated_cost
    overrun = tokens_used > estimated_tokens or actual_cost > estimated_cost
    factor = Decimal(str(settings.HITL_USAGE_FLAG_FACTOR))
    flagged = (tokens_used > estimated_tokens * factor) or (actual_cost > estimated_cost * factor)
    if overrun:  # one alert per call, on its cost when that passed the estimate, else on its tokens
        by_cost = actual_cost > estimated_cost
        alert = BudgetAlert.objects.create(
            project=uow.project, window=day, alert_type=BudgetAlert.AlertType.OVERRUN,
            threshold_type=BudgetAlert.ThresholdType.COST_DAILY if by_cost else BudgetAlert.ThresholdType.TOKEN_DAILY,
            threshold_value=estimated_cost if by_cost else Decimal(estimated_tokens),
            current_value=actual_cost if by_cost else Decimal(tokens_used),
            detail={"approval_id": str(call.pk), "estimated_tokens": estimated_tokens, "tokens_used": tokens_used,
                    "estimated_cost": f"{estimated_cost:.4f}", "actual_cost": f"{actual_cost:.4f}",
                    "reserved": reserved, "flagged": flagged})
        emit_alert(alert)
    check_alerts(uow.project, budget, windows)
    audit_record(actor=None, action=action, obj=call, project_id=uow.project.pk,
                 after={"tokens_used": tokens_used, "actual_cost": actual_cost, "estimated_tokens": estimated_tokens,
                        "estimated_cost": estimated_cost, **audit})
    critical = None
    line = critical_line(budget)
    if line is not None and day.spent_cost + day.reserved_cost > line:
        critical = BudgetCritical(day.spent_cost + day.reserved_cost, budget.daily_cost_limit, day.start)
    return Settlement(True, flagged, critical)


def ledger_totals(window: BudgetWindow) -> dict:
    """A window's totals recomputed from the ledger."""
    field = "day_window" if window.kind == BudgetWindow.Kind.DAY else "month_window"
    sums = UsageEntry.objects.filter(**{field: window}).aggregate(
        reserved_tokens=Sum("reserved_tokens"), reserved_cost=Sum("reserved_cost"),
        spent_tokens=Sum("spent_tokens"), spent_cost=Sum("spent_cost"))
    # SQLite sums decimals as floats: round back to the 4 places every entry has.
    return {k: (Decimal(str(v or 0)).quantize(FOUR_PLACES) if k.endswith("cost") else int(v or 0))
            for k, v in sums.items()}


def budget_reconcile() -> list[str]:
    """Recompute every window from the ledger; return the differences found (none expected). The windows
    and their ledgers are read from one snapshot: read statement by statement, a reservation committed
    between a window's read and its ledger's sum was a false MISMATCH (exit 1) while agents worked."""
    problems = []
    with one_snapshot():
        for window in BudgetWindow.objects.order_by("project_id", "kind", "start"):
            totals = ledger_totals(window)
            for field, expected in totals.items():
                actual = getattr(window, field)
                if actual != expected:
                    problems.append(f"{window}: {field} is {actual}, the ledger says {expected}")
    return problems
