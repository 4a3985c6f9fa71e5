"""@require_approval (sync and async) and network faults, against a real daphne."""
import asyncio
import threading
import time
import uuid
from decimal import Decimal

import httpx
import pytest

from hitl_sdk import (ApprovalCancelled, ApprovalRejected, AsyncHitlClient, EmergencyStopped, HitlClient, RetryPolicy,
                      WithUsage, require_approval)
from sdk_tests.conftest import FAST_RETRY, approve

pytestmark = pytest.mark.django_db(transaction=True)


def test_require_approval_runs_a_sync_function_with_the_amended_arguments(world, bot):
    agent = world.client("agent")
    calls = []

    @require_approval(agent, world.project_id, agent_type="coder", action="tool:write_file", model="gpt-4o-mini")
    def write_file(path, content, mode="w"):
        calls.append((path, content, mode))
        return WithUsage(f"wrote {len(content)} bytes to {path}", tokens_used=10)

    def amend(reviewer, obj):
        assert obj.input_data == {"path": "/etc/hosts", "content": "x", "mode": "w"}
        assert obj.proposed_action == "tool:write_file"
        reviewer.respond_approval(obj.approval_id, "approve",
                                  amended_input_data={**obj.input_data, "path": "/tmp/hosts"})

    reviewer_bot = bot(("agent", amend))
    assert write_file("/etc/hosts", content="x") == "wrote 1 bytes to /tmp/hosts"
    reviewer_bot.check()
    assert calls == [("/tmp/hosts", "x", "w")]
    call = agent.get_approval(reviewer_bot.handled[0].approval_id)
    assert call.started_at is not None and call.budget_state == "settled"  # usage reported once
    assert agent.get_task(call.task_id).status == "completed"

    # A rejection raises and the function never runs.
    reviewer_bot = bot(("agent", lambda r, o: r.respond_approval(o.approval_id, "reject", reason="not that file")))
    with pytest.raises(ApprovalRejected, match="A person refused this action: not that file"):
        write_file("/etc/shadow", "y")
    reviewer_bot.check()
    assert len(calls) == 1
    refused = agent.get_approval(reviewer_bot.handled[0].approval_id)
    assert agent.get_task(refused.task_id).status == "cancelled"  # the task made for it is ended, not left open


def test_a_stop_while_the_function_ran_records_its_usage_and_raises(world, bot):
    """The usage report of a function that ran while its project was stopped: recorded (the tokens
    were spent) and answered 423, so the caller is told to stop instead of getting the value."""
    agent, reviewer = world.client("agent"), world.client("reviewer")

    @require_approval(agent, world.project_id, agent_type="coder", action="tool:long", model="gpt-4o-mini")
    def long_tool():
        reviewer.emergency_stop(world.project_id, "halt everything")
        return WithUsage("done", tokens_used=50, actual_cost="0.0500")

    reviewer_bot = bot(("agent", approve))
    with pytest.raises(EmergencyStopped, match="the usage was recorded") as caught:
        long_tool()
    reviewer_bot.check()
    assert caught.value.emergency_stop_id == reviewer.emergency_status(world.project_id).active_stop.id
    call = reviewer.get_approval(reviewer_bot.handled[0].approval_id)
    budget = reviewer.get_budget(world.project_id)
    assert call.budget_state == "settled"
    assert budget.cost_incurred_today == Decimal("0.0500") and budget.tokens_used_today == 50


def test_a_cancelled_output_or_question_is_told_as_such_not_as_an_action_not_run(world):
    """An output whose task ended while it waited, and a question its agent withdrew, raised
    "This action was cancelled before it ran. Do not run it.": the wrong instruction for a model."""
    agent, reviewer = world.client("agent"), world.client("reviewer")
    task = agent.create_task(world.project_id, "coder", "cancelled output")
    call = agent.request_approval(world.project_id, task.task_id, "coder", "write it", {"files": ["a.py"]},
                                  model="gpt-4o-mini")
    reviewer.respond_approval(call.approval_id, "approve")
    agent.start_approval(call.approval_id)
    response = agent.submit_response(world.project_id, task.task_id, "coder", call.approval_id,
                                     {"files": [{"path": "a.py", "content": "print(1)\n"}]},
                                     response_summary="a.py", tokens_used=5)
    agent.set_task_status(task.task_id, "failed", error="gave up")
    with pytest.raises(ApprovalCancelled) as caught:
        agent.wait_for_response(response.approval_id, timeout=10)
    assert caught.value.kind == "response" and "Do not run it" not in str(caught.value)
    assert str(caught.value).startswith("This output was cancelled before a person approved it")
    assert str(caught.value).endswith("so it must not be used. Do not use it.")

    question = agent.create_hitl(world.project_id, "question", "Which database?")
    agent.cancel_hitl(question.id, "found it myself.")  # its full stop is not doubled
    with pytest.raises(ApprovalCancelled) as caught:
        agent.wait_for_hitl(question.id, timeout=10)
    assert caught.value.kind == "hitl" and str(caught.value) == (
        "This question was cancelled before a person answered it: found it myself. No answer will come: "
        "do not act as if it had been answered.")


