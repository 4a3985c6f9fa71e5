"""Every write of a question or checkpoint (hitl.HitlRequest): ask, respond, cancel, time out,
and what an emergency stop does to them. Each runs in the project's unit of work
(projects.uow.project_uow): the project row (shared: one request's writers queue on its own
row, a stop waits for them all), then its task's row when it is about a task (stage "task": a
pending question keeps its task waiting for a person, projects.services.task_question_asked),
then the request row (LOCK_ORDER stage "hitl"); the audit row and the outbox event are written
at its end, waiting agents are woken after the commit. Every change of status goes through
``close_request`` and is appended to the request's history."""
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from audit.services import audit_record
from core import rawrows
from core.errors import AlreadyDecided, Expired, Forbidden, InvalidInput, NotFoundError, TransitionError
from core.redaction import redact
from core.sweeps import each, timeout_warning_due, timeout_warnings_due, warn_at_for
from core.text import seen_as, visible_text
from core.times import iso_utc
from core.uow import retry_transient
from core.wakeup import wakeup_on_commit
from emergency.models import CANCELLED_BY_STOP
from events.services import event_emit, event_emit_many
from hitl.models import MAX_OPTION_LENGTH, MAX_OPTIONS, HitlRequest
from projects import roles
from projects.models import Task
from projects.permissions import require_not_requester, require_project_perm
from projects.services import task_question_asked, task_question_closed
from projects.uow import project_uow

Status = HitlRequest.Status
ACTIONS = {"approve": Status.APPROVED, "reject": Status.REJECTED, "amend": Status.AMENDED}
EVENT_TEXT = 500  # characters of the question and answer carried by an event


def hitl_group(request_id) -> str:
    """Channel-layer group that agents waiting on this request listen to."""
    return f"hitl.request.{request_id}"


def _by(actor) -> str:
    return actor.get_username() if actor is not None else "system"


def _short(text: str) -> str:
    """What an event carries of an agent's or a person's text: every role of the project reads the
    events (agents too), so token-like strings (a live key pasted into a question) are masked, as
    in the call and output events."""
    return redact(text, EVENT_TEXT)


def hitl_event_data(req: HitlRequest) -> dict:
    """The payload of hitl_requested / hitl_decided / approval_timed_out (JSON primitives)."""
    return {
        "hitl_request_id": str(req.pk),
        "kind": "hitl",
        "request_type": req.request_type,
        "question": _short(req.question),
        "options": [redact(option, EVENT_TEXT) for option in req.options or ()],
        "status": req.status,
        "response": _short(req.response or ""),
        "amended": req.amended_content is not None,
        "asked_by": req.asked_by.get_username() if req.asked_by_id else None,
        "responded_by": req.responded_by.get_username() if req.responded_by_id else None,
        "expires_at": iso_utc(req.expires_at),
    }


def snapshot(req: HitlRequest) -> dict:
    return {"status": req.status, "response": req.response, "amended_content": req.amended_content,
            "responded_by": req.responded_by_id}


def _history_entry(status: str, actor, now, note: str = "") -> dict:
    return {"status": status, "by": _by(actor), "at": iso_utc(now), "note": note}


def clean_options(options) -> list[str]:
    """At most MAX_OPTIONS unique, non-empty strings (stripped), or 400."""
    if options is None:
        return []
    if not isinstance(options, list):
        raise InvalidInput(fields={"options": ["Must be a list of strings."]})
    if len(options) > MAX_OPTIONS:
        raise InvalidInput(fields={"options": [f"At most {MAX_OPTIONS} options."]})
    cleaned = []
    for option in options:
        if not isinstance(option, str) or not visible_text(option):
            raise InvalidInput(fields={"options": ["Each option must be a non-empty string (of characters one "
                                                   "can see)."]})
        if len(option) > MAX_OPTION_LENGTH:
            raise InvalidInput(fields={"options": [f"Each option has at most {MAX_OPTION_LENGTH} characters."]})
        cleaned.append(option.strip())
    if len({seen_as(option) for option in cleaned}) != len(cleaned):  # as a person reads them
        raise InvalidInput(fields={"options": ["The options must be unique (two of them read alike: they differ "
                                               "only in invisible characters or in their Unicode form)."]})
    return cleaned


