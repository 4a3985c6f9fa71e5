"""Benchmark: N agents long-poll their pending call approvals while a reviewer stops the project.

    .venv/bin/python bench/emergency.py [--agents 500] [--port PORT]

Starts the real server (daphne) on the configuration of the environment: PostgreSQL and Redis
when DATABASE_URL / REDIS_URL are set, else a throwaway SQLite file and the in-process layer.
Every agent requests a call approval and parks in GET .../wait; then a reviewer sends
POST /api/v1/emergency/stop/{project_id}. All times are measured from just before the stop
request is sent. Prints one JSON object:
  stop_request_ms               latency of the stop request itself
  release_ms p50/p99/max        from the stop request to each waiting agent's release
  released_cancelled            waits that returned with status `cancelled` (must be all agents)
  released_other                waits that returned anything else (another status, an error)
  first_423_after_stop_ms       until a new approval request (sent in a loop by a separate client
                                as soon as the stop has answered) first gets 423 emergency_stop
  admitted_after_stop           new approval requests answered 201 after the stop's response
                                (must be 0)
  server_errors                 5xx answers, failed connections and unexpected answers (must be 0)
"""
import argparse
import faulthandler
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROBES_AFTER_423 = 20  # the admission probe keeps asking this many times once refused, to catch a 201


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))], 2)