def test_require_approval_gates_an_async_function(world, bot):
    agent = world.client("agent")
    ran = []

    @require_approval(agent, world.project_id, agent_type="deployer", action="deploy", model="gpt-4o-mini")
    async def deploy(service: str, replicas: int = 1):
        await asyncio.sleep(0)
        ran.append((service, replicas))
        return {"deployed": service}

    reviewer_bot = bot(("agent", approve))
    assert asyncio.run(deploy("api", replicas=3)) == {"deployed": "api"}
    reviewer_bot.check()
    assert ran == [("api", 3)]
    assert reviewer_bot.handled[0].input_data == {"service": "api", "replicas": 3}
    assert agent.get_approval(reviewer_bot.handled[0].approval_id).budget_state == "settled"


@pytest.mark.parametrize("amended, problem", [
    ({"replicas": 2}, "missing a required argument: 'service'"),
    ({"service": "api", "bogus": 5}, "it has no parameter bogus"),
    ({"service": "api", "extra": {}, "y": 3}, "it has no parameter y"),  # not dropped beside **extra
])
def test_an_amendment_that_does_not_fit_the_function_is_not_run_and_ends_its_task_cancelled(
        world, bot, amended, problem):
    agent = world.client("agent")
    ran = []

    @require_approval(agent, world.project_id, agent_type="deployer", action="deploy", model="gpt-4o-mini")
    def deploy(service: str, replicas: int = 1, **extra):
        ran.append((service, replicas))

    reviewer_bot = bot(("agent", lambda r, o: r.respond_approval(o.approval_id, "approve",
                                                                 amended_input_data=amended)))
    with pytest.raises(TypeError, match="the input a person approved for deploy") as refused:
        deploy("api", replicas=3)
    assert problem in str(refused.value) and "was not run" in str(refused.value)
    reviewer_bot.check()
    assert ran == []
    call = agent.get_approval(reviewer_bot.handled[0].approval_id)
    assert call.status == "cancelled" and call.started_at is None  # the grant was never used
    assert agent.get_task(call.task_id).status == "cancelled"  # a refusal, not the agent's failure


@pytest.mark.parametrize("usage", [WithUsage("v", tokens_used=-3), WithUsage("v", 10, actual_cost="abc")])
def test_a_function_that_returns_a_usage_that_is_not_valid_fails_its_task(world, bot, usage):
    agent = world.client("agent")

    @require_approval(agent, world.project_id, agent_type="coder", action="tool:noop", model="gpt-4o-mini")
    def noop():
        return usage

    reviewer_bot = bot(("agent", approve))
    with pytest.raises((TypeError, ValueError)):
        noop()
    reviewer_bot.check()
    call = agent.get_approval(reviewer_bot.handled[0].approval_id)
    task = agent.get_task(call.task_id)
    assert task.status == "failed" and "usage is not valid" in task.error  # not left running for ever
    assert call.budget_state == "reserved"  # the reservation stays counted, as the SDK README says