# --- ask ---------------------------------------------------------------------------------------
@retry_transient
def hitl_request_create(*, asker, project_id, request_type: str, question: str, task_id=None, options=None,
                        context=None, timeout_minutes: int | None = None) -> HitlRequest:
    """An agent (agent role) asks a person a question or pauses at a checkpoint. Refused with
    423 while the project is stopped; a task, when given, must be one of the project's (400) and
    not ended (completed, failed or cancelled: 409); until it is closed that task waits for a
    person (``waiting_for_hitl``), as its agent type does."""
    if request_type not in HitlRequest.RequestType.values:
        raise InvalidInput(fields={"request_type": ["Must be checkpoint or question."]})
    question = (question or "").strip()
    if not visible_text(question):
        raise InvalidInput(fields={"question": ["This field may not be blank."]})
    options = clean_options(options)
    timeout_minutes = timeout_minutes or settings.HITL_APPROVAL_TIMEOUT_MINUTES
    if not 1 <= timeout_minutes <= 24 * 60:
        raise InvalidInput(fields={"timeout_minutes": ["Must be 1 to 1440 minutes."]})
    # Shared, as admissions: asks of one project do not queue behind one another, only behind a stop.
    with project_uow(project_id, gate=True, shared=True) as uow:
        require_project_perm(asker, roles.ACT_AS_AGENT, uow.project, "ask people questions")
        task = None
        if task_id is not None:
            uow.enter_stage("task")
            task = rawrows.by_pk(Task, task_id, lock=True, project_id=uow.project.pk)  # as a call's request
            if task is None:
                raise InvalidInput(fields={"task_id": ["No such task in this project."]})
            # An outcome is reported under the project's exclusive lock, so this read sees it or
            # that report sees this request (and cancels it): nothing is asked about ended work.
            if task.ended:
                raise TransitionError(f"The task is {task.status}: nothing more is asked about it.",
                                      current_status=task.status)
        now = timezone.now()
        req = HitlRequest(
            project=uow.project, task=task, request_type=request_type, question=question, options=options,
            context=context, asked_by=asker, timeout_minutes=timeout_minutes,
            expires_at=now + timedelta(minutes=timeout_minutes),
            warn_at=warn_at_for(now, timeout_minutes),
            history=[_history_entry(Status.PENDING, asker, now, f"{request_type} asked")])
        if task is not None:
            task_question_asked(task=task)
        uow.enter_stage("hitl")
        req.save(force_insert=True)
        audit_record(actor=asker, action="hitl_request.create", obj=req,
                     after={"status": req.status, "request_type": request_type, "question": question[:500],
                            "options": options, "expires_at": req.expires_at})
        event_emit(project_id=uow.project.pk, task_id=req.task_id, event_type="hitl_requested",
                   data=hitl_event_data(req))
    return req


# --- the unit of work of one request, and the one place that moves its status -----------------
@contextmanager
def request_uow(request_id, *, gate: bool, lock_task: bool = True):
    """The project (shared; 423 when ``gate`` and stopped), then the request's task (when it is
    about one and ``lock_task``: a change of status moves it), then the request row, locked."""
    route = HitlRequest.objects.filter(pk=request_id).values_list("project_id", "task_id").first()
    if route is None:
        raise NotFoundError("No such question or checkpoint.")
    project_id, task_id = route
    with project_uow(project_id, gate=gate, shared=True) as uow:
        task = uow.lock("task", Task.objects, pk=task_id) if task_id is not None and lock_task else None
        req = uow.lock("hitl", HitlRequest.objects.select_related("asked_by", "responded_by"), pk=request_id)
        req.project = uow.project
        if task is not None:
            req.task = task
        yield uow, req


def close_request(req: HitlRequest, *, actor, to: str, now, note: str = "", event_type: str, action: str,
                  response: str | None = None, amended_content=None) -> None:
    """Move a locked pending request along HitlRequest.TRANSITIONS, with its history entry,
    audit row, event and wake-up; its task (``req.task``, locked by the caller) stops waiting for
    it."""
    if to not in HitlRequest.TRANSITIONS.get(req.status, ()):
        raise TransitionError(f"The request is {req.status}.", current_status=req.status)
    before = snapshot(req)
    req.status = to
    fields = ["status", "history", "updated_at"]
    if to in (Status.APPROVED, Status.REJECTED, Status.AMENDED):
        req.responded_by, req.responded_at = actor, now
        req.response = response or ""
        req.amended_content = amended_content
        fields += ["responded_by", "responded_at", "response", "amended_content"]
    req.history = [*(req.history or ()), _history_entry(to, actor, now, note)]
    req.save(update_fields=fields)
    if req.task_id is not None:
        task_question_closed(task=req.task)
    audit_record(actor=actor, action=action, obj=req, before=before, after=snapshot(req), reason=note)
    event_emit(project_id=req.project_id, task_id=req.task_id, event_type=event_type, data=hitl_event_data(req))
    wakeup_on_commit(hitl_group(req.pk), status=req.status)


