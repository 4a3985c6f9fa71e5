"""GENERATED from _async_client.py by tools/unasync.py: do not edit.

HitlClient: every endpoint of API.md an agent, a tool or a reviewer's bot uses.

This file is the source of ``_sync_client.py`` (``python hitl_sdk/tools/unasync.py`` writes it):
edit this one and regenerate the other.
"""
from __future__ import annotations

import contextlib
import json
import uuid
import weakref
from decimal import Decimal
from typing import Any, Iterator, Dict, Optional, Sequence, Union

import httpx

from . import _common as c
from ._common import RetryPolicy, StreamRefused, WSRefused, _SyncStreams, _SyncWS, _sleep
from .errors import HitlConnectionError, HitlError, ServerError, Throttled, WaitTimeout, error_from_response
from .models import (AgentApproval, Budget, BudgetOverride, EmergencyStatus, EmergencyStop, Event, EventPage,
                     HitlRequest, Page, Project, RecoverySession, ResponseApproval, Task, money, token_count)

Money = Union[Decimal, str, int, None]


class HitlClient:
    """The BotArmy HITL API over HTTP and the ``/ws/events/`` websocket (sync).

    ``api_key`` defaults to the ``HITL_API_KEY`` environment variable. Every request is retried
    with backoff on network errors, 5xx and 429 (see :class:`RetryPolicy`); every create carries an
    ``Idempotency-Key`` reused by its retries, so a retried create never makes two objects.
    Waits listen on the websocket and fall back to the ``wait`` long poll."""

    def __init__(self, base_url: str, api_key: Optional[str] = None, *, retry: Optional[RetryPolicy] = None,
                 timeout: float = 30.0, use_websocket: bool = True, recheck_seconds: float = 15.0,
                 ws_open_timeout: float = 5.0, transport: Optional[Any] = None) -> None:
        self.base_url = c.server_root(base_url)
        self.api_key = c.resolve_api_key(api_key)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.use_websocket = use_websocket
        self.recheck_seconds = recheck_seconds  # a wait re-reads its object at least this often
        self.ws_open_timeout = ws_open_timeout
        self._transport = transport
        headers = {"Accept": "application/json", "User-Agent": c.USER_AGENT}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._headers = headers
        self._http: Optional[httpx.Client] = None
        self._waits: Optional[httpx.Client] = None
        self._http_loop: Any = None
        self._streams = _SyncStreams(self.base_url, headers, ws_open_timeout)  # the waits' websockets
        self._wait_sockets = c.OpenSockets()  # the waits' pool's connections: a close shuts them down
        # per event loop (weakly: execute_task_sync makes a loop per call), how many times the client
        # was closed there; ``None``'s (the sync client's, no loop) in ``_closes_unlooped``
        self._closes: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()
        self._closes_unlooped = 0

    def _session(self, waiting: bool = False) -> httpx.Client:
        """The HTTP connection pool (one per event loop: a pool can not move between loops). Waits
        (long polls and the reads a wait makes) have a pool of their own: sharing one, 150 long
        polls held its 100 connections and the fleet's own cancels, usage reports and stops queued
        behind them for 20 to 30 s (two minutes behind 2,000 waits' re-reads)."""
        loop = c.current_loop()
        if self._http_loop is not loop:
            self._http = self._waits = None  # the old loop's pools go with it
            self._http_loop = loop
        pool = self._waits if waiting else self._http
        if pool is None:
            pool = httpx.Client(base_url=c.api_root(self.base_url), headers=self._headers,
                                     timeout=self.timeout, transport=self._transport)
            if waiting:
                self._waits = pool
            else:
                self._http = pool
        return pool

    def __enter__(self) -> "HitlClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections. A wait still open on this client ends with ``HitlError``
        (``code="client_closed"``); the client stays usable: a later call opens new connections."""
        loop = c.current_loop()  # a close in one loop (execute_task_sync's) ends no wait of another
        if loop is None:
            self._closes_unlooped += 1
        else:
            self._closes[loop] = self._closes.get(loop, 0) + 1
        self._streams.close()
        if loop is None:  # the sync client: wakes a long poll read in another thread, which a pool's close did not
            self._wait_sockets.shut()
        pools, self._http, self._waits = (self._http, self._waits), None, None
        for pool in pools:
            if pool is not None:
                pool.close()

    def _trace_wait(self, event: str, info: Dict[str, Any]) -> None:
        """httpcore's ``trace`` of a sync wait's request: each connection made, for ``close`` to shut down."""
        if event == "connection.connect_tcp.complete":
            self._wait_sockets.add(info)

    def _closed_here(self) -> int:
        """How many times the client was closed in this event loop (or, sync, at all)."""
        loop = c.current_loop()
        return self._closes_unlooped if loop is None else self._closes.get(loop, 0)

    # --- the HTTP core --------------------------------------------------------------------------
    def request(self, method: str, path: str, *, json_body: Optional[Dict[str, Any]] = None,
                      params: Optional[Dict[str, Any]] = None, create: bool = False,
                      idempotency_key: Optional[str] = None, deadline: Optional[float] = None,
                      timeout: Optional[float] = None, waiting: bool = False) -> Any:
        """One API call with retries; the decoded JSON answer, or a :class:`HitlError`.

        ``create`` (a create, a usage report or a decision) sends an ``Idempotency-Key``
        (``idempotency_key``, else a new uuid4) that every
        retry of this call reuses; a :class:`HitlConnectionError` carries it (``.idempotency_key``):
        the request may have reached the server all the same, and sending it again with that key
        returns what it made (or makes it once). ``deadline`` (a ``time.monotonic()`` value)
        retries until then instead of ``retry.attempts`` times, and no attempt starts after it.
        4xx answers other than 429 are never retried. ``waiting``: sent on the waits' own pool."""
        headers: Dict[str, str] = {}
        if create:
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        if json_body is not None:
            headers["Content-Type"] = "application/json"
        content = json.dumps(json_body, default=c.json_default).encode() if json_body is not None else None
        params = {k: v for k, v in (params or {}).items() if v is not None}
        attempt, transport_failed, closes = 0, False, self._closed_here()

        def past_deadline() -> bool:
            # no attempt starts once the deadline has passed (in a failed attempt or in the sleep
            # before its retry): the last failure is the answer (a wait's timeout=2 against a hung
            # server took 5 s: one more attempt of at least a second started after it)
            return deadline is not None and c.monotonic() >= deadline

        while True:
            attempt += 1
            may_retry = (c.monotonic() < deadline) if deadline is not None else attempt < self.retry.attempts
            try:
                response = self._session(waiting).request(
                    method, path.lstrip("/"), content=content, params=params, headers=headers,
                    timeout=c.attempt_timeout(timeout or self.timeout, deadline),
                    extensions={"trace": self._trace_wait} if waiting and c.current_loop() is None else None)
            except httpx.LocalProtocolError as exc:  # the request could not be made here: no retry helps
                raise HitlError(f"{method} {path}: the request could not be sent: "
                                f"{c.redacted(str(exc), self.api_key)}", code="bad_request") from None
            except httpx.TransportError as exc:
                if self._closed_here() != closes:  # its connection went with the client's close: not retried
                    raise HitlError(c.CLIENT_CLOSED, code="client_closed") from None
                transport_failed = True
                if may_retry and not c.tls_mismatch(self.base_url, exc) and not past_deadline():
                    _sleep(c.until(deadline, self.retry.delay(attempt)))
                    if not past_deadline():
                        continue
                raise HitlConnectionError(f"{method} {path}: {c.redacted(repr(exc), self.api_key)}"
                                          f"{c.tls_hint(self.base_url, exc)}", code="connection_error",
                                          idempotency_key=headers.get("Idempotency-Key")) from exc
            if response.status_code in c.TRANSIENT_STATUSES and may_retry and not past_deadline():
                _sleep(c.until(deadline, self.retry.delay(attempt, c.retry_after_seconds(response))))
                if not past_deadline():
                    continue  # else this answer is the last one
            try:
                body = response.json() if response.content else None
            except ValueError:  # a proxy's or another server's page, whatever its status: never a result
                body = None
            if body is None or (response.status_code >= 400 and not isinstance(body, dict)):
                # not the API's JSON (a page, an empty 204): never an empty result (the typed methods
                # also refuse JSON that is not an object: ApiObject.from_api)
                body = c.not_json_body(response, self.base_url)
                if response.status_code < 400:
                    raise HitlError(body["detail"], status=response.status_code, code="bad_response") from None
            if response.status_code >= 400:
                error = error_from_response(response.status_code, body)
                error.after_transport_failure = transport_failed  # type: ignore[attr-defined]
                raise error
            return body

    # --- projects and tasks ---------------------------------------------------------------------
    def list_projects(self, page: Optional[int] = None) -> Page[Project]:
        return Page.of(Project, self.request("GET", "/projects", params={"page": page}))

    def get_project(self, project_id: str) -> Project:
        return Project.from_api(self.request("GET", f"/projects/{c.seg(project_id)}"))

    def create_project(self, name: str, slug: str, timezone: Optional[str] = None, *,
                             idempotency_key: Optional[str] = None) -> Project:
        body = c.clean({"name": name, "slug": slug, "timezone": timezone})
        return Project.from_api(self.request("POST", "/projects", json_body=body, create=True,
                                                   idempotency_key=idempotency_key))

    def update_project(self, project_id: str, *, name: Optional[str] = None,
                             timezone: Optional[str] = None) -> Project:
        body = c.clean({"name": name, "timezone": timezone})
        return Project.from_api(self.request("PATCH", f"/projects/{c.seg(project_id)}", json_body=body))

    def create_task(self, project_id: str, agent_type: str, title: str,
                          input_data: Optional[Dict[str, Any]] = None, *,
                          idempotency_key: Optional[str] = None) -> Task:
        body = c.clean({"project_id": project_id, "agent_type": agent_type, "title": title,
                        "input_data": input_data})
        return Task.from_api(self._create_or_undo("task", body, idempotency_key))

    def get_task(self, task_id: str) -> Task:
        return Task.from_api(self.request("GET", f"/tasks/{c.seg(task_id)}"))

    def set_task_status(self, task_id: str, status: str, *, error: Optional[str] = None,
                              error_kind: Optional[str] = None) -> Task:
        """``status`` is ``completed``, ``failed``, or ``cancelled`` (work abandoned before it ran,
        after a refusal say; not a failure); repeating the same outcome is a no-op."""
        body = c.clean({"status": status, "error": error, "error_kind": error_kind})
        return Task.from_api(self.request("POST", f"/tasks/{c.seg(task_id)}/status", json_body=body))

    # --- agent call approvals -------------------------------------------------------------------
    def request_approval(self, project_id: str, task_id: str, agent_type: str, proposed_action: str,
                               input_data: Any, *, context_summary: Optional[str] = None,
                               estimated_tokens: Optional[int] = None, estimated_cost: Money = None,
                               timeout_minutes: Optional[int] = None, model: Optional[str] = None,
                               idempotency_key: Optional[str] = None) -> AgentApproval:
        """``POST /agent-approvals``: ask to run a call (does not wait; see :meth:`wait_for_approval`)."""
        body = c.clean({"project_id": project_id, "task_id": task_id, "agent_type": agent_type,
                        "proposed_action": proposed_action, "input_data": input_data,
                        "context_summary": context_summary, "estimated_tokens": estimated_tokens,
                        "estimated_cost": estimated_cost, "timeout_minutes": timeout_minutes, "model": model})
        return AgentApproval.from_api(self._create_or_undo("agent", body, idempotency_key))

    def get_approval(self, approval_id: str) -> AgentApproval:
        return AgentApproval.from_api(self.request("GET", f"/agent-approvals/{c.seg(approval_id)}"))

    def poll_approval(self, approval_id: str, timeout: float = 30) -> AgentApproval:
        """One ``wait`` long poll: the approval once it is not pending, or still pending after ``timeout``."""
        return AgentApproval.from_api(self._poll("agent", approval_id, timeout))

    def respond_approval(self, approval_id: str, decision: str, *, reason: Optional[str] = None,
                               amended_input_data: Any = None) -> AgentApproval:
        """A reviewer's decision: ``approve`` (with ``amended_input_data`` to amend) or ``reject``."""
        body = c.clean({"decision": decision, "reason": reason, "amended_input_data": amended_input_data})
        return AgentApproval.from_api(self.request("POST", f"/agent-approvals/{c.seg(approval_id)}/respond",
                                                         json_body=body, create=True))

    def start_approval(self, approval_id: str) -> AgentApproval:
        """The single-use execution grant: the approval with ``input_to_run``. A second start is 409.

        If an earlier attempt of this very call was lost on the network and the retry finds the
        call already started, the grant was ours: the approval is returned with its approved input."""
        try:
            body = self.request("POST", f"/agent-approvals/{c.seg(approval_id)}/start")
        except HitlError as error:
            if error.status == 409 and getattr(error, "after_transport_failure", False):
                approval = self.get_approval(approval_id)
                if approval.started_at is not None:
                    approval.input_to_run = approval.approved_input
                    return approval
            raise
        approval = AgentApproval.from_api(body)
        return approval

    def cancel_approval(self, approval_id: str, reason: Optional[str] = None) -> AgentApproval:
        return AgentApproval.from_api(self.request("POST", f"/agent-approvals/{c.seg(approval_id)}/cancel",
                                                         json_body=c.clean({"reason": reason})))

    def report_usage(self, approval_id: str, tokens_used: int, actual_cost: Money = None) -> AgentApproval:
        """What a started call used, for calls whose output is not sent for response approval
        (tool calls). Settles the reservation once; a retried report changes nothing."""
        body = c.clean({"tokens_used": token_count(tokens_used), "actual_cost": money(actual_cost)})
        return AgentApproval.from_api(self.request("POST", f"/agent-approvals/{c.seg(approval_id)}/usage",
                                                         json_body=body))

    def list_approvals(self, project_id: str, *, status: Optional[str] = None,
                             agent_type: Optional[str] = None, page: Optional[int] = None) -> Page[AgentApproval]:
        params = {"status": status, "agent_type": agent_type, "page": page}
        return Page.of(AgentApproval, self.request("GET", f"/agent-approvals/project/{c.seg(project_id)}",
                                                         params=params))

    def wait_for_approval(self, approval_id: str, timeout: Optional[float] = None, *,
                                on_budget_block: str = "raise") -> AgentApproval:
        """Until a person decides the call: the approved approval, or an exception
        (:class:`ApprovalRejected`, :class:`ApprovalTimedOut`, :class:`ApprovalCancelled`,
        :class:`EmergencyStopped`, :class:`BudgetOverrideRequired` while the call is blocked by the
        budget unless ``on_budget_block="wait"``, :class:`WaitTimeout` after ``timeout`` seconds).
        An agent restarted mid-wait calls this again with the approval's id."""
        obj, stop_id = self._await_decision("agent", approval_id, timeout, on_budget_block)
        return c.outcome("agent", obj, stop_id)

    def wait_and_start(self, approval_id: str, timeout: Optional[float] = None) -> AgentApproval:
        """Resume a call by id after a restart: wait if pending, then take the single-use grant."""
        self.wait_for_approval(approval_id, timeout)
        return self.start_approval(approval_id)

    # --- response approvals ---------------------------------------------------------------------
    def submit_response(self, project_id: str, task_id: str, agent_type: str, original_call_approval_id: str,
                              agent_response: Dict[str, Any], *, response_summary: str = "",
                              next_steps: Sequence[str] = (), tokens_used: int = 0, actual_cost: Money = None,
                              timeout_minutes: Optional[int] = None,
                              idempotency_key: Optional[str] = None) -> ResponseApproval:
        """``POST /response-approvals``: the output of a started call, with what it used."""
        body = c.clean({"project_id": project_id, "task_id": task_id, "agent_type": agent_type,
                        "original_call_approval_id": original_call_approval_id, "agent_response": agent_response,
                        "response_summary": response_summary, "next_steps": list(next_steps),
                        "tokens_used": token_count(tokens_used), "actual_cost": money(actual_cost),
                        "timeout_minutes": timeout_minutes})
        return ResponseApproval.from_api(self.request("POST", "/response-approvals", json_body=body,
                                                            create=True, idempotency_key=idempotency_key))

    def get_response(self, approval_id: str) -> ResponseApproval:
        return ResponseApproval.from_api(self.request("GET", f"/response-approvals/{c.seg(approval_id)}"))

    def poll_response(self, approval_id: str, timeout: float = 30) -> ResponseApproval:
        return ResponseApproval.from_api(self._poll("response", approval_id, timeout))

    def respond_response(self, approval_id: str, decision: str, *, reason: Optional[str] = None,
                               modifications_required: Any = None) -> ResponseApproval:
        """``approve``, ``reject`` (with ``reason``) or ``requires_modification`` (with ``modifications_required``)."""
        body = c.clean({"decision": decision, "reason": reason, "modifications_required": modifications_required})
        return ResponseApproval.from_api(self.request("POST", f"/response-approvals/{c.seg(approval_id)}/respond",
                                                            json_body=body, create=True))

    def list_responses(self, project_id: str, *, status: Optional[str] = None,
                             agent_type: Optional[str] = None,
                             page: Optional[int] = None) -> Page[ResponseApproval]:
        params = {"status": status, "agent_type": agent_type, "page": page}
        return Page.of(ResponseApproval, self.request("GET", f"/response-approvals/project/{c.seg(project_id)}",
                                                            params=params))

    def wait_for_response(self, approval_id: str, timeout: Optional[float] = None) -> ResponseApproval:
        """Until a person decides the output: the approved response, or :class:`ApprovalRejected`,
        :class:`ModificationRequired`, :class:`ApprovalTimedOut`, :class:`EmergencyStopped`..."""
        obj, stop_id = self._await_decision("response", approval_id, timeout, "wait")
        return c.outcome("response", obj, stop_id)

    # --- budgets --------------------------------------------------------------------------------
    def get_budget(self, project_id: str) -> Budget:
        return Budget.from_api(self.request("GET", f"/budgets/{c.seg(project_id)}"))

    def update_budget(self, project_id: str, **limits: Any) -> Budget:
        """(manager) ``daily_token_limit``, ``monthly_token_limit``, ``daily_cost_limit``, ``monthly_cost_limit``..."""
        return Budget.from_api(self.request("PATCH", f"/budgets/{c.seg(project_id)}", json_body=c.clean(limits)))

    def request_budget_override(self, project_id: str, violation_type: str, requested_amount: Money,
                                      justification: str, *, idempotency_key: Optional[str] = None) -> BudgetOverride:
        body = c.clean({"project_id": project_id, "violation_type": violation_type,
                        "requested_amount": requested_amount, "justification": justification})
        return BudgetOverride.from_api(self.request("POST", "/budget-overrides", json_body=body, create=True,
                                                          idempotency_key=idempotency_key))

    def respond_budget_override(self, override_id: str, decision: str,
                                      reason: Optional[str] = None) -> BudgetOverride:
        return BudgetOverride.from_api(self.request("POST", f"/budget-overrides/{c.seg(override_id)}/respond",
                                                          json_body=c.clean({"decision": decision,
                                                                             "reason": reason}), create=True))

    def list_budget_overrides(self, project_id: str, *, status: Optional[str] = None,
                                    page: Optional[int] = None) -> Page[BudgetOverride]:
        return Page.of(BudgetOverride, self.request("GET", f"/budget-overrides/project/{c.seg(project_id)}",
                                                          params={"status": status, "page": page}))

    # --- emergency stop and recovery ------------------------------------------------------------
    def emergency_stop(self, project_id: str, reason: str, *, severity: Optional[str] = None,
                             idempotency_key: Optional[str] = None) -> EmergencyStop:
        return EmergencyStop.from_api(self.request(
            "POST", f"/emergency/stop/{c.seg(project_id)}", json_body=c.clean({"reason": reason, "severity": severity}),
            create=True, idempotency_key=idempotency_key))

    def emergency_status(self, project_id: str) -> EmergencyStatus:
        return EmergencyStatus.from_api(self.request("GET", f"/emergency/status/{c.seg(project_id)}"))

    def start_recovery(self, project_id: str, recovery_type: str = "manual", *,
                             idempotency_key: Optional[str] = None) -> RecoverySession:
        return RecoverySession.from_api(self.request(
            "POST", f"/emergency/recovery/{c.seg(project_id)}", json_body={"recovery_type": recovery_type}, create=True,
            idempotency_key=idempotency_key))

    def get_recovery(self, session_id: str) -> RecoverySession:
        return RecoverySession.from_api(self.request("GET", f"/recovery/{c.seg(session_id)}"))

    def respond_recovery_step(self, session_id: str, step_id: str, decision: str,
                                    reason: Optional[str] = None, option: Optional[str] = None) -> RecoverySession:
        """Approve (and so run) or reject the session's next step (``session.current_step["step_id"]``);
        ``option`` for a step that takes one (``settle_halted_tasks``: ``"resume"``, the server's
        default, or ``"cancel"``)."""
        return RecoverySession.from_api(self.request(
            "POST", f"/recovery/{c.seg(session_id)}/steps/{c.seg(step_id)}/respond",
            json_body=c.clean({"decision": decision, "reason": reason, "option": option}), create=True))

    # --- events ---------------------------------------------------------------------------------
    def list_events(self, project_id: str, after: int = 0, limit: Optional[int] = None) -> EventPage:
        """``GET /events``: pass the page's ``last_event_id`` as the next ``after``."""
        return EventPage.from_api(self.request("GET", "/events", params={"project_id": project_id,
                                                                                "after": after, "limit": limit}))

    def events(self, project_id: Optional[str] = None,
                     last_event_id: Optional[int] = None) -> Iterator[Event]:
        """The project's events over the websocket, forever: replays after ``last_event_id``, then
        live; reconnects with backoff and the last id seen, so none is lost or repeated. A query
        the server refuses (a ``last_event_id`` no event has had, after a database restore say)
        raises BadRequest with its ``fields``; a refused handshake raises HitlError."""
        failures = 0
        while True:
            try:
                ws = _SyncWS.connect(c.ws_url(self.base_url, project_id, last_event_id), self._headers,
                                            self.ws_open_timeout)
            except WSRefused as exc:
                self._why_refused(project_id)  # the API's own error (a bad key: Unauthenticated) when it has one
                raise HitlError(f"the event stream refused this connection (HTTP {exc.args[0]})",
                                status=int(exc.args[0]), code="ws_refused") from exc
            except Exception:  # noqa: BLE001  (the server is down or restarting)
                failures += 1
                _sleep(self.retry.delay(failures))
                continue
            failures = 0
            try:
                while True:
                    message = c.parse_event(ws.recv(3600))
                    if message is not None:
                        last_event_id = int(message["id"])
                        yield Event.from_api(message)
            except StreamRefused as refused:
                raise refused.error from None
            except Exception:  # noqa: BLE001  (dropped: reconnect with last_event_id)
                failures += 1
                _sleep(self.retry.delay(failures))
            finally:
                ws.close()

    def _why_refused(self, project_id: Optional[str]) -> None:
        """A refused websocket handshake says only "403": the same access asked over HTTP raises the
        API's own error (Unauthenticated for a bad key, NotFound for a project it may not see)."""
        try:
            if project_id:
                self.request("GET", "/events", params={"project_id": project_id, "after": 0, "limit": 1})
            else:
                self.request("GET", "/projects")
        except (HitlConnectionError, ServerError, Throttled):
            return

    def watch_emergency_stop(self, project_id: str) -> EmergencyStop:
        """Return as soon as the project is emergency-stopped (already stopped: at once)."""
        failures, last_event_id = 0, None
        while True:
            ws = None
            try:
                status = self.emergency_status(project_id)
                if status.stopped:
                    return status.active_stop or EmergencyStop(project_id=project_id)
                if not self.use_websocket:  # told not to use one: poll the status
                    failures = 0
                    _sleep(max(1.0, self.recheck_seconds / 3))
                    continue
                ws = _SyncWS.connect(c.ws_url(self.base_url, project_id, last_event_id), self._headers,
                                            self.ws_open_timeout)
                failures = 0
                status = self.emergency_status(project_id)  # subscribed: nothing can fall in between
                if status.stopped:
                    return status.active_stop or EmergencyStop(project_id=project_id)
                while True:
                    message = c.parse_event(ws.recv(self.recheck_seconds))
                    if message is None:
                        continue
                    last_event_id = int(message["id"])
                    if message["event_type"] == "emergency_stop_triggered":
                        return EmergencyStop.from_api(message.get("data") or {})
            except StreamRefused as refused:
                if not c.refuses_resume_point(refused):  # the query itself (the project id) is refused
                    raise refused.error from None
                last_event_id = None  # a resume point it no longer knows (a restored database): the
                # status is read again after subscribing, so a stop in between is not missed
            except WSRefused:
                _sleep(max(1.0, self.recheck_seconds / 3))  # no websocket: poll the status
            except (HitlConnectionError, ServerError):
                failures += 1
                _sleep(self.retry.delay(failures))
            except HitlError:
                raise
            except Exception:  # noqa: BLE001
                failures += 1
                _sleep(self.retry.delay(failures))
            finally:
                if ws is not None:
                    ws.close()

    # --- questions and checkpoints (/api/v1/hitl) -----------------------------------------------
    def create_hitl(self, project_id: str, request_type: str, question: str, *,
                          options: Optional[Sequence[str]] = None, context: Any = None,
                          task_id: Optional[str] = None, timeout_minutes: Optional[int] = None,
                          idempotency_key: Optional[str] = None, deadline: Optional[float] = None) -> HitlRequest:
        """``deadline`` (a ``time.monotonic()`` value), as for :meth:`request`: its retries end then."""
        body = c.clean({"project_id": project_id, "task_id": task_id, "request_type": request_type,
                        "question": question, "options": list(options) if options is not None else None,
                        "context": context, "timeout_minutes": timeout_minutes})
        return HitlRequest.from_api(self._create_or_undo("hitl", body, idempotency_key, deadline))

    def get_hitl(self, request_id: str) -> HitlRequest:
        return HitlRequest.from_api(self.request("GET", f"/hitl/{c.seg(request_id)}"))

    def poll_hitl(self, request_id: str, timeout: float = 30) -> HitlRequest:
        return HitlRequest.from_api(self._poll("hitl", request_id, timeout))

    def respond_hitl(self, request_id: str, action: str, *, response: Optional[str] = None,
                           amended_content: Any = None) -> HitlRequest:
        """(reviewer) ``approve``, ``reject`` or ``amend``."""
        body = c.clean({"action": action, "response": response, "amended_content": amended_content})
        return HitlRequest.from_api(self.request("POST", f"/hitl/{c.seg(request_id)}/respond", json_body=body,
                                                       create=True))

    def cancel_hitl(self, request_id: str, reason: Optional[str] = None) -> HitlRequest:
        """(the asker) Withdraw a pending question or checkpoint, e.g. after its wait timed out; its
        task stops waiting for it. Cancelling again changes nothing; an answered one is 409."""
        return HitlRequest.from_api(self.request("POST", f"/hitl/{c.seg(request_id)}/cancel",
                                                       json_body=c.clean({"reason": reason})))

    def list_hitl(self, project_id: str, *, status: Optional[str] = None,
                        page: Optional[int] = None) -> Page[HitlRequest]:
        return Page.of(HitlRequest, self.request("GET", f"/hitl/project/{c.seg(project_id)}",
                                                       params={"status": status, "page": page}))

    def wait_for_hitl(self, request_id: str, timeout: Optional[float] = None) -> HitlRequest:
        """Until a person answers: the request (``approved`` or ``amended``; see ``.answer``), or
        :class:`ApprovalRejected`, :class:`ApprovalTimedOut`, :class:`EmergencyStopped`..."""
        obj, stop_id = self._await_decision("hitl", request_id, timeout, "wait")
        return c.outcome("hitl", obj, stop_id)

    def ask_human(self, project_id: str, question: str, options: Optional[Sequence[str]] = None, *,
                        context: Any = None, task_id: Optional[str] = None, timeout_minutes: Optional[int] = None,
                        wait_timeout: Optional[float] = None, idempotency_key: Optional[str] = None) -> HitlRequest:
        """Ask a person a question and wait for the answer (``result.answer``): free text, or one
        of ``options``. ``wait_timeout`` bounds the whole call, the question's creation (and its
        retries) included. After a :class:`HitlConnectionError`, asking again with
        ``idempotency_key=err.idempotency_key`` waits on the question if it was made after all."""
        deadline = None if wait_timeout is None else c.monotonic() + wait_timeout
        request = self.create_hitl(project_id, "question", question, options=options, context=context,
                                         task_id=task_id, timeout_minutes=timeout_minutes,
                                         idempotency_key=idempotency_key, deadline=deadline)
        return self._wait_for_asked(request.id, c.remaining(deadline, wait_timeout))

    def checkpoint(self, project_id: str, question: str, *, context: Any = None,
                         task_id: Optional[str] = None, timeout_minutes: Optional[int] = None,
                         wait_timeout: Optional[float] = None, idempotency_key: Optional[str] = None) -> HitlRequest:
        """Pause until a person lets the work go on ("the plan is ready, go on?"): the request when
        approved or amended (``amended_content``), :class:`ApprovalRejected` when refused.
        ``wait_timeout`` and ``idempotency_key`` as for :meth:`ask_human`."""
        deadline = None if wait_timeout is None else c.monotonic() + wait_timeout
        request = self.create_hitl(project_id, "checkpoint", question, context=context, task_id=task_id,
                                         timeout_minutes=timeout_minutes, idempotency_key=idempotency_key,
                                         deadline=deadline)
        return self._wait_for_asked(request.id, c.remaining(deadline, wait_timeout))

    def _wait_for_asked(self, request_id: str, timeout: Optional[float]) -> HitlRequest:
        """``wait_for_hitl`` for a question this call asked: withdrawn if the wait is interrupted."""
        try:
            return self.wait_for_hitl(request_id, timeout)
        except c.INTERRUPTS:
            self._withdraw("hitl", request_id)
            raise

    def _withdraw(self, kind: str, object_id: str, deadline: Optional[float] = None) -> None:
        """Cancel a call or question whose waiter was interrupted (``c.INTERRUPTS``), best effort and
        within ``c.WITHDRAW_SECONDS``: nobody is left to act on its answer."""
        deadline = deadline or c.monotonic() + c.WITHDRAW_SECONDS
        with contextlib.suppress(HitlError):
            self.request("POST", f"{c.PATHS[kind]}{c.seg(object_id)}/cancel", json_body={"reason": c.INTERRUPTED},
                               deadline=deadline, timeout=c.WITHDRAW_SECONDS)

    def _create_or_undo(self, kind: str, body: Dict[str, Any], idempotency_key: Optional[str],
                              deadline: Optional[float] = None) -> Any:
        """The create of a call (``agent``), a question (``hitl``) or a task (``task``). Interrupted
        (``c.INTERRUPTS``: Ctrl-C, its task cancelled) before the answer came, the server may have
        made it all the same, and nobody would learn its id: a call or question stayed pending, its
        reservation held and a reviewer could approve it (a quarter of 60 agents cancelled 0.6 s
        after asking), a task stayed open. It is then sent again with the same ``Idempotency-Key``
        (the first one's answer, or made now) and undone, within ``c.WITHDRAW_SECONDS``: the call or
        question withdrawn, the task reported cancelled."""
        path, id_field = c.CREATES[kind]
        key = idempotency_key or str(uuid.uuid4())
        try:
            return self.request("POST", path, json_body=body, create=True, idempotency_key=key, deadline=deadline)
        except c.INTERRUPTS:
            until = c.monotonic() + c.WITHDRAW_SECONDS
            with contextlib.suppress(HitlError):
                made = self.request("POST", path, json_body=body, create=True, idempotency_key=key,
                                          deadline=until, timeout=c.WITHDRAW_SECONDS)
                made_id = made.get(id_field) if isinstance(made, dict) else None
                if made_id and kind == "task":
                    self.request("POST", f"/tasks/{c.seg(str(made_id))}/status", json_body={"status": "cancelled"},
                                       deadline=until, timeout=c.WITHDRAW_SECONDS)
                elif made_id:
                    self._withdraw(kind, str(made_id), until)
            raise

    # --- waiting --------------------------------------------------------------------------------
    def _get(self, kind: str, object_id: str, deadline: Optional[float] = None, waiting: bool = False) -> Any:
        return c.MODELS[kind].from_api(self.request("GET", c.PATHS[kind] + c.seg(object_id), deadline=deadline,
                                                          waiting=waiting))

    def _poll(self, kind: str, object_id: str, timeout: float, deadline: Optional[float] = None) -> Any:
        timeout = max(0.0, min(float(timeout), 60.0))
        return self.request("GET", f"{c.PATHS[kind]}{c.seg(object_id)}/wait", params={"timeout": f"{timeout:g}"},
                                  timeout=timeout + self.timeout, deadline=deadline, waiting=True)

    def _await_decision(self, kind: str, object_id: str, timeout: Optional[float],
                              on_budget_block: str) -> "tuple[Any, Optional[str]]":
        """(the object once settled, the emergency stop id if a stop ended it). Websocket first
        (events of the project, replayed after the last one seen on reconnect), the long poll
        while the websocket is unavailable; network errors and restarts are retried until
        ``timeout`` (forever when None). A server that does not answer until the timeout passes
        ends the wait as any other: WaitTimeout, whichever transport was waiting."""
        deadline = None if timeout is None else c.monotonic() + timeout
        try:
            return self._await_decision_until(kind, object_id, deadline, on_budget_block)
        except (HitlConnectionError, ServerError, Throttled) as exc:  # raised once the deadline passed
            # (retried until then): a server, or a proxy before it, that never answered in time
            if deadline is None or c.monotonic() < deadline:
                raise
            raise WaitTimeout(approval_id=object_id) from exc

    def _await_decision_until(self, kind: str, object_id: str, deadline: Optional[float],
                                    on_budget_block: str) -> "tuple[Any, Optional[str]]":
        model = c.MODELS[kind]
        retry_deadline = deadline if deadline is not None else float("inf")
        closes = self._closed_here()
        obj = self._get(kind, object_id, retry_deadline, waiting=True)
        use_ws, failures, last_event_id, stop_id = self.use_websocket, 0, None, None
        while True:
            if self._closed_here() != closes:  # a long poll's answer came on a client closed meanwhile
                raise HitlError(c.CLIENT_CLOSED, code="client_closed")
            if c.settled(kind, obj, on_budget_block) or stop_id:
                if obj.status == "cancelled" and not stop_id:  # cancelled by a stop, or by its agent?
                    status = self.emergency_status(obj.project_id)
                    if status.stopped and status.active_stop is not None:
                        stop_id = status.active_stop.id
                return obj, stop_id
            if deadline is not None and c.monotonic() >= deadline:
                raise WaitTimeout(approval_id=object_id, approval=obj)
            if not use_ws:
                obj = model.from_api(self._poll(kind, object_id, c.remaining(deadline, 30), retry_deadline))
                continue
            try:
                ws = self._streams.subscribe(obj.project_id, last_event_id)
            except WSRefused:
                use_ws = False
                continue
            except Exception:  # noqa: BLE001  (down or restarting: long-poll meanwhile, then try again)
                failures += 1
                try:
                    obj = model.from_api(self._poll(kind, object_id, c.remaining(deadline, 5), retry_deadline))
                except HitlConnectionError:
                    pass
                _sleep(min(self.retry.delay(failures), c.remaining(deadline, 60)))
                continue
            try:
                # Subscribed: read the object once more, so a decision made before can not be missed.
                obj = model.from_api(self._poll(kind, object_id, 0, retry_deadline))
                failures = 0
                next_check = c.monotonic() + self.recheck_seconds
                while not c.settled(kind, obj, on_budget_block):
                    now = c.monotonic()
                    if deadline is not None and now >= deadline:
                        break
                    wait = next_check - now if deadline is None else min(next_check, deadline) - now
                    message = c.parse_event(ws.recv(wait)) if wait > 0 else None
                    if message is None:
                        if c.monotonic() >= next_check:  # also times out a request past its deadline
                            obj = model.from_api(self._poll(kind, object_id, 0, retry_deadline))
                            next_check = c.monotonic() + self.recheck_seconds
                        continue
                    last_event_id = int(message["id"])
                    event_type, data = message["event_type"], message.get("data") or {}
                    if event_type == "emergency_stop_triggered":
                        stop_id = str(data.get("id") or "") or "unknown"
                        obj = self._get(kind, object_id, retry_deadline, waiting=True)
                        break
                    if (event_type in c.DECIDED_EVENTS[kind] and c.mentions(data, object_id)) or \
                            (kind == "agent" and event_type == "budget_override_decided"):
                        obj = self._get(kind, object_id, retry_deadline, waiting=True)
            except HitlConnectionError:
                failures += 1
            except (HitlError, WaitTimeout):
                raise
            except StreamRefused as refused:  # a resume point the server no longer knows: resubscribe
                # without it (the object is read again after subscribing); long-poll if the query is refused
                use_ws, last_event_id = c.refuses_resume_point(refused), None
            except Exception:  # noqa: BLE001  (the socket dropped: reconnect with last_event_id)
                if self._closed_here() != closes:  # closed by the client's close (sync: from another thread)
                    raise HitlError(c.CLIENT_CLOSED, code="client_closed") from None
                failures += 1
                _sleep(min(self.retry.delay(failures), c.remaining(deadline, 60)))
            finally:
                ws.close()


__all__ = ["HitlClient"]
