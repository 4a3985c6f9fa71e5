"""Response approvals: an agent's output is held until a person approves it.

The agent that ran a started call submits what it produced; the analyzer (approvals.analyzers,
run before any lock is taken: it reads only what the call was approved to do) attaches its
flags and scores; the call's budget reservation is settled with the reported usage, exactly
once; a reviewer approves, rejects (with a reason) or sends it back for modification (the agent
redoes the work under a new call approval, up to HITL_RESPONSE_MAX_MODIFICATION_ROUNDS rounds
per task); beat times it out. A critical flag raises ``safety_alert`` and trips the emergency
condition ``security_threat`` in the submission's own unit of work.

Locks: project (shared), task, call approval, budget windows, response approval (LOCK_ORDER of
core/uow.py): a submission settles the call's budget first, then records the response.
"""
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from approvals.analyzers import ResponseContext, analyze_response
from approvals.analyzers.text import redact
from approvals.models import CANCELLED_BY_STOP, AgentCallApproval, FlagLabel, ResponseApproval
from approvals.selectors import call_route_key
from approvals.services.calibration import label_flags, project_rules
from approvals.services.common import call_uow, task_status_after_review
from approvals.services.usage import priced_cost, record_settlement, refuse_lower_totals
from audit.services import audit_record
from budgets.services import budget_settle
from core import rawrows
from core.errors import (AlreadyDecided, EmergencyStopActive, Expired, Forbidden, InvalidInput, NotFoundError,
                         TransitionError)
from core.request_cache import memo
from core.sweeps import each, timeout_warning_due, timeout_warnings_due, warn_at_for
from core.text import visible_text
from core.times import iso_utc
from core.uow import retry_transient
from core.wakeup import wakeup_on_commit
from emergency.models import Condition, Severity
from emergency.services import emergency_settings_for, emergency_stop_trigger
from events.services import event_emit, event_emit_many
from projects import roles
from projects.models import Project, Task
from projects.permissions import require_not_requester, require_project_perm
from projects.services import agent_state_refresh, task_move
from projects.uow import project_uow

Status = ResponseApproval.Status
CallStatus = AgentCallApproval.Status
# A call approval takes one response; after one of these it is done with (a new call is needed).
FINAL_FOR_CALL = (Status.PENDING, Status.APPROVED, Status.REJECTED, Status.REQUIRES_MODIFICATION)


def response_group(approval_id) -> str:
    """Channel-layer group that agents waiting on this response approval listen to."""
    return f"approvals.response.{approval_id}"


def response_event_data(response: ResponseApproval) -> dict:
    return {
        "approval_id": str(response.pk),
        "original_call_approval_id": str(response.agent_call_approval_id),
        "agent_type": response.agent_type,
        "response_summary": redact(response.response_summary, 500),   # token-like strings masked
        "status": response.status,
        "risk_level": (response.analysis or {}).get("level"),
        "risk_flags": [{k: f.get(k) for k in ("code", "severity", "message", "location")}
                       for f in response.risk_flags[:20]],
        "safety_score": float(response.safety_score),
        "confidence_score": float(response.confidence_score),
        "tokens_used": response.tokens_used,
        "actual_cost": f"{response.actual_cost:.4f}",
        "expires_at": iso_utc(response.expires_at),
        "approved_by": response.approved_by.get_username() if response.approved_by_id else None,
        "rejection_reason": redact(response.rejection_reason, 500),  # why it was rejected or cancelled, or ""
    }


def _snapshot(response: ResponseApproval) -> dict:
    return {"status": response.status, "approved_by": response.approved_by_id,
            "rejection_reason": response.rejection_reason, "modifications_required": response.modifications_required}


def _score(value) -> Decimal:
    return Decimal(str(min(max(float(value), 0.0), 1.0))).quantize(Decimal("0.01"))


