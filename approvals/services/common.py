"""What every call-approval service shares: the unit of work of one call, the one function
that moves a call's status, and the payloads of its events."""
import hashlib
import json
from contextlib import contextmanager

from audit.hashing import canonical_json
from audit.services import audit_record
from budgets.services import BUDGET_RELATED, budget_release, override_withdraw_locked
from core.errors import NotFoundError, TransitionError
from core import rawrows
from core.rawrows import Columns, db
from core.request_cache import memo
from core.times import iso_utc
from core.wakeup import wakeup_on_commit
from events.services import event_emit
from projects.models import Task
from projects.services import agent_state_refresh, task_move
from projects.uow import project_uow
from approvals.analyzers.text import redact
from approvals.models import AgentCallApproval, FlagLabel
from approvals.selectors import call_route_key
from approvals.services.calibration import label_flags

Status = AgentCallApproval.Status
BudgetState = AgentCallApproval.BudgetState


def input_digest(data) -> str:
    """SHA-256 of the input as it reads back from any backend (``canonical_json``: a whole float as
    the integer its text names, -0.0 as 0). PostgreSQL's jsonb gives ``{"n": 1e23}`` back as
    100000000000000000000000 and -0.0 as 0, so an amendment holding one was approved under one
    digest and then refused at every start ("The input changed after it was approved")."""
    return hashlib.sha256(canonical_json(data)).hexdigest()


def input_digest_holds(data, digest: str) -> bool:
    """Whether ``digest`` is ``data``'s, or its digest under the rule before (calls approved before
    it, started after an upgrade, whose input holds a whole float such as 2.0)."""
    before = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return digest in (input_digest(data), hashlib.sha256(before.encode()).hexdigest())


def approval_group(approval_id) -> str:
    """Channel-layer group that agents waiting on this approval listen to."""
    return f"approvals.agent.{approval_id}"


def project_stop_group(project_id) -> str:
    """Channel-layer group that every agent waiting on a call of the project listens to too:
    an emergency stop wakes them all with one message."""
    return f"approvals.project.{project_id}"


def approval_event_data(approval: AgentCallApproval) -> dict:
    return {
        "approval_id": str(approval.pk),
        "agent_type": approval.agent_type,
        "proposed_action": redact(approval.proposed_action, 500),   # token-like strings masked
        "status": approval.status,
        "estimated_tokens": approval.estimated_tokens,
        "estimated_cost": f"{approval.estimated_cost:.4f}",
        "risk_level": (approval.risk_assessment or {}).get("level"),
        "budget_state": approval.budget_state,
        "budget_override_id": str(approval.budget_override_id) if approval.budget_override_id else None,
        "expires_at": iso_utc(approval.expires_at),
        "approved_by": approval.approved_by.get_username() if approval.approved_by_id else None,
        "rejection_reason": redact(approval.rejection_reason, 500),  # why it was rejected or cancelled, or ""
    }


AMENDMENT_AUDITED_BYTES = 16384  # an amendment up to this size is in its audit row whole; a larger one by its digest


def snapshot(approval: AgentCallApproval) -> dict:
    """A call's state in its audit rows, with the digest of the input it may run (set when it is
    approved, checked when it starts) and what it reserves: the trail said neither, so the input a
    person approved, or an input swapped in the database since, could not be told from it."""
    return {"status": approval.status, "approved_by": approval.approved_by_id, "budget_state": approval.budget_state,
            "rejection_reason": approval.rejection_reason, "started_at": approval.started_at,
            "input_digest": approval.input_digest, "estimated_tokens": approval.estimated_tokens,
            "estimated_cost": approval.estimated_cost}


def amendment_audited(amended) -> dict:
    """What an approval's audit row keeps of the reviewer's amendment: the amended input itself, or
    (past AMENDMENT_AUDITED_BYTES) its size, its digest being the row's ``input_digest``."""
    size = len(canonical_json(amended))
    if size <= AMENDMENT_AUDITED_BYTES:
        return {"amended_input_data": amended}
    return {"amended_input_data": f"({size:,} bytes: see input_digest)"}


