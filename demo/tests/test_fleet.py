"""The demo fleet against a real daphne (sdk_tests' ``world``): a reviewer bot in a thread
approves everything it is asked through the SDK, the way a person would in /review/."""
import asyncio
import io
import re
import threading
import time
from decimal import Decimal

import pytest
from django.core.management import call_command

from demo.fleet import FLEET_MARK, Fleet
from demo.llm import AGENT_ORDER, COSTLY_MODEL, MODELS, DemoLLM
from demo.tests.conftest import FAST_RETRY
from hitl_sdk import Conflict, HitlClient, HitlError, NotFound

pytestmark = pytest.mark.django_db(transaction=True)


class ReviewerBot(threading.Thread):
    """Approves every pending checkpoint, budget override, call and output of the project."""

    def __init__(self, reviewer: HitlClient, project_id: str, approve_calls: bool = True, on_call=None,
                 on_response=None):
        super().__init__(daemon=True)
        self.reviewer, self.project_id, self.approve_calls = reviewer, project_id, approve_calls
        self.on_call = on_call or (lambda r, c: r.respond_approval(c.approval_id, "approve"))
        self.on_response = on_response or (lambda r, x: r.respond_response(x.approval_id, "approve"))
        self.done = threading.Event()
        self.decided = {"checkpoint": 0, "override": 0, "call": 0, "response": 0}
        self.error = None

    def run(self):
        r, pid = self.reviewer, self.project_id
        try:
            while not self.done.is_set():
                for item in r.list_hitl(pid, status="pending").results:
                    self._decide("checkpoint", lambda: r.respond_hitl(item.id, "approve", response="go on"))
                for item in r.list_budget_overrides(pid, status="pending").results:
                    self._decide("override", lambda: r.respond_budget_override(item.id, "approve", "demo test"))
                if self.approve_calls:
                    for item in r.list_approvals(pid, status="pending").results:
                        if not item.is_blocked_by_budget:
                            self._decide("call", lambda: self.on_call(r, item))
                for item in r.list_responses(pid, status="pending").results:
                    self._decide("response", lambda: self.on_response(r, item))
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    def _decide(self, kind, respond):
        try:
            respond()
        except Conflict:  # decided meanwhile (or, for a call, blocked again by the budget)
            return
        self.decided[kind] += 1

    def finish(self):
        self.done.set()
        self.join(10)
        if self.error:
            raise self.error


class FleetThread(threading.Thread):
    """``Fleet.run()`` on its own event loop; ``stop()`` cancels it as Ctrl-C would."""

    def __init__(self, fleet: Fleet):
        super().__init__(daemon=True)
        self.fleet, self.loop, self.task, self.error = fleet, None, None, None
        self.started_loop = threading.Event()

    def run(self):
        self.loop = asyncio.new_event_loop()
        try:
            self.task = self.loop.create_task(self.fleet.run())
            self.started_loop.set()
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
        finally:
            self.loop.close()

    def stop(self):
        self.started_loop.wait(5)
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.join(10)
        if self.is_alive():  # say where it hangs (read from another thread: a diagnosis, not a result)
            where = io.StringIO()
            self.task.print_stack(file=where)
            raise AssertionError(f"the fleet did not stop within 10 s of its cancellation:\n{where.getvalue()}")
        if self.error:
            raise self.error


