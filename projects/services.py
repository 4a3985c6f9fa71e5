import logging
import re
import unicodedata
import urllib.parse

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from audit.services import audit_record
from core.errors import Forbidden, InvalidInput, TransitionError
from core import rawrows
from core.rawrows import db, kept_cursor
from core import uow as core_uow
from core.uow import retry_transient
from projects.hooks import project_created, task_ending, task_outcome_reported, task_output_under_review, task_worked_on_by
from projects.models import AgentState, AgentType, Project, ProjectNotifier, Task, validate_timezone
from projects.uow import project_uow

log = logging.getLogger(__name__)


def _task_snapshot(task: Task) -> dict:
    return {"status": task.status, "error": task.error}


@transaction.atomic
def project_create(*, actor, name: str, slug: str, timezone_name: str = "UTC",
                   allowed_link_hosts: list[str] | None = None) -> Project:
    """A new project, its agents' states and its audit row; a creator who is not an admin is made its
    manager (``project_created``: access) in the same transaction."""
    try:
        validate_timezone(timezone_name)
    except Exception as exc:  # django ValidationError
        raise InvalidInput(fields={"timezone": list(getattr(exc, "messages", [str(exc)]))}) from None
    hosts = normalise_hosts(allowed_link_hosts) if allowed_link_hosts is not None else []
    try:  # the database holds slugs unique without case (project_slug_unique_without_case)
        with transaction.atomic():
            project = Project.objects.create(name=name, slug=slug, timezone=timezone_name, allowed_link_hosts=hosts)
    except IntegrityError:
        raise InvalidInput(fields={"slug": [f"A project with slug {slug!r} already exists (slugs are compared "
                                            f"without case)."]}) from None
    AgentState.objects.bulk_create(AgentState(project=project, agent_type=t) for t in AgentType.values)
    audit_record(actor=actor, action="project.create", obj=project,
                 after={"name": name, "slug": slug, "timezone": timezone_name, "status": project.status,
                        **({"allowed_link_hosts": hosts} if hosts else {})})
    project_created(project=project, actor=actor)
    return project


@retry_transient
def project_update(*, actor, project_id, name: str | None = None, timezone_name: str | None = None,
                   allowed_link_hosts: list[str] | None = None) -> Project:
    """Rename a project, change its time zone or the hosts its agents' output may link to
    (its status is the emergency services' own).
    Budget windows are found by the instant they cover, so a new time zone takes effect at the
    end of the current day and month windows: nothing spent or reserved is lost or reset."""
    if timezone_name is not None:
        try:
            validate_timezone(timezone_name)
        except Exception as exc:
            raise InvalidInput(fields={"timezone": list(getattr(exc, "messages", [str(exc)]))}) from None
    with project_uow(project_id) as uow:
        project = uow.project
        before = {"name": project.name, "timezone": project.timezone,
                  "allowed_link_hosts": list(project.allowed_link_hosts or [])}
        project.name = project.name if name is None else name
        project.timezone = project.timezone if timezone_name is None else timezone_name
        if allowed_link_hosts is not None:
            project.allowed_link_hosts = normalise_hosts(allowed_link_hosts)
        project.save(update_fields=["name", "timezone", "allowed_link_hosts", "updated_at"])
        audit_record(actor=actor, action="project.update", obj=project, before=before,
                     after={"name": project.name, "timezone": project.timezone,
                            "allowed_link_hosts": project.allowed_link_hosts})
    return project


