"""SafetyEnhancedBaseAgent (section 1.2 and 2 of the architecture) and @require_approval."""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import json
import threading
import typing
import warnings
from dataclasses import dataclass, field
from decimal import Decimal
from typing import (Any, Awaitable, Callable, Coroutine, Dict, Generic, List, Optional, ParamSpec, Protocol, Set, Tuple,
                    TypeVar, Union, cast, overload)

from ._async_client import AsyncHitlClient
from ._common import INTERRUPTS, current_loop, json_default
from ._sync_client import HitlClient
from .errors import (ApprovalCancelled, ApprovalRejected, ApprovalTimedOut, BudgetOverrideRequired, EmergencyStopped,
                     HitlConnectionError, HitlError, ModificationRequired, ServerError, Throttled, WaitTimeout)
from .models import AgentApproval, ResponseApproval, RunResult, Task, money, token_count

AnyClient = Union[HitlClient, AsyncHitlClient]
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
P = ParamSpec("P")
# What ends a call before it runs: a task made for it alone is then reported cancelled.
ENDS_UNRUN_TASK = (ApprovalRejected, ApprovalTimedOut, ApprovalCancelled)
# Errors that are not the server refusing a step: a task made for the work is left as it is (a stop's
# recovery decides; a blocked call, or one the caller stopped waiting for, still waits and can be
# waited for again; an unreachable or overloaded server would turn a passing incident into
# failures that count towards the error-rate stop).
NOT_A_REFUSAL = (EmergencyStopped, BudgetOverrideRequired, WaitTimeout, HitlConnectionError, ServerError, Throttled)


def made_task_ending(exc: BaseException, *, ran: bool) -> Optional[Tuple[str, Optional[str]]]:
    """How a task made for one piece of work alone is ended when that work raises ``exc``: (status,
    error) to report, or None to leave it. ``cancelled`` after a person's refusal, a time-out, a
    cancellation or a send-back past the round limit, and after a step the server refused before
    the call ran; ``failed`` ("the server refused a step: ...") when it refused one after the run.
    None for NOT_A_REFUSAL and for errors that are not the server's (a run that raised reports its
    own failure). An interrupt (``INTERRUPTS``: Ctrl-C, a cancelled task) before the call ran:
    ``cancelled``, the call itself withdrawn by the caller."""
    if isinstance(exc, (*ENDS_UNRUN_TASK, ModificationRequired)):
        return "cancelled", None
    if isinstance(exc, INTERRUPTS):  # Ctrl-C or a cancelled task while a person was asked: withdrawn
        return None if ran else ("cancelled", None)
    if not isinstance(exc, HitlError) or isinstance(exc, NOT_A_REFUSAL):
        return None
    return ("failed", f"the server refused a step: {exc}"[:2000]) if ran else ("cancelled", None)


def _twin_config(client: AnyClient, *, to_async: bool) -> Dict[str, Any]:
    """The twin's settings, its transport among them (the one hook for a custom CA, a proxy or
    mTLS, which the agent helpers dropped without a word). A transport the twin cannot drive (a
    sync ``httpx.HTTPTransport`` under the async twin) is a ValueError that says what to pass."""
    transport = getattr(client, "_transport", None)
    if transport is not None and not hasattr(transport, "handle_async_request" if to_async else "handle_request"):
        kind = "async (httpx.AsyncBaseTransport)" if to_async else "sync (httpx.BaseTransport)"
        warnings.warn(f"this client's transport cannot serve its {'async' if to_async else 'sync'} twin, which the "
                      f"agent helpers use: the twin connects without it. Give them a client whose transport is "
                      f"{kind}, or one that is both (httpx.MockTransport is).", UserWarning, stacklevel=3)
        transport = None
    return dict(retry=client.retry, timeout=client.timeout, use_websocket=client.use_websocket,
                recheck_seconds=client.recheck_seconds, ws_open_timeout=client.ws_open_timeout, transport=transport)


def as_async(client: AnyClient) -> AsyncHitlClient:
    """The async client of ``client``'s server and key (``client`` itself if it is one)."""
    if isinstance(client, AsyncHitlClient):
        return client
    twin = getattr(client, "_async_twin", None)
    if twin is None:
        twin = AsyncHitlClient(client.base_url, client.api_key, **_twin_config(client, to_async=True))
        client._async_twin = twin  # type: ignore[attr-defined]
    return twin


