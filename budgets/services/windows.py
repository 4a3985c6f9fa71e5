"""Budget windows: the local day and month of a project, found by the instant they cover.

A window is [start, end) in UTC. The current window of a kind is the one whose range covers
``now``; a new one is made only when none does, from the project's time zone, starting no
earlier than the end of the previous one. So a change of time zone never resets or loses what
was spent or reserved: the current windows run to their end, and the new zone applies from
there (the first window in the new zone may be shorter or longer than a day)."""
from datetime import datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.utils import timezone

from budgets.models import BudgetWindow, ProjectBudget
from core.rawrows import Columns, db, kept_cursor
from emergency.conditions import Trip
from emergency.models import Condition, Severity
from projects.models import Project
from projects.uow import project_uow

ZERO = Decimal("0.0000")
FOUR_PLACES = Decimal("0.0001")
CRITICAL_FACTOR = Decimal("1.5")   # budget_critical: the day's cost past 1.5 x the daily cost limit


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
    if end <= now:
        # Clocks that fell back across midnight (St. John's before 2011: 00:01 back to 23:01): the
        # date repeats, and its day runs to the second midnight, after ``now`` (the first one, before
        # it, left no window covering ``now``: a call's admission failed with a 500).
        end = datetime.combine(following, time(fold=1), tzinfo=tz).astimezone(ZoneInfo("UTC"))
    return start, end


def _covering(project, kind: str, now):
    return BudgetWindow.objects.filter(project=project, kind=kind, start__lte=now, end__gt=now).order_by("start")


def _new_bounds(project, kind: str, now, tz_name: str) -> tuple[datetime, datetime]:
    """[start, end) of the window to make for ``now``: the local day or month, starting no
    earlier than the end of a window of the old time zone (never overlapping it)."""
    start, end = window_bounds(tz_name, kind, now)
    previous_end = BudgetWindow.objects.filter(project=project, kind=kind, end__gt=start, end__lte=now).aggregate(
        end=Max("end"))["end"]
    return (start if previous_end is None else max(start, previous_end)), end


def _window(project, kind: str, now, uow) -> BudgetWindow:
    qs = _covering(project, kind, now)
    found = uow.lock_many("budget_window", qs) if uow is not None else list(qs[:1])
    if found:
        return found[0]
    if uow is None:
        # A read makes no window (only a unit of work, holding the project row and so reading its
        # current time zone, may): an unsaved, empty one stands for the window not yet used, with
        # the bounds the first write will give it.
        start, end = _new_bounds(project, kind, now, project.timezone)
        return BudgetWindow(project=project, kind=kind, start=start, end=end)
    start, end = _new_bounds(project, kind, now, uow.project.timezone)
    try:
        with transaction.atomic():
            BudgetWindow.objects.create(project=project, kind=kind, start=start, end=end)
    except IntegrityError:
        pass  # made concurrently
    found = uow.lock_many("budget_window", qs) if uow is not None else list(qs[:1])
    return found[0]


def current_windows(project, now=None, *, uow=None) -> tuple[BudgetWindow, BudgetWindow]:
    """The day and month windows covering ``now``. With ``uow`` (a write) they are locked, day
    then month (stage "budget_window"), and made on first use; without, read as they are (an
    unsaved empty window when none exists yet). Both are read (and locked) in one query when
    they exist, as they do after a project's first call of the day."""
    now = now or timezone.now()
    if uow is not None:
        uow.enter_stage("budget_window")
        found = _lock_covering(project.pk, now)
    else:
        found = list(BudgetWindow.objects.filter(project=project, start__lte=now, end__gt=now).order_by("kind", "start"))
    day = next((w for w in found if w.kind == BudgetWindow.Kind.DAY), None)
    month = next((w for w in found if w.kind == BudgetWindow.Kind.MONTH), None)
    if day is not None and month is not None:
        return day, month
    return _window(project, BudgetWindow.Kind.DAY, now, uow), _window(project, BudgetWindow.Kind.MONTH, now, uow)


