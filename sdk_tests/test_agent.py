"""SafetyEnhancedBaseAgent and the client's waits against a real daphne: a reviewer decides
through the API in another thread (``bot``)."""
import asyncio
import gc
import threading
import time
import warnings
from decimal import Decimal

import pytest

from hitl_sdk import (ApprovalRejected, ApprovalTimedOut, AsyncHitlClient, BudgetOverrideRequired, EmergencyStopped,
                      HitlClient,
                      ModificationRequired, RunResult, SafetyEnhancedBaseAgent)
from sdk_tests.conftest import FAST_RETRY, approve

pytestmark = pytest.mark.django_db(transaction=True)


class Coder(SafetyEnhancedBaseAgent):
    agent_type = "coder"
    model = "gpt-4o-mini"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.runs = []

    async def run(self, task, context):
        self.runs.append(context)
        return RunResult(output={"code": f"def login(): return {context.input['task']['input_data']!r}"},
                         tokens_used=1200, actual_cost=Decimal("0.0150"), summary="login form",
                         next_steps=["test it"])


def test_execute_task_sync_closes_the_connections_of_its_loop(world, bot):
    """Each execute_task_sync runs an event loop of its own; the connections the client opened in
    it were left open when it ended (a ResourceWarning per socket). The client stays usable."""
    reviewer_bot = bot(("agent", approve), ("response", approve), ("agent", approve), ("response", approve))
    coder = Coder(world.client("agent"), world.project_id)
    gc.collect()  # what earlier tests of this process left (the demo fleet's, run just before) is not counted here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for title in ("Implement login", "Implement logout"):
            assert coder.execute_task_sync(title=title).response_approval.status == "approved"
            gc.collect()
    reviewer_bot.check()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_lifecycle_request_approve_start_respond_approve(world, bot):
    agent_client = world.client("agent")
    reviewer_bot = bot(("agent", approve), ("response", approve))
    coder = Coder(agent_client, world.project_id)
    result = coder.execute_task_sync(title="Implement login", input_data={"files": ["login.py"]})
    reviewer_bot.check()
    assert result.rounds == 1 and result.output["code"].startswith("def login")
    assert result.call_approval.status == "approved" and result.call_approval.started_at is not None
    assert result.response_approval.status == "approved"
    assert result.task.status == "completed"
    assert len(coder.runs) == 1 and coder.runs[0].amended is False
    assert coder.runs[0].input["task"]["input_data"] == {"files": ["login.py"]}
    budget = agent_client.get_budget(world.project_id)
    assert isinstance(budget.cost_incurred_today, Decimal) and budget.cost_incurred_today == Decimal("0.0150")
    assert budget.tokens_used_today == 1200 and budget.cost_reserved == Decimal("0")


def test_rejection_raises_and_run_never_happens(world, bot):
    reviewer_bot = bot(("agent", lambda r, o: r.respond_approval(o.approval_id, "reject", reason="touches prod")))
    coder = Coder(world.client("agent"), world.project_id)
    with pytest.raises(ApprovalRejected) as caught:
        coder.execute_task_sync(title="Drop the users table")
    reviewer_bot.check()
    assert caught.value.reason == "touches prod" and caught.value.rejected_by == "reviewer"
    assert str(caught.value) == "A person refused this action: touches prod. Do not retry it as is."
    assert coder.runs == []
    refused = world.client("agent").get_approval(reviewer_bot.handled[0].approval_id)
    assert world.client("agent").get_task(refused.task_id).status == "cancelled"  # the task it made is ended


def test_a_task_passed_in_is_the_callers_and_stays_pending_after_a_refusal(world, bot):
    reviewer_bot = bot(("agent", lambda r, o: r.respond_approval(o.approval_id, "reject", reason="not now")))
    agent_client = world.client("agent")
    task = agent_client.create_task(world.project_id, "coder", "Retry me later")
    coder = Coder(agent_client, world.project_id)
    with pytest.raises(ApprovalRejected):
        coder.execute_task_sync(task)
    reviewer_bot.check()
    assert agent_client.get_task(task.task_id).status == "pending"  # the caller may ask again


def test_an_amended_call_runs_with_the_amended_input(world, bot):
    def amend(reviewer, obj):
        amended = {**obj.input_data, "task": {**obj.input_data["task"], "input_data": {"files": ["safe.py"]}}}
        reviewer.respond_approval(obj.approval_id, "approve", amended_input_data=amended)

    reviewer_bot = bot(("agent", amend), ("response", approve))
    coder = Coder(world.client("agent"), world.project_id)
    result = coder.execute_task_sync(title="Edit files", input_data={"files": ["/etc/passwd"]})
    reviewer_bot.check()
    assert coder.runs[0].amended is True
    assert coder.runs[0].input["task"]["input_data"] == {"files": ["safe.py"]}
    assert "safe.py" in result.output["code"]