def analysis_context(call: AgentCallApproval, *, agent_type: str, agent_response, response_summary: str,
                     next_steps, tokens_used: int, allowed_hosts=()) -> ResponseContext:
    return ResponseContext(
        agent_type=agent_type, agent_response=agent_response, response_summary=response_summary,
        next_steps=tuple(str(s) for s in next_steps), tokens_used=tokens_used, call_agent_type=call.agent_type,
        task_agent_type=call.task.agent_type, proposed_action=call.proposed_action,
        approved_input=call.input_to_run, estimated_tokens=call.estimated_tokens,
        # the BotArmy workflow goes on after every agent but the deployer, the last one
        workflow_continues=agent_type != "deployer", allowed_hosts=tuple(allowed_hosts))


@retry_transient
def response_approval_submit(*, submitter, project_id, task_id, agent_type: str, call_approval_id,
                             agent_response, response_summary: str = "", next_steps=(), tokens_used: int,
                             actual_cost=None, timeout_minutes: int | None = None) -> ResponseApproval:
    """The agent that ran a started call submits its output for review. Settles the call's
    reservation with the reported usage (exactly once, also while the project is stopped: the
    tokens were spent); refused with 423 while the project is stopped, 409 unless the call is
    approved and started and has no response yet (one pending per call; after a decision the
    agent requests a new call)."""
    call = (AgentCallApproval.objects.select_related("task", "project").filter(pk=call_approval_id).first())
    if call is None or call.project_id != project_id:
        raise NotFoundError("No such call approval in this project.")
    if call.task_id != task_id:
        raise InvalidInput(fields={"task_id": ["The call approval belongs to another task."]})
    if agent_type != call.agent_type:
        raise InvalidInput(fields={"agent_type": [f"The call approval is the {call.agent_type} agent's."]})
    if submitter.pk != call.requested_by_id:
        raise Forbidden("Only the agent that requested the call may submit its response.")
    memo(call_route_key(call.pk), lambda: {"project_id": call.project_id, "task_id": call.task_id})
    _refuse_unless_started(call)   # before the analysis; checked again under the lock
    # The analysis reads only what the call was approved to do (which no longer changes once it
    # is approved and started), so it runs before any lock is taken.
    rules = project_rules(project_id)
    analysis = analyze_response(analysis_context(
        call, agent_type=agent_type, agent_response=agent_response, response_summary=response_summary,
        next_steps=next_steps, tokens_used=tokens_used, allowed_hosts=call.project.allowed_link_hosts or ()), rules)
    timeout_minutes = timeout_minutes or settings.HITL_RESPONSE_TIMEOUT_MINUTES
    stopped = stop = None
    with call_uow(call.pk, gate=False) as (uow, call):
        _refuse_unless_started(call)
        if uow.project.status != Project.Status.EMERGENCY_STOPPED and call.task.ended:
            # the task has ended (completed, failed, cancelled): an output reviewed now could no longer be
            # redone or turned away
            raise TransitionError(f"Its task is {call.task.status}: an output is reviewed before its task ends.",
                                  current_status=call.status, task_status=call.task.status)
        # no cost given: the model's prices (and only the new tokens of a later report, at today's)
        price = (lambda tokens: priced_cost(call, tokens)) if actual_cost is None else None
        if price is not None:
            actual_cost = price(tokens_used)
        stopped = uow.project.status == Project.Status.EMERGENCY_STOPPED
        # stopped: the usage is still recorded (the tokens were spent); the output is not taken
        settlement = budget_settle(uow=uow, call=call, tokens_used=tokens_used, actual_cost=actual_cost,
                                   price=price)
        if not stopped:  # stopped: the answer is 423 (below), whatever the totals
            refuse_lower_totals(settlement, current_status=call.status)
        record_settlement(uow, call, settlement, tokens_used=tokens_used, actual_cost=actual_cost)
        if settlement.settled and settlement.recorded is None:  # the first report (a later one: budget.adjust)
            audit_record(actor=submitter, action="agent_approval.settle", obj=call,
                         after={"tokens_used": tokens_used, "actual_cost": Decimal(actual_cost)})
        # the usage itself may have tripped budget_critical (in this unit of work)
        stopped = uow.project.status == Project.Status.EMERGENCY_STOPPED
        active_stop_id = uow.project.active_stop_id
        if not stopped:
            uow.enter_stage("response")
            earlier = list(ResponseApproval.objects.filter(task=call.task).values_list(
                "agent_call_approval_id", "status"))
            taken = next((s for c, s in earlier if c == call.pk and s in FINAL_FOR_CALL), None)
            if taken is not None:
                raise TransitionError(f"This call already has a response ({taken}): request a new call to "
                                      f"submit new work.", current_status=taken)
            now = timezone.now()
            response = ResponseApproval(
                project=uow.project, task=call.task, agent_call_approval=call, agent_type=agent_type,
                agent_response=agent_response, response_summary=response_summary, next_steps=list(next_steps),
                risk_flags=analysis["risk_flags"], confidence_score=_score(analysis["confidence_score"]),
                safety_score=_score(analysis["safety_score"]), quality_metrics=analysis["quality_metrics"],
                analysis={k: v for k, v in analysis.items() if k not in ("risk_flags", "quality_metrics")},
                tokens_used=tokens_used, actual_cost=Decimal(actual_cost), submitted_by=submitter,
                modification_round=sum(1 for _, s in earlier if s == Status.REQUIRES_MODIFICATION),
                timeout_minutes=timeout_minutes, expires_at=now + timedelta(minutes=timeout_minutes),
                warn_at=warn_at_for(now, timeout_minutes))
            if not rawrows.insert(response, skip_if_duplicate=True):  # one pending response per call
                raise TransitionError("This call already has a pending response.", current_status=Status.PENDING)
            task_move(task=call.task, to=Task.Status.WAITING_FOR_HITL)
            agent_state_refresh(project_id=uow.project.pk, agent_type=call.task.agent_type)
            audit_record(actor=submitter, action="response_approval.submit", obj=response,
                         after={"status": response.status, "call_approval_id": str(call.pk),
                                "tokens_used": tokens_used, "actual_cost": response.actual_cost,
                                "risk_level": analysis["level"], "safety_score": response.safety_score,
                                "flags": sorted({f["code"] for f in response.risk_flags})})
            event_emit(project_id=uow.project.pk, task_id=call.task_id, event_type="response_approval_requested",
                       data=response_event_data(response))
            critical = [f for f in response.risk_flags if f.get("severity") == "critical"]
            if critical:
                event_emit(project_id=uow.project.pk, task_id=call.task_id, event_type="safety_alert",
                           data={**response_event_data(response), "source": "response", "flags": critical[:10]})
                if emergency_settings_for(uow.project.pk).stop_on_critical_risk:
                    stop, _ = emergency_stop_trigger(
                        project_id=uow.project.pk, condition=Condition.SECURITY_THREAT, severity=Severity.CRITICAL,
                        reason=f"Critical risk in a {agent_type} agent's output: "
                               f"{', '.join(sorted({f['code'] for f in critical}))}",
                        data={"response_approval_id": str(response.pk), "call_approval_id": str(call.pk),
                              "flags": critical[:10]})
                    response.refresh_from_db(fields=["status", "rejection_reason", "responded_at"])
    if stopped:
        raise EmergencyStopActive("The project is under an emergency stop: the usage was recorded, the output "
                                  "is not taken.", emergency_stop_id=active_stop_id)
    if stop is not None:  # committed together with the response it holds back
        raise EmergencyStopActive("The output has a critical risk flag: the project is emergency-stopped.",
                                  emergency_stop_id=stop.pk)
    return response


