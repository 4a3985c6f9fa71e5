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
import json
import os
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

from common import (
    Client,
    agent_and_reviewer_fixtures,
    approval_request_body,
    arm_deadline,
    arm_traceback_dump,
    backend_description,
    bench_defaults,
    daphne_server,
    free_port,
    latency_summary,
    percentile,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


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
    arm_traceback_dump()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--reviewers", type=int, default=4)
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--deadline", type=float, default=600, help="seconds before the run gives up")
    args = parser.parse_args()
    arm_deadline(args.deadline, "approvals")
    if not args.port:
        args.port = free_port()

    bench_defaults()
    # Users, keys, a project and one task per agent, written straight to the database.
    project_id, tasks, agent_key, reviewer_key = agent_and_reviewer_fixtures(args.agents)

    with daphne_server(args.port, agent_key) as (server, server_log):
        result = run(args, project_id, tasks, agent_key, reviewer_key, server.pid)
    os.unlink(server_log)
    print(json.dumps(result, indent=2))


def run(args, project_id, tasks, agent_key, reviewer_key, server_pid):
    errors = []
    create_ms, released = [], {}
    waiting = threading.Semaphore(0)
    lock = threading.Lock()

    def agent(task_id):
        client = Client(args.port, agent_key)
        parked = False
        try:
            t0 = time.monotonic()
            status, body = client.call("POST", "/api/v1/agent-approvals", approval_request_body(project_id, task_id))
            with lock:
                create_ms.append((time.monotonic() - t0) * 1000)
            if status != 201:
                errors.append(("create", status, body))
                return
            waiting.release()
            parked = True
            status, body = client.call("GET", f"/api/v1/agent-approvals/{body['approval_id']}/wait?timeout=60")
            if status >= 500 or body.get("status") != "approved":
                errors.append(("wait", status, body.get("status") if isinstance(body, dict) else body))
                return
            with lock:
                released[body["approval_id"]] = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - every failure counts as a server error
            errors.append(("agent", repr(exc)))
        finally:
            if not parked:  # a refused or failed create still counts as arrived: never hang the run
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
        **backend_description(),
        "approvals_completed": len(released),
        "approvals_per_second": round(len(released) / elapsed, 1) if elapsed else None,
        "release_ms": latency_summary(release_ms, 50, 95, 99),
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