def test_requires_modification_loops_with_a_new_call_approval(world, bot):
    seen_inputs = []

    def send_back(reviewer, obj):
        reviewer.respond_response(obj.approval_id, "requires_modification", modifications_required="add tests")

    def approve_call(reviewer, obj):
        seen_inputs.append(obj.input_data)
        reviewer.respond_approval(obj.approval_id, "approve")

    reviewer_bot = bot(("agent", approve_call), ("response", send_back), ("agent", approve_call), ("response", approve))
    coder = Coder(world.client("agent"), world.project_id)
    result = coder.execute_task_sync(title="Parser")
    reviewer_bot.check()
    assert result.rounds == 2 and len(coder.runs) == 2
    assert coder.runs[1].modifications == ["add tests"]
    assert "modifications_required" not in seen_inputs[0]
    assert seen_inputs[1]["modifications_required"] == ["add tests"]
    calls = world.client("agent").list_approvals(world.project_id)
    assert calls.count == 2 and {c.task_id for c in calls.results} == {result.task.task_id}
    assert (result.tokens_used, result.actual_cost) == (2400, Decimal("0.0300"))  # both rounds, as the budget


def test_a_redo_keeps_what_the_reviewer_amended(world, bot):
    """The redo after a sent-back output asked again for the input the reviewer had amended away
    (a deploy amended to staging came back as production): a reviewer who approved it as shown ran
    what the first one refused. Each round now carries the amendments of the rounds before it."""
    asked = []

    def amend(reviewer, obj):
        asked.append(obj.input_data)
        amended = {**obj.input_data, "task": {**obj.input_data["task"], "input_data": {"env": "staging"}}}
        reviewer.respond_approval(obj.approval_id, "approve", amended_input_data=amended)

    def approve_call(reviewer, obj):
        asked.append(obj.input_data)
        reviewer.respond_approval(obj.approval_id, "approve")

    def send_back(reviewer, obj):
        reviewer.respond_response(obj.approval_id, "requires_modification", modifications_required="add a changelog")

    reviewer_bot = bot(("agent", amend), ("response", send_back), ("agent", approve_call), ("response", approve))
    coder = Coder(world.client("agent"), world.project_id)
    result = coder.execute_task_sync(title="Deploy", input_data={"env": "production"})
    reviewer_bot.check()
    assert asked[0]["task"]["input_data"] == {"env": "production"}
    assert asked[1]["task"]["input_data"] == {"env": "staging"}              # asked as amended
    assert asked[1]["modifications_required"] == ["add a changelog"]         # with this round's request
    assert coder.runs[1].amended is False and coder.runs[1].input["task"]["input_data"] == {"env": "staging"}
    assert result.rounds == 2


def test_a_redo_carries_only_what_the_reviewer_changed_not_values_sent_as_json(world, bot):
    """A value the agent builds as a tuple (sent as a JSON list) and the reviewer left alone was
    taken for an amendment and pinned: the redo asked with the first round's ``checks`` instead of
    the ones its agent built for the second round."""
    asked = []

    class Checker(Coder):
        def build_input(self, task, extra, modifications):
            return {**super().build_input(task, extra, modifications), "checks": tuple(["lint"] + ["test"] * len(modifications))}

    def amend(reviewer, obj):
        asked.append(obj.input_data)
        reviewer.respond_approval(obj.approval_id, "approve", amended_input_data={**obj.input_data, "env": "staging"})

    def approve_call(reviewer, obj):
        asked.append(obj.input_data)
        reviewer.respond_approval(obj.approval_id, "approve")

    def send_back(reviewer, obj):
        reviewer.respond_response(obj.approval_id, "requires_modification", modifications_required="test it")

    reviewer_bot = bot(("agent", amend), ("response", send_back), ("agent", approve_call), ("response", approve))
    Checker(world.client("agent"), world.project_id).execute_task_sync(title="Deploy")
    reviewer_bot.check()
    assert asked[0]["checks"] == ["lint"]
    assert asked[1]["checks"] == ["lint", "test"] and asked[1]["env"] == "staging"   # the reviewer's change kept


def test_past_the_round_limit_modification_required_is_raised(world, bot):
    def send_back(reviewer, obj):
        reviewer.respond_response(obj.approval_id, "requires_modification", modifications_required={"fix": "all"})

    reviewer_bot = bot(("agent", approve), ("response", send_back))
    coder = Coder(world.client("agent"), world.project_id)
    coder.max_modification_rounds = 0
    with pytest.raises(ModificationRequired) as caught:
        coder.execute_task_sync(title="Parser")
    reviewer_bot.check()
    assert caught.value.modifications_required == {"fix": "all"}
    # the task it made is reported cancelled (its output was sent back: abandoned), not left open
    counts = world.client("agent").get_project(world.project_id).raw["task_counts"]
    assert counts.get("cancelled") == 1 and not counts.get("pending"), counts


def test_a_call_nobody_decides_times_out(world):
    agent = world.client("agent", recheck_seconds=0.5)
    task = agent.create_task(world.project_id, "coder", "slow review")
    call = agent.request_approval(world.project_id, task.task_id, "coder", "write code", {"x": 1}, model="gpt-4o-mini")
    threading.Timer(1.0, world.expire_approval, args=(call.approval_id,)).start()
    started = time.monotonic()
    with pytest.raises(ApprovalTimedOut):
        agent.wait_for_approval(call.approval_id, timeout=30)
    assert time.monotonic() - started < 15
    assert agent.get_approval(call.approval_id).status == "timed_out"


