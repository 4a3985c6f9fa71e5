"""The project-scoped unit of work (see core/uow.py): every write that touches a project's rows
opens one. It locks the project row first, refuses with 423 when ``gate`` and the project is
stopped, and writes the buffered outbox events and audit rows last, before the commit.

    with project_uow(project_id, gate=True) as uow:
        task = uow.lock("task", Task.objects, pk=task_id)
        ...

Two modes of the project lock:

- exclusive (the default, ``SELECT ... FOR UPDATE``): stops, recoveries, limits, overrides,
  settings, sweeps, task outcomes (a question asked in shared mode therefore sees an outcome
  committed before it, or that outcome's report sees the question and cancels it). One
  project's exclusive writers run one at a time, and while one runs no admission does.
- shared (``shared=True``, PostgreSQL ``SELECT ... FOR SHARE``): admissions (an agent asking to
  run a call) and the other writes on one call (decisions, starts, usage, responses, questions).
  Admissions of one project run side by side: each locks only the rows it changes (its task; the
  budget windows late in its transaction, in LOCK_ORDER; its agent state, outbox and audit chain
  head in the flush before the commit), so they queue only for those, never for the whole transaction. A stop's exclusive lock waits
  for the admissions in flight to commit and then holds every new one back until it commits;
  the admission reads the project's status after its shared lock, so nothing is admitted after a
  stop commits. The budget windows' row locks keep concurrent admissions from overspending:
  each one reads the windows as the previous one left them. On SQLite (one writer at a time)
  both modes are the same.

A nested ``project_uow`` for the same project joins the open one (one transaction, one flush);
one that needs the exclusive lock inside a shared one (a stop tripped by a request or a usage
report) rolls the service back and ``retry_transient`` runs it again with the exclusive lock
from the start (core.uow.ExclusiveNeeded): upgrading in place, holding rows other shared holders
wait for, deadlocked with them. Where the service cannot be run again (inside a transaction
opened outside ``retry_transient``) it upgrades in place. One for another project is refused:
cross-project writes do not exist.

Rule: every writer of a project's rows (tasks, calls, overrides, windows, stops, recoveries,
agent states, its outbox and audit chain) holds the project row first. Within that, rows are
locked in core.uow.LOCK_ORDER, so shared holders never deadlock one another. The rows every
write of a project changes (its agent state, its outbox, its audit chain head) are written by the
unit's flush, last, so they are held only from there to the commit."""
import uuid
from contextlib import contextmanager

from django.db import transaction

from core import uow as core_uow
from core.errors import EmergencyStopActive, NotFoundError
from core.rawrows import by_pk_with, db
from projects.models import Project


class ProjectUnitOfWork(core_uow.UnitOfWork):
    def __init__(self, project: Project, *, shared: bool = False):
        super().__init__(scope=f"project {project.pk}")
        self.project = project
        self.shared = shared


def _lock_exclusive(project_id, related=()):
    if related and db().vendor == "postgresql":
        project = Project.objects.select_for_update(of=("self",)).filter(pk=project_id).first()
        return project if project is None else _read_with(project_id, related)
    return Project.objects.select_for_update(of=("self",)).select_related(*related).filter(pk=project_id).first()


def _lock_shared(project_id, related=()):
    """The project row under a shared lock (PostgreSQL ``FOR SHARE``, hand-written: the ORM has
    no FOR SHARE), with its ``related`` one-to-one rows."""
    if db().vendor != "postgresql":
        return _lock_exclusive(project_id, related)
    project = by_pk_with(Project, project_id, (), share_lock=True)
    return project if project is None or not related else _read_with(project_id, related)


def _read_with(project_id, related):
    """The project row with its ``related`` rows, read after its lock is held (PostgreSQL). Read
    in the locking statement, they came from that statement's snapshot, taken before it waited:
    an admission that waited for a limits change (which holds the project row, unchanged, and
    writes the budget row) got the budget as it was before, and admitted a call against the limit
    just lowered. The lock held, every writer of those rows waits for this transaction."""
    return by_pk_with(Project, project_id, tuple(related))


@contextmanager
def project_uow(project_id, *, gate: bool = False, related: tuple[str, ...] = (), shared: bool = False):
    """``shared``: the admission mode (see the module docstring). ``related``: one-to-one rows
    read with the project row (a higher app names its own, e.g. budgets' "budget"), not locked."""
    outer = core_uow.current()
    if outer is not None:
        if not isinstance(outer, ProjectUnitOfWork) or str(outer.project.pk) != str(project_id):
            raise core_uow.LockOrderError(f"a unit of work for {outer.scope} cannot open one for project "
                                          f"{project_id}")
        if outer.shared and not shared:
            if core_uow.restartable():
                # Upgrading here, holding inner rows (the budget windows) other shared holders wait
                # for while they hold the shared lock the upgrade waits for, deadlocks: roll back
                # and run the service again with the exclusive lock from the start.
                raise core_uow.ExclusiveNeeded(_scope_key(project_id))
            # Not restartable (a transaction opened outside retry_transient, a test's): upgrade in
            # place; it waits for the other admissions in flight (a deadlock is the caller's to retry).
            _lock_exclusive(project_id)
            outer.shared = False
        if gate:
            _gate(outer.project)
        # A nested unit of work (a stop tripped inside a request) makes a new pass through the
        # lock order: it runs while this transaction holds the project row, which every writer
        # of the project's rows takes first, so no other transaction holds any of them.
        saved = outer.new_pass("project")
        try:
            yield outer
        finally:
            outer.stage = max(saved, outer.stage)
        return
    if shared and core_uow.exclusive_wanted(_scope_key(project_id)):
        shared = False  # an earlier run of this service needed the exclusive lock (ExclusiveNeeded)
    with transaction.atomic():
        uow = None
        project = (_lock_shared if shared else _lock_exclusive)(project_id, related)
        if project is None:
            raise NotFoundError("No such project.")
        uow = ProjectUnitOfWork(project, shared=shared)
        uow.enter_stage("project")
        token = core_uow.activate(uow)
        try:
            if gate:
                _gate(project)
            yield uow
            uow.flush()
        finally:
            core_uow.deactivate(token)


def _scope_key(project_id) -> str:
    """One spelling of a project's id for ExclusiveNeeded (a UUID or its string, any case)."""
    try:
        return f"project:{uuid.UUID(str(project_id))}"
    except ValueError:
        return f"project:{project_id}"


def _gate(project: Project) -> None:
    if project.status == Project.Status.EMERGENCY_STOPPED:
        raise EmergencyStopActive(f"Project {project.slug} is under an emergency stop.",
                                  emergency_stop_id=project.active_stop_id)