def wait_for(predicate, timeout=20.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_seed_plays_risky_outputs_but_no_critical_in_round_one():
    llm = DemoLLM(0)
    risks = llm.risks(1)
    assert risks["analyst"] == "costly"  # the round below goes through a budget override
    assert {risks["coder"], risks["tester"]} == {"leaked_key", "curl_pipe_sh"}
    assert all(DemoLLM(seed).risks(1)["deployer"] != "db_password" for seed in range(200))
    critical_rounds = [n for n in range(1, 201) if llm.risks(n)["deployer"] == "db_password"]
    assert 5 <= len(critical_rounds) <= 40  # occasional, not every round


def one_round(world, bot) -> str:
    """``run_demo_fleet --rounds 1`` (seed 0, no pauses) while ``bot`` decides; its log."""
    bot.start()
    out = io.StringIO()
    try:
        call_command("run_demo_fleet", url=world.url, project="demo", agent_key=world.keys["agent"], rounds=1,
                     seed=0, pace=0, stdout=out)
    finally:
        bot.finish()
    return out.getvalue()


def test_the_fleet_runs_a_round_to_completion_unattended(world):
    """``run_demo_fleet --rounds 1``: every agent type asks, runs and has its output approved;
    the checkpoint and the analyst's costly call (a budget override) are approved by the bot."""
    bot = ReviewerBot(world.client("reviewer"), world.project_id)
    started = time.monotonic()
    log = one_round(world, bot)
    print(log)
    assert time.monotonic() - started < 40
    assert "round 1 done: all six agents ran" in log, log
    for agent_type in AGENT_ORDER:
        assert re.search(rf"r1\s+{agent_type}\s+asks: ", log), agent_type
        assert re.search(rf"r1\s+{agent_type}\s+output approved by reviewer", log), agent_type
    assert "checkpoint: 'The plan is ready, go on?'" in log and "checkpoint approved by reviewer" in log
    assert re.search(r"r1\s+analyst\s+blocked by the budget", log)
    assert re.search(r"r1\s+coder\s+output for review: .*risk high \(secret\.aws", log)
    assert re.search(r"r1\s+tester\s+output for review: .*risk high \(code\.pipe_to_shell", log)
    assert bot.decided == {"checkpoint": 1, "override": 1, "call": 6, "response": 6}

    reader = world.client("reviewer")
    calls = reader.list_approvals(world.project_id).results
    assert sorted(c.agent_type for c in calls) == sorted(AGENT_ORDER)
    assert all(c.status == "approved" and c.started_at and c.input_data["fleet"] == FLEET_MARK for c in calls)
    # each call names the model it runs on: the analyst's batch job its costly one (all said gpt-4o)
    assert {c.agent_type: c.model for c in calls} == {**MODELS, "analyst": COSTLY_MODEL}
    budget = reader.get_budget(world.project_id)
    assert budget.cost_incurred_today > Decimal("1") and budget.tokens_used_today > 5000  # the costly call ran
    assert budget.cost_reserved == Decimal("0")


@pytest.mark.parametrize("when", ["waiting", "running"])
def test_a_stop_halts_the_fleet_within_a_second_and_it_resumes_after_recovery(world, when):
    """A stop through the API while the orchestrator's call waits for a person ("waiting") or
    while its run "thinks" ("running"): the fleet halts within a second of the stop (measured
    from before the stop request, so from before its commit), makes no new request while the
    project is stopped, and starts a new round once a person has recovered the project."""
    lines = []
    fleet = Fleet(world.url, world.project_id, world.keys["agent"], seed=0, pace=0,
                  work_seconds=30 if when == "running" else 0, critical_rate=0, recovery_poll=0.2,
                  log=lines.append, retry=FAST_RETRY, recheck_seconds=2.0)
    manager = world.client("manager")
    bot = ReviewerBot(world.client("reviewer"), world.project_id) if when == "running" else None
    runner = FleetThread(fleet)
    runner.start()
    try:
        if bot:
            bot.start()
            wait_for(lambda: any("approved by reviewer → running" in line for line in lines), what="the run")
            bot.finish()  # nobody decides anything from now on
            time.sleep(0.3)
        else:
            wait_for(lambda: manager.list_approvals(world.project_id, status="pending").results, what="a call")
        pending = manager.list_approvals(world.project_id, status="pending").results
        before = time.time()
        stop = manager.emergency_stop(world.project_id, "the demo test pressed stop")
        answered = time.time()
        assert fleet.halted.wait(5), "\n".join(lines)
        halted_after = fleet.halted_at - before
        print(f"\n{when}: halted {halted_after:.3f}s after the stop was requested "
              f"({fleet.halted_at - answered:.3f}s after its answer)")
        assert halted_after < 1.0, "\n".join(lines)
        wait_for(lambda: not fleet.runs, timeout=1, what="the run to be cancelled")  # nothing left running
        assert any("■ EMERGENCY STOP" in line and "all six agents halted" in line for line in lines)
        for call in pending:
            assert manager.get_approval(call.approval_id).status == "cancelled"
        if when == "running":
            assert manager.list_responses(world.project_id).count == 0  # the cancelled run sent nothing

        calls_while_stopped = manager.list_approvals(world.project_id).count
        wait_for(lambda: any("waiting for a person to recover it" in line for line in lines), what="the wait")
        time.sleep(0.5)
        assert manager.list_approvals(world.project_id).count == calls_while_stopped

        session = manager.start_recovery(world.project_id)
        second = world.client("reviewer")  # a second person approves the steps
        for _ in range(10):
            session = second.get_recovery(session.id)
            steps = [s for s in session.recovery_plan["steps"] if s["status"] == "pending"]
            if not steps:
                break
            second.respond_recovery_step(session.id, steps[0]["step_id"], "approve")
        assert not manager.emergency_status(world.project_id).stopped
        wait_for(lambda: any("the project was recovered: the fleet resumes" in line for line in lines),
                 what="the resume")
        wait_for(lambda: manager.list_approvals(world.project_id).count > calls_while_stopped, what="a new call")
        assert stop.id
        # the halted round's task: the recovery resumed it as pending and nothing would ever pick it
        # up (the fleet starts a new round); the fleet ends it
        halted_task = manager.list_approvals(world.project_id).results[-1].task_id  # the oldest call's
        assert manager.get_task(halted_task).status in ("cancelled", "failed"), "\n".join(lines)
    finally:
        if bot and bot.is_alive():
            bot.finish()
        runner.stop()
    assert fleet.reports[0].ended == "halted"
    print("\n".join(lines))


def test_refusals_and_send_backs_are_logged_and_the_fleet_goes_on(world):
    """The coder's first output is sent back (it is redone without its risk), the deployer's call
    is refused: each round ends there, logged, and the next round starts."""
    def on_call(reviewer, call):
        if call.agent_type == "deployer":
            reviewer.respond_approval(call.approval_id, "reject", reason="no deploys today")
        else:
            reviewer.respond_approval(call.approval_id, "approve")

    def on_response(reviewer, response):
        if response.agent_type == "coder" and response.modification_round == 0:
            reviewer.respond_response(response.approval_id, "requires_modification",
                                      modifications_required="remove the hard-coded keys")
        else:
            reviewer.respond_response(response.approval_id, "approve")

    bot = ReviewerBot(world.client("reviewer"), world.project_id, on_call=on_call, on_response=on_response)
    bot.start()
    lines = []
    fleet = Fleet(world.url, "demo", world.keys["agent"], rounds=2, seed=0, pace=0, critical_rate=0,
                  log=lines.append, retry=FAST_RETRY, recheck_seconds=2.0)
    try:
        reports = asyncio.run(fleet.run())
    finally:
        bot.finish()
    log = "\n".join(lines)
    print(log)
    assert [r.ended for r in reports] == ["refused", "refused"]
    assert reports[0].ran == ["orchestrator", "analyst", "architect", "coder", "tester"]
    assert re.search(r"r1\s+coder\s+sent back by reviewer: remove the hard-coded keys → redoing it", log)
    assert re.search(r"r1\s+coder\s+asks again \(redo 1\): ", log)
    assert re.search(r"r1\s+coder\s+output for review: .*risk low", log)  # the redo has no key in it
    assert re.search(r"r1\s+deployer\s+refused by reviewer: no deploys today → the round ends here", log)
    assert "round 2: " in log
    # the refused deployers' tasks are reported cancelled, every other task of theirs completed: none
    # is left open (read through the API: on SQLite the server has its own copy of the database)
    agent = world.client("agent")
    calls = [c for page in range(1, 20) for c in _page(agent, world.project_id, page)]
    tasks = {c.task_id: agent.get_task(c.task_id) for c in calls}
    refused = {c.task_id for c in calls if c.status == "rejected"}
    assert len(refused) == 2 and {tasks[t].status for t in refused} == {"cancelled"}
    assert {t.status for t in tasks.values()} <= {"completed", "cancelled"}


def _page(client, project_id, page):
    try:
        return client.list_approvals(project_id, page=page).results
    except NotFound:  # past the last page
        return []


def test_the_command_needs_a_key(monkeypatch):
    from django.core.management.base import CommandError

    monkeypatch.delenv("HITL_API_KEY", raising=False)
    with pytest.raises(CommandError, match="API key"):
        call_command("run_demo_fleet", url="http://127.0.0.1:9", rounds=1)


def test_an_unknown_project_is_a_clear_error(world):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no project 'nope'"):
        call_command("run_demo_fleet", url=world.url, project="nope", agent_key=world.keys["agent"], rounds=1,
                     pace=0, stdout=io.StringIO())


def test_stale_calls_of_an_earlier_run_are_cancelled(world):
    agent = world.client("agent")
    task = agent.create_task(world.project_id, "coder", "left over")
    old = agent.request_approval(world.project_id, task.task_id, "coder", "write code",
                                 {"fleet": FLEET_MARK, "round": 3}, model="gpt-4o-mini")
    other_task = agent.create_task(world.project_id, "coder", "not the fleet's")
    other = agent.request_approval(world.project_id, other_task.task_id, "coder", "someone else's call", {"x": 1},
                                   model="gpt-4o-mini")
    lines = []
    fleet = Fleet(world.url, "demo", world.keys["agent"], pace=0, log=lines.append, retry=FAST_RETRY)
    runner = FleetThread(fleet)
    runner.start()
    try:
        wait_for(lambda: agent.get_approval(old.approval_id).status == "cancelled", what="the cancel")
        # The fleet says so once its cancels are answered (the call may be seen cancelled first).
        wait_for(lambda: any("cancelled 1 call(s) left pending by an earlier run" in line for line in list(lines)),
                 what="the fleet's report of it")
    finally:
        runner.stop()
    assert agent.get_approval(other.approval_id).status == "pending"
    with pytest.raises(HitlError):
        agent.start_approval(old.approval_id)
    assert agent.get_task(task.task_id).status == "cancelled"  # its task is not left open for ever
    assert agent.get_task(other_task.task_id).status == "waiting_for_hitl"


def test_an_output_an_earlier_run_left_for_review_ends_its_task(world):
    """Ctrl-C while an output waited for review: the next run ends that task (its agent is gone)
    and withdraws the review, instead of leaving both open for ever."""
    agent, reviewer = world.client("agent"), world.client("reviewer")
    task = agent.create_task(world.project_id, "coder", "left over")
    call = agent.request_approval(world.project_id, task.task_id, "coder", "write code",
                                  {"fleet": FLEET_MARK, "round": 3}, model="gpt-4o-mini")
    reviewer.respond_approval(call.approval_id, "approve")
    agent.start_approval(call.approval_id)
    output = agent.submit_response(world.project_id, task.task_id, "coder", call.approval_id, {"text": "done"},
                                   response_summary="done", tokens_used=10)
    lines = []
    runner = FleetThread(Fleet(world.url, "demo", world.keys["agent"], pace=0, log=lines.append, retry=FAST_RETRY))
    runner.start()
    try:
        wait_for(lambda: agent.get_task(task.task_id).status in ("cancelled", "failed"), what="the task's end")
        wait_for(lambda: any("ended 1 task(s) whose output an earlier run left" in line for line in list(lines)),
                 what="the fleet's report of it")
    finally:
        runner.stop()
    assert agent.get_response(output.approval_id).status == "cancelled"


def test_every_agent_runs_with_the_input_as_amended():
    """Four of the six agents built their output from the feature, not the approved input, while
    saying "Ran with the input as amended by the reviewer"."""
    llm = DemoLLM(seed=0, critical_rate=0, risk_rate=0)
    amended = {
        "orchestrator": {"ticket": {"id": "BOT-1", "title": "Amended title", "text": "x"}, "team": ["analyst", "coder"]},
        "analyst": {"story": "An amended story."},
        "architect": {"service": "amended-svc", "module": "amended/mod.py"},
        "coder": {"module": "amended/code.py", "function": "amended_fn", "language": "python"},
        "tester": {"service": "amended-svc", "command": "pytest -q tests/test_amended.py"},
        "deployer": {"service": "amended-svc", "version": "9.9.9", "environment": "staging"},
    }
    out = {agent: llm.complete(agent, 1, data, amended=True) for agent, data in amended.items()}
    assert out["orchestrator"].output["feature"] == "Amended title"
    assert [step["agent"] for step in out["orchestrator"].output["plan"]] == ["analyst", "coder"]
    assert out["orchestrator"].summary.startswith("2 steps for 'Amended title'")
    assert out["analyst"].output["analysis"]["story"] == "An amended story."
    assert out["architect"].output["design"]["service"] == "amended-svc"
    assert out["architect"].output["design"]["module"] == "amended/mod.py"
    assert "amended/code.py" in out["coder"].output["files"] and out["coder"].summary.startswith("amended_fn()")
    assert out["tester"].output["test_results"]["command"] == "pytest -q tests/test_amended.py"
    assert out["deployer"].output["deployment"]["version"] == "9.9.9"
    assert all(c.output["note"] == "Ran with the input as amended by the reviewer." for c in out.values())


def test_an_amended_team_is_the_team_that_runs(world):
    """A person amends the orchestrator's call to a smaller team: the plan listed only those
    agents, but the fleet ran all six anyway."""
    def on_call(reviewer, call):
        if call.agent_type == "orchestrator":
            amended = {**call.input_data, "team": ["coder", "tester"]}
            reviewer.respond_approval(call.approval_id, "approve", amended_input_data=amended)
        else:
            reviewer.respond_approval(call.approval_id, "approve")

    log = one_round(world, ReviewerBot(world.client("reviewer"), world.project_id, on_call=on_call))
    assert "round 1 done: 3 agents ran" in log, log
    calls = world.client("reviewer").list_approvals(world.project_id).results
    assert sorted(c.agent_type for c in calls) == ["coder", "orchestrator", "tester"]
    for skipped in ("analyst", "architect", "deployer"):
        assert re.search(rf"r1\s+{skipped}\s+not in the approved plan: skipped", log), skipped
