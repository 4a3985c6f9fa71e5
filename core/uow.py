"""The unit of work: one transaction per write, row locks taken in one documented order, and
the audit rows and outbox events of the change written last.

Every write path (API, admin, pages, beat sweeps, management commands) runs its service inside
a unit of work. ``projects.uow.project_uow`` opens one for a project: it locks the project row
first, then the service locks what it changes through ``uow.lock`` / ``uow.lock_many`` in the
order of ``LOCK_ORDER``. Taking a stage before one already taken is a programming error
(``LockOrderError``), raised at once in every test, so an inversion cannot reach production.

``projects.services.agent_state_refresh``, ``events.services.event_emit`` and
``audit.services.audit_record`` see the active unit of work and defer their writes to its end:
the derived agent states (stage ``agent_state``, one row per agent type), the outbox rows (stage
``outbox``, a per-project advisory lock) and then the audit rows (stage ``audit_chain``, the
chain head's row lock) are written just before the commit, so those hot locks, which every write
of a project takes, are held for the shortest time and always last.

A deadlock or serialization failure that still happens is retried (``retry_transient``) a few
times from the start of the outermost transaction; if it keeps failing the API answers 503
with ``Retry-After`` (core.errors), never 500.
"""
from __future__ import annotations

import contextvars
import functools
import random
import time
from collections.abc import Callable

from django.conf import settings
from django.db import OperationalError, connection

from core.errors import is_transient_db_error, transient_db_error_kind

# The one lock order. A unit of work takes each stage at most once per row and never goes back.
LOCK_ORDER = (
    "project",          # the project row: the emergency gate and the budget's serialisation point
    "project_state",    # rows that hang off the project only: emergency stop, recovery, settings
    "task",             # tasks (by primary key when several)
    "approval",         # agent call approvals
    "override",         # budget override requests
    "budget_window",    # budget windows, day before month (then by primary key)
    "response",         # response approvals (an agent's output held for review; after its call's budget)
    "hitl",             # questions and checkpoints to a person (hitl.HitlRequest)
    "agent_state",      # agent states (derived from tasks; written at the end, by agent type)
    "outbox",           # event outbox: pg advisory lock per project (written at the end)
    "audit_chain",      # audit chain head (written at the end)
)
_RANK = {stage: i for i, stage in enumerate(LOCK_ORDER)}
FLUSHED = ("agent_state", "outbox", "audit_chain")  # the stages written by flush(), in this order

_current: contextvars.ContextVar[UnitOfWork | None] = contextvars.ContextVar("hitl_uow", default=None)


class LockOrderError(RuntimeError):
    """A service locked rows out of LOCK_ORDER: a bug that could deadlock under load."""


class UnitOfWork:
    """State of one open unit of work (see the module docstring). Created by a scope helper
    such as ``projects.uow.project_uow``; services only call ``lock``/``lock_many``/``defer``."""

    def __init__(self, scope: str):
        self.scope = scope
        self.stage = -1
        self._deferred: dict[str, list[tuple[object, Callable[[], object]]]] = {stage: [] for stage in FLUSHED}
        self._last: dict[str, list[tuple[object, Callable[[], object]]]] = {stage: [] for stage in FLUSHED}
        self._deferred_keys: set = set()
        self.flushed = False

    # --- locks ------------------------------------------------------------------------------
    def enter_stage(self, stage: str) -> None:
        rank = _RANK[stage]
        if rank < self.stage:
            raise LockOrderError(f"lock order violated in {self.scope}: {stage!r} after "
                                 f"{LOCK_ORDER[self.stage]!r} (order: {' -> '.join(LOCK_ORDER)})")
        self.stage = max(self.stage, rank)

    def new_pass(self, stage: str) -> int:
        """Start another pass through the order from ``stage`` (returns the position to restore).
        Only for a scope whose first lock is exclusive and taken by every writer of its rows (the
        project row): no other transaction can then hold any row of the pass."""
        saved, self.stage = self.stage, _RANK[stage]
        return saved

    def lock(self, stage: str, queryset, **lookup):
        """Lock and return one row (``SELECT ... FOR NO KEY UPDATE``: no writer changes a key, and a
        lock that does not block the foreign-key checks of other transactions cannot deadlock
        with them; on SQLite the transaction's write lock is the lock)."""
        self.enter_stage(stage)
        return queryset.select_for_update(of=("self",), no_key=True).get(**lookup)

    def lock_many(self, stage: str, queryset, *, order_by=("pk",)) -> list:
        """Lock many rows of one stage in a stable order (by primary key unless told)."""
        self.enter_stage(stage)
        return list(queryset.select_for_update(of=("self",), no_key=True).order_by(*order_by))

    # --- buffered writes --------------------------------------------------------------------
    def defer(self, stage: str, write: Callable[[], object], key=None, *, last: bool = False) -> None:
        """Run ``write`` at the end of the unit of work, in the stage's place of the order (once per
        ``key`` when one is given); with ``last``, after every write of the stage deferred without
        it (an emergency stop's event goes out before those of each call it cancelled)."""
        if self.flushed:
            raise RuntimeError("this unit of work is already flushed")
        if key is not None:
            if (stage, key) in self._deferred_keys:
                return
            self._deferred_keys.add((stage, key))
        (self._last if last else self._deferred)[stage].append((key, write))

    def mark(self) -> dict[str, tuple[int, int]]:
        """Where the buffers stand (before a savepoint that may roll back)."""
        return {stage: (len(writes), len(self._last[stage])) for stage, writes in self._deferred.items()}

    def discard_since(self, mark: dict[str, tuple[int, int]]) -> None:
        """Drop what was buffered after ``mark``: its savepoint rolled back, so must its audit
        rows and events."""
        for stage, (length, last) in mark.items():
            del self._deferred[stage][length:]
            del self._last[stage][last:]
        self._deferred_keys.clear()  # a dropped write may be deferred again

    def flush(self) -> None:
        """Write the buffered agent states, outbox events, then audit rows (still inside the
        transaction): the hot rows are locked last and held shortest."""
        for stage in FLUSHED:
            writes, self._deferred[stage] = self._deferred[stage], []
            writes, self._last[stage] = writes + self._last[stage], []
            if writes:
                self.enter_stage(stage)
            if stage == "agent_state":  # rows of one stage in a stable order (by agent type)
                writes.sort(key=lambda keyed: str(keyed[0]))
            for _key, write in writes:
                write()
        self.flushed = True