@pytest.mark.parametrize("raised", [RuntimeError("the tool broke"), KeyboardInterrupt()])
def test_a_gated_function_that_fails_settles_at_zero_but_an_interrupted_one_keeps_its_reservation(
        world, bot, raised):
    """The decorator reported usage 0 for a function interrupted by Ctrl-C as for one that raised
    (execute_task had been mended, the decorator not)."""
    agent = world.client("agent")

    @require_approval(agent, world.project_id, agent_type="coder", action="tool:noop", model="gpt-4o-mini")
    def noop():
        raise raised

    reviewer_bot = bot(("agent", approve))
    with pytest.raises(type(raised)):
        noop()
    reviewer_bot.check()
    call = agent.get_approval(reviewer_bot.handled[0].approval_id)
    task = agent.get_task(call.task_id)
    assert task.status == "failed"
    if isinstance(raised, KeyboardInterrupt):
        assert call.budget_state == "reserved" and "interrupted while running (KeyboardInterrupt)" in task.error
    else:
        assert call.budget_state == "settled" and "the tool broke" in task.error


def test_decimal_arguments_go_as_exact_strings_and_come_back_as_decimals(world, bot):
    from decimal import Decimal
    from typing import Optional

    agent = world.client("agent")
    paid = []

    @require_approval(agent, world.project_id, agent_type="deployer", action="tool:pay", model="gpt-4o-mini")
    def pay(amount: Decimal, memo: str, tip: Optional[Decimal] = None):
        paid.append((amount, memo, tip))

    reviewer_bot = bot(("agent", approve))
    pay(Decimal("12.50"), memo="refund", tip=Decimal("1.5"))
    reviewer_bot.check()
    assert reviewer_bot.handled[0].input_data == {"amount": "12.50", "memo": "refund", "tip": "1.5"}
    assert paid == [(Decimal("12.50"), "refund", Decimal("1.5"))]
    assert all(isinstance(v, Decimal) for v in (paid[0][0], paid[0][2]))
    task = agent.create_task(world.project_id, "coder", "Price it")
    call = agent.request_approval(world.project_id, task.task_id, "coder", "price", {"price": Decimal("0.0125")})
    assert call.input_data == {"price": "0.0125"}  # no TypeError from a Decimal inside input_data


def test_the_agent_resumes_its_wait_across_a_server_restart(world):
    agent = world.client("agent", recheck_seconds=1.0,
                         retry=RetryPolicy(attempts=4, backoff_base=0.1, backoff_max=0.5))
    task = agent.create_task(world.project_id, "coder", "survive a restart")
    call = agent.request_approval(world.project_id, task.task_id, "coder", "write code", {"a": 1},
                                  model="gpt-4o-mini")
    outcome = {}

    def wait():
        try:
            outcome["approval"] = agent.wait_for_approval(call.approval_id, timeout=60)
        except BaseException as exc:  # noqa: BLE001
            outcome["error"] = exc

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    time.sleep(1.0)  # the agent is on the websocket now
    world.stop()     # the server goes away mid-wait...
    time.sleep(1.5)  # ...for a while (the agent retries)...
    assert waiter.is_alive()
    world.start()    # ...and a new one comes up on the same port and database
    world.client("reviewer").respond_approval(call.approval_id, "approve")
    waiter.join(30)
    assert not waiter.is_alive() and "error" not in outcome, (outcome, world.log())
    assert outcome["approval"].status == "approved"

    # A new agent process resumes by approval id alone.
    fresh = world.client("agent")
    assert fresh.wait_and_start(call.approval_id).input_to_run == {"a": 1}


def test_a_retried_create_makes_one_approval(world):
    """The same Idempotency-Key twice gives the first result; and a real retry: the first attempt
    reaches the server (the approval is created), then its answer is lost; the retry carries the
    same Idempotency-Key and gets the first result."""
    plain = world.client("agent")
    task = plain.create_task(world.project_id, "coder", "once")
    key = str(uuid.uuid4())
    args = (world.project_id, task.task_id, "coder", "write code", {"n": 1})
    first = plain.request_approval(*args, model="gpt-4o-mini", idempotency_key=key)
    second = plain.request_approval(*args, model="gpt-4o-mini", idempotency_key=key)
    assert first.approval_id == second.approval_id
    assert plain.list_approvals(world.project_id).count == 1

    real = httpx.HTTPTransport()
    keys, busy = [], []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/agent-approvals"):
            keys.append(request.headers.get("Idempotency-Key"))
            response = real.handle_request(request)
            response.read()
            if len(keys) == 1:
                raise httpx.ReadError("connection reset after the server answered", request=request)
            return response
        if request.url.path.endswith("/tasks") and not busy:
            busy.append(request.headers.get("Idempotency-Key"))  # a busy database: 503 + Retry-After
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"error": "unavailable", "detail": "busy"})
        response = real.handle_request(request)
        response.read()
        return response

    agent = HitlClient(world.url, world.keys["agent"], retry=FAST_RETRY, transport=httpx.MockTransport(handler))
    world.clients.append(agent)
    task = agent.create_task(world.project_id, "coder", "flaky network")
    call = agent.request_approval(world.project_id, task.task_id, "coder", "write code", {"n": 2},
                                  model="gpt-4o-mini")
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0]
    assert busy and busy[0] and world.client("agent").get_task(task.task_id).title == "flaky network"
    approvals = plain.list_approvals(world.project_id)
    assert approvals.count == 2 and approvals.results[0].approval_id == call.approval_id  # one per create