# --- respond ------------------------------------------------------------------------------------
def _check_answer(req: HitlRequest, action: str, response: str) -> None:
    """A question (or checkpoint) with options is approved with one of them (400 otherwise)."""
    if action == "approve" and req.options and response not in req.options:
        raise InvalidInput(fields={"response": [f"Must be one of the options: {', '.join(req.options)}."]})


@retry_transient
def hitl_request_respond(*, request_id, responder, action: str, response: str = "",
                         amended_content=None) -> HitlRequest:
    """A reviewer (not the asker) approves (a question with options: ``response`` is one of
    them), rejects (``response``: the reason, optional) or amends (``amended_content``: what to
    do instead). Exactly one decision wins (409 for the rest); at or after ``expires_at`` the
    request times out instead (410)."""
    if action not in ACTIONS:
        raise InvalidInput(fields={"action": ["Must be approve, reject or amend."]})
    response = (response or "").strip()
    if action == "amend" and amended_content is None:
        raise InvalidInput(fields={"amended_content": ["An amendment needs amended_content."]})
    if action != "amend" and amended_content is not None:
        raise InvalidInput(fields={"amended_content": ["Only an amendment carries amended_content."]})
    if isinstance(amended_content, (list, dict)) and not amended_content:
        raise InvalidInput(fields={"amended_content": ["Say what to do instead: this is empty."]})
    if isinstance(amended_content, str) and not visible_text(amended_content):
        raise InvalidInput(fields={"amended_content": ["This field may not be blank."]})
    expired = False
    with request_uow(request_id, gate=True) as (uow, req):
        require_project_perm(responder, roles.REVIEW, req.project, "answer questions and checkpoints")
        require_not_requester(decider=responder, requester_id=req.asked_by_id)
        if req.status == Status.TIMED_OUT:
            raise Expired("The request timed out before this answer.", status=req.status)
        if req.status != Status.PENDING:
            raise AlreadyDecided(f"The request is already {req.status}.", current_status=req.status,
                                 decider_id=req.responded_by_id, decided_at=req.responded_at)
        now = timezone.now()
        if now >= req.expires_at:
            _time_out(req, now)
            expired = True
        else:
            _check_answer(req, action, response)
            close_request(req, actor=responder, to=ACTIONS[action], now=now, note=response,
                          event_type="hitl_decided", action=f"hitl_request.{action}", response=response,
                          amended_content=amended_content)
    if expired:  # the time-out is committed; the answer is refused
        raise Expired("The request timed out before this answer.", status=Status.TIMED_OUT)
    return req


# --- cancel -------------------------------------------------------------------------------------
@retry_transient
def hitl_request_cancel(*, request_id, actor, reason: str = "") -> HitlRequest:
    """The asker withdraws a pending request (an addition to API.md). Cancelling again
    changes nothing; a decided request is 409."""
    with request_uow(request_id, gate=False) as (uow, req):
        if actor.pk != req.asked_by_id and not actor.is_superuser:
            raise Forbidden("Only the agent that asked may cancel this request.")
        if req.status == Status.CANCELLED:
            return req
        if req.status != Status.PENDING:
            raise TransitionError(f"The request is {req.status}.", current_status=req.status)
        close_request(req, actor=actor, to=Status.CANCELLED, now=timezone.now(),
                      note=(reason or "").strip() or "cancelled by the asker", event_type="hitl_decided",
                      action="hitl_request.cancel")
    return req


# --- time-outs ----------------------------------------------------------------------------------
def _time_out(req: HitlRequest, now) -> None:
    close_request(req, actor=None, to=Status.TIMED_OUT, now=now, note="no answer in time",
                  event_type="approval_timed_out", action="hitl_request.time_out")


@retry_transient
def hitl_request_time_out(*, request_id, now=None) -> bool:
    """Time out one pending request past its deadline (beat, or a wait that finds it due).
    True when this call timed it out; False when it was decided or timed out already."""
    now = now or timezone.now()
    if not HitlRequest.objects.filter(pk=request_id, status=Status.PENDING, expires_at__lte=now).exists():
        return False
    with request_uow(request_id, gate=False) as (uow, req):
        if req.status != Status.PENDING or req.expires_at > now:
            return False
        _time_out(req, now)
        return True


def hitl_request_settle_due(req: HitlRequest, now=None) -> bool:
    """A question read past its deadline that beat has not timed out yet is timed out now: True
    when the copy read is stale (read it again), whether this call timed it out or another reader,
    a decision or beat did first."""
    now = now or timezone.now()
    if req.status == Status.PENDING and req.expires_at <= now:
        hitl_request_time_out(request_id=req.pk, now=now)
        return True
    return False