def as_sync(client: AnyClient) -> HitlClient:
    """The sync client of ``client``'s server and key (``client`` itself if it is one)."""
    if isinstance(client, HitlClient):
        return client
    twin = getattr(client, "_sync_twin", None)
    if twin is None:
        twin = HitlClient(client.base_url, client.api_key, **_twin_config(client, to_async=False))
        client._sync_twin = twin  # type: ignore[attr-defined]
    return twin


@dataclass
class RunContext:
    """What ``run(task, context)`` gets: the approved input (amended if a reviewer amended it),
    the modifications asked for in earlier rounds, and the stop signal."""
    input: Any
    approval: AgentApproval
    amended: bool
    round: int
    modifications: List[Any]
    extra: Dict[str, Any]
    stop_event: threading.Event = field(default_factory=threading.Event)

    def check_stop(self) -> None:
        """For a sync ``run`` in its thread: raise EmergencyStopped once the project is stopped."""
        if self.stop_event.is_set():
            raise EmergencyStopped("the project was stopped during this run", status=None)


@dataclass
class ExecutionResult:
    output: Dict[str, Any]
    task: Task
    call_approval: AgentApproval
    response_approval: ResponseApproval
    rounds: int
    tokens_used: int = 0
    actual_cost: Optional[Decimal] = None