_HOST = re.compile(r"(?=.{1,253}$)(?:\*\.)?[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


NOTIFIER_FIELDS = ("kind", "target", "secret", "active")


def _notifier_snapshot(values: dict, fields) -> dict:
    """What an audit row says of a notifier: never its secret, only whether one is set."""
    return {name: bool(values.get(name)) if name == "secret" else values.get(name) for name in fields}


def _notifier_values(notifier: ProjectNotifier) -> dict:
    return {name: getattr(notifier, name) for name in NOTIFIER_FIELDS}


def notifier_target_clean(kind: str, target: str) -> str:
    """A notifier's target, stripped, as its delivery takes it: for ``webhook`` an http(s) URL
    with a host (``http://alerts:9000/hook``, a service name without a dot, included) and a port
    that is a number; for ``email`` an address with an ``@``. No whitespace or control characters
    (a line break in an address would add a mail header). Anything else would be refused at the
    first alert, after the stop it was meant to report."""
    target = (target or "").strip()
    if kind not in ProjectNotifier.Kind.values:
        raise InvalidInput(fields={"kind": [f"One of {', '.join(ProjectNotifier.Kind.values)}."]})
    broken = not target or any(c.isspace() or unicodedata.category(c).startswith("C") for c in target)
    if kind == ProjectNotifier.Kind.EMAIL:
        local, at, domain = target.rpartition("@")
        if broken or not (local and at and domain):
            raise InvalidInput(fields={"target": ["An e-mail address (name@example.com)."]})
        return target
    try:
        parts = urllib.parse.urlsplit(target)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        broken = True
    if broken or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidInput(fields={"target": ["An http:// or https:// URL with a host "
                                              "(https://hooks.example.com/hitl)."]})
    return target


@transaction.atomic
def project_notifier_save(*, actor, notifier: ProjectNotifier, before: dict | None, changed) -> ProjectNotifier:
    """Add (``before`` None) or change where a project's alerts go (admin), audited in its
    project's chain with the fields that changed. A new target (or kind) delivery would refuse is
    refused here; one saved before is left as it is."""
    if before is None or {"kind", "target"} & set(changed):
        notifier.target = notifier_target_clean(notifier.kind, notifier.target)
    notifier.save()
    fields = NOTIFIER_FIELDS if before is None else list(changed)
    audit_record(actor=actor, action="project_notifier.create" if before is None else "project_notifier.update",
                 obj=notifier, project_id=notifier.project_id,
                 before=None if before is None else _notifier_snapshot(before, fields),
                 after=_notifier_snapshot(_notifier_values(notifier), fields))
    return notifier


@transaction.atomic
def project_notifier_delete(*, actor, notifier: ProjectNotifier) -> None:
    audit_record(actor=actor, action="project_notifier.delete", obj=notifier, project_id=notifier.project_id,
                 before=_notifier_snapshot(_notifier_values(notifier), NOTIFIER_FIELDS))
    notifier.delete()


def normalise_hosts(hosts) -> list[str]:
    """Host names, lower case, sorted, without duplicates ("example.com" allows its subdomains);
    400 for anything that is not a host name (no scheme, path or port)."""
    if not isinstance(hosts, (list, tuple)) or len(hosts) > 200:
        raise InvalidInput(fields={"allowed_link_hosts": ["A list of at most 200 host names."]})
    out = set()
    for host in hosts:
        host = str(host).strip().lower().rstrip(".")
        if not _HOST.fullmatch(host) or "." not in host.removeprefix("*."):
            raise InvalidInput(fields={"allowed_link_hosts": [f"Not a host name: {host[:100]!r}."]})
        out.add(host.removeprefix("*."))
    return sorted(out)


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
    """The agent that created a task, or the one that requested its first call, reports that it completed
    or failed; another agent of the project gets 403, since the outcome ends the task's calls as only
    their own agent may. Under
    the project's exclusive lock (see projects/uow.py; hitl relies on it). Reporting the same outcome again
    changes nothing; any other transition out of a finished task is refused (409). In the same
    unit of work the ``task_ending`` hook cancels what of the task still waits (calls not run,
    responses and questions pending). Once the
    outcome is committed, the ``task_outcome_reported`` hook runs (emergency: error rate)."""
    if status not in Task.OUTCOMES:
        raise InvalidInput(fields={"status": [f"Must be one of {', '.join(Task.OUTCOMES)}."]})
    project_id = Task.objects.values_list("project_id", flat=True).get(pk=task_id)
    with project_uow(project_id) as uow:
        task = uow.lock("task", Task.objects, pk=task_id)
        if actor.pk != task.created_by_id and not actor.is_superuser and \
                not any(task_worked_on_by(task=task, user_id=actor.pk)):
            raise Forbidden("Only the agent that created this task, or the one that requested its first call, "
                            "may report its outcome.")
        if task.status == status:
            return task  # a retried report
        ran = status == Task.Status.CANCELLED and _ran(task)  # (its hook asks the database: once)
        # A halted task is its stop's recovery's to resume or cancel (HALTED → CANCELLED is the
        # recovery's move): an agent's "cancelled" during the stop hid a call that ran from the
        # error rate and from the person settling the halted tasks.
        if status not in Task.TRANSITIONS[task.status] or ran or task.status == Task.Status.HALTED:
            raise TransitionError(_why_not(task, status, ran=ran), current_status=task.status)
        before = _task_snapshot(task)
        task.status = status
        task.error = error if status == Task.Status.FAILED else ""
        task.error_kind = error_kind if status == Task.Status.FAILED else ""
        task.finished_at = timezone.now()
        task.save(update_fields=["status", "error", "error_kind", "finished_at", "updated_at"])
        agent_state_refresh(project_id=task.project_id, agent_type=task.agent_type,
                            failed=status == Task.Status.FAILED)
        audit_record(actor=actor, action=f"task.{status}", obj=task, before=before, after=_task_snapshot(task))
        task_ending(uow=uow, task=task, actor=actor, now=task.finished_at)  # its audit rows follow the outcome's
    task_outcome_reported(task=task)
    return task


def _ran(task: Task) -> bool:
    """Running (one of its calls runs), waiting for a question asked while it ran (it goes back to
    running after it), or with an output of it waiting for review (the call that made it ran)."""
    return Task.Status.RUNNING in (task.status, task.status_after_questions) or any(
        task_output_under_review(task=task))


def _why_not(task: Task, status: str, *, ran: bool) -> str:
    if task.status == Task.Status.HALTED:
        return "The task is halted by an emergency stop: the stop's recovery resumes or cancels it, not a report."
    if ran:
        return ("The task ran (a call of it runs, or its output waits for review), so it cannot be reported "
                "cancelled: report it completed or failed. Cancelled is for work abandoned before it ran.")
    if task.status == Task.Status.WAITING_FOR_HITL:
        return (f"The task waits for a person (a call, its output or a question pending review), so it cannot "
                f"be reported {status}: wait for the decision, cancel the call or the question, or report the "
                f"task failed.")
    return f"A task that is {task.status} cannot become {status}."


_REFRESH_SQL = None


def _refresh_sql() -> str:
    """One UPDATE that derives an agent state from its tasks (written out once: it runs in every
    write on a call, and three ORM statements cost more CPU than the work)."""
    quote = connection.ops.quote_name
    state, task = AgentState._meta, Task._meta
    col = lambda meta, name: quote(meta.get_field(name).column)  # noqa: E731
    current = (f"SELECT t.{{field}} FROM {quote(task.db_table)} t WHERE t.{col(task, 'project')} = %(project)s "
               f"AND t.{col(task, 'agent_type')} = %(agent_type)s AND t.{col(task, 'status')} IN (%(waiting)s, "
               f"%(running)s) ORDER BY CASE WHEN t.{col(task, 'status')} = %(waiting)s THEN 0 ELSE 1 END, "
               f"t.{col(task, 'updated_at')} DESC LIMIT 1")
    status_column = col(state, "status")
    return (
        f"UPDATE {quote(state.db_table)} SET "
        f"{status_column} = CASE ({current.format(field=col(task, 'status'))}) "
        f"WHEN %(waiting)s THEN %(state_waiting)s WHEN %(running)s THEN %(state_working)s "
        f"ELSE CASE WHEN %(failed)s = 1 OR (%(failed)s = -1 AND {status_column} = %(state_error)s) "
        f"THEN %(state_error)s ELSE %(state_idle)s END END, "
        f"{col(state, 'current_task')} = ({current.format(field=quote(task.pk.column))}), "
        f"{col(state, 'updated_at')} = %(now)s "
        f"WHERE {col(state, 'project')} = %(project)s AND {col(state, 'agent_type')} = %(agent_type)s "
        f"AND {status_column} <> %(state_stopped)s")


def agent_state_refresh(*, project_id, agent_type: str, failed: bool | None = None, at_once: bool = False) -> None:
    """Derive an agent type's state in a project from its tasks: waiting_for_hitl while a task
    waits for a person (the most recent one is its current task), working while one runs, else
    idle, or error after a failure (``failed=True``) until a success (``failed=False``). An
    emergency stop is left for recovery to lift.

    Inside a unit of work it is written at the unit's end (stage ``agent_state``, before the
    outbox and the audit chain), once per agent type and outcome: every write on a call of the
    project changes that row, so it is locked only for the last statements before the commit, as
    the audit chain's head is, not through the whole transaction (which queued the project's
    concurrent requests one behind the other). The row is locked first and derived in the next
    statement, which reads the tasks as the last commit before it left them (READ COMMITTED takes
    a snapshot per statement): whatever order concurrent writers commit in, the last one sees
    every task change. Outside a unit of work, or ``at_once`` (a caller that reads the state back
    in the same unit of work), it runs at once, in the caller's transaction."""
    if at_once:
        _refresh_locked(project_id, agent_type, failed)
        return
    core_uow.defer_or_run("agent_state", lambda: _refresh_locked(project_id, agent_type, failed),
                          key=(agent_type, str(project_id), failed))


_LOCK_STATE_SQL = None


def _refresh_locked(project_id, agent_type: str, failed: bool | None) -> None:
    global _LOCK_STATE_SQL
    connection = db()  # this thread's database wrapper (the module's is a proxy)
    if _LOCK_STATE_SQL is None:
        quote, meta = connection.ops.quote_name, AgentState._meta
        _LOCK_STATE_SQL = (f"SELECT {quote(meta.pk.column)} FROM {quote(meta.db_table)} "
                           f"WHERE {quote(meta.get_field('project').column)} = %s "
                           f"AND {quote(meta.get_field('agent_type').column)} = %s"
                           + (" FOR NO KEY UPDATE" if connection.features.has_select_for_no_key_update else ""))
    with transaction.atomic(savepoint=False):
        with kept_cursor(connection) as cursor:
            cursor.execute(_LOCK_STATE_SQL, [Task._meta.get_field("project").get_db_prep_value(project_id, connection),
                                             agent_type])
        _refresh(project_id, agent_type, failed)


def _refresh(project_id, agent_type: str, failed: bool | None) -> None:
    global _REFRESH_SQL
    connection = db()  # this thread's database wrapper (the module's is a proxy)
    if _REFRESH_SQL is None:
        _REFRESH_SQL = _refresh_sql()
    params = {
        "project": Task._meta.get_field("project").get_db_prep_value(project_id, connection),
        "agent_type": agent_type, "waiting": Task.Status.WAITING_FOR_HITL, "running": Task.Status.RUNNING,
        "state_waiting": AgentState.Status.WAITING_FOR_HITL, "state_working": AgentState.Status.WORKING,
        "state_error": AgentState.Status.ERROR, "state_idle": AgentState.Status.IDLE,
        "state_stopped": AgentState.Status.EMERGENCY_STOPPED,
        "failed": {True: 1, False: 0, None: -1}[failed],
        "now": AgentState._meta.get_field("updated_at").get_db_prep_value(timezone.now(), connection),
    }
    with kept_cursor(connection) as cursor:
        cursor.execute(_REFRESH_SQL, params)


def task_move(*, task: Task, to: str) -> bool:
    # the caller holds the task's lock (stage "task" of its unit of work)
    """Move a locked task along its TRANSITIONS; a move it does not allow is skipped (a task
    halted or cancelled meanwhile stays so). Returns whether it moved.

    A task with questions or checkpoints still pending (``open_questions``) keeps waiting for a
    person: a move back to pending or running is held, and made when the last one is closed
    (``task_question_closed``). A new wait (a call or an output sent for review) takes the task
    over, so closing the questions then leaves it waiting for that."""
    if to == Task.Status.WAITING_FOR_HITL and task.status_after_questions:
        task.status_after_questions = ""
        if task.status == to:
            rawrows.update_fields(task, ["status_after_questions", "updated_at"])
            return False
    elif (task.open_questions and task.status == Task.Status.WAITING_FOR_HITL
          and to in (Task.Status.PENDING, Task.Status.RUNNING)):
        task.status_after_questions = to
        fields = ["status_after_questions", "updated_at"]
        if to == Task.Status.RUNNING and task.started_at is None:
            task.started_at = timezone.now()
            fields.append("started_at")
        rawrows.update_fields(task, fields)
        return False
    if task.status == to or to not in Task.TRANSITIONS[task.status]:
        return False
    task.status = to
    fields = ["status", "updated_at"]
    if to == Task.Status.WAITING_FOR_HITL:
        fields.append("status_after_questions")
    if to == Task.Status.RUNNING and task.started_at is None:
        task.started_at = timezone.now()
        fields.append("started_at")
    rawrows.update_fields(task, fields)
    return True


def task_question_asked(*, task: Task) -> None:
    # the caller holds the task's lock (stage "task" of its unit of work)
    """A question or checkpoint about a locked open task: the task waits for a person until it is
    closed (and its agent type's state with it), then goes back to where it was, or to where a
    move held back meanwhile (task_move) would have taken it."""
    task.open_questions += 1
    fields = ["open_questions", "updated_at"]
    if task.status in (Task.Status.PENDING, Task.Status.RUNNING):
        task.status_after_questions, task.status = task.status, Task.Status.WAITING_FOR_HITL
        fields += ["status", "status_after_questions"]
    rawrows.update_fields(task, fields)
    agent_state_refresh(project_id=task.project_id, agent_type=task.agent_type)


def task_question_closed(*, task: Task) -> None:
    # the caller holds the task's lock (stage "task" of its unit of work)
    """A question or checkpoint about a locked task was answered, cancelled or timed out: when it
    was the last one, a task still waiting only for them goes back to pending or running."""
    if task.open_questions < 1:  # a question the task did not count: keep it at 0, and say so
        log.error("task %s: a question closed that its count of open questions did not hold", task.pk)
    task.open_questions = max(task.open_questions - 1, 0)
    fields = ["open_questions", "updated_at"]
    if not task.open_questions and task.status_after_questions:
        if task.status == Task.Status.WAITING_FOR_HITL:
            task.status = task.status_after_questions
            fields.append("status")
        task.status_after_questions = ""
        fields.append("status_after_questions")
    rawrows.update_fields(task, fields)
    agent_state_refresh(project_id=task.project_id, agent_type=task.agent_type)


def tasks_halt(*, uow, project, now) -> list:
    """An emergency stop halts every open task of the project (locked, stage ``task``): pending,
    waiting for a person or running. Their open questions are cleared with them (the stop
    cancels every pending question: none is left about a halted task). Returns their ids."""
    ids = [t.pk for t in uow.lock_many("task", Task.objects.filter(project=project, status__in=Task.OPEN_STATUSES)
                                       .only("pk"))]
    Task.objects.filter(pk__in=ids).update(status=Task.Status.HALTED, open_questions=0, status_after_questions="",
                                           updated_at=now)
    return ids


def tasks_settle_halted(*, uow, project_id, to: str, now) -> list[Task]:
    """A recovery resumes (``pending``) or cancels the project's halted tasks (locked, stage
    ``task``); a stop left none with an open question. Returns them (their ids and titles)."""
    if to not in Task.TRANSITIONS[Task.Status.HALTED]:
        raise ValueError(f"A halted task cannot become {to}.")
    tasks = uow.lock_many("task", Task.objects.filter(project_id=project_id, status=Task.Status.HALTED)
                          .only("pk", "title"))
    Task.objects.filter(pk__in=[t.pk for t in tasks]).update(status=to, updated_at=now)
    return tasks