@contextmanager
def call_uow(approval_id, *, gate: bool):
    """The unit of work of one call: project (423 when ``gate`` and stopped), then the call's
    task, then the call, in LOCK_ORDER. Yields (uow, approval) with approval.task locked.

    The project lock is shared (projects/uow.py): work on different calls of one project runs
    side by side, each holding its call's rows; a stop (exclusive) waits for it and holds it back."""
    row = memo(call_route_key(approval_id), lambda: AgentCallApproval.objects.filter(pk=approval_id).values(
        "project_id", "task_id").first())
    if row is None:
        raise NotFoundError("No such approval.")
    with project_uow(row["project_id"], gate=gate, related=BUDGET_RELATED, shared=True) as uow:
        # The call and its task in one statement: both rows locked (stages task, then approval).
        uow.enter_stage("task")
        uow.enter_stage("approval")
        approval = _lock_call(approval_id)
        approval.project = uow.project
        yield uow, approval


_CALL_SQL = None


def _lock_call(approval_id) -> AgentCallApproval:
    """The call with its task (both locked) and its requester and decider (their ids and
    usernames; any other field of theirs is read when first used), in one hand-written
    statement (core.rawrows): the ORM's four-table select_related cost more CPU to build than
    the rest of a decision."""
    global _CALL_SQL
    connection = db()  # this thread's database wrapper (the module's is a proxy)
    if _CALL_SQL is None:
        User = AgentCallApproval._meta.get_field("requested_by").related_model
        # The users only with what a decision shows of them (their usernames): their other
        # columns, timestamps among them, cost more to convert than the rest of the row.
        call, task, requester, decider = (Columns(AgentCallApproval, "a"), Columns(Task, "t"),
                                          Columns(User, "r", ("id", "username")), Columns(User, "d", ("id", "username")))
        quote = connection.ops.quote_name
        field = lambda name: quote(AgentCallApproval._meta.get_field(name).column)  # noqa: E731
        lock = " FOR NO KEY UPDATE OF a, t" if connection.features.has_select_for_update_of else ""
        _CALL_SQL = (
            f"SELECT {call.sql}, {task.sql}, {requester.sql}, {decider.sql} "
            f"FROM {quote(AgentCallApproval._meta.db_table)} a "
            f"JOIN {quote(Task._meta.db_table)} t ON t.{quote(Task._meta.pk.column)} = a.{field('task')} "
            f"JOIN {quote(User._meta.db_table)} r ON r.{quote(User._meta.pk.column)} = a.{field('requested_by')} "
            f"LEFT JOIN {quote(User._meta.db_table)} d ON d.{quote(User._meta.pk.column)} = a.{field('approved_by')} "
            f"WHERE a.{quote(AgentCallApproval._meta.pk.column)} = %s{lock}", (call, task, requester, decider))
    sql, parts = _CALL_SQL
    with rawrows.kept_cursor(connection) as cursor:
        cursor.execute(sql, [AgentCallApproval._meta.pk.get_db_prep_value(approval_id, connection)])
        row = cursor.fetchone()
    if row is None:
        raise NotFoundError("No such approval.")
    built, offset = [], 0
    for columns in parts:
        built.append(columns.build(row[offset:offset + len(columns)]))
        offset += len(columns)
    approval, task, requester, decider = built
    approval.task, approval.requested_by = task, requester
    if decider is not None or approval.approved_by_id is None:
        approval.approved_by = decider
    # else: a decision committed while this waited for the lock. PostgreSQL re-read the locked row
    # (its new approved_by_id) but not the outer join's user, which stayed the old, empty one: the
    # decider is loaded when used (setting None would have wiped approved_by_id off the object).
    return approval


def withdraw_orphaned_overrides(uow, approval_ids, reason: str) -> int:
    """Calls that ended before their override was decided take it with them: a pending override
    no other pending call waits on is withdrawn, so approving it later cannot add budget that
    nothing asked for."""
    override_ids = set(AgentCallApproval.objects.filter(pk__in=approval_ids, budget_override_id__isnull=False)
                       .values_list("budget_override_id", flat=True))
    if not override_ids:
        return 0
    still_waited_on = set(AgentCallApproval.objects.filter(
        budget_override_id__in=override_ids, status=Status.PENDING).exclude(pk__in=approval_ids).values_list(
        "budget_override_id", flat=True))
    return override_withdraw_locked(uow=uow, override_ids=override_ids - still_waited_on, reason=reason)