def test_an_emergency_stop_during_a_wait_ends_it_at_once(world):
    agent = world.client("agent")
    reviewer = world.client("reviewer")
    task = agent.create_task(world.project_id, "deployer", "deploy")
    call = agent.request_approval(world.project_id, task.task_id, "deployer", "deploy to prod", {}, model="gpt-4o")
    stops = []
    stopper = threading.Timer(1.5, lambda: stops.append(reviewer.emergency_stop(world.project_id, "runaway agent")))
    stopper.start()
    started = time.monotonic()
    with pytest.raises(EmergencyStopped) as caught:
        agent.wait_for_approval(call.approval_id, timeout=30)
    assert time.monotonic() - started < 8
    stopper.join(10)  # the wait may end before the stop's own answer reaches the reviewer
    assert caught.value.emergency_stop_id == stops[0].id
    with pytest.raises(EmergencyStopped) as gate:  # from now on every call is refused (423)
        agent.create_task(world.project_id, "coder", "more work")
    assert gate.value.status == 423 and gate.value.emergency_stop_id == stops[0].id
    assert agent.emergency_status(world.project_id).stopped is True


def test_an_emergency_stop_during_run_cancels_it(world, bot):
    running, cancelled = threading.Event(), threading.Event()

    class Slow(SafetyEnhancedBaseAgent):
        agent_type = "coder"

        async def run(self, task, context):
            running.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return {"never": True}

    reviewer = world.client("reviewer")

    def approve_then_stop(r, obj):
        r.respond_approval(obj.approval_id, "approve")
        assert running.wait(20)
        time.sleep(0.3)
        r.emergency_stop(world.project_id, "stop the run")

    reviewer_bot = bot(("agent", approve_then_stop))
    started = time.monotonic()
    with pytest.raises(EmergencyStopped) as caught:
        Slow(world.client("agent"), world.project_id).execute_task_sync(title="long job")
    reviewer_bot.check()
    assert cancelled.is_set() and time.monotonic() - started < 30
    assert caught.value.emergency_stop_id == reviewer.emergency_status(world.project_id).active_stop.id


def test_an_emergency_stop_ends_execute_task_sync_while_a_sync_run_is_still_in_its_thread(world, bot):
    """A sync ``run`` that does not look at the stop: ``execute_task_sync`` still raises
    EmergencyStopped without waiting for it (before, ``asyncio.run`` joined its thread first), and
    the run sees ``context.stop_event`` set when it looks."""
    running, release, finished = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    class Blocking(SafetyEnhancedBaseAgent):
        agent_type = "coder"

        def run(self, task, context):
            running.set()
            release.wait(20)  # busy with something that is not the stop
            seen["stopped"] = context.stop_event.is_set()
            try:
                context.check_stop()
            except EmergencyStopped:
                seen["check_stop"] = "raised"
            finished.set()
            return {"never": "used"}

    reviewer = world.client("reviewer")

    def approve_then_stop(r, obj):
        r.respond_approval(obj.approval_id, "approve")
        assert running.wait(20)
        r.emergency_stop(world.project_id, "stop the sync run")

    reviewer_bot = bot(("agent", approve_then_stop))
    try:
        with pytest.raises(EmergencyStopped) as caught:
            Blocking(world.client("agent"), world.project_id).execute_task_sync(title="sync job")
        assert not finished.is_set(), "execute_task_sync waited for the run's thread to end"
    finally:
        release.set()
    reviewer_bot.check()
    assert caught.value.emergency_stop_id == reviewer.emergency_status(world.project_id).active_stop.id
    assert finished.wait(10) and seen == {"stopped": True, "check_stop": "raised"}


def test_a_run_whose_result_has_a_float_cost_fails_its_task_and_keeps_its_reservation(world, bot):
    """The run ran (its model call may have cost something), but its usage cannot be reported:
    execute_task raises the TypeError, reports the task failed with why, and reports no usage
    of 0, so the call's reservation stays counted."""
    class FloatCost(SafetyEnhancedBaseAgent):
        agent_type = "coder"

        async def run(self, task, context):
            return RunResult(output={"done": True}, tokens_used=900, actual_cost=0.015)

    reviewer_bot = bot(("agent", approve))
    agent = world.client("agent")
    with pytest.raises(TypeError, match="actual_cost"):
        FloatCost(agent, world.project_id).execute_task_sync(title="float cost")
    reviewer_bot.check()
    calls = world.client("reviewer").list_approvals(world.project_id).results
    assert len(calls) == 1 and calls[0].budget_state == "reserved" and calls[0].started_at is not None
    task = agent.get_task(calls[0].task_id)
    assert task.status == "failed" and "result is invalid" in task.error and "actual_cost" in task.error


@pytest.mark.parametrize("how", ["an exception", "a cancel"])
def test_a_failed_run_settles_at_zero_but_an_interrupted_one_keeps_its_reservation(world, bot, how):
    """A run that raised reports zero usage; one interrupted (a cancel of execute_task, Ctrl-C)
    may have spent part of its estimate: it reported zero too, under-counting the budget. Now it
    reports no usage, so the reservation stays counted, and the task failed as interrupted."""
    running = None

    class Slow(SafetyEnhancedBaseAgent):
        agent_type = "coder"

        async def run(self, task, context):
            running.set()
            if how == "an exception":
                raise RuntimeError("the model answered 500")
            await asyncio.sleep(60)

    async def scenario():
        nonlocal running
        running = asyncio.Event()
        client = AsyncHitlClient(world.url, world.keys["agent"], retry=FAST_RETRY, recheck_seconds=2.0)
        runner = asyncio.ensure_future(Slow(client, world.project_id).execute_task(title=f"interrupted by {how}"))
        await asyncio.wait_for(running.wait(), 30)
        if how == "a cancel":
            runner.cancel()
        done, _ = await asyncio.wait({runner}, timeout=10)
        assert runner in done
        with pytest.raises(asyncio.CancelledError if how == "a cancel" else RuntimeError):
            runner.result()
        await client.aclose()

    reviewer_bot = bot(("agent", approve))
    asyncio.run(scenario())
    reviewer_bot.check()
    calls = world.client("reviewer").list_approvals(world.project_id).results
    assert len(calls) == 1 and calls[0].started_at is not None
    task = world.client("agent").get_task(calls[0].task_id)
    assert task.status == "failed"
    if how == "a cancel":
        assert calls[0].budget_state == "reserved" and "interrupted while running (CancelledError)" in task.error
    else:
        assert calls[0].budget_state == "settled" and "the model answered 500" in task.error