def current() -> UnitOfWork | None:
    return _current.get()


def activate(uow: UnitOfWork):
    return _current.set(uow)


def deactivate(token) -> None:
    _current.reset(token)


def defer_or_run(stage: str, write: Callable[[], object], key=None, *, last: bool = False):
    """Used by agent_state_refresh, event_emit and audit_record: inside a unit of work, write at
    its end (returns None; once per ``key``; ``last``: after the stage's other writes); outside
    one (a plain transaction, a test), write now and return the result."""
    uow = _current.get()
    if uow is not None and not uow.flushed:
        uow.defer(stage, write, key, last=last)
        return None
    return write()


class ExclusiveNeeded(Exception):
    """A shared unit of work found it needs its project's exclusive lock (a stop tripped by a
    request or a usage report) after it locked inner rows. Upgrading there deadlocks with the
    other shared holders waiting for those rows (each holds the project's shared lock the upgrade
    waits for): the transaction is rolled back instead and ``retry_transient`` runs the service
    again with that project's lock exclusive from the start."""

    def __init__(self, scope_key):
        super().__init__(f"{scope_key} needs its exclusive lock: run again")
        self.scope_key = scope_key


_restartable: contextvars.ContextVar[bool] = contextvars.ContextVar("hitl_uow_restartable", default=False)
_exclusive: contextvars.ContextVar[frozenset] = contextvars.ContextVar("hitl_uow_exclusive", default=frozenset())


def restartable() -> bool:
    """Whether the running service can be run again from the start (``retry_transient`` owns
    its outermost transaction): then a needed upgrade raises ExclusiveNeeded."""
    return _restartable.get()


def exclusive_wanted(scope_key) -> bool:
    """Whether this run of the service takes ``scope_key``'s lock exclusive from the start (an
    earlier run of it raised ExclusiveNeeded)."""
    return str(scope_key) in _exclusive.get()


# A request that waited a whole pool timeout for a connection or a whole lock timeout for a lock is
# answered 503 at once: running it again would make its client wait as long again, and meanwhile
# hold one of the process's threads.
_WAITED = ("connection pool exhausted", "lock not available")


def retry_transient(fn):
    """Retry the whole service when the database answers with a deadlock, a serialization
    failure or SQLite's "database is locked", a few times with jittered backoff
    (HITL_DB_RETRIES; not a lock or pool timeout: see _WAITED), and at once
    with the exclusive lock when a unit of work asks for it (ExclusiveNeeded). Only the
    outermost transaction retries: inside another one the error goes up to its owner."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if connection.in_atomic_block:
            return fn(*args, **kwargs)
        attempts = max(int(getattr(settings, "HITL_DB_RETRIES", 3)), 0) + 1
        restartable_token, exclusive_token = _restartable.set(True), _exclusive.set(_exclusive.get())
        try:
            attempt = 0
            while True:
                try:
                    return fn(*args, **kwargs)
                except ExclusiveNeeded as exc:
                    if str(exc.scope_key) in _exclusive.get():
                        raise AssertionError(f"{exc.scope_key} asked for its exclusive lock twice") from exc
                    _exclusive.set(_exclusive.get() | {str(exc.scope_key)})  # no attempt used: no failure
                except OperationalError as exc:
                    if attempt == attempts - 1 or not is_transient_db_error(exc) \
                            or transient_db_error_kind(exc) in _WAITED:  # it already waited its limit
                        raise
                    if transient_db_error_kind(exc) == "connection lost":
                        connection.close()  # back to the pool, which drops it: the next run takes another
                    time.sleep(random.uniform(0.01, 0.05) * (2 ** attempt))
                    attempt += 1
        finally:
            _exclusive.reset(exclusive_token)
            _restartable.reset(restartable_token)

    return wrapper