def test_a_decision_whose_answer_was_lost_is_the_reviewers_own_not_a_conflict(world):
    """Found by a new user: a reviewer's bot decided, the answer was lost on the network, the
    retry found the item decided and raised ``Conflict`` ("already approved") for the bot's own
    decision. Decisions carry an ``Idempotency-Key`` now, which the retry reuses: the server
    answers it with the first decision (``Idempotent-Replayed``), once."""
    agent = world.client("agent")
    task = agent.create_task(world.project_id, "coder", "decided once")
    call = agent.request_approval(world.project_id, task.task_id, "coder", "write code", {"n": 3})
    question = agent.create_hitl(world.project_id, "question", "Which colour?", task_id=task.task_id)
    real = httpx.HTTPTransport()
    sent: list = []

    def handler(request: httpx.Request) -> httpx.Response:
        response = real.handle_request(request)
        response.read()
        if request.method == "POST" and request.url.path.endswith("/respond"):
            sent.append((request.url.path, request.headers.get("Idempotency-Key"),
                         response.headers.get("Idempotent-Replayed")))
            if len([s for s in sent if s[0] == request.url.path]) == 1:  # each decision's first answer lost
                raise httpx.ReadError("connection reset after the server answered", request=request)
        return response

    reviewer = HitlClient(world.url, world.keys["reviewer"], retry=FAST_RETRY, transport=httpx.MockTransport(handler))
    world.clients.append(reviewer)
    approved = reviewer.respond_approval(call.approval_id, "approve")
    answered = reviewer.respond_hitl(question.id, "approve", response="blue")
    assert approved.status == "approved" and answered.status == "approved" and answered.response == "blue"
    assert [(replayed) for _path, _key, replayed in sent] == [None, "true", None, "true"], sent
    assert sent[0][1] and sent[0][1] == sent[1][1] and sent[2][1] == sent[3][1] != sent[0][1]
    # a decision that lost to another one is still a Conflict (it is not stored, not replayed)
    from hitl_sdk import Conflict

    other = agent.request_approval(world.project_id, task.task_id, "coder", "write more code", {"n": 4})
    world.client("reviewer").respond_approval(other.approval_id, "reject", reason="not now")
    with pytest.raises(Conflict):
        reviewer.respond_approval(other.approval_id, "approve")


def test_a_4xx_is_never_retried():
    attempts = []

    def handler(request):
        attempts.append(request)
        return httpx.Response(409, json={"error": "conflict", "detail": "already decided", "status": "approved"})

    async def run():
        async with AsyncHitlClient("http://hitl.invalid", "key", retry=FAST_RETRY,
                                   transport=httpx.MockTransport(handler)) as client:
            from hitl_sdk import Conflict

            with pytest.raises(Conflict) as caught:
                await client.cancel_approval(str(uuid.uuid4()))
            assert caught.value.current_status == "approved" and caught.value.status == 409

    asyncio.run(run())
    assert len(attempts) == 1


@pytest.mark.parametrize("use_websocket", [True, False])
def test_a_server_down_for_the_whole_wait_ends_it_with_wait_timeout(use_websocket):
    """With the server unreachable until the caller's timeout, the long poll raised
    HitlConnectionError and the websocket path WaitTimeout: now both say the wait timed out."""
    from hitl_sdk import HitlConnectionError, WaitTimeout

    def refused(request):
        raise httpx.ConnectError("connection refused", request=request)

    async def run():
        async with AsyncHitlClient("http://127.0.0.1:9", "key", retry=FAST_RETRY, use_websocket=use_websocket,
                                   transport=httpx.MockTransport(refused), ws_open_timeout=0.5) as client:
            started = time.monotonic()
            with pytest.raises(WaitTimeout) as caught:
                await client.wait_for_approval(str(uuid.uuid4()), timeout=1.5)
            assert isinstance(caught.value.__cause__, HitlConnectionError)
            return time.monotonic() - started

    assert 1.5 <= asyncio.run(run()) < 15  # ends at its deadline, not after every retry