def window_add(window: BudgetWindow, *, reserved_tokens=0, reserved_cost=ZERO, spent_tokens=0,
               spent_cost=ZERO) -> None:
    """Change one locked window's totals (see ``windows_add``)."""
    windows_add([window], reserved_tokens=reserved_tokens, reserved_cost=reserved_cost, spent_tokens=spent_tokens,
                spent_cost=spent_cost)


def windows_add(windows, *, reserved_tokens=0, reserved_cost=ZERO, spent_tokens=0, spent_cost=ZERO) -> None:
    """Change locked windows' totals by the same amounts (a call's day and month window) in
    Python Decimal (exact on every database: SQLite would do F() arithmetic on floats) and save
    them in one hand-written UPDATE (every admission and settlement runs it)."""
    if not windows:
        return
    connection = db()  # this thread's database wrapper (the module's is a proxy)
    for window in windows:
        window.reserved_tokens += reserved_tokens
        window.reserved_cost = (window.reserved_cost + reserved_cost).quantize(FOUR_PLACES)
        window.spent_tokens += spent_tokens
        window.spent_cost = (window.spent_cost + spent_cost).quantize(FOUR_PLACES)
    sql, fields = _update_sql(len(windows))
    params = []
    for field in fields:  # SET column = CASE id WHEN <window> THEN <value> ... END
        for window in windows:
            params += [window.pk, field.get_db_prep_save(getattr(window, field.attname), connection)]
    params += [window.pk for window in windows]
    with kept_cursor(connection) as cursor:
        cursor.execute(sql, params)


_SQL: dict = {}


def _lock_sql():
    """The lock of a project's windows covering an instant, written out once (core.rawrows): it
    runs in every admission and settlement, and building it with the ORM cost more CPU than
    running it. (sql, columns)"""
    if "lock" not in _SQL:
        quote = connection.ops.quote_name
        meta = BudgetWindow._meta
        column = lambda name: quote(meta.get_field(name).column)  # noqa: E731
        columns = Columns(BudgetWindow, "w")
        lock = " FOR NO KEY UPDATE" if connection.features.has_select_for_update else ""
        _SQL["lock"] = (f"SELECT {columns.sql} FROM {quote(meta.db_table)} w WHERE w.{column('project')} = %s "
                        f"AND w.{column('start')} <= %s AND w.{column('end')} > %s "
                        f"ORDER BY w.{column('kind')}, w.{column('start')}{lock}", columns)
    return _SQL["lock"]


def _update_sql(count: int):
    """The UPDATE of ``count`` windows' four totals, written out once per count."""
    key = ("update", count)
    if key not in _SQL:
        quote = connection.ops.quote_name
        meta = BudgetWindow._meta
        pk = quote(meta.pk.column)
        fields = [meta.get_field(name) for name in ("reserved_tokens", "reserved_cost", "spent_tokens", "spent_cost")]
        cases = " ".join(["WHEN %s THEN %s"] * count)
        _SQL[key] = (f"UPDATE {quote(meta.db_table)} SET "
                     f"{', '.join(f'{quote(f.column)} = CASE {pk} {cases} END' for f in fields)} "
                     f"WHERE {pk} IN ({', '.join(['%s'] * count)})", fields)
    return _SQL[key]


def _lock_covering(project_id, now) -> list[BudgetWindow]:
    """The project's windows covering ``now``, locked, day before month."""
    connection = db()  # this thread's database wrapper (the module's is a proxy)
    sql, columns = _lock_sql()
    meta = BudgetWindow._meta
    instant = meta.get_field("start").get_db_prep_value(now, connection)
    with kept_cursor(connection) as cursor:
        cursor.execute(sql, [meta.get_field("project").get_db_prep_value(project_id, connection), instant, instant])
        rows = cursor.fetchall()
    return [columns.build(row) for row in rows]


def budget_for(project) -> ProjectBudget:
    """The project's budget row (made on first use). No query when the project row was read
    with it (``project_uow(..., related=BUDGET_RELATED)``)."""
    if Project.budget.is_cached(project):
        try:
            return project.budget
        except ProjectBudget.DoesNotExist:
            pass
    budget, _ = ProjectBudget.objects.get_or_create(project=project)
    return budget