def _response_uow_lock(uow, approval_id) -> ResponseApproval:
    uow.enter_stage("task")
    response = ResponseApproval.objects.filter(pk=approval_id).select_related("task", "submitted_by").first()
    if response is None:
        raise NotFoundError("No such response approval.")
    uow.lock("task", Task.objects, pk=response.task_id)
    return uow.lock("response", ResponseApproval.objects.select_related("task", "submitted_by", "approved_by"),
                    pk=approval_id)


def _close(uow, response: ResponseApproval, *, actor, to: str, now, reason: str = "", modifications=None,
           action: str, event_type: str = "response_approval_decided") -> None:
    """The one place that moves a locked response out of pending, with its task, agent state,
    flag labels, audit row and event."""
    if response.status != Status.PENDING:
        raise TransitionError(f"The response approval is {response.status}.", current_status=response.status)
    before = _snapshot(response)
    response.status = to
    response.responded_at = now
    fields = ["status", "responded_at", "updated_at"]
    if to in (Status.APPROVED, Status.REJECTED, Status.REQUIRES_MODIFICATION):
        response.approved_by = actor
        fields.append("approved_by")
    if reason:
        response.rejection_reason = reason
        fields.append("rejection_reason")
    if modifications is not None:
        response.modifications_required = modifications
        fields.append("modifications_required")
    response.save(update_fields=fields)
    task_move(task=response.task, to=Task.Status.RUNNING if to == Status.APPROVED else task_status_after_review(
        response.task))
    agent_state_refresh(project_id=response.project_id, agent_type=response.task.agent_type)
    if to in (Status.APPROVED, Status.REJECTED, Status.REQUIRES_MODIFICATION):
        label_flags(project_id=response.project_id, source=FlagLabel.Source.RESPONSE, object_id=response.pk,
                    flags=response.risk_flags, now=now,
                    outcome=FlagLabel.Outcome.FALSE_ALARM if to == Status.APPROVED else FlagLabel.Outcome.CONFIRMED)
    audit_record(actor=actor, action=action, obj=response, before=before, after=_snapshot(response), reason=reason)
    data = response_event_data(response)
    if event_type == "approval_timed_out":  # shared by calls, outputs and questions: say which, as the warning does
        data["kind"] = "response_approval"
    event_emit(project_id=response.project_id, task_id=response.task_id, event_type=event_type, data=data)
    wakeup_on_commit(response_group(response.pk), status=response.status)