@pytest.mark.parametrize("detail", ["Project demo is under an emergency stop.", "Project demo is stopped", ""])
def test_the_stop_message_reads_as_one_sentence(detail):
    """The server's detail ends with a full stop; the SDK's message used to add another (".. Stop all work")."""
    from hitl_sdk.errors import EmergencyStopped

    message = str(EmergencyStopped(detail, emergency_stop_id="s1"))
    assert ".." not in message and message.endswith("Stop all work on this project now; do not retry.")
    assert (detail.rstrip(".") or "no reason given") + ". Stop all work" in message


@pytest.mark.parametrize("kind, says", [("agent", "Do not run it"), ("response", "Do not use it")])
def test_a_time_out_is_worded_for_what_timed_out(kind, says):
    from types import SimpleNamespace

    from hitl_sdk import ApprovalTimedOut, _common

    lapsed = SimpleNamespace(status="timed_out", approval_id="a1", project_id="p1")
    with pytest.raises(ApprovalTimedOut) as timed_out:
        _common.outcome(kind, lapsed, None)
    assert says in str(timed_out.value)
    assert ("run it" in str(timed_out.value)) == (kind == "agent")  # an output has run already


def test_execute_task_sync_inside_an_event_loop_says_to_await_execute_task():
    from hitl_sdk import SafetyEnhancedBaseAgent

    class Nothing(SafetyEnhancedBaseAgent):
        agent_type = "coder"

        async def run(self, task, context):
            raise AssertionError("never runs")

    async def inside_a_loop():
        Nothing(HitlClient("http://127.0.0.1:9", "key"), "p").execute_task_sync(title="x")

    with pytest.raises(RuntimeError, match="use `await agent.execute_task"):
        asyncio.run(inside_a_loop())


def test_retry_after_is_the_least_wait_and_zero_still_backs_off(monkeypatch):
    """A 503 with Retry-After: 0 had all six attempts within ten milliseconds."""
    import hitl_sdk._common as common

    monkeypatch.setattr(common.random, "uniform", lambda low, high: high)  # the backoff's longest draw
    policy = RetryPolicy(backoff_base=0.1, backoff_max=5, retry_after_max=2)
    assert policy.delay(3) == pytest.approx(0.4)
    assert policy.delay(3, 0.0) == pytest.approx(0.4)          # 0: the backoff
    assert policy.delay(3, 1.5) == pytest.approx(1.5)          # longer than the backoff: honoured
    assert policy.delay(3, 30.0) == pytest.approx(2)           # capped by retry_after_max
    assert policy.delay(3, float("nan")) == pytest.approx(0.4)


@pytest.mark.parametrize("base_url", ["127.0.0.1:8000", "ftp://hitl.example", "", "hitl.example/api/v1"])
def test_a_base_url_that_is_not_http_is_refused_at_once(base_url):
    """A missing scheme was retried as a network error for six seconds."""
    with pytest.raises(ValueError, match="http:// or https://"):
        HitlClient(base_url, "key")
    with pytest.raises(ValueError, match="http:// or https://"):
        AsyncHitlClient(base_url, "key")


def test_an_answer_that_is_not_the_apis_json_says_so_in_one_sentence():
    """A wrong base path answered Django's HTML 404 page, which became the error's message."""
    from hitl_sdk import NotFound

    def page(request):
        return httpx.Response(404, headers={"Content-Type": "text/html; charset=utf-8"},
                              content=b"<!DOCTYPE html><html><body>" + b"x" * 2000 + b"</body></html>")

    client = HitlClient("http://hitl.invalid/foo", "key", retry=FAST_RETRY, transport=httpx.MockTransport(page))
    with pytest.raises(NotFound) as caught:
        client.list_projects()
    message = str(caught.value)
    assert "with text/html, not the API's JSON" in message and "http://hitl.invalid/foo" in message
    assert "<" not in message and len(message) < 300