def critical_line(budget: ProjectBudget) -> Decimal | None:
    """The day's cost (spent + reserved) past which the project is stopped (budget_critical):
    1.5 x the daily cost limit; None without a daily cost limit (0). A day AT the line trips
    nothing, but a recovery does not lift a stop into it: the next call with any cost passes it."""
    return budget.daily_cost_limit * CRITICAL_FACTOR if budget.daily_cost_limit else None


def day_cost_past_critical(project, now=None, *, uow=None) -> Trip | None:
    """budget_critical when the day's spent + reserved cost passes 1.5 x the daily cost limit (0: no
    limit), with nothing more asked: a daily limit lowered below what the day already holds. Read as
    the day stands (locked with ``uow``); beat's read makes no budget row."""
    budget = budget_for(project) if uow is not None else ProjectBudget.objects.filter(project=project).first()
    line = critical_line(budget) if budget is not None else None
    if line is None:
        return None
    day, _ = current_windows(project, now, uow=uow)
    used = day.spent_cost + day.reserved_cost
    if used <= line:
        return None
    return Trip(Condition.BUDGET_CRITICAL,
                f"The day's cost {used:.4f} (spent {day.spent_cost:.4f}, reserved {day.reserved_cost:.4f}) passes "
                f"1.5 x the daily limit {budget.daily_cost_limit:.4f}", Severity.CRITICAL,
                {"daily_cost": f"{used:.4f}", "spent_today": f"{day.spent_cost:.4f}",
                 "reserved_today": f"{day.reserved_cost:.4f}", "daily_cost_limit": f"{budget.daily_cost_limit:.4f}"})


BUDGET_RELATED = ("budget",)  # project_uow(..., related=BUDGET_RELATED): the budget with the project row


_REMAINING_SQL = None


def budget_remaining(project_id, now=None) -> Decimal | None:
    """Cost still available today (limit + allowance - spent - reserved), read without locks
    for the risk assessment, in one statement written out once (the budget with today's window,
    when there is one yet); None when there is no daily cost limit."""
    global _REMAINING_SQL
    connection = db()  # this thread's database wrapper (the module's is a proxy)
    now = now or timezone.now()
    if _REMAINING_SQL is None:
        quote = connection.ops.quote_name
        budget_meta, window_meta = ProjectBudget._meta, BudgetWindow._meta
        b = lambda name: f"b.{quote(budget_meta.get_field(name).column)}"  # noqa: E731
        w = lambda name: f"w.{quote(window_meta.get_field(name).column)}"  # noqa: E731
        budget = Columns(ProjectBudget, "b", ("id", "daily_cost_limit"))
        window = Columns(BudgetWindow, "w", ("id", "allowance_cost", "spent_cost", "reserved_cost"))
        _REMAINING_SQL = (
            f"SELECT {budget.sql}, {window.sql} FROM {quote(budget_meta.db_table)} b "
            f"LEFT JOIN {quote(window_meta.db_table)} w ON {w('project')} = {b('project')} AND {w('kind')} = %s "
            f"AND {w('start')} <= %s AND {w('end')} > %s WHERE {b('project')} = %s ORDER BY {w('start')} LIMIT 1",
            budget, window)
    sql, budget, window = _REMAINING_SQL
    instant = BudgetWindow._meta.get_field("start").get_db_prep_value(now, connection)
    with kept_cursor(connection) as cursor:
        cursor.execute(sql, [BudgetWindow.Kind.DAY, instant, instant,
                             ProjectBudget._meta.get_field("project").get_db_prep_value(project_id, connection)])
        row = cursor.fetchone()
    if row is None:
        return None
    limit = budget.build(row[:len(budget)]).daily_cost_limit
    today = window.build(row[len(budget):])
    if not limit:
        return None
    if today is None:  # nothing used today yet
        return limit
    return limit + today.allowance_cost - today.spent_cost - today.reserved_cost