def _says_something(value, *, item: bool = False) -> bool:
    """What must change, said: non-blank text, an object with a named entry ({"max_lines": 50}),
    or a list with an item that is text, a number or says something itself. A bare number or
    true, an empty list or object, or only blanks and nulls say nothing."""
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, dict):
        return any(_says_something(key) or _says_something(v) for key, v in value.items())
    if isinstance(value, list):
        return any(_says_something(v, item=True) for v in value)
    return item and isinstance(value, (int, float)) and not isinstance(value, bool)


def _refuse_unless_started(call: AgentCallApproval) -> None:
    if call.status != CallStatus.APPROVED or call.started_at is None:
        raise TransitionError(f"The call approval is {call.status}"
                              f"{'' if call.status != CallStatus.APPROVED else ' but not started'}: only the "
                              f"output of an approved, started call is reviewed.", current_status=call.status)


@retry_transient
def response_approval_decide(*, approval_id, decider, decision: str, reason: str = "",
                             modifications_required=None, reason_required: bool = True) -> ResponseApproval:
    """A reviewer (not the submitter) approves, rejects (with a reason unless ``reason_required``
    is False: the API, where API.md makes it optional; the reviewers' pages ask for one) or asks for
    modifications (``modifications_required`` required; the task goes back to pending and the
    agent redoes the work under a new call approval, at most HITL_RESPONSE_MAX_MODIFICATION_ROUNDS
    times per task). Exactly one decision wins (409); after ``expires_at`` it times out (410)."""
    if decision not in ("approve", "reject", "requires_modification"):
        raise InvalidInput(fields={"decision": ["Must be approve, reject or requires_modification."]})
    reason = (reason or "").strip()
    if decision == "reject" and not visible_text(reason) and reason_required:
        raise InvalidInput(fields={"reason": ["A rejection needs a reason."]})
    if decision == "requires_modification" and not _says_something(modifications_required):
        raise InvalidInput(fields={"modifications_required": ["Say what must change (text, or a non-empty list "
                                                              "or object)."]})
    if decision != "requires_modification" and modifications_required is not None:
        raise InvalidInput(fields={"modifications_required": ["Only requires_modification takes modifications."]})
    project_id = ResponseApproval.objects.filter(pk=approval_id).values_list("project_id", flat=True).first()
    if project_id is None:
        raise NotFoundError("No such response approval.")
    expired = False
    with project_uow(project_id, gate=True, shared=True) as uow:
        response = _response_uow_lock(uow, approval_id)
        require_project_perm(decider, roles.REVIEW, uow.project, "decide agent responses")
        require_not_requester(decider=decider, requester_id=response.submitted_by_id)
        if response.status == Status.TIMED_OUT:
            raise Expired("The response approval timed out before this decision.", status=response.status)
        if response.status != Status.PENDING:
            raise AlreadyDecided(f"The response approval is already decided: {response.get_status_display().lower()}.",
                                 current_status=response.status, decider_id=response.approved_by_id,
                                 decided_at=response.responded_at)
        now = timezone.now()
        if now >= response.expires_at:
            _close(uow, response, actor=None, to=Status.TIMED_OUT, now=now, action="response_approval.time_out",
                   event_type="approval_timed_out")
            expired = True
        elif decision == "approve":
            _close(uow, response, actor=decider, to=Status.APPROVED, now=now, reason=reason,
                   action="response_approval.approve")
        elif decision == "reject":
            _close(uow, response, actor=decider, to=Status.REJECTED, now=now, reason=reason,
                   action="response_approval.reject")
        else:
            # counted now, under the task's lock that every decision on its outputs takes: outputs of
            # calls run side by side were all submitted at the same round, and each passed the cap
            cap = settings.HITL_RESPONSE_MAX_MODIFICATION_ROUNDS
            sent_back = ResponseApproval.objects.filter(task_id=response.task_id,
                                                        status=Status.REQUIRES_MODIFICATION).count()
            if sent_back + 1 > cap:
                raise TransitionError(f"This task was already sent back {sent_back} times (the "
                                      f"cap is {cap}): approve or reject it.", current_status=response.status,
                                      modification_round=sent_back)
            _close(uow, response, actor=decider, to=Status.REQUIRES_MODIFICATION, now=now, reason=reason,
                   modifications=modifications_required, action="response_approval.requires_modification")
    if expired:
        raise Expired("The response approval timed out before this decision.", status=Status.TIMED_OUT)
    return response


