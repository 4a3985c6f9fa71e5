"""Benchmark: N agents request a call approval and long-poll it while reviewers approve them.

    .venv/bin/python bench/approvals.py [--agents 200] [--reviewers 4] [--port PORT]

Starts the real server (daphne) on the configuration of the environment: PostgreSQL and Redis
when DATABASE_URL / REDIS_URL are set, else a throwaway SQLite file and the in-process layer.
Prints one JSON object:
  approvals_per_second          approvals completed (agent released) per second of the approve phase
  release_ms p50/p95/p99        from a reviewer sending its decision to the waiting agent's release
                                (includes the decision request itself: see respond_ms)
  respond_ms p50/p99            latency of the reviewers' POST .../respond
  create_ms p50/p99             latency of POST /api/v1/agent-approvals
  server_threads_while_waiting  threads of the daphne process with every agent waiting
  db_connections_while_waiting  PostgreSQL backends on the database with every agent waiting
  server_errors                 5xx answers and failed connections (must be 0)
"""
import argparse
import faulthandler
import http.client
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


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
                return response.status, (json.loads(data) if data else None)
            except (ConnectionError, http.client.HTTPException, socket.timeout):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise RuntimeError("unreachable")


def setup(n_agents):
    """Users, keys, a project and one task per agent, written straight to the database."""
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
    project = project_create(actor=admin, name=f"Bench {stamp}", slug=f"bench-{stamp}")
    # Limits far above what the run needs: this measures approvals, not budget blocks.
    ProjectBudget.objects.update_or_create(project=project, defaults={
        "daily_token_limit": 10**12, "monthly_token_limit": 10**12,
        "daily_cost_limit": Decimal("1000000"), "monthly_cost_limit": Decimal("1000000")})
    agent = User.objects.create_user(username=f"bench-agent-{stamp}")
    role_grant(user=agent, project=project, role="agent")
    reviewer = User.objects.create_user(username=f"bench-reviewer-{stamp}")
    role_grant(user=reviewer, project=project, role="reviewer")
    tasks = [task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"bench {i}").pk
             for i in range(n_agents)]
    return (str(project.pk), [str(t) for t in tasks], api_key_create(user=agent)[1],
            api_key_create(user=reviewer)[1])


def count_threads(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        return None


def count_db_connections():
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid()")
        return cursor.fetchone()[0]


def main():
    faulthandler.dump_traceback_later(int(os.environ.get("BENCH_DUMP_AFTER", "0")) or 10**6)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--reviewers", type=int, default=4)
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
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

    server = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(args.port),
                               "botarmy_hitl.asgi:application"], cwd=ROOT, env=os.environ.copy(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                if Client(args.port, agent_key).call("GET", "/api/v1/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit("server did not start: " + server.stderr.read().decode()[-2000:])
        result = run(args, project_id, tasks, agent_key, reviewer_key, server.pid)
    finally:
        server.terminate()
        server.wait(timeout=20)
    print(json.dumps(result, indent=2))


def run(args, project_id, tasks, agent_key, reviewer_key, server_pid):
    errors = []
    create_ms, released = [], {}
    waiting = threading.Semaphore(0)
    lock = threading.Lock()

    def agent(task_id):
        client = Client(args.port, agent_key)
        try:
            t0 = time.monotonic()
            status, body = client.call("POST", "/api/v1/agent-approvals", {
                "project_id": project_id, "task_id": task_id, "agent_type": "coder",
                "proposed_action": "Implement the feature described in the task", "input_data": {"task": task_id},
                "estimated_tokens": 1200, "estimated_cost": "0.0100"})
            with lock:
                create_ms.append((time.monotonic() - t0) * 1000)
            if status != 201:
                errors.append(("create", status, body))
                return
            waiting.release()
            status, body = client.call("GET", f"/api/v1/agent-approvals/{body['approval_id']}/wait?timeout=60")
            if status >= 500 or body.get("status") != "approved":
                errors.append(("wait", status, body.get("status") if isinstance(body, dict) else body))
                return
            with lock:
                released[body["approval_id"]] = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - every failure counts as a server error
            errors.append(("agent", repr(exc)))
            waiting.release()

    agents = [threading.Thread(target=agent, args=(t,)) for t in tasks]
    for t in agents:
        t.start()
    for _ in tasks:
        waiting.acquire()
    time.sleep(1.0)  # every agent is now parked in its long poll
    threads_while_waiting = count_threads(server_pid)
    db_connections = count_db_connections()

    decided_at, respond_ms = {}, []
    todo = queue.Queue()
    start = time.monotonic()

    def reviewer():
        client = Client(args.port, reviewer_key)
        while True:
            approval_id = todo.get()
            if approval_id is None:
                return
            sent = time.monotonic()
            status, body = client.call("POST", f"/api/v1/agent-approvals/{approval_id}/respond",
                                       {"decision": "approve"})
            done = time.monotonic()
            if status != 200:
                errors.append(("respond", status, body))
            decided_at[approval_id] = sent
            respond_ms.append((done - sent) * 1000)

    lister = Client(args.port, reviewer_key)
    seen = set()
    reviewers = [threading.Thread(target=reviewer) for _ in range(args.reviewers)]
    for t in reviewers:
        t.start()
    while len(seen) < len(tasks) and time.monotonic() - start < 120:
        status, page = lister.call("GET", f"/api/v1/agent-approvals/project/{project_id}?status=pending&page_size=200")
        if status != 200:
            errors.append(("list", status, page))
            break
        fresh = [a["approval_id"] for a in page["results"] if a["approval_id"] not in seen]
        for approval_id in fresh:
            seen.add(approval_id)
            todo.put(approval_id)
        if not fresh:
            time.sleep(0.05)
    for _ in reviewers:
        todo.put(None)
    for t in reviewers + agents:
        t.join()
    elapsed = (max(released.values()) - start) if released else None
    release_ms = [(released[a] - decided_at[a]) * 1000 for a in released if a in decided_at]
    return {
        "agents": len(tasks),
        "reviewers": args.reviewers,
        "database": "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite",
        "channel_layer": "redis" if os.environ.get("REDIS_URL") else "in-memory",
        "approvals_completed": len(released),
        "approvals_per_second": round(len(released) / elapsed, 1) if elapsed else None,
        "release_ms": {"p50": percentile(release_ms, 50), "p95": percentile(release_ms, 95),
                       "p99": percentile(release_ms, 99), "max": round(max(release_ms), 2) if release_ms else None},
        "respond_ms": {"p50": percentile(respond_ms, 50), "p99": percentile(respond_ms, 99)},
        "create_ms": {"p50": percentile(create_ms, 50), "p99": percentile(create_ms, 99),
                      "mean": round(statistics.mean(create_ms), 2) if create_ms else None},
        "server_threads_while_waiting": threads_while_waiting,
        "db_connections_while_waiting": db_connections,
        "server_errors": len(errors),
        "first_errors": errors[:5],
    }


if __name__ == "__main__":
    main()
