"""Benchmark: server CPU per request and throughput of the real server, against its own floor.

    .venv/bin/python bench/throughput.py [--requests 1000] [--burst 200,1000] [--deadline 900] [--server uvicorn]

Runs on the environment's configuration (PostgreSQL and Redis when DATABASE_URL / REDIS_URL
are set, else a throwaway SQLite file) with the production launcher (bin/serve: N daphne
processes on one port; --server uvicorn runs every part on uvicorn instead). Server CPU is
read from the web processes (/proc utime + stime), so the client's own work does not count. Everything is measured in this one run, so the ratios
hold on a noisy machine even when the absolute figures move. Prints one JSON object:

  bare_asgi       CPU ms per response of a three-line ASGI app on the same daphne (the floor),
                  measured in batches alternating with the trivial GET's (--interleave)
  trivial_get     CPU ms per authenticated GET /api/v1/tasks/{id}, requests/s with 8 clients,
                  and x_bare (the CPU ratio to the floor; goal <= 10)
  operations      CPU ms per create, respond, wait (decided), start and usage
  round_trip      create + respond + wait + start: CPU ms per round trip and x_trivial_get
                  (goal <= 6); round trips/s with 8 and 50 agents; requests/s as a fraction of
                  the trivial GET rate (goal >= 0.5); floor: the CPU of a create's estimate and
                  risk analysis (run in this process on the same body) in trivial GETs, and the
                  four requests (a trivial GET each) plus it: an estimate of what a round trip
                  costs whatever its writes do
  bursts          N agents asking at once (one create each): p50/p99 ms and the count of
                  201 / 503 / other answers and dropped connections (goal: no 500, none dropped)
  scale_out       round trips/s with 50 agents on 1 and on 2 processes, and the ratio (goal >= 1.5),
                  with the 50 agents in one project and spread over ten, beside trivial GETs/s
                  (16 clients) on the same servers; interleaved runs (--repeats), ratios over sums
  servers         daphne against uvicorn (bin/serve --server uvicorn), one process each on the same
                  app: the floor, the trivial GET and round trips with 8 agents (CPU and rates),
                  interleaved (--repeats), and uvicorn's ratios to daphne
  errors          unexpected answers (each a count and the first few); the run never hangs:
                  a deadline stops it, and every server it started is stopped (SIGKILL after 20 s)
"""
import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import common
from common import (
    Client,
    arm_deadline,
    approval_request_body,
    arm_traceback_dump,
    backend_description,
    bench_defaults,
    free_port,
    bench_project,
    latency_summary,
    set_large_budget,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARM_UP = 10  # round trips before anything is measured
GRACE = 20


class Deadline(Exception):
    pass


class Finished(Exception):
    """The parts asked for (--only) are measured."""


class Run:
    def __init__(self, deadline_s):
        self.deadline = time.monotonic() + deadline_s
        self.errors = collections.Counter()
        self.first_errors = []
        self.lock = threading.Lock()

    def left(self):
        return self.deadline - time.monotonic()

    def check(self):
        if self.left() <= 0:
            raise Deadline()

    def error(self, where, detail):
        with self.lock:
            self.errors[where] += 1
            if len(self.first_errors) < 10:
                self.first_errors.append([where, str(detail)[:300]])


# --- servers ------------------------------------------------------------------------------------

def _children(pid):
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


SERVER = "daphne"  # --server: what every part but ``servers`` runs on


@contextmanager
def serve(workers, app="botarmy_hitl.asgi:application", health="/api/v1/health", key="-", extra_env=None,
          server=None):
    """bin/serve with ``workers`` processes of ``server`` (daphne or uvicorn) on a free port;
    yields (port, worker pids)."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="hitl-bench-serve-", suffix=".log", delete=False)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'bench'}:{ROOT}", "HITL_WEB_SERVER": server or SERVER,
           **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, str(ROOT / "bin" / "serve"), "--workers", str(workers),
                             "--port", str(port), "--app", app], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=log, start_new_session=True)

    def kill_group():
        os.killpg(proc.pid, signal.SIGKILL)

    common._SERVERS.append(kill_group)
    try:
        for _ in range(150):
            try:
                if Client(port, key, text_fallback=True).call("GET", health, timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        else:
            raise SystemExit("server did not start: " + Path(log.name).read_text()[-2000:])
        if proc.poll() is not None:
            raise SystemExit("server exited: " + Path(log.name).read_text()[-2000:])
        pids = []
        for _ in range(50):
            pids = _children(proc.pid)
            if len(pids) == workers:
                break
            time.sleep(0.1)
        yield port, pids
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=GRACE + 5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
        except ProcessLookupError:
            pass
        proc.wait()
        common._SERVERS.remove(kill_group)
        log.close()
        os.unlink(log.name)


# --- load ---------------------------------------------------------------------------------------

def in_threads(run, n, target, *args):
    threads = [threading.Thread(target=target, args=(i, *args), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(run.left(), 0.1))
    run.check()


def get_rate(run, port, key, path, clients, total):
    """``total`` GETs of ``path`` over ``clients`` keep-alive connections: (seconds, statuses)."""
    per = total // clients
    statuses = collections.Counter()

    def client(i):
        c = Client(port, key, text_fallback=True)
        for _ in range(per):
            if run.left() <= 0:
                return
            try:
                status, body = c.call("GET", path, timeout=60)
            except OSError as exc:
                run.error("get: dropped", exc)
                continue
            statuses[status] += 1
            if status != 200:
                run.error(f"get {status}", body)

    t0 = time.monotonic()
    in_threads(run, clients, client)
    return time.monotonic() - t0, per * clients


def measure_cpu(pids, fn):
    before = cpu_seconds(pids)
    result = fn()
    return cpu_seconds(pids) - before, result


def round_trip(run, port, agent, project_task, reviewer_client):
    """create, respond (a reviewer), wait (decided: answers at once), start. True when all went."""
    status, body = agent.call("POST", "/api/v1/agent-approvals", approval_request_body(*project_task), timeout=60)
    if status != 201:
        run.error(f"create {status}", body)
        return False
    approval_id = body["approval_id"]
    status, body = reviewer_client.call("POST", f"/api/v1/agent-approvals/{approval_id}/respond",
                                        {"decision": "approve"}, timeout=60)
    if status != 200:
        run.error(f"respond {status}", body)
        return False
    status, body = agent.call("GET", f"/api/v1/agent-approvals/{approval_id}/wait?timeout=30", timeout=60)
    if status != 200 or body.get("status") != "approved":
        run.error(f"wait {status}", body)
        return False
    status, body = agent.call("POST", f"/api/v1/agent-approvals/{approval_id}/start", timeout=60)
    if status != 200:
        run.error(f"start {status}", body)
        return False
    return True


def round_trips(run, port, pids, fx, agents, seconds, pool="tasks"):
    """``agents`` agents, each with its own task (reused: a started task may ask again), doing
    round trips for ``seconds``: (round trips/s, CPU ms per round trip). ``pool``: "tasks" (one
    project) or "spread" (tasks spread over several projects)."""
    tasks = fx[pool].take(agents)
    done = collections.Counter()
    stop_at = time.monotonic() + seconds

    def agent(i):
        a, r = Client(port, fx["agent_key"]), Client(port, fx["reviewer_key"])
        while time.monotonic() < stop_at and run.left() > 0:
            try:
                if round_trip(run, port, a, tasks[i], r):
                    done[i] += 1
            except (OSError, ValueError) as exc:
                run.error("round trip: dropped", exc)

    t0 = time.monotonic()
    cpu, _ = measure_cpu(pids, lambda: in_threads(run, agents, agent))
    elapsed = time.monotonic() - t0
    n = sum(done.values())
    return {"round_trips_per_s": round(n / elapsed, 1), "requests_per_s": round(4 * n / elapsed, 1),
            "cpu_ms_per_round_trip": round(cpu * 1000 / n, 2) if n else None, "round_trips": n}


def operations(run, port, pids, fx, n):
    """CPU per operation, each phase on its own over ``n`` fresh tasks with 8 clients."""
    tasks = fx["tasks"].take(n)
    ids = [None] * n
    out = {}

    def phase(name, call):
        def worker(w, key):
            c = Client(port, key)
            for i in range(w, n, 8):
                if run.left() <= 0:
                    return
                try:
                    call(c, i)
                except (OSError, ValueError) as exc:
                    run.error(f"{name}: dropped", exc)
        key = fx["reviewer_key"] if name == "respond" else fx["agent_key"]
        cpu, _ = measure_cpu(pids, lambda: in_threads(run, 8, worker, key))
        out[name] = round(cpu * 1000 / n, 2)

    def create(c, i):
        status, body = c.call("POST", "/api/v1/agent-approvals", approval_request_body(*tasks[i]))
        if status == 201:
            ids[i] = body["approval_id"]
        else:
            run.error(f"create {status}", body)

    def expect(name, method, suffix, body=None, ok=200):
        def call(c, i):
            if ids[i] is None:
                return
            status, answer = c.call(method, f"/api/v1/agent-approvals/{ids[i]}{suffix}", body)
            if status != ok:
                run.error(f"{name} {status}", answer)
        return call

    phase("create", create)
    phase("respond", expect("respond", "POST", "/respond", {"decision": "approve"}))
    phase("wait", expect("wait", "GET", "/wait?timeout=30"))
    phase("start", expect("start", "POST", "/start"))
    phase("usage", expect("usage", "POST", "/usage", {"tokens_used": 1000, "actual_cost": "0.0090"}))
    return out


def analysis_cpu_ms(fx, n):
    """CPU ms of what every create computes besides its writes, run in this process on the
    benchmark's own request body: the server's estimate (tokenizer, price) and the risk analysis
    (every analyzer of the pipeline) as agent_approval_request calls them, with the project's rules
    read once and no remaining budget (the server reads both per request). A round trip does it
    once: with four requests of at least a trivial GET each, an estimate of the floor under a
    round trip's CPU that no change to its writes can lower."""
    from decimal import Decimal

    from approvals.analyzers import RiskContext, assess
    from approvals.estimation import estimate
    from approvals.services.calibration import project_rules

    body = approval_request_body(fx["project_id"], fx["trivial_task"])  # nothing is written
    rules = project_rules(fx["project_id"])

    def once():
        tokens, cost = estimate(model="", proposed_action=body["proposed_action"], input_data=body["input_data"],
                                context_summary="", estimated_tokens=body["estimated_tokens"],
                                estimated_cost=Decimal(body["estimated_cost"]))
        assess(RiskContext(agent_type=body["agent_type"], proposed_action=body["proposed_action"],
                           input_data=body["input_data"], estimated_cost=cost, budget_remaining=None), rules)

    for _ in range(20):  # the engines are built on first use, as in the server's warm-up
        once()
    t0 = time.process_time()
    for _ in range(n):
        once()
    return (time.process_time() - t0) * 1000 / n


def burst(run, port, fx, n):
    """``n`` agents ask at once, one create each on a fresh task, each on its own connection."""
    tasks = fx["tasks"].take(n)
    statuses = collections.Counter()
    latencies = []
    retry_after = collections.Counter()
    gate = threading.Barrier(n, timeout=120)
    lock = threading.Lock()

    def agent(i):
        c = Client(port, fx["agent_key"], text_fallback=True)
        try:
            gate.wait()
        except threading.BrokenBarrierError:
            pass
        t0 = time.monotonic()
        try:
            status, body = c.call("POST", "/api/v1/agent-approvals", approval_request_body(*tasks[i]), timeout=120,
                                  retry=False)
        except OSError as exc:
            with lock:
                statuses["dropped"] += 1
            run.error("burst: dropped", exc)
            return
        with lock:
            latencies.append((time.monotonic() - t0) * 1000)
            statuses[status] += 1
            if status == 503:
                retry_after[c.retry_after is not None] += 1
        if status not in (201, 503):
            run.error(f"burst {status}", body)

    in_threads(run, n, agent)
    return {"agents": n, **latency_summary(latencies, 50, 99),
            "answers": {str(k): v for k, v in sorted(statuses.items(), key=str)},
            "503_with_retry_after": retry_after.get(True, 0)}


def scale_out(run, fx, seconds, repeats):
    """Round trips/s with 50 agents on 1 and on 2 web processes (one project, and ten), beside
    trivial GETs/s with 16 clients on the same servers (the host's own limit on scale-out), measured
    ``repeats`` times interleaved (1, 2, 1, 2) so that a change in the shared host's speed falls
    on both sides; the ratios are taken over the sums."""
    sums = collections.defaultdict(float)
    runs = []
    for _ in range(repeats):
        this = {}
        for workers in (1, 2):
            with serve(workers, key=fx["agent_key"]) as (port, pids):
                # The simplest request on the same servers: what this host gives two processes at all.
                get_rate(run, port, fx["agent_key"], f"/api/v1/tasks/{fx['trivial_task']}", 16, 320)  # warm up
                elapsed, n = get_rate(run, port, fx["agent_key"], f"/api/v1/tasks/{fx['trivial_task']}", 16, 1600)
                sums[("trivial_get", workers)] += n / elapsed
                this[f"trivial_get_processes_{workers}"] = round(n / elapsed, 1)
                for pool, name in (("tasks", "one_project"), ("spread", "ten_projects")):
                    rt = round_trips(run, port, pids, fx, 50, seconds, pool=pool)
                    sums[(name, workers)] += rt["round_trips_per_s"]
                    this[f"{name}_processes_{workers}"] = rt["round_trips_per_s"]
        runs.append(this)
    out = {"runs": runs}
    for name in ("trivial_get", "one_project", "ten_projects"):
        one, two = sums[(name, 1)], sums[(name, 2)]
        out[name] = {"processes_1": round(one / repeats, 1), "processes_2": round(two / repeats, 1),
                     "ratio": round(two / one, 2) if one else None}
    return out


def servers(run, fx, seconds, repeats, requests):
    """daphne against uvicorn (bin/serve --server), one process each, on the same app: the floor
    (the bare ASGI app), the trivial GET and round trips with 8 agents, CPU per request and rates,
    interleaved (daphne, uvicorn, daphne, uvicorn) ``repeats`` times; figures over the sums."""
    sums = collections.defaultdict(float)
    trivial = f"/api/v1/tasks/{fx['trivial_task']}"
    for _ in range(repeats):
        for server in ("daphne", "uvicorn"):
            with serve(1, app="bare_asgi:app", health="/", server=server) as (port, pids):
                get_rate(run, port, "-", "/", 8, 200)  # warm up
                cpu, (elapsed, n) = measure_cpu(pids, lambda: get_rate(run, port, "-", "/", 8, requests))
                sums[(server, "bare_cpu")] += cpu
                sums[(server, "bare_n")] += n
                sums[(server, "bare_s")] += elapsed
            with serve(1, key=fx["agent_key"], server=server) as (port, pids):
                agent, reviewer = Client(port, fx["agent_key"]), Client(port, fx["reviewer_key"])
                for task in fx["tasks"].take(WARM_UP // 2):
                    round_trip(run, port, agent, task, reviewer)
                get_rate(run, port, fx["agent_key"], trivial, 8, 200)  # warm up
                cpu, (elapsed, n) = measure_cpu(pids, lambda: get_rate(run, port, fx["agent_key"], trivial, 8,
                                                                       requests))
                sums[(server, "get_cpu")] += cpu
                sums[(server, "get_n")] += n
                sums[(server, "get_s")] += elapsed
                rt = round_trips(run, port, pids, fx, 8, seconds)
                sums[(server, "rt_per_s")] += rt["round_trips_per_s"]
                if rt["cpu_ms_per_round_trip"]:  # a repeat with no round trip done does not count as free
                    sums[(server, "rt_cpu_ms")] += rt["cpu_ms_per_round_trip"]
                    sums[(server, "rt_counted")] += 1
    out = {}
    for server in ("daphne", "uvicorn"):
        def total(name):
            return sums[(server, name)]
        out[server] = {
            "bare_asgi_cpu_ms": round(total("bare_cpu") * 1000 / max(total("bare_n"), 1), 3),
            "trivial_get_cpu_ms": round(total("get_cpu") * 1000 / max(total("get_n"), 1), 2),
            "trivial_get_per_s": round(total("get_n") / max(total("get_s"), 1e-9), 1),
            "round_trip_cpu_ms": round(total("rt_cpu_ms") / total("rt_counted"), 2) if total("rt_counted") else None,
            "round_trips_per_s_8_agents": round(total("rt_per_s") / repeats, 1),
        }
    d, u = out["daphne"], out["uvicorn"]
    out["uvicorn_x_daphne"] = {
        "trivial_get_per_s": round(u["trivial_get_per_s"] / d["trivial_get_per_s"], 2) if d["trivial_get_per_s"] else None,
        "round_trips_per_s": (round(u["round_trips_per_s_8_agents"] / d["round_trips_per_s_8_agents"], 2)
                              if d["round_trips_per_s_8_agents"] else None),
        "round_trip_cpu": (round(u["round_trip_cpu_ms"] / d["round_trip_cpu_ms"], 2)
                           if d["round_trip_cpu_ms"] and u["round_trip_cpu_ms"] else None),
    }
    return out


# --- fixtures -----------------------------------------------------------------------------------

class TaskPool:
    """Fresh pending coder tasks as (project id, task id), handed out once each."""

    def __init__(self, ids):
        self.ids, self.next = ids, 0

    def take(self, n):
        if self.next + n > len(self.ids):
            raise SystemExit("not enough tasks made for this run")
        out, self.next = self.ids[self.next:self.next + n], self.next + n
        return out


def fixtures(n_tasks, n_spread=0, spread_projects=10):
    """The project of bench_project with ``n_tasks`` tasks, and ``n_spread`` more tasks spread over
    ``spread_projects`` other projects where the same agent and reviewer have their roles."""
    admin, project, agent, reviewer, stamp = bench_project("Throughput", "throughput")
    from access.services import api_key_create, role_grant
    from projects.models import Task
    from projects.services import project_create

    tasks = Task.objects.bulk_create(Task(project=project, agent_type="coder", title=f"tp {i}", created_by=agent)
                                     for i in range(n_tasks))
    spread = []
    for p in range(spread_projects if n_spread else 0):
        other = project_create(actor=admin, name=f"Throughput {stamp} {p}", slug=f"throughput-{stamp}-{p}")
        set_large_budget(other)
        role_grant(user=agent, project=other, role="agent")
        role_grant(user=reviewer, project=other, role="reviewer")
        spread += [(str(other.pk), str(t.pk)) for t in Task.objects.bulk_create(
            Task(project=other, agent_type="coder", title=f"tp {p} {i}", created_by=agent)
            for i in range(n_spread // spread_projects))]
    return {"project_id": str(project.pk), "tasks": TaskPool([(str(project.pk), str(t.pk)) for t in tasks]),
            "spread": TaskPool(sorted(spread, key=lambda pt: pt[1])), "trivial_task": str(tasks[0].pk),
            "agent_key": api_key_create(user=agent)[1], "reviewer_key": api_key_create(user=reviewer)[1]}


def main():
    arm_traceback_dump()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="GETs per side (floor, trivial GET)")
    parser.add_argument("--ops", type=int, default=200, help="calls per operation measured")
    parser.add_argument("--seconds", type=float, default=10, help="length of each round-trip run")
    parser.add_argument("--burst", default="200,1000", help="sizes of the concurrent-create bursts")
    parser.add_argument("--interleave", type=int, default=5, help="alternating batches of the floor and the GET")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved 1- and 2-process runs of the scale-out")
    parser.add_argument("--deadline", type=float, default=900, help="seconds before the run gives up")
    parser.add_argument("--only", default="", help="comma-separated parts to run (get, ops, round_trip, bursts, "
                        "scale_out, servers; the bare floor always runs): a quicker look at one figure")
    parser.add_argument("--server", choices=("daphne", "uvicorn"), default="daphne",
                        help="the web server of every part but servers (which runs both)")
    args = parser.parse_args()
    global SERVER
    SERVER = args.server
    only = set(filter(None, args.only.split(",")))

    def part(name):
        return not only or name in only
    bursts = [int(b) for b in args.burst.split(",") if b]
    arm_deadline(args.deadline + 120, "throughput")  # a backstop: the run's own deadline stops it first

    bench_defaults()
    run = Run(args.deadline)
    fx = fixtures(1 + WARM_UP + args.ops + 8 + 50 + 2 * 50 * args.repeats + sum(bursts)
                  + 2 * args.repeats * (WARM_UP // 2 + 8),
                  n_spread=2 * 50 * args.repeats)
    fx["tasks"].take(1)  # the trivial GET's task
    result = {**backend_description(), "cpus": os.cpu_count()}
    try:
        trivial = f"/api/v1/tasks/{fx['trivial_task']}"
        with serve(1, app="bare_asgi:app", health="/") as (bare_port, bare_pids), \
                serve(1, key=fx["agent_key"]) as (port, pids):
            # Interleaved: a change in the host's speed falls on the floor and on the GET alike.
            sides = {"bare": (bare_port, bare_pids, "-", "/"), "get": (port, pids, fx["agent_key"], trivial)}
            totals = {side: [0.0, 0.0, 0] for side in sides}  # cpu s, elapsed s, requests
            for side, (p, _, key, path) in sides.items():
                get_rate(run, p, key, path, 8, 200)  # warm up
            for _ in range(args.interleave):
                for side, (p, ps, key, path) in sides.items():
                    cpu, (elapsed, n) = measure_cpu(ps, lambda: get_rate(run, p, key, path, 8,
                                                                         args.requests // args.interleave))
                    totals[side][0] += cpu
                    totals[side][1] += elapsed
                    totals[side][2] += n
            (bare_cpu, bare_s, bare_n), (get_cpu, get_s, get_n) = totals["bare"], totals["get"]
            bare_ms, get_ms, get_rps = bare_cpu * 1000 / bare_n, get_cpu * 1000 / get_n, get_n / get_s
            result["bare_asgi"] = {"cpu_ms": round(bare_ms, 3), "requests_per_s": round(bare_n / bare_s, 1)}
            result["trivial_get"] = {"cpu_ms": round(get_ms, 2), "requests_per_s": round(get_rps, 1),
                                     "x_bare": round(get_ms / bare_ms, 1)}
            # Warm the server up first: the first calls build what a process builds once (the
            # analyzers' engines, prepared statements), which no operation should be charged for.
            agent, reviewer = Client(port, fx["agent_key"]), Client(port, fx["reviewer_key"])
            for task in fx["tasks"].take(WARM_UP):
                round_trip(run, port, agent, task, reviewer)
            if part("ops"):
                result["operations_cpu_ms"] = operations(run, port, pids, fx, args.ops)
            if part("round_trip"):
                rt8 = round_trips(run, port, pids, fx, 8, args.seconds)
                rt50 = round_trips(run, port, pids, fx, 50, args.seconds)
                result["round_trip"] = {
                    "cpu_ms": rt8["cpu_ms_per_round_trip"],
                    "x_trivial_get": round(rt8["cpu_ms_per_round_trip"] / get_ms, 2) if rt8["round_trips"] else None,
                    "agents_8": rt8, "agents_50": rt50,
                    "requests_per_s_x_trivial_get": round(rt8["requests_per_s"] / get_rps, 2),
                }
                # What the 6-GET goal leaves for the three writes: a round trip is four requests
                # (four GETs' own cost by the goal's own measure) plus a create's analysis.
                analysis = analysis_cpu_ms(fx, args.ops)
                result["round_trip"]["floor"] = {
                    "create_analysis_cpu_ms": round(analysis, 2),
                    "create_analysis_x_trivial_get": round(analysis / get_ms, 2),
                    "four_requests_and_analysis_x_trivial_get": round(4 + analysis / get_ms, 2),
                }
            if part("bursts"):
                result["bursts"] = [burst(run, port, fx, n) for n in bursts]
        if part("scale_out"):
            result["scale_out"] = scale_out(run, fx, args.seconds, args.repeats)
        if part("servers"):
            result["servers"] = servers(run, fx, args.seconds, args.repeats, args.requests // 2)
    except Finished:
        pass
    except Deadline:
        run.error("deadline", f"the run passed its {args.deadline} s deadline; figures so far are reported")
    result["errors"] = dict(run.errors)
    result["first_errors"] = run.first_errors
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