@retry_transient
def response_approval_time_out(*, approval_id, now=None) -> bool:
    """Time out one response approval if it is still pending and due. Safe to repeat."""
    now = now or timezone.now()
    project_id = ResponseApproval.objects.filter(pk=approval_id, status=Status.PENDING,
                                                 expires_at__lte=now).values_list("project_id", flat=True).first()
    if project_id is None:
        return False
    with project_uow(project_id, shared=True) as uow:
        response = _response_uow_lock(uow, approval_id)
        if response.status != Status.PENDING or response.expires_at > now:
            return False
        _close(uow, response, actor=None, to=Status.TIMED_OUT, now=now, action="response_approval.time_out",
               event_type="approval_timed_out")
        return True


def response_approval_settle_due(response: ResponseApproval, now=None) -> bool:
    """An output read past its deadline that beat has not timed out yet is timed out now: True
    when the copy read is stale (read it again), whether this call timed it out or another reader,
    a decision or beat did first."""
    now = now or timezone.now()
    if response.status == Status.PENDING and response.expires_at <= now:
        response_approval_time_out(approval_id=response.pk, now=now)
        return True
    return False


def response_approval_expire_overdue(*, now=None, project_id=None) -> int:
    """Beat sweep: every due pending response approval goes through the time-out service (with
    ``project_id``, that project's only: the API's reads run it first)."""
    now = now or timezone.now()
    responses = ResponseApproval.objects.filter(project_id=project_id) if project_id else ResponseApproval.objects
    due = responses.filter(status=Status.PENDING, expires_at__lte=now).order_by("expires_at").values_list("pk", flat=True)
    return each(due[:1000], lambda pk: response_approval_time_out(approval_id=pk, now=now))