def test_a_retry_never_sleeps_past_the_waits_deadline(monkeypatch):
    """A wait's retries slept their whole backoff (up to 10 s) past the caller's timeout."""
    import hitl_sdk._common as common
    from hitl_sdk import WaitTimeout

    monkeypatch.setattr(common.random, "uniform", lambda low, high: high)  # every pause its longest: 8 s

    def refused(request):
        raise httpx.ConnectError("connection refused", request=request)

    async def run():
        async with AsyncHitlClient("http://127.0.0.1:9", "key", use_websocket=False,
                                   retry=RetryPolicy(backoff_base=8, backoff_max=8),
                                   transport=httpx.MockTransport(refused)) as client:
            started = time.monotonic()
            with pytest.raises(WaitTimeout):
                await client.wait_for_approval(str(uuid.uuid4()), timeout=1.0)
            return time.monotonic() - started

    assert asyncio.run(run()) < 6  # 8 s and more before: the first pause alone


def test_a_success_status_with_a_page_that_is_not_json_is_an_error_not_an_empty_result():
    """A 200 HTML page (a proxy's login, a wrong host) came back as an empty list of projects."""
    from hitl_sdk import HitlError

    def page(request):
        return httpx.Response(200, headers={"Content-Type": "text/html"}, content=b"<html>portal login</html>")

    client = HitlClient("http://hitl.invalid", "key", retry=FAST_RETRY, transport=httpx.MockTransport(page))
    with pytest.raises(HitlError) as caught:
        client.list_projects()
    assert caught.value.code == "bad_response" and "with text/html, not the API's JSON" in str(caught.value)


