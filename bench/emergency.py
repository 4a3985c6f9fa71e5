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
import json
import os
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
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROBES_AFTER_423 = 20  # the admission probe keeps asking this many times once refused, to catch a 201


def main():
    arm_traceback_dump()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds to let every agent park in its wait before the stop (default 2 + N/100)")
    parser.add_argument("--deadline", type=float, default=600, help="seconds before the run gives up")
    args = parser.parse_args()
    arm_deadline(args.deadline, "emergency")
    if not args.port:
        args.port = free_port()

    bench_defaults()
    # Users, keys, a project and one task per agent plus a spare one, written straight to the database.
    project_id, tasks, agent_key, reviewer_key = agent_and_reviewer_fixtures(
        args.agents + 1, name="Bench stop", slug="bench-stop")
    from django.db import connections

    connections.close_all()  # the server gets the database to itself
    if hasattr(connections["default"], "close_pool"):
        connections["default"].close_pool()  # and PostgreSQL, whose connections are shared, our pooled ones

    with daphne_server(args.port, agent_key) as (_server, server_log_path):
        result = run(args, project_id, tasks, agent_key, reviewer_key)
    print(json.dumps(result, indent=2))
    server_log = Path(server_log_path).read_text(errors="replace")
    if result["server_errors"] or result["released_other"] or result["admitted_after_stop"]:
        print(f"--- server stderr ({server_log_path}), last 4000 characters ---\n{server_log[-4000:]}",
              file=sys.stderr)
    else:
        os.unlink(server_log_path)


def run(args, project_id, tasks, agent_key, reviewer_key):
    tasks, spare_task = tasks[:-1], tasks[-1]
    errors = []
    released = {}  # approval_id -> (monotonic time of the wait's return, status)
    waiting = threading.Semaphore(0)
    lock = threading.Lock()

    def agent(task_id):
        client = Client(args.port, agent_key, text_fallback=True)
        parked = False
        try:
            status, body = client.call("POST", "/api/v1/agent-approvals", approval_request_body(project_id, task_id))
            if status != 201:
                errors.append(("create", status, body))
                return  # the finally below still releases: a refused create never hangs the run
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
        finally:
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
    prober_client = Client(args.port, agent_key, text_fallback=True)
    prober_client.call("GET", "/api/v1/health")

    def prober():
        stop_answered.wait()
        refused = 0
        deadline = time.monotonic() + 60
        while refused <= PROBES_AFTER_423 and time.monotonic() < deadline:
            try:
                status, body = prober_client.call("POST", "/api/v1/agent-approvals",
                                                  approval_request_body(project_id, spare_task))
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

    stopper = Client(args.port, reviewer_key, text_fallback=True)
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
        **backend_description(),
        "stop_request_ms": round((stop_done - start) * 1000, 2),
        "release_ms": latency_summary(release_ms, 50, 99),
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
