"""A cancelled agent stops: the SDK's clean-up after a run never swallows the cancellation of
the task that runs it (Ctrl-C, a fleet shutting down). No server needed: the watcher is a stub."""
import asyncio
from decimal import Decimal

from hitl_sdk import AsyncHitlClient, RunResult, SafetyEnhancedBaseAgent
from hitl_sdk.agent import RunContext


class Quick(SafetyEnhancedBaseAgent):
    agent_type = "coder"

    async def run(self, task, context):
        return RunResult(output={"done": True}, tokens_used=1, actual_cost=Decimal("0"))


def test_a_cancel_that_arrives_while_the_run_cleans_up_ends_the_task():
    """The run is done; its stop watcher takes a moment to close (a websocket's close
    handshake); the caller is cancelled in that moment. It must end cancelled, not go on with
    the run's result as if nobody had asked it to stop."""
    async def scenario():
        client = AsyncHitlClient("http://127.0.0.1:9", "hitl_unused")
        closing = asyncio.Event()

        async def watch_emergency_stop(project_id):
            try:
                await asyncio.sleep(3600)
            finally:
                closing.set()
                await asyncio.sleep(0.3)  # closing its socket

        client.watch_emergency_stop = watch_emergency_stop
        agent = Quick(client, "00000000-0000-0000-0000-000000000000")
        context = RunContext(input={}, approval=None, amended=False, round=1, modifications=[], extra={})
        outer = asyncio.ensure_future(agent._run_watched(None, context))
        await closing.wait()  # the run returned; the watcher is being closed
        outer.cancel()
        done, _ = await asyncio.wait({outer}, timeout=5)
        await client.aclose()
        assert outer in done
        return outer.cancelled()

    assert asyncio.run(scenario()) is True