@retry_transient
def response_approval_warn(*, approval_id, now=None) -> bool:
    """``approval_timeout_warning`` once, when a fifth of the response approval's time is left
    (and it is still pending). True when this call sent it."""
    now = now or timezone.now()
    project_id = ResponseApproval.objects.values_list("project_id", flat=True).filter(pk=approval_id).first()
    if project_id is None:
        return False
    with project_uow(project_id, shared=True) as uow:
        response = _response_uow_lock(uow, approval_id)
        if not timeout_warning_due(response, now):
            return False
        response.timeout_warning_sent_at = now
        response.save(update_fields=["timeout_warning_sent_at", "updated_at"])
        event_emit(project_id=project_id, task_id=response.task_id, event_type="approval_timeout_warning",
                   data={**response_event_data(response), "kind": "response_approval",
                         "seconds_left": int((response.expires_at - now).total_seconds())})
    return True


def response_approval_warn_due(*, now=None) -> int:
    """Beat sweep: every pending response approval due a warning goes through response_approval_warn."""
    return timeout_warnings_due(ResponseApproval, lambda pk, at: response_approval_warn(approval_id=pk, now=at),
                                now=now)


def cancel_open_responses(*, uow, project, now) -> list[str]:
    """An emergency stop (emergency.hooks.project_halting) cancels every pending response
    approval of the project (one past its deadline times out instead) and wakes the agents
    waiting on them."""
    pending = ResponseApproval.objects.filter(project=project, status=Status.PENDING)
    locked = uow.lock_many("response", pending.only("pk", "expires_at"))
    due = {r.pk for r in locked if r.expires_at <= now}
    for response in ResponseApproval.objects.filter(pk__in=due).select_related("task", "submitted_by"):
        # past its deadline, not timed out yet by beat: it times out as beat would have (its
        # audit row and event), not "cancelled"; the stop halts its task
        before = _snapshot(response)
        response.status, response.responded_at = Status.TIMED_OUT, now
        response.save(update_fields=["status", "responded_at", "updated_at"])
        audit_record(actor=None, action="response_approval.time_out", obj=response, before=before,
                     after=_snapshot(response), reason="")
        event_emit(project_id=response.project_id, task_id=response.task_id, event_type="approval_timed_out",
                   data={**response_event_data(response), "kind": "response_approval"})
        wakeup_on_commit(response_group(response.pk), status=response.status)
    ids = [r.pk for r in locked if r.pk not in due]
    if not ids:
        return []
    ResponseApproval.objects.filter(pk__in=ids).update(status=Status.CANCELLED, rejection_reason=CANCELLED_BY_STOP,
                                                       responded_at=now, updated_at=now)
    cancelled = ResponseApproval.objects.filter(pk__in=ids).select_related("task", "submitted_by", "approved_by") \
        .defer("agent_response")
    event_emit_many(project_id=project.pk, events=[("response_approval_decided", response.task_id,
                                                    response_event_data(response)) for response in cancelled])
    for pk in ids:
        wakeup_on_commit(response_group(pk), status=Status.CANCELLED)
    return [str(pk) for pk in ids]


def cancel_responses_of_ended_task(*, uow, task, actor, now) -> list[str]:
    """projects.hooks.task_ending: a task reported failed or completed drops its output still held
    for review (a task waiting on a review cannot be reported completed, but one moved back to
    pending by a decision on another of its calls can): nobody is asked to approve output of work
    the agent has ended. Each is cancelled with its audit row and event."""
    pending = uow.lock_many("response", ResponseApproval.objects.filter(task=task, status=Status.PENDING)
                            .select_related("task", "submitted_by", "approved_by"))
    for response in pending:
        _close(uow, response, actor=actor, to=Status.CANCELLED, now=now,
               reason=f"its task was reported {task.status}", action="response_approval.task_ended")
    return [str(response.pk) for response in pending]
