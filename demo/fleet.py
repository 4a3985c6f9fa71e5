"""The demo fleet: the BotArmy workflow (orchestrator, analyst, architect, coder, tester,
deployer) as six ``SafetyEnhancedBaseAgent`` subclasses, driven round after round against a
BotArmy HITL server through the agent SDK only (HTTP and the ``/ws/events/`` websocket, with the
agent's API key), with the offline stand-in model of ``demo.llm``.

A round: the orchestrator plans a feature and asks a person at a checkpoint ("The plan is ready,
go on?"); then each of the five others asks for its call, runs once a person approved it (with the
amended input if amended), and sends its output for approval (redone when sent back). A refusal,
a timeout or a cancellation ends the round (logged; the next round starts after a pause). A call
over the budget waits for a person to approve its budget override. An emergency stop halts the
fleet at once (the round in flight is cancelled, every agent stops), then the fleet polls the
project's emergency status and resumes with a new round once a person has recovered the project.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, Dict, List, Optional

from hitl_sdk import (ApprovalCancelled, ApprovalRejected, ApprovalTimedOut, AsyncHitlClient, EmergencyStop,
                      EmergencyStopped, HitlConnectionError, HitlError, ModificationRequired, NotFound, RetryPolicy,
                      RunResult, SafetyEnhancedBaseAgent, ServerError)

from .llm import AGENT_ORDER, RISK_LABELS, DemoLLM, Proposal


class FleetError(Exception):
    """The fleet cannot start (no such project, a bad key)."""


FLEET_MARK = "botarmy-demo-fleet"  # in every call's input: how the fleet recognises its own stale calls
_where: contextvars.ContextVar = contextvars.ContextVar("demo_where", default=("", ""))


def _ours(call) -> bool:
    """A call this fleet made (in this run or an earlier one)."""
    return isinstance(call.input_data, dict) and call.input_data.get("fleet") == FLEET_MARK


def _money(value: Any) -> str:
    return "?" if value is None else f"${Decimal(str(value)):,.4f}"


def _risk(assessment: Optional[Dict[str, Any]], flags: Optional[List[Any]] = None) -> str:
    """``risk high (deploy.production: Deploy to production target ...)``"""
    assessment = assessment or {}
    found = list(assessment.get("flags") or assessment.get("risk_flags") or [])
    if not found and flags:
        found = [{"code": f.code, "severity": f.severity, "message": f.message} for f in flags]
    level = assessment.get("level") or max((f.get("severity", "low") for f in found),
                                           key=["low", "medium", "high", "critical"].index, default="low")
    if not found or level == "low":
        return f"risk {level}"
    top = sorted(found, key=lambda f: ["critical", "high", "medium", "low"].index(f.get("severity", "low")))[0]
    message = str(top.get("message", ""))
    return f"risk {level} ({top.get('code')}: {message[:70] + '...' if len(message) > 70 else message})"


class LoggingClient(AsyncHitlClient):
    """The SDK's client, with one log line for each thing a person sees or decides."""

    def __init__(self, *args: Any, log: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._log = log
        self.pending_call: Optional[str] = None  # the fleet's call waiting for a person, if any
        self.open_tasks: Dict[str, None] = {}  # tasks this run made and has not ended (in order)

    def say(self, text: str) -> None:
        round_label, agent = _where.get()
        self._log(f"{round_label:<4} {agent:<12} {text}")

    async def create_task(self, *args: Any, **kwargs: Any):
        task = await super().create_task(*args, **kwargs)
        self.open_tasks[task.task_id] = None
        return task

    async def set_task_status(self, task_id: str, *args: Any, **kwargs: Any):
        task = await super().set_task_status(task_id, *args, **kwargs)
        self.open_tasks.pop(task_id, None)
        return task

    async def request_approval(self, *args: Any, **kwargs: Any):
        call = await super().request_approval(*args, **kwargs)
        self.pending_call = call.approval_id
        redo = len(call.input_data.get("modifications_required") or []) if isinstance(call.input_data, dict) else 0
        self.say(f"{f'asks again (redo {redo})' if redo else 'asks'}: {call.proposed_action} (est. {call.estimated_tokens:,} tokens, "
                 f"{_money(call.estimated_cost)}) · {_risk(call.risk_assessment)} · waiting for a person "
                 f"[call {call.approval_id[:8]}]")
        if call.is_blocked_by_budget:
            self.say(f"blocked by the budget: {call.budget_blocked_reason or 'over a limit'} "
                     f"(a person approves budget override {str(call.budget_override_id)[:8]} first)")
        return call

    async def wait_for_approval(self, approval_id: str, *args: Any, **kwargs: Any):
        try:
            call = await super().wait_for_approval(approval_id, *args, **kwargs)
        finally:
            self.pending_call = None
        how = "approved with amendments" if call.amended_input_data is not None else "approved"
        self.say(f"{how} by {call.approved_by or 'a person'} → running")
        return call

    async def submit_response(self, *args: Any, **kwargs: Any):
        response = await super().submit_response(*args, **kwargs)
        self.say(f"output for review: {response.response_summary} ({response.tokens_used:,} tokens, "
                 f"{_money(response.actual_cost)}) · {_risk(response.analysis, response.risk_flags)} "
                 f"[response {response.approval_id[:8]}]")
        return response

    async def wait_for_response(self, approval_id: str, *args: Any, **kwargs: Any):
        try:
            response = await super().wait_for_response(approval_id, *args, **kwargs)
        except ModificationRequired as exc:
            self.say(f"sent back by {getattr(exc.approval, 'approved_by', None) or 'a person'}: "
                     f"{exc.modifications_required} → redoing it")
            raise
        self.say(f"output approved by {response.approved_by or 'a person'} ✓")
        return response

    async def create_hitl(self, project_id: str, request_type: str, question: str, **kwargs: Any):
        request = await super().create_hitl(project_id, request_type, question, **kwargs)
        if request_type == "checkpoint":
            self.say(f"checkpoint: {question!r} · waiting for a person [hitl {request.id[:8]}]")
        return request

    async def checkpoint(self, *args: Any, **kwargs: Any):
        answered = await super().checkpoint(*args, **kwargs)  # create_hitl above says it is asked
        if answered.status == "amended":
            self.say(f"checkpoint amended by {answered.responded_by or 'a person'}: {answered.answer!r} → going on")
        else:
            note = f" ({answered.response})" if answered.response else ""
            self.say(f"checkpoint approved by {answered.responded_by or 'a person'}{note} → going on")
        return answered


class DemoAgent(SafetyEnhancedBaseAgent):
    """One BotArmy agent: its call and output come from the stand-in model."""

    on_budget_block = "wait"  # a call over the budget waits while a person decides its override
    max_modification_rounds = 3

    def __init__(self, fleet: "Fleet", agent_type: str) -> None:
        super().__init__(fleet.client, fleet.project_id, agent_type=agent_type)
        self.fleet = fleet
        self.proposal: Optional[Proposal] = None
        self.round_no = 0

    def describe_action(self, task, extra):
        assert self.proposal is not None
        return self.proposal.action

    def build_input(self, task, extra, modifications):
        assert self.proposal is not None
        data: Dict[str, Any] = {**self.proposal.input, "fleet": FLEET_MARK, "round": self.round_no}
        if extra.get("plan_notes"):
            data["plan_notes"] = extra["plan_notes"]
        if modifications:
            data["modifications_required"] = list(modifications)
        return data

    def summarize_context(self, task, extra, modifications):
        text = f"Round {self.round_no} of the demo fleet: {self.agent_type} step of {task.title!r}."
        if modifications:
            text += f" Redo {len(modifications) + 1}: the reviewer asked for: {modifications[-1]}"
        return text

    def estimate(self, task, input_data):
        assert self.proposal is not None
        return self.proposal.estimated_tokens, self.proposal.estimated_cost

    async def run(self, task, context):
        me = asyncio.current_task()
        self.fleet.runs.add(me)  # the fleet cancels it on a stop, whoever was awaiting it
        try:
            if self.fleet.work_seconds:
                await asyncio.sleep(self.fleet.work_seconds)  # "thinking": cancelled at once by a stop
        finally:
            self.fleet.runs.discard(me)
        completion = self.fleet.llm.complete(self.agent_type, self.round_no, context.input or {},
                                             modifications=context.modifications, amended=context.amended,
                                             proposal=self.proposal, plan_notes=context.extra.get("plan_notes"))
        return RunResult(output=completion.output, tokens_used=completion.tokens_used, actual_cost=completion.cost,
                         summary=completion.summary, next_steps=completion.next_steps)


@dataclass
class RoundReport:
    number: int
    ran: List[str] = field(default_factory=list)  # agent types whose output a person approved
    ended: str = "completed"  # completed, refused, timed out, cancelled, sent back, error, halted
    tokens: int = 0
    cost: Decimal = Decimal("0")


class Fleet:
    """``await Fleet(url, project, api_key).run()``: rounds until ``rounds`` (None: for ever).

    ``pace``: seconds between steps (and twice that between rounds); ``work_seconds``: how long a
    run "thinks"; ``recovery_poll``: how often a stopped project's status is read. ``halted`` is set
    (and ``halted_at`` = ``time.time()``) each time an emergency stop halts the fleet."""

    def __init__(self, url: str, project: str, api_key: Optional[str], *, rounds: Optional[int] = None,
                 seed: int = 0, pace: float = 3.0, work_seconds: Optional[float] = None,
                 critical_rate: float = 0.1, recovery_poll: float = 2.0, log: Callable[[str], None] = print,
                 retry: Optional[RetryPolicy] = None, recheck_seconds: float = 15.0,
                 wait_for_server: float = 0.0, first_round: int = 1) -> None:
        self.url, self.project_ref, self.rounds = url, str(project), rounds
        self.pace = max(0.0, float(pace))
        self.work_seconds = min(self.pace / 2, 1.5) if work_seconds is None else max(0.0, work_seconds)
        self.recovery_poll = recovery_poll
        self.wait_for_server = wait_for_server
        self._log_fn = log
        self.llm = DemoLLM(seed, critical_rate=critical_rate)
        self.client = LoggingClient(url, api_key, log=self._line, retry=retry or RetryPolicy(attempts=5),
                                    recheck_seconds=recheck_seconds)
        self.project_id = ""
        self.agents: Dict[str, DemoAgent] = {}
        self.runs: set = set()  # the agents' runs in progress (asyncio tasks)
        self.reports: List[RoundReport] = []
        self.halts: List[Dict[str, Any]] = []
        self.halted_at: Optional[float] = None
        self.halted = threading.Event()  # for a test or a supervisor in another thread
        self.round_no = first_round - 1  # the last round started

    # --- output -----------------------------------------------------------------------------------
    def _line(self, text: str) -> None:
        self._log_fn(f"{datetime.now():%H:%M:%S} fleet {text}")

    def log(self, text: str) -> None:
        round_label, agent = _where.get()
        self._line(f"{round_label:<4} {agent:<12} {text}")

    # --- the loop ---------------------------------------------------------------------------------
    async def run(self) -> List[RoundReport]:
        try:
            await self._prepare()
            pause = 0.0
            while self.rounds is None or len(self.reports) < self.rounds:
                await self._wait_until_running()
                self.round_no += 1
                report = await self._guarded_round(self.round_no, pause)
                self.reports.append(report)
                pause = self.pace * 2 if report.ended != "error" else max(self.pace * 2, 5.0)
            _where.set(("", "fleet"))
            self.log(f"done: {len(self.reports)} round(s)")
            return self.reports
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Cancel the call a person was still asked about (best effort, one second), then close."""
        pending, self.client.pending_call = self.client.pending_call, None
        if pending:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self.client.cancel_approval(pending, "the demo fleet stopped"), 1.0)
        with contextlib.suppress(BaseException):
            await self.client.aclose()

    async def _prepare(self) -> None:
        _where.set(("", "fleet"))
        project = await self._find_project()
        self.project_id = project.id
        self.agents = {agent_type: DemoAgent(self, agent_type) for agent_type in AGENT_ORDER}
        self.log(f"six agents on project {project.slug!r} ({project.id}) at {self.url}: "
                 f"{'for ever' if self.rounds is None else f'{self.rounds} round(s)'}, "
                 f"pace {self.pace:g}s, seed {self.llm.seed}")
        stale = outputs = 0
        with contextlib.suppress(HitlError):
            for call in (await self.client.list_approvals(self.project_id, status="pending")).results:
                if _ours(call):
                    with contextlib.suppress(HitlError):
                        await self.client.cancel_approval(call.approval_id, "the demo fleet restarted")
                        stale += 1
                    await self._end_task(call.task_id)  # abandoned before it ran: cancelled
        with contextlib.suppress(HitlError):  # outputs left for review: their agent is gone
            for response in (await self.client.list_responses(self.project_id, status="pending")).results:
                with contextlib.suppress(HitlError):
                    if _ours(await self.client.get_approval(response.original_call_approval_id)):
                        outputs += await self._end_task(response.task_id)
        if stale:
            self.log(f"cancelled {stale} call(s) left pending by an earlier run")
        if outputs:
            self.log(f"ended {outputs} task(s) whose output an earlier run left waiting for review")

    async def _end_open_tasks(self) -> int:
        """After a recovery: the tasks of the halted round (a recovery resumes them as pending, and
        nothing would ever pick them up: the fleet starts a new round) are ended. How many."""
        ended = 0
        for task_id in list(self.client.open_tasks):
            with contextlib.suppress(HitlError):
                if (await self.client.get_task(task_id)).status in ("completed", "failed", "cancelled"):
                    self.client.open_tasks.pop(task_id, None)
                    continue
                ended += await self._end_task(task_id, "halted by an emergency stop; after the recovery a new round "
                                                       "does its work")
        return ended

    async def _end_task(self, task_id, why: str = "the demo fleet restarted before its output was used") -> int:
        """Report a task no round will finish ended: cancelled (abandoned before it ran), else failed
        (``why``: its output will never be used); its pending reviews are withdrawn with it. 1 if ended."""
        for status, error in (("cancelled", None), ("failed", why)):
            with contextlib.suppress(HitlError):
                await self.client.set_task_status(task_id, status, error=error)
                return 1
        return 0

    async def _find_project(self):
        """The project by slug or id; while the server does not answer yet (it is starting), wait
        up to ``wait_for_server`` seconds."""
        deadline = time.monotonic() + self.wait_for_server
        told = False
        while True:
            try:
                return await self._lookup_project()
            except (HitlConnectionError, ServerError):
                if time.monotonic() >= deadline:
                    raise
                if not told:
                    self.log(f"waiting for the server at {self.url}")
                    told = True
                await asyncio.sleep(1.0)

    async def _lookup_project(self):
        ref = self.project_ref
        with contextlib.suppress(NotFound, HitlError):
            if len(ref) >= 32:
                return await self.client.get_project(ref)
        page_no: Optional[int] = None
        while True:
            page = await self.client.list_projects(page=page_no)
            for project in page.results:
                if ref in (project.slug, project.id):
                    return project
            if not page.next:
                raise FleetError(f"no project {ref!r} is visible to this API key")
            page_no = (page_no or 1) + 1

    async def _wait_until_running(self) -> None:
        """While the project is stopped: poll its emergency status (and the recovery's progress)."""
        _where.set(("", "fleet"))
        waited, last = False, None
        while True:
            try:
                status = await self.client.emergency_status(self.project_id)
            except (HitlConnectionError, ServerError) as exc:
                self.log(f"the server does not answer ({exc.status or 'no connection'}): trying again")
                await asyncio.sleep(max(self.recovery_poll, 2.0))
                continue
            if not status.stopped:
                if waited:
                    ended = await self._end_open_tasks()
                    self.log("the project was recovered: the fleet resumes"
                             + (f" (ended {ended} task(s) the stop had halted: a new round does their work)"
                                if ended else ""))
                return
            session = status.recovery_session
            progress = (f"recovery {session.status}: {session.steps_completed}/{session.total_steps} steps"
                        if session else "no recovery started yet (project page → Recovery)")
            if not waited or progress != last:
                reason = status.active_stop.stop_reason if status.active_stop else ""
                self.log(f"the project is stopped ({reason[:80]}): waiting for a person to recover it · {progress}")
            waited, last = True, progress
            await asyncio.sleep(self.recovery_poll)

    async def _guarded_round(self, number: int, pause: float) -> RoundReport:
        """The round (after ``pause`` seconds), cancelled the moment the project is emergency-stopped."""
        report = RoundReport(number)
        runner = asyncio.ensure_future(self._round(report, pause))
        watcher = asyncio.ensure_future(self.client.watch_emergency_stop(self.project_id))
        try:
            done, _ = await asyncio.wait({runner, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher in done and not watcher.cancelled() and watcher.exception() is None:
                runner.cancel()
                self._halt(watcher.result(), report)
                await asyncio.wait({runner}, timeout=2.0)  # a moment to unwind (a stop of the fleet still ends it)
                return report
            if watcher in done:  # the watcher failed (not allowed?): the SDK's own waits still see a stop
                self.log(f"cannot watch for stops ({watcher.exception()!r}): relying on the waits")
            try:
                await runner
            except EmergencyStopped as exc:
                self._halt(EmergencyStop(id=exc.emergency_stop_id or "", project_id=self.project_id,
                                         stop_reason=exc.detail), report)
            return report
        finally:
            tasks = [runner, watcher, *self.runs]
            for task in tasks:
                task.cancel()
            # Their ends, whatever they were; gather, not suppressed awaits: the fleet's own
            # cancellation (Ctrl-C) arriving meanwhile must stop it, not be swallowed here.
            await asyncio.gather(*tasks, return_exceptions=True)

    def _halt(self, stop: EmergencyStop, report: RoundReport) -> None:
        if report.ended == "halted":
            return
        self.halted_at = time.time()
        report.ended = "halted"
        for run in list(self.runs):
            run.cancel()
        self.client.pending_call = None  # the stop cancelled it
        self.halts.append({"at": self.halted_at, "stop_id": stop.id, "reason": stop.stop_reason})
        self.halted.set()
        _where.set((f"r{report.number}", "fleet"))
        self.log(f"■ EMERGENCY STOP{' (' + stop.severity + ')' if stop.severity else ''}: "
                 f"{stop.stop_reason or 'no reason given'} · all six agents halted")

    async def _round(self, report: RoundReport, pause: float) -> None:
        number = report.number
        if pause:
            await asyncio.sleep(pause)
        feature, risks = self.llm.feature(number), self.llm.risks(number)
        risky = [f"{agent}: {RISK_LABELS[risk]}" for agent, risk in risks.items() if risk]
        _where.set((f"r{number}", "fleet"))
        self.log(f"round {number}: {feature.title!r}" + (f" · this round: {'; '.join(risky)}" if risky else ""))
        upstream: Dict[str, Any] = {}
        extra: Dict[str, Any] = {}
        planned: Optional[set] = None  # the agents of the approved plan (a person may amend the team)
        for index, agent_type in enumerate(AGENT_ORDER):
            _where.set((f"r{number}", agent_type))
            if planned is not None and agent_type not in planned:
                self.log("not in the approved plan: skipped")
                continue
            if index:
                await asyncio.sleep(self.pace)
            outcome = await self._step(agent_type, number, feature.title, upstream, extra, report)
            if outcome is None:
                return
            if agent_type == "orchestrator":
                planned = {step.get("agent") for step in outcome.get("plan", []) if isinstance(step, dict)}
                if not await self._checkpoint(number, outcome, extra, report):
                    return
        budget = None
        with contextlib.suppress(HitlError):
            budget = await self.client.get_budget(self.project_id)
        _where.set((f"r{number}", "fleet"))
        spent = (f" · today {_money(budget.cost_incurred_today)} of {_money(budget.daily_cost_limit)}, "
                 f"{budget.tokens_used_today:,} of {budget.daily_token_limit:,} tokens") if budget else ""
        ran = "all six agents ran" if len(report.ran) == len(AGENT_ORDER) else f"{len(report.ran)} agents ran"
        self.log(f"round {number} done: {ran}, {report.tokens:,} tokens, {_money(report.cost)}{spent}")

    async def _step(self, agent_type: str, number: int, feature_title: str, upstream: Dict[str, Any],
                    extra: Dict[str, Any], report: RoundReport) -> Optional[Dict[str, Any]]:
        """One agent's call and output; None when the round ends here."""
        agent = self.agents[agent_type]
        budget = None
        if self.llm.risks(number)[agent_type] == "costly":
            with contextlib.suppress(HitlError):
                budget = (await self.client.get_budget(self.project_id)).raw
        agent.round_no = number
        agent.proposal = self.llm.propose(agent_type, number, upstream=dict(upstream) or None, budget=budget)
        agent.model = agent.proposal.model  # the call names the model it runs on (it said gpt-4o, the SDK's default)
        try:
            # execute_task makes the task; a refusal, time-out, cancellation or one send-back too
            # many reports it cancelled (the SDK's rule for a task it made): none is left open
            result = await agent.execute_task(title=f"{feature_title}: {agent_type}",
                                              input_data={"round": number, "feature": feature_title}, context=extra)
        except ApprovalRejected as exc:
            return self._ended(report, "refused", f"refused by {exc.rejected_by or 'a person'}: {exc.reason} "
                                                   f"→ the round ends here")
        except ApprovalTimedOut:
            return self._ended(report, "timed out", "nobody decided in time (it failed closed) → the round ends here")
        except ApprovalCancelled as exc:
            return self._ended(report, "cancelled", f"cancelled: {exc.detail or 'by the server'} → the round ends here")
        except ModificationRequired:
            return self._ended(report, "sent back", "sent back too many times → the round ends here")
        except EmergencyStopped:
            raise
        except (HitlConnectionError, ServerError) as exc:
            return self._ended(report, "error", f"the server does not answer ({exc}) → the round ends here")
        except HitlError as exc:
            return self._ended(report, "error", f"the server refused: {exc} → the round ends here")
        report.ran.append(agent_type)
        report.tokens += result.tokens_used
        report.cost += Decimal(str(result.actual_cost or 0))
        summary = result.response_approval.response_summary
        upstream[agent_type] = summary
        return result.output

    async def _checkpoint(self, number: int, plan: Dict[str, Any], extra: Dict[str, Any],
                          report: RoundReport) -> bool:
        steps = [f"{s['agent']}: {s['goal']}" for s in plan.get("plan", []) if isinstance(s, dict)]
        try:
            answered = await self.client.checkpoint(
                self.project_id, "The plan is ready, go on?",
                context={"feature": plan.get("feature"), "plan": steps, "estimate_hours": plan.get("estimate_hours"),
                         "round": number})
        except ApprovalRejected as exc:
            self._ended(report, "refused", f"the plan was refused by {exc.rejected_by or 'a person'}: {exc.reason} "
                                           f"→ the round ends here")
            return False
        except ApprovalTimedOut:
            self._ended(report, "timed out", "nobody answered the checkpoint in time → the round ends here")
            return False
        except EmergencyStopped:
            raise
        except (HitlConnectionError, ServerError) as exc:
            self._ended(report, "error", f"the server does not answer ({exc}) → the round ends here")
            return False
        except HitlError as exc:
            self._ended(report, "error", f"the checkpoint failed: {exc} → the round ends here")
            return False
        if answered.status == "amended" and answered.amended_content is not None:
            extra["plan_notes"] = answered.amended_content
        elif answered.response:
            extra["plan_notes"] = answered.response
        return True

    def _ended(self, report: RoundReport, how: str, text: str) -> None:
        """The round ends at this step (logged); None, for ``return self._ended(...)``."""
        report.ended = how
        self.log(text)
        return None