def test_a_call_over_the_budget_needs_an_override(world, bot):
    manager, agent, reviewer = world.client("manager"), world.client("agent"), world.client("reviewer")
    manager.update_budget(world.project_id, daily_cost_limit="1.0000")
    task = agent.create_task(world.project_id, "analyst", "big analysis")
    call = agent.request_approval(world.project_id, task.task_id, "analyst", "analyse", {"q": 1},
                                  estimated_cost=Decimal("1.2000"), model="gpt-4o-mini")
    assert call.budget_state == "blocked" and call.budget_override_id
    with pytest.raises(BudgetOverrideRequired) as caught:
        agent.wait_for_approval(call.approval_id, timeout=20)
    assert caught.value.override_id == call.budget_override_id and caught.value.approval_id == call.approval_id
    # A person approves the override, then the call: an agent that waits through the block gets it.
    threading.Timer(0.5, lambda: (reviewer.respond_budget_override(call.budget_override_id, "approve"),
                                  reviewer.respond_approval(call.approval_id, "approve"))).start()
    approved = agent.wait_for_approval(call.approval_id, timeout=20, on_budget_block="wait")
    assert approved.status == "approved" and approved.budget_state == "reserved"
    assert agent.start_approval(call.approval_id).input_to_run == {"q": 1}


def test_ask_human_gets_the_persons_answer(world, bot):
    agent, reviewer = world.client("agent"), world.client("reviewer")
    probe = agent.create_hitl(world.project_id, "question", "Which database should we use?",
                              options=["PostgreSQL", "SQLite"])
    threading.Timer(0.5, lambda: reviewer.respond_hitl(probe.id, "approve", response="PostgreSQL")).start()
    answered = agent.wait_for_hitl(probe.id, timeout=20)
    assert answered.status == "approved" and answered.answer == "PostgreSQL"

    def refuse():
        pending = reviewer.list_hitl(world.project_id, status="pending").results
        reviewer.respond_hitl(pending[0].id, "reject", response="not now")

    threading.Timer(1.0, refuse).start()
    with pytest.raises(ApprovalRejected):
        agent.checkpoint(world.project_id, "The plan is ready, go on?", wait_timeout=20)


def test_a_question_about_a_task_keeps_it_waiting_for_hitl_until_answered(world, bot):
    agent, reviewer = world.client("agent"), world.client("reviewer")
    task = agent.create_task(world.project_id, "coder", "Pick the database")
    asked = agent.create_hitl(world.project_id, "question", "PostgreSQL or SQLite?", task_id=task.task_id)
    waiting = agent.get_task(task.task_id)
    assert waiting.status == "waiting_for_hitl" and waiting.open_questions == 1
    reviewer.respond_hitl(asked.id, "approve", response="PostgreSQL")
    back = agent.get_task(task.task_id)
    assert back.status == "pending" and back.open_questions == 0


def test_a_question_whose_wait_timed_out_is_withdrawn_and_its_task_goes_on(world):
    from hitl_sdk import WaitTimeout

    agent = world.client("agent")
    task = agent.create_task(world.project_id, "coder", "Pick the queue")
    with pytest.raises(WaitTimeout) as waited:
        agent.ask_human(world.project_id, "Kafka or SQS?", task_id=task.task_id, wait_timeout=0.5)
    asked = waited.value.approval_id
    cancelled = agent.cancel_hitl(asked, reason="decided without it")
    assert cancelled.status == "cancelled"
    assert agent.get_task(task.task_id).status == "pending"
    agent.set_task_status(task.task_id, "completed")  # no question holds it any more


def test_an_id_from_a_model_is_one_escaped_path_segment(world):
    from hitl_sdk import NotFound

    agent = world.client("agent")
    for fetch in (agent.get_approval, agent.get_hitl, agent.get_task, agent.get_project):
        for made_up in ("../projects", ".", ".."):
            with pytest.raises(NotFound):
                fetch(made_up)  # never GET /api/v1/projects (or a create endpoint) read as the object


def test_the_event_stream_replays_and_says_why_it_refuses_a_last_event_id_past_every_event(world, bot):
    from hitl_sdk import BadRequest

    agent = world.client("agent")
    start = agent.list_events(world.project_id).last_event_id
    asked = agent.create_hitl(world.project_id, "question", "Which queue should we use?")
    stream = agent.events(world.project_id, last_event_id=start)
    try:
        first = next(stream)
    finally:
        stream.close()
    assert first.event_type == "hitl_requested" and first.data["hitl_request_id"] == asked.id
    with pytest.raises(BadRequest) as refused:  # not retried for ever: the server said why
        next(agent.events(world.project_id, last_event_id=first.id + 10**9))
    assert refused.value.status == 400 and "last_event_id" in refused.value.fields
    assert f"No event has had the id {first.id + 10**9} yet" in str(refused.value)