class Client:
    def __init__(self, port, key):
        self.port, self.key = port, key
        self.conn = None

    def call(self, method, path, body=None, timeout=75):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                headers = {"Authorization": f"Bearer {self.key}", "Host": "localhost"}
                payload = None
                if body is not None:
                    payload = json.dumps(body)
                    headers["Content-Type"] = "application/json"
                self.conn.request(method, path, body=payload, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
                try:
                    return response.status, (json.loads(data) if data else None)
                except ValueError:
                    return response.status, data[:500].decode(errors="replace")
            except (ConnectionError, http.client.HTTPException, socket.timeout):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise RuntimeError("unreachable")


def setup(n_agents):
    """Users, keys, a project and one task per agent plus a spare one, written straight to the database."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botarmy_hitl.settings")
    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from access.services import api_key_create, role_grant
    from budgets.models import ProjectBudget
    from projects.services import project_create, task_create

    call_command("migrate", verbosity=0)
    User = get_user_model()
    stamp = str(int(time.time() * 1000))
    admin = User.objects.create_superuser(username=f"bench-admin-{stamp}", password="x", email="b@example.com")
    project = project_create(actor=admin, name=f"Bench stop {stamp}", slug=f"bench-stop-{stamp}")
    # Limits far above what the run needs: this measures approvals, not budget blocks.
    ProjectBudget.objects.update_or_create(project=project, defaults={
        "daily_token_limit": 10**12, "monthly_token_limit": 10**12,
        "daily_cost_limit": Decimal("1000000"), "monthly_cost_limit": Decimal("1000000")})
    agent = User.objects.create_user(username=f"bench-agent-{stamp}")
    role_grant(user=agent, project=project, role="agent")
    reviewer = User.objects.create_user(username=f"bench-reviewer-{stamp}")
    role_grant(user=reviewer, project=project, role="reviewer")
    tasks = [task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"bench {i}").pk
             for i in range(n_agents + 1)]
    return (str(project.pk), [str(t) for t in tasks], api_key_create(user=agent)[1],
            api_key_create(user=reviewer)[1])


def main():
    faulthandler.dump_traceback_later(int(os.environ.get("BENCH_DUMP_AFTER", "0")) or 10**6)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds to let every agent park in its wait before the stop (default 2 + N/100)")
    args = parser.parse_args()
    if not args.port:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            args.port = probe.getsockname()[1]

    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only")
    os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1")
    if not os.environ.get("DATABASE_URL"):
        os.environ["HITL_VAR_DIR"] = tempfile.mkdtemp(prefix="hitl-bench-")
    project_id, tasks, agent_key, reviewer_key = setup(args.agents)
    from django.db import connections

    connections.close_all()  # the server gets the database to itself
    if hasattr(connections["default"], "close_pool"):
        connections["default"].close_pool()  # and PostgreSQL, whose connections are shared, our pooled ones

    # The server's stderr goes to a file: a pipe nobody reads could fill up and block it.
    stderr_file = tempfile.NamedTemporaryFile(prefix="hitl-bench-daphne-", suffix=".log", delete=False)
    server = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(args.port),
                               "botarmy_hitl.asgi:application"], cwd=ROOT, env=os.environ.copy(),
                              stdout=subprocess.DEVNULL, stderr=stderr_file)
    try:
        for _ in range(100):
            try:
                if Client(args.port, agent_key).call("GET", "/api/v1/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit("server did not start: " + Path(stderr_file.name).read_text()[-2000:])
        result = run(args, project_id, tasks, agent_key, reviewer_key)
    finally:
        server.terminate()
        server.wait(timeout=20)
        stderr_file.close()
    print(json.dumps(result, indent=2))
    server_log = Path(stderr_file.name).read_text(errors="replace")
    if result["server_errors"] or result["released_other"] or result["admitted_after_stop"]:
        print(f"--- server stderr ({stderr_file.name}), last 4000 characters ---\n{server_log[-4000:]}",
              file=sys.stderr)
    else:
        os.unlink(stderr_file.name)


def run(args, project_id, tasks, agent_key, reviewer_key):
    tasks, spare_task = tasks[:-1], tasks[-1]
    errors = []
    released = {}  # approval_id -> (monotonic time of the wait's return, status)
    waiting = threading.Semaphore(0)
    lock = threading.Lock()

    def request_body(task_id):
        return {"project_id": project_id, "task_id": task_id, "agent_type": "coder",
                "proposed_action": "Implement the feature described in the task", "input_data": {"task": task_id},
                "estimated_tokens": 1200, "estimated_cost": "0.0100"}

    def agent(task_id):
        client = Client(args.port, agent_key)
        parked = False
        try:
            status, body = client.call("POST", "/api/v1/agent-approvals", request_body(task_id))
            if status != 201:
                errors.append(("create", status, body))
                return
            approval_id = body["approval_id"]
            waiting.release()
            parked = True
            status, body = client.call("GET", f"/api/v1/agent-approvals/{approval_id}/wait?timeout=60")
            returned = time.monotonic()
            if status >= 500 or not isinstance(body, dict):
                errors.append(("wait", status, body))
            with lock:
                released[approval_id] = (returned, body.get("status") if isinstance(body, dict) else status)
        except Exception as exc:  # noqa: BLE001 - every failure counts as a server error
            errors.append(("agent", repr(exc)))
            if not parked:
                waiting.release()

    threading.stack_size(256 * 1024)
    agents = [threading.Thread(target=agent, args=(t,), daemon=True) for t in tasks]
    for t in agents:
        t.start()
    for _ in tasks:
        waiting.acquire()
    time.sleep(args.settle if args.settle is not None else 2.0 + len(tasks) / 100)  # all parked in their wait

    # The admission probe: a separate client, connected beforehand, that asks for a new call
    # approval on the spare task as soon as the stop has answered, until it is refused.
    stop_answered = threading.Event()
    probe = {"first_423": None, "admitted": 0, "answers": []}
    prober_client = Client(args.port, agent_key)
    prober_client.call("GET", "/api/v1/health")

    def prober():
        stop_answered.wait()
        refused = 0
        deadline = time.monotonic() + 60
        while refused <= PROBES_AFTER_423 and time.monotonic() < deadline:
            try:
                status, body = prober_client.call("POST", "/api/v1/agent-approvals", request_body(spare_task))
            except Exception as exc:  # noqa: BLE001
                errors.append(("probe", repr(exc)))
                time.sleep(0.01)
                continue
            at = time.monotonic()
            if status == 423 and isinstance(body, dict) and body.get("error") == "emergency_stop" \
                    and body.get("emergency_stop_id"):
                refused += 1
                if probe["first_423"] is None:
                    probe["first_423"] = at
            elif status == 201:
                probe["admitted"] += 1
                errors.append(("probe admitted after stop", status, body))
            else:
                errors.append(("probe", status, body))
                time.sleep(0.01)

    probe_thread = threading.Thread(target=prober, daemon=True)
    probe_thread.start()

    stopper = Client(args.port, reviewer_key)
    stopper.call("GET", "/api/v1/health")  # connected before the clock starts
    start = time.monotonic()
    try:
        status, body = stopper.call("POST", f"/api/v1/emergency/stop/{project_id}",
                                    {"reason": "benchmark: stop every waiting agent"})
    except Exception as exc:  # noqa: BLE001
        status, body = None, repr(exc)
    stop_done = time.monotonic()
    if status != 201:
        errors.append(("stop", status, body))
    stop_answered.set()

    for t in agents:
        t.join(timeout=max(0.0, start + 75 - time.monotonic()))
    probe_thread.join(timeout=max(0.0, start + 75 - time.monotonic()))
    with lock:
        outcome = dict(released)
    release_ms = [(at - start) * 1000 for at, state in outcome.values() if state == "cancelled"]
    cancelled = len(release_ms)
    other = len(tasks) - cancelled  # includes waits that never returned or failed
    if other:
        states = {}
        for _, state in outcome.values():
            states[state] = states.get(state, 0) + 1
        errors.append(("waits not released as cancelled", {"returned": states,
                                                            "not_returned": len(tasks) - len(outcome)}))
    server_errors = [e for e in errors if e[0] != "waits not released as cancelled"]
    return {
        "agents": len(tasks),
        "database": "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite",
        "channel_layer": "redis" if os.environ.get("REDIS_URL") else "in-memory",
        "stop_request_ms": round((stop_done - start) * 1000, 2),
        "release_ms": {"p50": percentile(release_ms, 50), "p99": percentile(release_ms, 99),
                       "max": round(max(release_ms), 2) if release_ms else None},
        "released_cancelled": cancelled,
        "released_other": other,
        "first_423_after_stop_ms": (round((probe["first_423"] - start) * 1000, 2)
                                    if probe["first_423"] is not None else None),
        "admitted_after_stop": probe["admitted"],
        "server_errors": len(server_errors),
        "first_errors": errors[:5],
    }


if __name__ == "__main__":
    main()
