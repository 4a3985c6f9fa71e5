"""The project-scoped unit of work (see core/uow.py): every write that touches a project's rows
opens one. It locks the project row first (so one project's writers are serialised on it and
nothing is admitted after a stop commits), refuses with 423 when ``gate`` and the project is
stopped, and writes the buffered outbox events and audit rows last, before the commit.

    with project_uow(project_id, gate=True) as uow:
        task = uow.lock("task", Task.objects, pk=task_id)
        ...

A nested ``project_uow`` for the same project joins the open one (one transaction, one flush);
one for another project is refused: cross-project writes do not exist.

Rule: every writer of a project's rows (tasks, calls, overrides, windows, stops, recoveries,
agent states, its outbox and audit chain) holds the project row first. Within that, rows are
locked in core.uow.LOCK_ORDER, which matters once admissions share the project lock."""
from contextlib import contextmanager

from django.db import transaction

from core import uow as core_uow
from core.errors import EmergencyStopActive, NotFoundError
from projects.models import Project


class ProjectUnitOfWork(core_uow.UnitOfWork):
    def __init__(self, project: Project):
        super().__init__(scope=f"project {project.pk}")
        self.project = project


@contextmanager
def project_uow(project_id, *, gate: bool = False, related: tuple[str, ...] = ()):
    """``related``: one-to-one rows read with the project row in the same query (a higher app
    names its own, e.g. budgets' "budget"); they are read, not locked."""
    outer = core_uow.current()
    if outer is not None:
        if not isinstance(outer, ProjectUnitOfWork) or str(outer.project.pk) != str(project_id):
            raise core_uow.LockOrderError(f"a unit of work for {outer.scope} cannot open one for project "
                                          f"{project_id}")
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
    with transaction.atomic():
        uow = None
        project = Project.objects.select_for_update(of=("self",)).select_related(*related).filter(
            pk=project_id).first()
        if project is None:
            raise NotFoundError("No such project.")
        uow = ProjectUnitOfWork(project)
        uow.enter_stage("project")
        token = core_uow.activate(uow)
        try:
            if gate:
                _gate(project)
            yield uow
            uow.flush()
        finally:
            core_uow.deactivate(token)


def _gate(project: Project) -> None:
    if project.status == Project.Status.EMERGENCY_STOPPED:
        raise EmergencyStopActive(f"Project {project.slug} is under an emergency stop.",
                                  emergency_stop_id=project.active_stop_id)