def wait_times_out(handler, timeout):
    """A long-poll wait (no websocket) on a server answered by ``handler`` raises WaitTimeout."""
    from hitl_sdk import WaitTimeout

    async def run():
        async with AsyncHitlClient("http://hitl.invalid", "key", retry=FAST_RETRY, use_websocket=False,
                                   transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(WaitTimeout):
                await client.wait_for_approval(str(uuid.uuid4()), timeout=timeout)

    asyncio.run(run())


def test_a_proxy_answering_503_until_the_deadline_ends_the_wait_with_wait_timeout():
    def busy(request):
        return httpx.Response(503, json={"error": "unavailable", "detail": "proxy: no upstream"})

    wait_times_out(busy, 1.0)


def test_a_key_read_from_a_file_with_its_newline_is_sent_without_it_and_a_bad_key_is_never_shown():
    """The newline made every request fail inside the client, retried as a network error for
    seconds (for ever in a wait without a timeout), its message holding the whole key."""
    seen = []

    def handler(request):
        seen.append(request.headers["authorization"])
        return httpx.Response(200, json={"task_id": str(uuid.uuid4()), "status": "pending"})

    with HitlClient("http://hitl.invalid", "hitl_abcd_secretpart\n", retry=FAST_RETRY,
                    transport=httpx.MockTransport(handler)) as client:
        client.get_task(str(uuid.uuid4()))
    assert seen == ["Bearer hitl_abcd_secretpart"]
    with pytest.raises(ValueError) as caught:
        HitlClient("http://hitl.invalid", "hitl_abcd_secret part")
    assert "secret" not in str(caught.value)


def test_each_attempt_of_a_wait_ends_by_the_waits_deadline_give_or_take_the_grace():
    """Against a server that does not answer, a wait's timeout=2 ran whole 30 s attempts: the
    wait returned after a minute. Each attempt's own timeout now ends by the wait's deadline."""
    timeouts = []

    def frozen(request):
        timeouts.append(request.extensions["timeout"]["read"])
        raise httpx.ReadTimeout("no answer", request=request)

    wait_times_out(frozen, 2)
    assert timeouts and max(timeouts) <= 2.0 + 2.0, timeouts  # by the deadline, give or take the grace


def test_no_attempt_of_a_wait_starts_after_its_deadline_against_a_hung_server():
    """A server that takes a request and never answers (SIGSTOP): the first attempt ended at the
    deadline plus the grace, then one more attempt of at least a second started after it (a
    wait's timeout=2 raised after 5 s). Now the wait ends when that attempt does."""
    starts = []

    def hung(request):
        starts.append(time.monotonic())
        time.sleep(min(request.extensions["timeout"]["read"], 4))  # holds the attempt for its whole timeout
        raise httpx.ReadTimeout("no answer", request=request)

    begun = time.monotonic()
    wait_times_out(hung, 1.0)
    assert starts and all(at - begun < 1.0 for at in starts), [round(at - begun, 2) for at in starts]

    def busy(request):  # an overloaded server: each 503 comes late
        starts.append(time.monotonic())
        time.sleep(0.4)
        return httpx.Response(503, json={"error": "unavailable", "detail": "busy"}, headers={"Retry-After": "1"})

    starts.clear()
    begun = time.monotonic()
    wait_times_out(busy, 1.0)
    assert starts and all(at - begun < 1.0 for at in starts), [round(at - begun, 2) for at in starts]


def test_a_question_the_network_lost_carries_its_key_and_asking_again_with_it_finds_it():
    """ask_human against a hung server raised HitlConnectionError, though the server made the
    question once it went on: the agent had no way to find it. The error carries the create's
    Idempotency-Key; asking again with it gets the one question (the server replays it)."""
    from hitl_sdk import HitlConnectionError

    keys, question_id = [], str(uuid.uuid4())

    def lost(request):
        keys.append(request.headers.get("idempotency-key"))
        raise httpx.ReadTimeout("no answer", request=request)

    with HitlClient("http://hitl.invalid", "key", retry=FAST_RETRY, transport=httpx.MockTransport(lost)) as client:
        with pytest.raises(HitlConnectionError) as caught:
            client.ask_human(str(uuid.uuid4()), "Kafka or SQS?", wait_timeout=0.5)
    assert caught.value.idempotency_key and set(keys) == {caught.value.idempotency_key}

    def found(request):
        keys.append(request.headers.get("idempotency-key"))
        return httpx.Response(200 if request.method == "GET" else 201, json={
            "id": question_id, "project_id": str(uuid.uuid4()), "task_id": None, "request_type": "question",
            "question": "Kafka or SQS?", "status": "approved", "response": "Kafka", "options": []})

    keys.clear()
    with HitlClient("http://hitl.invalid", "key", retry=FAST_RETRY, transport=httpx.MockTransport(found)) as client:
        answered = client.ask_human(str(uuid.uuid4()), "Kafka or SQS?", wait_timeout=5,
                                    idempotency_key=caught.value.idempotency_key)
    assert answered.id == question_id and keys[0] == caught.value.idempotency_key


def test_https_to_a_plain_http_server_fails_at_once_saying_so():
    """The server now answers a TLS handshake at once (core.middleware); the SDK no longer retries
    that answer six times and says what is wrong."""
    from hitl_sdk import HitlConnectionError

    attempts = []

    def plain(request):
        attempts.append(request)
        raise httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1000)", request=request)

    with HitlClient("https://hitl.invalid", "key", retry=FAST_RETRY, transport=httpx.MockTransport(plain)) as client:
        with pytest.raises(HitlConnectionError) as caught:
            client.get_task(str(uuid.uuid4()))
    assert len(attempts) == 1 and "speaks plain HTTP: use http://" in str(caught.value)


def test_the_agent_helpers_keep_the_clients_transport():
    from hitl_sdk.agent import as_async, as_sync

    mock = httpx.MockTransport(lambda request: httpx.Response(200, json={}))
    assert as_async(HitlClient("http://hitl.invalid", "key", transport=mock))._transport is mock
    assert as_sync(AsyncHitlClient("http://hitl.invalid", "key", transport=mock))._transport is mock
    with pytest.warns(UserWarning, match="connects without it"):  # said, not dropped without a word
        assert as_async(HitlClient("http://hitl.invalid", "key", transport=httpx.HTTPTransport()))._transport is None


@pytest.mark.parametrize("tokens", [12.9, "12", True])
def test_a_token_count_that_is_not_a_whole_number_is_refused_not_truncated(tokens):
    """report_usage and submit_response sent int(12.9) = 12 without a word; RunResult refused it."""
    sent = []
    with HitlClient("http://hitl.invalid", "key", transport=httpx.MockTransport(
            lambda request: sent.append(request) or httpx.Response(200, json={}))) as client:
        with pytest.raises(TypeError, match="tokens_used must be a whole number"):
            client.report_usage(str(uuid.uuid4()), tokens)
        with pytest.raises(TypeError, match="tokens_used must be a whole number"):
            client.submit_response(str(uuid.uuid4()), str(uuid.uuid4()), "coder", str(uuid.uuid4()), {"done": True},
                                   tokens_used=tokens)
    assert sent == []