def hitl_request_expire_overdue(*, now=None, project_id=None) -> int:
    """Beat sweep: every due pending request goes through the time-out service (its own lock,
    history entry, audit row and approval_timed_out event); with ``project_id``, that project's
    only: the API's reads run it first."""
    now = now or timezone.now()
    requests = HitlRequest.objects.filter(project_id=project_id) if project_id else HitlRequest.objects
    due = requests.filter(status=Status.PENDING, expires_at__lte=now).order_by("expires_at").values_list("pk", flat=True)
    return each(due[:1000], lambda pk: hitl_request_time_out(request_id=pk, now=now))


@retry_transient
def hitl_request_warn(*, request_id, now=None) -> bool:
    """``approval_timeout_warning`` once, when a fifth of the request's time is left (and it is
    still pending). True when this call sent it."""
    now = now or timezone.now()
    with request_uow(request_id, gate=False, lock_task=False) as (uow, req):
        if not timeout_warning_due(req, now):
            return False
        req.timeout_warning_sent_at = now
        req.save(update_fields=["timeout_warning_sent_at", "updated_at"])
        event_emit(project_id=req.project_id, task_id=req.task_id, event_type="approval_timeout_warning",
                   data={**hitl_event_data(req), "seconds_left": int((req.expires_at - now).total_seconds())})
    return True


def hitl_request_warn_due(*, now=None) -> int:
    """Beat sweep: every pending request due a warning goes through hitl_request_warn."""
    return timeout_warnings_due(HitlRequest, lambda pk, at: hitl_request_warn(request_id=pk, now=at), now=now)


# --- emergency stop -----------------------------------------------------------------------------
def cancel_open_hitl_requests(*, uow, project, now) -> list[str]:
    """emergency.hooks.project_halting: a stop cancels every pending request of the project (in
    the stop's unit of work, stage "hitl"), each with its history entry, and wakes their waiters;
    one past its deadline (beat late or down) times out instead, as beat would have.
    The stop's own audit row and event list them; the stop's halting of the tasks cleared their
    open questions."""
    pending = list(uow.lock_many("hitl", HitlRequest.objects.filter(project=project, status=Status.PENDING)
                                 .select_related("asked_by")))  # each one's event names who asked
    due = [req for req in pending if req.expires_at <= now]
    for req in due:  # past its deadline, not timed out yet by beat: as beat would have (history,
        # audit row, event), not "cancelled by the stop"; the stop's halting clears the task's question
        before = snapshot(req)
        req.status = Status.TIMED_OUT
        req.history = [*(req.history or ()), _history_entry(Status.TIMED_OUT, None, now, "no answer in time")]
        req.save(update_fields=["status", "history", "updated_at"])
        audit_record(actor=None, action="hitl_request.time_out", obj=req, before=before, after=snapshot(req),
                     reason="no answer in time")
        event_emit(project_id=req.project_id, task_id=req.task_id, event_type="approval_timed_out",
                   data=hitl_event_data(req))
        wakeup_on_commit(hitl_group(req.pk), status=req.status)
    pending = [req for req in pending if req not in due]
    for req in pending:
        req.status, req.updated_at = Status.CANCELLED, now
        req.history = [*(req.history or ()), _history_entry(Status.CANCELLED, None, now, CANCELLED_BY_STOP)]
        wakeup_on_commit(hitl_group(req.pk), status=Status.CANCELLED)
    HitlRequest.objects.bulk_update(pending, ["status", "history", "updated_at"])  # one statement, however many
    # each one's own `hitl_decided` (one insert, after the stop's event)
    event_emit_many(project_id=project.pk, events=[("hitl_decided", req.task_id, hitl_event_data(req))
                                                   for req in pending])
    return [str(req.pk) for req in pending]


def cancel_hitl_requests_of_ended_task(*, uow, task, actor, now) -> list[str]:
    """projects.hooks.task_ending: a task reported failed (or completed) takes its pending
    questions and checkpoints with it, each with its history entry, audit row and event: nobody
    is asked about work the agent has ended."""
    pending = list(uow.lock_many("hitl", HitlRequest.objects.filter(task=task, status=Status.PENDING)))
    for req in pending:
        req.task = task  # the outcome's unit of work holds its lock
        close_request(req, actor=actor, to=Status.CANCELLED, now=now, note=f"its task was reported {task.status}",
                      event_type="hitl_decided", action="hitl_request.task_ended")
    return [str(req.pk) for req in pending]