def close_call(uow, approval: AgentCallApproval, *, actor, to: str, now, reason: str = "", event_type: str,
               action: str, before: dict | None = None) -> None:
    """The one place that moves a locked call out of pending (or approved, not started): along
    AgentCallApproval.TRANSITIONS, with its budget, task, agent state, audit row and event.
    ``before``: the call's snapshot taken before the caller changed it (an amendment's estimate)."""
    if to not in AgentCallApproval.TRANSITIONS.get(approval.status, ()):
        raise TransitionError(f"The approval is {approval.status}.", current_status=approval.status)
    before = before or snapshot(approval)
    approval.status = to
    fields = ["status", "budget_state", "updated_at"]
    if to in (Status.APPROVED, Status.REJECTED):
        approval.responded_at, approval.approved_by = now, actor
        fields += ["responded_at", "approved_by"]
    if to == Status.REJECTED or (to == Status.CANCELLED and reason):
        approval.rejection_reason = reason  # why it was rejected, or cancelled (its agent's reason, a lapsed grant)
        fields.append("rejection_reason")
    if to == Status.APPROVED:
        if approval.budget_state != BudgetState.RESERVED:  # the constraint says so too
            raise TransitionError("The call holds no budget reservation.", current_status=approval.status,
                                  budget_state=approval.budget_state)
        approval.input_digest = input_digest(approval.input_to_run)
        fields += ["amended_input_data", "input_digest"]
    ended = to in (Status.REJECTED, Status.CANCELLED, Status.TIMED_OUT)
    if ended:
        approval.budget_state = BudgetState.RELEASED
    rawrows.update_fields(approval, fields)
    if ended:  # the call will not run: withdraw its override, give its reservation back
        withdraw_orphaned_overrides(uow, [approval.pk], f"Its call ended ({to}) before a decision.")
        budget_release(uow=uow, call_id=approval.pk)
    if to in (Status.APPROVED, Status.REJECTED) and actor is not None:  # a person's verdict on its flags
        label_flags(project_id=approval.project_id, source=FlagLabel.Source.CALL, object_id=approval.pk,
                    flags=(approval.risk_assessment or {}).get("flags"), now=now,
                    outcome=FlagLabel.Outcome.FALSE_ALARM if to == Status.APPROVED else FlagLabel.Outcome.CONFIRMED)
    task_move(task=approval.task, to=task_status_after_review(approval.task))
    agent_state_refresh(project_id=approval.project_id, agent_type=approval.task.agent_type)
    record_closed(approval, actor=actor, action=action, before=before, reason=reason, event_type=event_type)


def task_status_after_review(task: Task) -> str:
    """Where a locked task goes when the call or output it waited for is decided (or ends): back
    to running while another of its calls runs (started, its usage or output not reported yet: a
    second call asked for meanwhile does not end the first), else pending (the agent asks again,
    or reports the outcome)."""
    if task.started_at is not None and AgentCallApproval.objects.filter(
            task_id=task.pk, status=Status.APPROVED, started_at__isnull=False,
            budget_state=BudgetState.RESERVED).exists():
        return Task.Status.RUNNING
    return Task.Status.PENDING


def record_closed(approval: AgentCallApproval, *, actor, action: str, before: dict, reason: str,
                  event_type: str = "agent_approval_decided") -> None:
    """What every move of a call out of pending (or approved, not started) leaves behind: its
    audit row, its event and the wake-up of the agent waiting on it (waiters also poll the DB)."""
    after = snapshot(approval)
    if approval.amended_input_data is not None and action.endswith("approve_amended"):
        after.update(amendment_audited(approval.amended_input_data))
    audit_record(actor=actor, action=action, obj=approval, before=before, after=after, reason=reason)
    data = approval_event_data(approval)
    if event_type == "approval_timed_out":  # shared by calls, outputs and questions: say which, as the warning does
        data["kind"] = "agent_approval"
    event_emit(project_id=approval.project_id, task_id=approval.task_id, event_type=event_type, data=data)
    wakeup_on_commit(approval_group(approval.pk), status=approval.status)