@pytest.mark.parametrize("answer", [httpx.Response(204), httpx.Response(200, content=b""),
                                    httpx.Response(200, json={}), httpx.Response(200, json=[1, 2])])
def test_an_empty_or_shapeless_success_is_an_error_never_an_empty_result(answer):
    """A 204 (a proxy's) came back as an AgentApproval with every field blank."""
    from hitl_sdk import HitlError

    with HitlClient("http://hitl.invalid", "key", retry=FAST_RETRY,
                    transport=httpx.MockTransport(lambda request: answer)) as client:
        with pytest.raises(HitlError) as caught:
            client.get_approval(str(uuid.uuid4()))
    assert caught.value.code == "bad_response" and "not the API's JSON" in str(caught.value)


def test_request_returns_a_json_list_an_endpoint_gives():
    """request() is for "anything else": it returns the JSON an endpoint answers, a list included."""
    with HitlClient("http://hitl.invalid", "key", transport=httpx.MockTransport(
            lambda request: httpx.Response(200, json=[{"id": "x"}]))) as client:
        assert client.request("GET", "/some/list") == [{"id": "x"}]


def test_ask_human_and_checkpoint_end_by_their_wait_timeout_while_the_question_cannot_be_asked():
    """wait_timeout bounded only the wait: with the server unreachable, the question's creation
    went on retrying for as many attempts as the policy gives (here minutes), past the caller's
    timeout. Now the whole call ends by it, with the error that kept the question from being asked."""
    from hitl_sdk import HitlConnectionError

    def refused(request):
        raise httpx.ConnectError("connection refused", request=request)

    patient = RetryPolicy(attempts=1000, backoff_base=0.05, backoff_max=0.2)
    with HitlClient("http://127.0.0.1:9", "key", retry=patient, transport=httpx.MockTransport(refused)) as client:
        started = time.monotonic()
        with pytest.raises(HitlConnectionError):
            client.ask_human(str(uuid.uuid4()), "Kafka or SQS?", wait_timeout=1.0)
        assert 0.9 <= time.monotonic() - started < 10

    async def run():
        async with AsyncHitlClient("http://127.0.0.1:9", "key", retry=patient,
                                   transport=httpx.MockTransport(refused)) as client:
            started = time.monotonic()
            with pytest.raises(HitlConnectionError):
                await client.checkpoint(str(uuid.uuid4()), "The plan is ready, go on?", wait_timeout=1.0)
            return time.monotonic() - started

    assert 0.9 <= asyncio.run(run()) < 10


def test_a_bad_request_whose_detail_is_its_fields_message_says_it_once():
    """``events(last_event_id=10**9)``: "400 invalid: No event has had the id ... last_event_id: No
    event has had the id ..." said the server's sentence twice."""
    from hitl_sdk import BadRequest

    said = "No event has had the id 1000000000."
    once = BadRequest(said, status=400, code="invalid",
                      body={"error": "invalid", "detail": said, "fields": {"last_event_id": [said]}})
    assert str(once) == f"400 invalid: last_event_id: {said}"
    both = BadRequest("Invalid input.", status=400, code="invalid",
                      body={"error": "invalid", "detail": "Invalid input.", "fields": {"tokens_used": ["Too big."]}})
    assert str(both) == "400 invalid: Invalid input. tokens_used: Too big."


def test_a_float_cost_is_refused_before_anything_is_sent():
    """``report_usage(id, 5, 0.5)`` went to the server and came back a 400, where a float token
    count is refused at once: both are now, as in RunResult and WithUsage."""
    sent = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(500))
    with HitlClient("http://hitl.invalid", "key", retry=FAST_RETRY, transport=transport) as client:
        with pytest.raises(TypeError, match="actual_cost must be a Decimal"):
            client.report_usage(str(uuid.uuid4()), 5, 0.5)
        with pytest.raises(TypeError, match="actual_cost must be a Decimal"):
            client.submit_response(str(uuid.uuid4()), str(uuid.uuid4()), "coder", str(uuid.uuid4()), {"a": 1},
                                   tokens_used=5, actual_cost=0.5)
    assert sent == []