def test_leaving_an_event_replay_early_closes_at_once(world):
    """A caller that broke out of a replay after one event waited 2 s for the stream to close (the
    close timeout): past 16 unread messages the socket's reader pauses and never reads the server's
    close frame. Sync and async alike."""
    agent = world.client("agent")
    start = agent.list_events(world.project_id).last_event_id
    for i in range(30):
        agent.create_hitl(world.project_id, "question", f"Question {i}: " + "which queue? " * 100)

    stream = agent.events(world.project_id, last_event_id=start)
    assert next(stream).event_type == "hitl_requested"
    began = time.monotonic()
    stream.close()
    assert time.monotonic() - began < 1.0

    async def run():
        async with AsyncHitlClient(world.url, world.keys["agent"]) as client:
            stream = client.events(world.project_id, last_event_id=start)
            assert (await stream.__anext__()).event_type == "hitl_requested"
            began = time.monotonic()
            await stream.aclose()
            return time.monotonic() - began

    assert asyncio.run(run()) < 1.0


def test_a_refused_event_stream_says_why_as_the_api_does(world):
    """A refused handshake is a bare 403: a bad key raised HitlError "ws_refused", not saying the
    key is the problem. The same access asked over HTTP now gives the API's own error."""
    from hitl_sdk import HitlClient, NotFound, Unauthenticated

    with HitlClient(world.url, "hitl_0000_notakey", retry=FAST_RETRY) as stranger:
        with pytest.raises(Unauthenticated):
            next(stranger.events(world.project_id))
        with pytest.raises(Unauthenticated):
            next(stranger.events())
    with pytest.raises(NotFound):
        next(world.client("agent").events("00000000-0000-4000-8000-000000000000"))


def test_a_step_the_server_refuses_ends_the_task_execute_task_made(world, bot):
    """Not a person's refusal but the server's (a 400 here): the task the agent made for the
    work is not left open. Cancelled when the call never ran, failed when it had run."""
    from hitl_sdk import BadRequest

    agent_client = world.client("agent")

    class Refused(Coder):
        """Its estimate is refused (negative tokens): the call is never created."""

        def build_input(self, task, extra, modifications):
            self.task_id = task.task_id
            return super().build_input(task, extra, modifications)

        def estimate(self, task, call_input):
            return -5, None

    refused = Refused(agent_client, world.project_id)
    with pytest.raises(BadRequest):
        refused.execute_task_sync(title="Estimate gone wrong")
    assert agent_client.get_task(refused.task_id).status == "cancelled"

    class Unsendable(Refused):
        """Its call runs, then its output is refused (not a JSON object)."""

        def estimate(self, task, call_input):
            return None, None

        async def run(self, task, context):
            return RunResult(output=["not", "an", "object"], tokens_used=10, summary="a list")

    reviewer_bot = bot(("agent", approve))
    unsendable = Unsendable(agent_client, world.project_id)
    with pytest.raises(BadRequest):
        unsendable.execute_task_sync(title="Output gone wrong")
    reviewer_bot.check()
    ended = agent_client.get_task(unsendable.task_id)
    assert ended.status == "failed" and "the server refused a step" in ended.error


def test_an_approved_task_whose_completion_is_refused_is_not_reported_failed(world, bot):
    """The run leaves a note for a person about its own task (a question it does not wait for):
    the output is approved, the completion report is 409 while the question is open, and that is
    raised as it is: the approved work is not turned into a failure."""
    from hitl_sdk import Conflict

    agent_client = world.client("agent")

    class Noting(Coder):
        async def run(self, task, context):
            await self.client.create_hitl(world.project_id, "question", "FYI: I used tabs, fine?",
                                          task_id=task.task_id)
            self.task_id = task.task_id
            return await super().run(task, context)

    reviewer_bot = bot(("agent", approve), ("response", approve))
    noting = Noting(agent_client, world.project_id)
    with pytest.raises(Conflict):
        noting.execute_task_sync(title="Indent the code")
    reviewer_bot.check()
    task = agent_client.get_task(noting.task_id)
    assert task.status == "waiting_for_hitl" and task.open_questions == 1  # not failed


def test_a_refused_output_still_reports_what_the_run_used(world, bot):
    """The server refuses the output (not a JSON object): the run's tokens are reported as the
    call's usage all the same (its reservation is settled, not left to the stale sweep)."""
    from hitl_sdk import BadRequest

    agent_client = world.client("agent")

    class Unsendable(Coder):
        async def run(self, task, context):
            return RunResult(output=["not", "an", "object"], tokens_used=321, summary="a list")

    reviewer_bot = bot(("agent", approve))
    with pytest.raises(BadRequest):
        Unsendable(agent_client, world.project_id).execute_task_sync(title="Output gone wrong")
    reviewer_bot.check()
    call = agent_client.get_approval(reviewer_bot.handled[0].approval_id)
    assert call.budget_state == "settled"
    assert agent_client.get_budget(world.project_id).tokens_used_today == 321


def test_the_decorator_ends_the_task_it_made_when_the_server_refuses_the_call(world):
    from hitl_sdk import BadRequest, require_approval

    agent_client = world.client("agent")

    @require_approval(agent_client, world.project_id, agent_type="coder", action="tool:noop", estimated_tokens=-1)
    def noop():
        raise AssertionError("never runs")

    with pytest.raises(BadRequest):
        noop()
    counts = agent_client.get_project(world.project_id).raw["task_counts"]  # the only task made: ended
    assert {k: v for k, v in counts.items() if v} == {"cancelled": 1}, counts


