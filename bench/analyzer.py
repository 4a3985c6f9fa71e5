"""Analyzer latency: p50/p99 per analyzer and for the whole pipeline, on the labelled corpus.

Reads approvals/tests/data/analyzer_corpus.jsonl (falls back to approvals/tests/data/risk_cases.json),
runs every item through the pipeline (``assess`` for calls, ``analyze_response`` for responses) on
one thread, and times each analyzer separately on the same normalised context. Prints one JSON
object: per-analyzer and pipeline latency in milliseconds (p50, p99, max), the per-call pipeline
cost, and responses analyzed per second on one core. No database, no network.

    python bench/analyzer.py [--rounds 3] [--deadline 600]
"""
import argparse
import json
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import ROOT, arm_deadline, bench_defaults, latency_summary, setup_django  # noqa: E402

CORPUS = ROOT / "approvals" / "tests" / "data" / "analyzer_corpus.jsonl"
FALLBACK = ROOT / "approvals" / "tests" / "data" / "risk_cases.json"


def load_items():
    if CORPUS.exists():
        items = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
        return items, CORPUS.name
    cases = json.loads(FALLBACK.read_text(encoding="utf-8"))
    return [{**case, "kind": "call"} for case in cases], FALLBACK.name


def context(item):
    from approvals import analyzers

    if item["kind"] == "call":
        cost = item.get("estimated_cost")
        return analyzers.RiskContext(agent_type=item["agent_type"], proposed_action=item["proposed_action"],
                                     input_data=item.get("input_data"),
                                     estimated_cost=Decimal(cost) if cost is not None else None)
    steps = tuple(item.get("next_steps") or ())
    return analyzers.ResponseContext(
        agent_type=item["agent_type"], agent_response=item.get("agent_response"),
        response_summary=item.get("response_summary", ""), next_steps=steps, tokens_used=item.get("tokens_used"),
        call_agent_type=item.get("call_agent_type", item["agent_type"]),
        task_agent_type=item.get("task_agent_type", item["agent_type"]), proposed_action=item.get("proposed_action", ""),
        approved_input=item.get("approved_input"), estimated_tokens=item.get("estimated_tokens"),
        workflow_continues=bool(steps), allowed_hosts=tuple(item.get("allowed_hosts") or ()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the corpus")
    parser.add_argument("--deadline", type=float, default=600, help="seconds before the run gives up")
    args = parser.parse_args()
    arm_deadline(args.deadline, "analyzer")
    bench_defaults()
    setup_django()

    from django.conf import settings

    from approvals import analyzers
    from approvals.analyzers.base import load_analyzers
    from approvals.analyzers.pipeline import ScanContext

    items, source = load_items()
    paths = {"call": tuple(settings.HITL_RISK_ANALYZERS), "response": tuple(settings.HITL_RESPONSE_ANALYZERS)}
    for kind in paths:                                   # engines are built once, outside the timings
        for analyzer in load_analyzers(paths[kind]):
            analyzer.prepare()
    for item in items[:5]:
        (analyzers.assess if item["kind"] == "call" else analyzers.analyze_response)(context(item))

    pipeline = {"call": [], "response": []}
    per_analyzer: dict[str, list[float]] = {}
    normalise_ms: list[float] = []
    response_seconds = 0.0
    cpu_start = time.process_time()
    for _ in range(args.rounds):
        for item in items:
            kind = item["kind"]
            run = analyzers.assess if kind == "call" else analyzers.analyze_response
            ctx = context(item)
            t0 = time.perf_counter()
            run(ctx)
            elapsed = time.perf_counter() - t0
            pipeline[kind].append(elapsed * 1000)
            if kind == "response":
                response_seconds += elapsed
            # each analyzer on its own, on a fresh normalised context of the same item
            t0 = time.perf_counter()
            scan = ScanContext(context(item), kind)
            normalise_ms.append((time.perf_counter() - t0) * 1000)
            for analyzer in load_analyzers(paths[kind]):
                if kind not in analyzer.kinds or not analyzer.applies(scan):
                    continue
                t0 = time.perf_counter()
                analyzer.run(scan)
                per_analyzer.setdefault(type(analyzer).__name__, []).append((time.perf_counter() - t0) * 1000)
    cpu = time.process_time() - cpu_start
    # Hostile inputs: thousands of findings, each to be masked wherever it is written (a red team's
    # 9,500 e-mail addresses held a web thread 35 s); the same addresses as keys too, all alike.
    hostile = {}
    emails = [f"user{i:05d}x@mail{i % 97}.corp.io" for i in range(9500)]
    for name, value in (("9500_emails_in_one_value", {"to": " ".join(emails)}),
                        ("6000_emails_as_keys", {e: 1 for e in emails[:6000]})):
        t0 = time.perf_counter()
        out = analyzers.assess(analyzers.RiskContext(agent_type="coder", proposed_action="Email them",
                                                     input_data=value, estimated_cost=Decimal("0.01")))
        hostile[name] = {"ms": round((time.perf_counter() - t0) * 1000, 1), "flags": len(out["flags"])}
    baseline = sorted(pipeline["call"])[len(pipeline["call"]) // 2] if pipeline["call"] else None
    responses = len(pipeline["response"])
    result = {
        "benchmark": "analyzer", "corpus": source, "items": len(items), "rounds": args.rounds,
        "calls": len(pipeline["call"]), "responses": responses,
        "pipeline_ms": {kind: latency_summary(values, 50, 99) for kind, values in pipeline.items() if values},
        "normalise_ms": latency_summary(normalise_ms, 50, 99),
        "analyzer_ms": {name: latency_summary(values, 50, 99) for name, values in sorted(per_analyzer.items())},
        "responses_per_second_one_core": round(responses / response_seconds, 1) if response_seconds else None,
        "cpu_seconds": round(cpu, 2),
        # each hostile input's time, and as a multiple of the corpus's median call (same run)
        "hostile_inputs": {name: {**figures, "x_median_call": round(figures["ms"] / baseline, 1) if baseline else None}
                           for name, figures in hostile.items()},
        "tools": analyzers.pipeline.tool_versions(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
