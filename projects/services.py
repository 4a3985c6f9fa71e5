from django.db import IntegrityError, transaction
from django.db.models import Case, When
from django.utils import timezone

from audit.services import audit_record
from core.errors import InvalidInput, TransitionError
from core import uow as core_uow
from core.uow import retry_transient
from projects.hooks import task_outcome_reported
from projects.models import AgentState, AgentType, Project, Task, validate_timezone
from projects.uow import project_uow


def _task_snapshot(task: Task) -> dict:
    return {"status": task.status, "error": task.error}


@transaction.atomic
def project_create(*, actor, name: str, slug: str, timezone_name: str = "UTC") -> Project:
    try:
        validate_timezone(timezone_name)
    except Exception as exc:  # django ValidationError
        raise InvalidInput(fields={"timezone": list(getattr(exc, "messages", [str(exc)]))}) from None
    try:
        with transaction.atomic():
            project = Project.objects.create(name=name, slug=slug, timezone=timezone_name)
    except IntegrityError:
        raise InvalidInput(fields={"slug": [f"A project with slug {slug!r} already exists."]}) from None
    AgentState.objects.bulk_create(AgentState(project=project, agent_type=t) for t in AgentType.values)
    audit_record(actor=actor, action="project.create", obj=project,
                 after={"name": name, "slug": slug, "timezone": timezone_name, "status": project.status})
    return project


@retry_transient
def project_update(*, actor, project_id, name: str | None = None, timezone_name: str | None = None) -> Project:
    """Rename a project or change its time zone (its status is the emergency services' own).
    Budget windows are found by the instant they cover, so a new time zone takes effect at the
    end of the current day and month windows: nothing spent or reserved is lost or reset."""
    if timezone_name is not None:
        try:
            validate_timezone(timezone_name)
        except Exception as exc:
            raise InvalidInput(fields={"timezone": list(getattr(exc, "messages", [str(exc)]))}) from None
    with project_uow(project_id) as uow:
        project = uow.project
        before = {"name": project.name, "timezone": project.timezone}
        project.name = project.name if name is None else name
        project.timezone = project.timezone if timezone_name is None else timezone_name
        project.save(update_fields=["name", "timezone", "updated_at"])
        audit_record(actor=actor, action="project.update", obj=project, before=before,
                     after={"name": project.name, "timezone": project.timezone})
    return project


@retry_transient
def task_create(*, actor, project_id, agent_type: str, title: str, input_data=None) -> Task:
    with project_uow(project_id, gate=True) as uow:
        task = Task.objects.create(project=uow.project, agent_type=agent_type, title=title,
                                   input_data=input_data if input_data is not None else {}, created_by=actor)
        audit_record(actor=actor, action="task.create", obj=task,
                     after={"agent_type": agent_type, "title": title, "status": task.status})
    return task


@retry_transient
def task_report_outcome(*, actor, task_id, status: str, error: str = "", error_kind: str = "") -> Task:
    """An agent reports that a task completed or failed. Reporting the same outcome again
    changes nothing; any other transition out of a finished task is refused (409). Once the
    outcome is committed, the ``task_outcome_reported`` hook runs (emergency: error rate)."""
    if status not in Task.OUTCOMES:
        raise InvalidInput(fields={"status": [f"Must be one of {', '.join(Task.OUTCOMES)}."]})
    project_id = Task.objects.values_list("project_id", flat=True).get(pk=task_id)
    with project_uow(project_id) as uow:
        task = uow.lock("task", Task.objects, pk=task_id)
        if task.status == status:
            return task  # a retried report
        if status not in Task.TRANSITIONS[task.status]:
            raise TransitionError(f"A task that is {task.status} cannot become {status}.",
                                  current_status=task.status)
        before = _task_snapshot(task)
        task.status = status
        task.error = error if status == Task.Status.FAILED else ""
        task.error_kind = error_kind if status == Task.Status.FAILED else ""
        task.finished_at = timezone.now()
        task.save(update_fields=["status", "error", "error_kind", "finished_at", "updated_at"])
        agent_state_refresh(project_id=task.project_id, agent_type=task.agent_type,
                            failed=status == Task.Status.FAILED)
        audit_record(actor=actor, action=f"task.{status}", obj=task, before=before, after=_task_snapshot(task))
    task_outcome_reported(task=task)
    return task


def agent_state_refresh(*, project_id, agent_type: str, failed: bool | None = None) -> AgentState:
    """Derive an agent type's state in a project from its tasks (call inside the transaction
    that changed them): waiting_for_hitl while a task waits for a person, working while one
    runs, else idle, or error after a failure (``failed=True``) until a success (``failed=False``).
    An emergency stop is left for recovery to lift."""
    uow = core_uow.current()
    qs = AgentState.objects.filter(project_id=project_id, agent_type=agent_type)
    state = uow.lock("agent_state", qs) if uow is not None else qs.select_for_update().get()
    if state.status == AgentState.Status.EMERGENCY_STOPPED:
        return state
    # The most recent task waiting for a person, else the most recent running one: one query.
    current = Task.objects.filter(
        project_id=project_id, agent_type=agent_type, status__in=(Task.Status.WAITING_FOR_HITL, Task.Status.RUNNING),
    ).order_by(Case(When(status=Task.Status.WAITING_FOR_HITL, then=0), default=1), "-updated_at").only(
        "pk", "status").first()
    if current is not None and current.status == Task.Status.WAITING_FOR_HITL:
        status = AgentState.Status.WAITING_FOR_HITL
    elif current is not None:
        status = AgentState.Status.WORKING
    elif failed or (failed is None and state.status == AgentState.Status.ERROR):
        status, current = AgentState.Status.ERROR, None
    else:
        status, current = AgentState.Status.IDLE, None
    if (state.status, state.current_task_id) != (status, current.pk if current else None):
        state.status, state.current_task_id = status, current.pk if current else None
        state.save(update_fields=["status", "current_task", "updated_at"])
    return state


def task_move(*, task: Task, to: str) -> bool:
    # the caller holds the task's lock (stage "task" of its unit of work)
    """Move a locked task along its TRANSITIONS; a move it does not allow is skipped (a task
    halted or cancelled meanwhile stays so). Returns whether it moved."""
    if task.status == to or to not in Task.TRANSITIONS[task.status]:
        return False
    task.status = to
    fields = ["status", "updated_at"]
    if to == Task.Status.RUNNING and task.started_at is None:
        task.started_at = timezone.now()
        fields.append("started_at")
    task.save(update_fields=fields)
    return True