@pytest.fixture
def stale_resume_point(monkeypatch):
    """The first websocket each client opens resumes from an id no event has had (as after a
    database restore under a running agent): the server answers 4400. Returns the URLs opened."""
    from hitl_sdk import _common

    real, opened = _common.ws_url, []

    def ws_url(base_url, project_id, last_event_id):
        opened.append(last_event_id)
        return real(base_url, project_id, 10**12 if len(opened) == 1 else last_event_id)

    monkeypatch.setattr(_common, "ws_url", ws_url)
    return opened


def test_a_wait_whose_resume_point_is_refused_resubscribes_and_gets_the_answer(world, monkeypatch):
    """The wait's socket drops after it saw an event, and the server it reconnects to knows no
    such event any more (a database restored under a running agent): the server refuses the
    resume point with 4400 and the wait subscribes again without it, instead of reconnecting
    with the same refused id until its deadline."""
    from hitl_sdk import _common

    real, opened = _common.ws_url, []

    def ws_url(base_url, project_id, last_event_id):  # every resume point is one the server never had
        opened.append(last_event_id)
        return real(base_url, project_id, None if last_event_id is None else 10**12)

    monkeypatch.setattr(_common, "ws_url", ws_url)
    agent, other, reviewer = world.client("agent"), world.client("agent"), world.client("reviewer")
    asked = agent.create_hitl(world.project_id, "question", "Ship it?")

    def drop_then_answer():
        _until(lambda: opened)
        other.create_hitl(world.project_id, "question", "Another one?")  # an event the wait sees
        time.sleep(1.0)
        world.restart()  # the socket drops; the wait reconnects with the id of that event
        _until(lambda: opened[-1] is None and len(opened) >= 3)
        reviewer.respond_hitl(asked.id, "approve", response="yes")

    helper = threading.Thread(target=drop_then_answer)
    helper.start()
    answered = agent.wait_for_hitl(asked.id, timeout=30)
    helper.join()
    assert answered.status == "approved" and answered.answer == "yes"
    resumed = [point for point in opened[1:] if point is not None]
    assert resumed and opened[-1] is None, opened  # it resumed, was refused, then subscribed afresh
    assert len(resumed) < 10, opened  # not a reconnect loop on the refused id


def _until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_stop_watcher_survives_a_refused_resume_point(world, stale_resume_point):
    agent, manager = world.client("agent"), world.client("manager")
    threading.Timer(1.0, lambda: manager.emergency_stop(world.project_id, "drill")).start()
    stop = agent.watch_emergency_stop(world.project_id)
    assert stop.project_id == world.project_id and len(stale_resume_point) >= 2


def test_a_clients_own_cancel_is_not_queued_behind_its_waits(world):
    """One async client, 110 long polls on a call (more than the 100 connections an httpx pool
    holds): its cancel of that call queued behind them until they timed out, and the waits ended on
    a call still pending (a fleet's own cancels, usage reports and stops queued 20 s to 2 min behind
    its waits). Waits have a pool of their own."""
    agent = world.client("agent")
    task = agent.create_task(world.project_id, "coder", "pooled")
    call = agent.request_approval(world.project_id, task.task_id, "coder", "hold it", {})

    async def scenario():
        async with AsyncHitlClient(world.url, world.keys["agent"], retry=FAST_RETRY, use_websocket=False) as client:
            waits = [asyncio.ensure_future(client.poll_approval(call.approval_id, timeout=15)) for _ in range(110)]
            await asyncio.sleep(1)  # the polls are under way, each on a connection of its own
            cancelled = await client.cancel_approval(call.approval_id, reason="no longer needed")
            return cancelled, await asyncio.gather(*waits)

    cancelled, ended = asyncio.run(scenario())
    assert cancelled.status == "cancelled"
    assert {wait.status for wait in ended} == {"cancelled"}  # woken by the cancel, not timed out on a pending call


def test_the_waits_of_one_client_on_a_project_share_one_websocket(world, monkeypatch):
    """Found by a developer with 300 waits on one client: each opened a websocket of its own, so every
    event of the project was sent and parsed 300 times and an emergency stop took 6 to 15 s to reach
    them all. The waits on a project share one; each still gets its own decision, and a stop ends
    them all."""
    from hitl_sdk import _common

    opened = []
    connect = _common._AsyncWS.connect

    async def counted(url, headers, open_timeout):
        opened.append(url)
        return await connect(url, headers, open_timeout)

    monkeypatch.setattr(_common._AsyncWS, "connect", staticmethod(counted))
    agent, reviewer = world.client("agent"), world.client("reviewer")
    calls = [agent.request_approval(world.project_id, agent.create_task(world.project_id, "coder", f"task {i}").task_id,
                                    "coder", f"call {i}", {"i": i}) for i in range(30)]

    async def scenario():
        async with AsyncHitlClient(world.url, world.keys["agent"], retry=FAST_RETRY) as client:
            waits = [asyncio.ensure_future(client.wait_for_approval(call.approval_id, timeout=60)) for call in calls]
            await asyncio.sleep(1.5)  # every wait subscribed
            for call in calls[:10]:
                await asyncio.to_thread(reviewer.respond_approval, call.approval_id, "approve")
            approved = await asyncio.gather(*waits[:10])
            started = time.monotonic()
            await asyncio.to_thread(reviewer.emergency_stop, world.project_id, "drill")
            stopped = await asyncio.gather(*waits[10:], return_exceptions=True)
            return approved, stopped, time.monotonic() - started, len(client._streams._open)

    approved, stopped, took, still_open = asyncio.run(scenario())
    assert [a.approval_id for a in approved] == [c.approval_id for c in calls[:10]]
    assert {a.status for a in approved} == {"approved"}
    assert all(isinstance(e, EmergencyStopped) for e in stopped), stopped
    assert took < 10
    assert len(opened) == 1, opened  # one socket for the 30 waits
    assert still_open == 0  # closed once the last wait left


