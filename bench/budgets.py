"""Benchmark: concurrent budget reservations at request time, and the overspend they leave.

    DATABASE_URL=postgres://... .venv/bin/python bench/budgets.py [--n 200] [--threads 16]

PostgreSQL only (it refuses to run otherwise, exit 2). In-process, no HTTP server: --threads real
threads call ``approvals.services.agent_approval_request`` directly (each reserves its call's
estimate against the project's day and month windows, under their row locks and the project's
shared lock, or is created blocked behind a budget override). Users, projects, budgets and tasks are made first (not timed),
with unique slugs per run. Two scenarios, N calls each, every call estimated at 1000 tokens and
1.0000 USD:
  hot     N calls against ONE project whose daily cost limit fits N/2 calls (so every reservation
          takes that one project's windows' locks; half are admitted, half blocked)
  spread  N calls against N projects, one call each, every limit fitting
Prints one JSON object {"database", "n", "threads", "hot": {...}, "spread": {...}}, each scenario:
  reservations_per_second   calls handled (admitted or blocked) per second of the scenario's wall time
  latency_ms p50/p99/max    of agent_approval_request
  admitted / blocked        calls reserved / calls created blocked behind an override
  expected_admitted         what the limits allow (hot: N/2, spread: N)
  errors, first_errors      calls that raised (EmergencyStopActive included; must be 0)
  overspend_found           summed over every window (day and month) of the scenario's projects, read
                            back from the database: max(0, spent + reserved - (limit + allowance)),
                            for cost and for tokens (both must be 0)
  ledger_mismatches         windows whose totals differ from budgets.services.ledger_totals (must be 0)
  db_admitted               reservations in the usage ledger (must equal admitted)
"""
import argparse
import json
import os
import queue
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from common import (
    arm_deadline,
    arm_traceback_dump,
    bench_defaults,
    latency_summary,
    migrate,
    run_stamp,
    set_large_budget,
    setup_django,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

POSTGRES_SCHEMES = ("postgres", "postgresql", "pgsql", "psql")
CALL_TOKENS = 1000
CALL_COST = Decimal("1.0000")
MAX_THREADS = 32  # PostgreSQL's max_connections (100) is shared


def setup(n):
    """An admin, an agent, the hot project (N tasks) and N spread projects (one task each)."""
    setup_django()
    from django.contrib.auth import get_user_model
    from django.db import connection

    from access.services import role_grant
    from projects.services import project_create, task_create

    if connection.vendor != "postgresql":
        print(f"bench/budgets.py needs PostgreSQL; DATABASE_URL gives {connection.vendor}.", file=sys.stderr)
        raise SystemExit(2)
    migrate()
    User = get_user_model()
    stamp = run_stamp()
    admin = User.objects.create_superuser(username=f"bench-budgets-admin-{stamp}", password="x",
                                          email="b@example.com")
    agent = User.objects.create_user(username=f"bench-budgets-agent-{stamp}")

    def make_project(slug, daily_cost_limit, tasks):
        project = project_create(actor=admin, name=f"Bench budgets {slug}", slug=slug)
        set_large_budget(project, daily_cost_limit=daily_cost_limit)
        role_grant(user=agent, project=project, role="agent")
        return [(project.pk, task_create(actor=agent, project_id=project.pk, agent_type="coder",
                                         title=f"bench budgets {slug} {i}").pk) for i in range(tasks)]

    hot = make_project(f"bench-budgets-{stamp}-hot", Decimal(n // 2) * CALL_COST, n)
    spread = [call for i in range(n) for call in
              make_project(f"bench-budgets-{stamp}-s{i}", Decimal("10") * CALL_COST, 1)]
    return agent.pk, hot, spread


def run_scenario(agent_pk, calls, threads):
    """Every call through agent_approval_request from ``threads`` threads, started together."""
    from django.contrib.auth import get_user_model
    from django.db import connection, connections

    from approvals.services import agent_approval_request

    todo = queue.Queue()
    for call in calls:
        todo.put(call)
    lock = threading.Lock()
    latencies, admitted, blocked, errors = [], [], [], []
    ready = threading.Barrier(threads + 1)
    done_at = []

    def worker():
        requester = None
        try:
            requester = get_user_model().objects.get(pk=agent_pk)  # one user object per thread
            connection.ensure_connection()  # take a pooled connection before the clock starts
        except Exception as exc:  # noqa: BLE001
            with lock:
                errors.append(("setup", repr(exc)))
        try:
            ready.wait()
            while True:
                try:
                    project_id, task_id = todo.get_nowait()
                except queue.Empty:
                    break
                t0 = time.perf_counter()
                try:
                    approval = agent_approval_request(
                        requester=requester, project_id=project_id, task_id=task_id, agent_type="coder",
                        proposed_action="Summarise the design notes of the task", input_data={"notes": "bench"},
                        estimated_tokens=CALL_TOKENS, estimated_cost=CALL_COST)
                except Exception as exc:  # noqa: BLE001 - every failure is reported
                    with lock:
                        latencies.append((time.perf_counter() - t0) * 1000)
                        errors.append((type(exc).__name__, str(exc)[:300]))
                    continue
                elapsed = (time.perf_counter() - t0) * 1000
                with lock:
                    latencies.append(elapsed)
                    (blocked if approval.budget_override_id else admitted).append(approval.pk)
            with lock:
                done_at.append(time.perf_counter())
        finally:
            connections.close_all()

    workers = [threading.Thread(target=worker, name=f"bench-budgets-{i}") for i in range(threads)]
    for t in workers:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in workers:
        t.join()
    wall = (max(done_at) if done_at else time.perf_counter()) - start
    return {"wall": wall, "latencies": latencies, "admitted": admitted, "blocked": blocked, "errors": errors}


def check(project_ids):
    """Overspend and ledger mismatches over every window of these projects, from the database."""
    from budgets.models import BudgetWindow, ProjectBudget, UsageEntry
    from budgets.services import ledger_totals

    budgets = {b.project_id: b for b in ProjectBudget.objects.filter(project_id__in=project_ids)}
    over_cost, over_tokens, mismatches, windows = Decimal("0.0000"), 0, 0, 0
    for window in BudgetWindow.objects.filter(project_id__in=project_ids):
        windows += 1
        budget = budgets[window.project_id]
        daily = window.kind == BudgetWindow.Kind.DAY
        cost_limit = (budget.daily_cost_limit if daily else budget.monthly_cost_limit) + window.allowance_cost
        token_limit = (budget.daily_token_limit if daily else budget.monthly_token_limit) + window.allowance_tokens
        over_cost += max(Decimal("0"), window.spent_cost + window.reserved_cost - cost_limit)
        over_tokens += max(0, window.spent_tokens + window.reserved_tokens - token_limit)
        totals = ledger_totals(window)
        if any(getattr(window, field) != value for field, value in totals.items()):
            mismatches += 1
    reserves = UsageEntry.objects.filter(project_id__in=project_ids, kind=UsageEntry.Kind.RESERVE).count()
    return {"overspend_found": {"cost": f"{over_cost:.4f}", "tokens": over_tokens},
            "ledger_mismatches": mismatches, "windows_checked": windows, "db_admitted": reserves}


def report(calls, result, expected_admitted):
    from django.db import connections

    project_ids = sorted({project_id for project_id, _ in calls})
    checked = check(project_ids)
    connections.close_all()
    latencies = result["latencies"]
    return {
        "projects": len(project_ids),
        "calls": len(calls),
        "wall_s": round(result["wall"], 3),
        "reservations_per_second": round(len(calls) / result["wall"], 1) if result["wall"] > 0 else None,
        "latency_ms": latency_summary(latencies, 50, 99),
        "admitted": len(result["admitted"]),
        "blocked": len(result["blocked"]),
        "expected_admitted": expected_admitted,
        "errors": len(result["errors"]),
        "first_errors": result["errors"][:5],
        **checked,
    }


def main():
    arm_traceback_dump()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="calls per scenario (at least 4)")
    parser.add_argument("--threads", type=int, default=16, help=f"worker threads (1..{MAX_THREADS})")
    parser.add_argument("--deadline", type=float, default=600, help="seconds before the run gives up")
    args = parser.parse_args()
    arm_deadline(args.deadline, "budgets")
    if args.n < 4:
        parser.error("--n must be at least 4 (the hot project's limit fits N/2 calls, under 1.5 x of it)")
    if not 1 <= args.threads <= MAX_THREADS:
        parser.error(f"--threads must be between 1 and {MAX_THREADS}: PostgreSQL's connections are shared")
    url = os.environ.get("DATABASE_URL", "")
    if urlsplit(url).scheme.lower() not in POSTGRES_SCHEMES:
        print("bench/budgets.py measures row locking under concurrency and needs PostgreSQL: set "
              "DATABASE_URL=postgres://user@host:port/db" + (f" (it is {urlsplit(url).scheme or url!r})" if url
                                                               else " (it is not set)") + ".", file=sys.stderr)
        raise SystemExit(2)

    bench_defaults()
    # One pooled connection per worker thread (plus the main thread), so the pool is not what waits.
    os.environ.setdefault("HITL_DB_POOL_MAX", str(max(20, args.threads + 2)))
    agent_pk, hot_calls, spread_calls = setup(args.n)
    from django.db import connections

    connections.close_all()

    hot = report(hot_calls, run_scenario(agent_pk, hot_calls, args.threads), args.n // 2)
    spread = report(spread_calls, run_scenario(agent_pk, spread_calls, args.threads), args.n)
    print(json.dumps({"database": "postgresql", "n": args.n, "threads": args.threads, "hot": hot, "spread": spread},
                     indent=2))


if __name__ == "__main__":
    main()