class SafetyEnhancedBaseAgent:
    """Subclass it, set ``agent_type``, implement ``run(task, context)`` (sync or async) returning
    a :class:`RunResult` (or a dict: the output). ``execute_task`` then runs the seed's sequence:
    the task, the call approval with estimates, the wait, the single-use grant, ``run`` with the
    approved (possibly amended) input, the response with its usage, the wait for the response
    approval, and a new round (a new call approval with the modifications in the context) while a
    reviewer asks for modifications, up to ``max_modification_rounds``. An emergency stop ends it
    with :class:`EmergencyStopped`; a ``run`` in progress is cancelled (an async ``run``) or told
    through ``context.stop_event`` (a sync ``run`` in its thread)."""

    agent_type: str = "coder"
    model: Optional[str] = "gpt-4o"
    max_modification_rounds: int = 3
    approval_timeout_minutes: Optional[int] = None  # the server's deadline for a person's decision
    response_timeout_minutes: Optional[int] = None
    on_budget_block: str = "raise"  # or "wait": keep waiting while a budget override is pending
    complete_task: bool = True  # report the task completed once its output is approved

    def __init__(self, client: AnyClient, project_id: str, *, agent_type: Optional[str] = None,
                 model: Optional[str] = None) -> None:
        self.client = as_async(client)
        self.project_id = str(project_id)
        if agent_type:
            self.agent_type = agent_type
        if model:
            self.model = model

    # --- what a subclass provides -----------------------------------------------------------
    def run(self, task: Task, context: RunContext) -> Union[RunResult, Dict[str, Any],
                                                         Awaitable[Union[RunResult, Dict[str, Any]]]]:
        raise NotImplementedError

    def describe_action(self, task: Task, extra: Dict[str, Any]) -> str:
        return f"{self.agent_type}: {task.title}"

    def build_input(self, task: Task, extra: Dict[str, Any], modifications: List[Any]) -> Dict[str, Any]:
        data: Dict[str, Any] = {"task": {"title": task.title, "input_data": task.input_data or {}}}
        if extra:
            data["context"] = extra
        if modifications:
            data["modifications_required"] = modifications
        return data

    def summarize_context(self, task: Task, extra: Dict[str, Any], modifications: List[Any]) -> str:
        text = f"Task {task.title!r} ({len(extra)} context item(s))."
        if modifications:
            text += f" Round {len(modifications) + 1}: the reviewer asked for: {modifications[-1]}"
        return text

    def estimate(self, task: Task, input_data: Dict[str, Any]) -> "tuple[Optional[int], Optional[Decimal]]":
        """(estimated_tokens, estimated_cost); None lets the server estimate (its estimate is the floor)."""
        return None, None

    # --- the sequence -----------------------------------------------------------------------
    async def execute_task(self, task: Union[Task, str, None] = None, context: Optional[Dict[str, Any]] = None,
                           *, title: Optional[str] = None,
                           input_data: Optional[Dict[str, Any]] = None) -> ExecutionResult:
        """Run one task under approvals. ``task`` is a Task, a task id, or None to create one from
        ``title`` and ``input_data``. Raises ApprovalRejected, ApprovalTimedOut, ApprovalCancelled,
        BudgetOverrideRequired, ModificationRequired (past the round limit), EmergencyStopped, or the
        HitlError of a step the server refused. A task it made itself is not left open when it
        raises (see ``made_task_ending``); once the output is approved, a refused completion report
        (409 while a question about the task is still open, say) is raised as it is."""
        client, extra = self.client, dict(context or {})
        created, ran = task is None, False
        if task is None:
            task = await client.create_task(self.project_id, self.agent_type, title or "untitled task", input_data)
        elif isinstance(task, str):
            task = await client.get_task(task)
        spent_tokens, spent_cost = 0, Decimal("0")  # every round's, as the budget counts them
        waiting_on: Optional[str] = None  # the call asked for and not started yet
        try:
            modifications: List[Any] = []
            amended: Dict[str, Any] = {}  # what reviewers changed in an earlier round's input
            dropped: Set[str] = set()     # ... and took out of it
            for round_no in range(1, self.max_modification_rounds + 2):
                call_input = self.build_input(task, extra, modifications)
                # A redo keeps what a reviewer amended (a deploy amended to staging is not asked
                # for production again): the round's input is built again, with the amendment on it.
                call_input = {**{k: v for k, v in call_input.items() if k not in dropped}, **amended}
                tokens, cost = self.estimate(task, call_input)
                call = await client.request_approval(
                    self.project_id, task.task_id, self.agent_type, self.describe_action(task, extra), call_input,
                    context_summary=self.summarize_context(task, extra, modifications), estimated_tokens=tokens,
                    estimated_cost=cost, timeout_minutes=self.approval_timeout_minutes, model=self.model)
                waiting_on = call.approval_id
                await client.wait_for_approval(call.approval_id, on_budget_block=self.on_budget_block)
                started = await client.start_approval(call.approval_id)
                waiting_on, ran = None, True
                if started.amended_input_data is not None:
                    changed, removed = _amendment(call_input, started.amended_input_data)
                    amended = {**{k: v for k, v in amended.items() if k not in removed}, **changed}
                    dropped = (dropped - changed.keys()) | removed
                run_context = RunContext(input=started.input_to_run, approval=started,
                                         amended=started.amended_input_data is not None, round=round_no,
                                         modifications=list(modifications), extra=extra)
                try:
                    value = await self._run_watched(task, run_context)
                except EmergencyStopped:
                    raise
                except BaseException as exc:  # the run failed (or was interrupted): see run_failure
                    settle, error = run_failure(exc)
                    with contextlib.suppress(HitlError):
                        if settle:
                            await client.report_usage(call.approval_id, 0)
                        await client.set_task_status(task.task_id, "failed", error=error)
                    raise
                try:
                    result = self._as_result(value)
                except (TypeError, ValueError) as exc:
                    # The run ran (and may have spent) but its usage cannot be reported: no report of 0,
                    # its reservation stays counted until a report or the server's stale release.
                    with contextlib.suppress(HitlError):
                        await client.set_task_status(task.task_id, "failed",
                                                     error=f"the run's result is invalid: {exc}"[:2000])
                    raise
                try:
                    response = await client.submit_response(
                        self.project_id, task.task_id, self.agent_type, call.approval_id, result.output,
                        response_summary=result.summary or f"{self.agent_type} output for {task.title!r}",
                        next_steps=result.next_steps, tokens_used=result.tokens_used,
                        actual_cost=result.actual_cost, timeout_minutes=self.response_timeout_minutes)
                    spent_tokens += response.tokens_used
                    spent_cost += response.actual_cost or Decimal("0")  # priced by the server when not given
                except EmergencyStopped:  # a stopped project records the usage the response carried
                    raise
                except HitlError:  # the output was refused: what the run used is still reported
                    with contextlib.suppress(HitlError):
                        await client.report_usage(call.approval_id, result.tokens_used, result.actual_cost)
                    raise
                try:
                    approved = await client.wait_for_response(response.approval_id)
                except ModificationRequired as exc:
                    if round_no > self.max_modification_rounds:
                        raise
                    modifications.append(exc.modifications_required)
                    continue
                break
            else:
                raise AssertionError("unreachable")
        except BaseException as exc:
            if isinstance(exc, INTERRUPTS) and waiting_on is not None:
                await client._withdraw("agent", waiting_on)  # also when the task was given: nobody will run it
            ending = made_task_ending(exc, ran=ran) if created else None
            if ending is not None:
                with contextlib.suppress(HitlError):
                    await client.set_task_status(task.task_id, ending[0], error=ending[1])
            raise
        if self.complete_task:
            task = await client.set_task_status(task.task_id, "completed")
        return ExecutionResult(output=result.output, task=task, call_approval=started, response_approval=approved,
                               rounds=round_no, tokens_used=spent_tokens, actual_cost=spent_cost)

    def execute_task_sync(self, task: Union[Task, str, None] = None, context: Optional[Dict[str, Any]] = None,
                          **kwargs: Any) -> ExecutionResult:
        """``execute_task`` from synchronous code (runs its own event loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._execute_and_release(task, context, **kwargs))
        raise RuntimeError("execute_task_sync runs its own event loop, and one is already running here: "
                           "use `await agent.execute_task(...)` instead")

    async def _execute_and_release(self, task: Union[Task, str, None], context: Optional[Dict[str, Any]],
                                   **kwargs: Any) -> ExecutionResult:
        """``execute_task`` in the loop ``execute_task_sync`` runs, then the client's connections of
        that loop closed (the loop ends with it: they were left open, a ResourceWarning each)."""
        try:
            return await self.execute_task(task, context, **kwargs)
        finally:
            if self.client._http_loop is current_loop():
                await self.client.aclose()   # the client stays usable: the next call opens a new pool

    async def _run_watched(self, task: Task, context: RunContext) -> Any:
        """``run``, cancelled (or, in a thread, signalled) as soon as the project is stopped."""
        if inspect.iscoroutinefunction(self.run):
            runner: "asyncio.Future[Any]" = asyncio.ensure_future(cast(Awaitable[Any], self.run(task, context)))
        else:
            runner = _in_daemon_thread(self.run, task, context)
        watcher = asyncio.ensure_future(self.client.watch_emergency_stop(self.project_id))
        try:
            done, _ = await asyncio.wait({runner, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher in done and watcher.exception() is None:
                stop = watcher.result()
                context.stop_event.set()
                runner.cancel()
                await asyncio.wait({runner}, timeout=0.1)  # a moment to unwind (a cancel of this task still ends it)
                raise EmergencyStopped(stop.stop_reason or "the project was stopped during the run",
                                       emergency_stop_id=stop.id or None, project_id=self.project_id, status=None)
            return await runner
        finally:
            watcher.cancel()
            if not runner.done():   # execute_task itself was cancelled: so is its run
                context.stop_event.set()
                runner.cancel()
            # The watcher's end, whatever it was; gather, not a suppressed await: a cancellation of
            # this task arriving meanwhile must end it, not be swallowed here.
            await asyncio.gather(watcher, return_exceptions=True)

    @staticmethod
    def _as_result(value: Any) -> RunResult:
        if isinstance(value, RunResult):
            return value.checked()
        if isinstance(value, dict):
            return RunResult(output=value)
        return RunResult(output={"result": value})


def run_failure(exc: BaseException) -> Tuple[bool, str]:
    """After a run (``run``, a gated function) raised ``exc``: (report usage 0?, the task's error).
    An exception: the run failed, its reservation is settled at zero. A cancel, Ctrl-C or exit
    interrupted it: it may have spent part of its estimate, so no usage is reported and the
    reservation stays counted (as under a stop)."""
    if isinstance(exc, Exception):
        return True, f"{type(exc).__name__}: {exc}"[:2000]
    return False, (f"interrupted while running ({type(exc).__name__}): its usage is unknown, "
                   f"the call's reservation stays counted")


def _in_daemon_thread(fn: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
    """``fn(*args)`` in a daemon thread of its own, as a future of the running loop. Unlike
    ``asyncio.to_thread`` (the loop's executor, which ``asyncio.run`` joins when it ends), nothing
    waits for the thread: a stop or a cancel ends ``execute_task`` (and ``execute_task_sync``) at
    once while a sync ``run`` winds down on its own (it sees ``context.stop_event``), and a run
    that never looks at it does not keep the process alive."""
    loop = asyncio.get_running_loop()
    future: "asyncio.Future[Any]" = loop.create_future()
    ctx = contextvars.copy_context()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():  # cancelled meanwhile: nobody wants the result
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def target() -> None:
        try:
            outcome = (True, ctx.run(fn, *args))
        except StopIteration as exc:  # a future cannot hold StopIteration
            outcome = (False, RuntimeError(f"run raised StopIteration: {exc}"))
        except BaseException as exc:
            outcome = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: execute_task is over
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=target, name=f"hitl-run-{getattr(fn, '__qualname__', 'run')}", daemon=True).start()
    return future


# --- @require_approval -------------------------------------------------------------------------
@dataclass
class WithUsage(Generic[T]):
    """Return ``WithUsage(value, tokens_used, actual_cost)`` from a gated function to report what it
    used; the caller gets ``value`` (typed: a function returning ``WithUsage[str]`` gives a ``str``)."""
    value: T
    tokens_used: int = 0
    actual_cost: Union[Decimal, str, int, None] = None  # a Decimal, a decimal string ("0.0006") or an int

    @staticmethod
    def of(returned: Any) -> "WithUsage[Any]":
        """What a gated function returned, with its usage as the API takes it (TypeError or
        ValueError naming the field otherwise: the function ran, so no usage of 0 is reported)."""
        used = returned if isinstance(returned, WithUsage) else WithUsage(returned)
        return dataclasses.replace(used, tokens_used=token_count(used.tokens_used),
                                   actual_cost=money(used.actual_cost))


def _input_of(signature: inspect.Signature, args: tuple, kwargs: dict) -> Dict[str, Any]:
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    data = dict(bound.arguments)
    try:
        json.dumps(data, default=json_default)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"@require_approval: the arguments must be JSON-serialisable ({exc})") from exc
    return data


def _call_args(signature: inspect.Signature, data: Dict[str, Any]) -> "tuple[list, dict]":
    args: list = []
    kwargs: dict = {}
    for name, param in signature.parameters.items():
        if name not in data:
            continue
        value = data[name]
        if param.kind is param.VAR_POSITIONAL:
            args.extend(value or [])
        elif param.kind is param.VAR_KEYWORD:
            kwargs.update(value or {})
        elif param.kind is param.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[name] = value
    return args, kwargs


def _approved_call_args(signature: inspect.Signature, data: Any, name: str) -> "tuple[list, dict]":
    """The arguments to run with, from the input a person approved (amended, maybe): a TypeError
    that says so when it does not fit the function (a name it has no parameter for, a required
    one missing), never a value dropped in silence. (A parameter the amendment leaves out takes
    its default: the person's input is the whole input.)"""
    data = data if isinstance(data, dict) else {}
    # The input names each parameter (a **kwargs one by its own name, holding its keywords), so a
    # name that is none of them would be dropped: refused, even for a function that takes **kwargs.
    unknown = sorted(set(data) - set(signature.parameters))
    problem = None
    if unknown:
        problem = f"it has no parameter {', '.join(unknown)}"
    else:
        data = {key: (_as_decimal(value) if _wants_decimal(signature.parameters[key].annotation) else value)
                for key, value in data.items()}
        args, kwargs = _call_args(signature, data)
        try:
            signature.bind(*args, **kwargs)
            return args, kwargs
        except TypeError as exc:
            problem = str(exc)
    raise TypeError(f"@require_approval: the input a person approved for {name}{signature} does not fit it "
                    f"({problem}): the function was not run and its call was cancelled.")


def _wants_decimal(annotation: Any) -> bool:
    """``Decimal``, ``Optional[Decimal]`` or ``Decimal | None`` (as an object or as a string)."""
    return annotation in (Decimal, "Decimal", "Optional[Decimal]", "Decimal | None") or \
        Decimal in typing.get_args(annotation)


def _as_decimal(value: Any) -> Any:
    """A parameter annotated ``Decimal`` gets its value back as one (JSON carried it as a string)."""
    try:
        return Decimal(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else value
    except ArithmeticError:
        return value


_MISFIT = "the input a person approved does not fit the function's parameters"


def _usage_refusal(exc: BaseException) -> Optional[Tuple[str, Optional[str]]]:
    """How a task made by @require_approval ends when its usage cannot be reported after the run."""
    if isinstance(exc, (TypeError, ValueError)):  # the function returned a WithUsage that is not valid
        return "failed", f"the function's usage is not valid: {exc}"[:2000]
    return made_task_ending(exc, ran=True)  # None for anything not the server's (an interrupt, say)


class ApprovalGate(Protocol):
    """What ``require_approval(...)`` returns: a decorator whose function gives its caller what the
    function returned, or a ``WithUsage``'s ``value`` (not the ``WithUsage``)."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, WithUsage[T]]]) -> Callable[P, Coroutine[Any, Any, T]]:
        ...

    @overload
    def __call__(self, fn: Callable[P, WithUsage[T]]) -> Callable[P, T]:
        ...

    @overload
    def __call__(self, fn: F) -> F:
        ...


def require_approval(client: AnyClient, project: str, *, agent_type: str = "coder", action: Optional[str] = None,
                     model: Optional[str] = "gpt-4o", estimated_tokens: Optional[int] = None,
                     estimated_cost: Any = None, context_summary: Optional[str] = None,
                     task_id: Optional[str] = None, timeout_minutes: Optional[int] = None,
                     wait_timeout: Optional[float] = None) -> ApprovalGate:
    """Gate a function (sync or async) behind a person's approval.

    Each call becomes an agent call approval in ``project`` (its arguments, by parameter name,
    are the ``input_data``; ``action`` is the ``proposed_action``, default ``call <name>``) under a
    new task (or ``task_id``). Approved: the grant is started and the function runs with the
    approved arguments (amended by the reviewer, if amended); its usage is reported (tokens 0
    unless it returns :class:`WithUsage`) and the task's outcome recorded. Rejected:
    :class:`ApprovalRejected` and the function never runs (likewise ApprovalTimedOut,
    ApprovalCancelled, EmergencyStopped, BudgetOverrideRequired); a task it made itself (no
    ``task_id``) is then reported ``cancelled`` after a refusal, a time-out, a cancellation or a
    step the server refused (``made_task_ending``)."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        proposed = action or f"call {fn.__qualname__}"

        if inspect.iscoroutinefunction(fn):
            aclient = as_async(client)

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                data = _input_of(signature, args, kwargs)
                tid = task_id or (await aclient.create_task(project, agent_type, proposed[:200],
                                                            {"function": fn.__qualname__})).task_id
                asked: Optional[str] = None  # the call's id once asked for
                try:  # until the grant is started: a task it made is ended if this raises (made_task_ending)
                    call = await aclient.request_approval(
                        project, tid, agent_type, proposed, data, context_summary=context_summary,
                        estimated_tokens=estimated_tokens, estimated_cost=estimated_cost,
                        timeout_minutes=timeout_minutes, model=model)
                    asked = call.approval_id
                    approved = await aclient.wait_for_approval(call.approval_id, wait_timeout)
                    try:
                        _approved_call_args(signature, approved.approved_input, fn.__name__)
                    except TypeError:
                        with contextlib.suppress(HitlError):
                            await aclient.cancel_approval(call.approval_id, reason=_MISFIT)
                        raise
                    started = await aclient.start_approval(call.approval_id)
                except BaseException as exc:
                    if isinstance(exc, INTERRUPTS) and asked is not None:
                        await aclient._withdraw("agent", asked)
                    ending = made_task_ending(exc, ran=False) if task_id is None else None
                    if isinstance(exc, TypeError) and task_id is None:
                        ending = ("cancelled", None)
                    if ending is not None:
                        with contextlib.suppress(HitlError):
                            await aclient.set_task_status(tid, ending[0], error=ending[1])
                    raise
                call_args, call_kwargs = _approved_call_args(signature, started.input_to_run, fn.__name__)
                try:
                    value = await fn(*call_args, **call_kwargs)
                except BaseException as exc:
                    settle, error = run_failure(exc)
                    with contextlib.suppress(HitlError):
                        if settle:
                            await aclient.report_usage(call.approval_id, 0)
                        if task_id is None:
                            await aclient.set_task_status(tid, "failed", error=error)
                    raise
                try:
                    used = WithUsage.of(value)
                    await aclient.report_usage(call.approval_id, used.tokens_used, used.actual_cost)
                except BaseException as exc:  # the reservation stays counted (recorded when the answer is 423: a stop)
                    ending = _usage_refusal(exc) if task_id is None else None
                    if ending is not None:
                        with contextlib.suppress(HitlError):
                            await aclient.set_task_status(tid, ending[0], error=ending[1])
                    raise
                if task_id is None:
                    await aclient.set_task_status(tid, "completed")
                return used.value

            return cast(F, async_wrapper)

        sclient = as_sync(client)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            data = _input_of(signature, args, kwargs)
            tid = task_id or sclient.create_task(project, agent_type, proposed[:200],
                                                 {"function": fn.__qualname__}).task_id
            asked: Optional[str] = None  # the call's id once asked for
            try:  # until the grant is started: a task it made is ended if this raises (made_task_ending)
                call = sclient.request_approval(project, tid, agent_type, proposed, data,
                                                context_summary=context_summary, estimated_tokens=estimated_tokens,
                                                estimated_cost=estimated_cost, timeout_minutes=timeout_minutes,
                                                model=model)
                asked = call.approval_id
                approved = sclient.wait_for_approval(call.approval_id, wait_timeout)
                try:
                    _approved_call_args(signature, approved.approved_input, fn.__name__)
                except TypeError:
                    with contextlib.suppress(HitlError):
                        sclient.cancel_approval(call.approval_id, reason=_MISFIT)
                    raise
                started = sclient.start_approval(call.approval_id)
            except BaseException as exc:
                if isinstance(exc, INTERRUPTS) and asked is not None:
                    sclient._withdraw("agent", asked)
                ending = made_task_ending(exc, ran=False) if task_id is None else None
                if isinstance(exc, TypeError) and task_id is None:
                    ending = ("cancelled", None)
                if ending is not None:
                    with contextlib.suppress(HitlError):
                        sclient.set_task_status(tid, ending[0], error=ending[1])
                raise
            call_args, call_kwargs = _approved_call_args(signature, started.input_to_run, fn.__name__)
            try:
                value = fn(*call_args, **call_kwargs)
            except BaseException as exc:
                settle, error = run_failure(exc)
                with contextlib.suppress(HitlError):
                    if settle:
                        sclient.report_usage(call.approval_id, 0)
                    if task_id is None:
                        sclient.set_task_status(tid, "failed", error=error)
                raise
            try:
                used = WithUsage.of(value)
                sclient.report_usage(call.approval_id, used.tokens_used, used.actual_cost)
            except BaseException as exc:  # the reservation stays counted (recorded when the answer is 423: a stop)
                ending = _usage_refusal(exc) if task_id is None else None
                if ending is not None:
                    with contextlib.suppress(HitlError):
                        sclient.set_task_status(tid, ending[0], error=ending[1])
                raise
            if task_id is None:
                sclient.set_task_status(tid, "completed")
            return used.value

        return cast(F, wrapper)

    return cast(ApprovalGate, decorate)


__all__ = ["SafetyEnhancedBaseAgent", "RunContext", "ExecutionResult", "require_approval", "WithUsage",
           "as_async", "as_sync", "made_task_ending"]


def _amendment(requested: Dict[str, Any], approved: Dict[str, Any]) -> Tuple[Dict[str, Any], Set[str]]:
    """The top-level keys a reviewer changed (or added) in ``requested``, and those taken out; the
    round's own ``modifications_required`` is the agent's, never carried. ``requested`` is compared
    as it was sent (JSON: a tuple as a list, a Decimal as its string), so a value the reviewer left
    alone is not taken for a change and pinned over what the agent builds in the next round."""
    sent = json.loads(json.dumps(requested, default=json_default))
    changed = {k: v for k, v in approved.items() if k != "modifications_required" and sent.get(k, _ABSENT) != v}
    return changed, {k for k in requested if k not in approved and k != "modifications_required"}


_ABSENT = object()