@pytest.mark.parametrize("use_websocket", [True, False])
def test_closing_a_client_ends_the_waits_still_open_on_it(world, use_websocket):
    """Found by a developer: ``aclose()`` (leaving ``async with``) while waits were open did not end
    them: they went on, on connections the client opened again and nobody closed, and returned
    decisions (or timed out) a minute later."""
    from hitl_sdk import HitlError

    agent = world.client("agent")
    task = agent.create_task(world.project_id, "coder", "closed under its waits")
    call = agent.request_approval(world.project_id, task.task_id, "coder", "wait", {})

    async def scenario():
        client = AsyncHitlClient(world.url, world.keys["agent"], retry=FAST_RETRY, use_websocket=use_websocket)
        waits = [asyncio.ensure_future(client.wait_for_approval(call.approval_id, timeout=60)) for _ in range(5)]
        await asyncio.sleep(1.5)
        started = time.monotonic()
        await client.aclose()
        ended = await asyncio.gather(*waits, return_exceptions=True)
        took = time.monotonic() - started
        again = await client.get_approval(call.approval_id)  # the client is still usable
        await client.aclose()
        return ended, took, again

    ended, took, again = asyncio.run(scenario())
    assert all(isinstance(e, HitlError) and e.code == "client_closed" for e in ended), ended
    assert took < 5
    assert again.status == "pending"


def _pending_calls(world, agent):
    return agent.list_approvals(world.project_id, status="pending").results


def test_an_agent_cancelled_while_its_call_waits_withdraws_the_call(world):
    """Cancelled (a fleet shutting down, ``asyncio.wait_for`` around it) or interrupted while a
    person was asked: the call stayed pending with its reservation until its time-out, a reviewer
    could approve work nobody would run, and the task it made stayed open."""
    agent = world.client("agent")

    async def scenario():
        async with AsyncHitlClient(world.url, world.keys["agent"], retry=FAST_RETRY, recheck_seconds=2.0) as client:
            running = asyncio.ensure_future(Coder(client, world.project_id).execute_task(title="interrupted"))
            for _ in range(200):  # until its call is asked for
                if _pending_calls(world, agent):
                    break
                await asyncio.sleep(0.05)
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running

    asyncio.run(scenario())
    [call] = agent.list_approvals(world.project_id).results
    # withdrawn ("interrupted"), or with its task if the cancel came before the agent read the call's id
    assert call.status == "cancelled", call.raw
    assert agent.get_task(call.task_id).status == "cancelled"


class _AnswerHeldBack:
    """Sends each request to the server, but holds back the answer of the first create of each
    path (``/agent-approvals``, ``/hitl``) as a slow network would: the server has made the object,
    and the agent is interrupted before it learns the id (``on_held`` says when; the sync twin
    raises it there, as a Ctrl-C would)."""

    def __init__(self, on_held=None):
        import httpx

        self.sync, self.async_ = httpx.HTTPTransport(), httpx.AsyncHTTPTransport()
        self.held, self.on_held, self.arrived = set(), on_held, None
        self.made = {}  # what the server answered to each held create, by path

    def _hold(self, request) -> bool:
        path = request.url.path.rstrip("/")
        first = request.method == "POST" and path.endswith(("/agent-approvals", "/hitl", "/tasks")) \
            and path not in self.held
        self.held.add(path)
        return first

    async def handle_async_request(self, request):
        response = await self.async_.handle_async_request(request)
        if self._hold(request):
            await response.aread()
            self.made[request.url.path.rstrip("/").rsplit("/", 1)[-1]] = response.json()
            self.arrived.set()
            await asyncio.sleep(3600)  # the answer never comes: the caller is cancelled meanwhile
        return response

    def handle_request(self, request):
        response = self.sync.handle_request(request)
        if self._hold(request):
            response.read()
            self.on_held()
        return response

    async def aclose(self):
        await self.async_.aclose()

    def close(self):
        self.sync.close()


def test_an_agent_interrupted_before_its_ask_was_answered_withdraws_what_the_server_made(world):
    """Found by a developer running 60 agents cancelled 0.6 s after they asked: withdrawal began
    only once the create's answer had come back, so an agent cancelled while it was on its way left
    the call (or question) pending, its reservation held and its task waiting, though the server
    had made it; a reviewer could approve work nobody would run."""
    agent = world.client("agent")
    task = agent.create_task(world.project_id, "coder", "given to the agent")

    transport = _AnswerHeldBack()

    async def scenario():
        transport.arrived = asyncio.Event()
        async with AsyncHitlClient(world.url, world.keys["agent"], retry=FAST_RETRY, transport=transport) as client:
            for asking in (Coder(client, world.project_id).execute_task(task.task_id),
                           client.checkpoint(world.project_id, "Plan ready: go on?", task_id=task.task_id),
                           client.create_task(world.project_id, "coder", "never learnt")):
                running = asyncio.ensure_future(asking)
                await asyncio.wait_for(transport.arrived.wait(), 30)  # made on the server; the agent waits on
                transport.arrived.clear()
                running.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await running

    asyncio.run(scenario())
    [call] = agent.list_approvals(world.project_id).results
    assert call.status == "cancelled", call.raw
    [checkpoint] = agent.list_hitl(world.project_id).results
    assert checkpoint.status == "cancelled", checkpoint.raw
    assert agent.get_task(task.task_id).status not in ("waiting_for_hitl",)  # nothing of it is asked any more
    assert agent.get_task(transport.made["tasks"]["task_id"]).status == "cancelled"  # made, never learnt: ended

    def ctrl_c():
        raise KeyboardInterrupt

    sync = HitlClient(world.url, world.keys["agent"], retry=FAST_RETRY, transport=_AnswerHeldBack(on_held=ctrl_c))
    world.clients.append(sync)
    with pytest.raises(KeyboardInterrupt):
        sync.ask_human(world.project_id, "Which region?", ["eu", "us"])
    assert {q.status for q in agent.list_hitl(world.project_id).results} == {"cancelled"}


def test_ctrl_c_in_a_gated_functions_wait_withdraws_its_call_and_a_question_its_question(world, monkeypatch):
    from hitl_sdk import require_approval

    agent = world.client("agent")
    task = agent.create_task(world.project_id, "coder", "given")

    def interrupted(*args, **kwargs):  # Ctrl-C while waiting
        raise KeyboardInterrupt

    monkeypatch.setattr(agent, "wait_for_approval", interrupted)
    monkeypatch.setattr(agent, "wait_for_hitl", interrupted)

    @require_approval(agent, world.project_id, agent_type="coder", action="tool:deploy")
    def deploy(service: str) -> str:
        return service

    @require_approval(agent, world.project_id, agent_type="coder", action="tool:deploy", task_id=task.task_id)
    def deploy_in_task(service: str) -> str:
        return service

    for gated in (deploy, deploy_in_task):
        with pytest.raises(KeyboardInterrupt):
            gated("api")
    calls = agent.list_approvals(world.project_id).results
    assert len(calls) == 2 and {c.status for c in calls} == {"cancelled"}, [c.raw for c in calls]
    made = [c for c in calls if c.task_id != task.task_id][0]
    assert agent.get_task(made.task_id).status == "cancelled"  # the task it made; the given one is the caller's
    with pytest.raises(KeyboardInterrupt):
        agent.ask_human(world.project_id, "Ship it?", ["yes", "no"])
    [question] = agent.list_hitl(world.project_id).results
    assert question.status == "cancelled"


def test_a_recovery_walked_through_the_sdk_step_by_step(world):
    """The session's next step (``current_step``, which the SDK's model dropped: only ``.raw`` had
    it) and the halted tasks' option (``respond_recovery_step`` could not send one: cancel was out
    of an SDK's reach)."""
    agent, reviewer, manager = world.client("agent"), world.client("reviewer"), world.client("manager")
    halted = agent.create_task(world.project_id, "coder", "halted by the stop")
    reviewer.emergency_stop(world.project_id, "drill")
    session = manager.start_recovery(world.project_id)
    walked = []
    while session.current_step is not None:
        step = session.current_step
        walked.append(step["action"])
        option = "cancel" if step["action"] == "settle_halted_tasks" else None
        session = reviewer.respond_recovery_step(session.id, step["step_id"], "approve", option=option)
    assert walked[-2:] == ["settle_halted_tasks", "lift_stop"] and session.status == "completed"
    assert reviewer.get_recovery(session.id).current_step is None
    assert agent.get_task(halted.task_id).status == "cancelled"  # the option was sent: not resumed
    assert not agent.emergency_status(world.project_id).stopped


@pytest.mark.parametrize("use_websocket", [True, False])
def test_closing_a_sync_client_ends_the_waits_open_on_it_in_other_threads(world, use_websocket):
    """Found by a new user: ``close()`` of the sync client from another thread left its waits
    reading for 28 s (long poll: the server's answer) and 48 s (websocket: the next re-check); the
    README promises a second or two. Closing a socket does not wake a thread reading it: the
    client now closes its waits' websockets and shuts down its long polls' connections."""
    from hitl_sdk import HitlClient, HitlError

    agent = world.client("agent")
    task = agent.create_task(world.project_id, "coder", "sync client closed under its waits")
    call = agent.request_approval(world.project_id, task.task_id, "coder", "wait", {})
    client = HitlClient(world.url, world.keys["agent"], retry=FAST_RETRY, use_websocket=use_websocket)
    ended: list = []

    def wait():
        try:
            ended.append(client.wait_for_approval(call.approval_id, timeout=60))
        except Exception as error:  # noqa: BLE001
            ended.append(error)

    threads = [threading.Thread(target=wait) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)  # each is waiting (reading its socket or its long poll)
    started = time.monotonic()
    client.close()
    for thread in threads:
        thread.join(30)
    took = time.monotonic() - started
    assert len(ended) == 3 and all(isinstance(e, HitlError) and e.code == "client_closed" for e in ended), ended
    assert took < 5, took
    assert client.get_approval(call.approval_id).status == "pending"  # still usable
    client.close()
