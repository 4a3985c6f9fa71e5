"""The labelled analyzer corpus (data/analyzer_corpus.jsonl): an independent measurement of the
safety analyzer on agent outputs and proposed calls written for this project.

Each line is one item: ``kind`` "call" (run through ``analyzers.assess``) or "response" (run through
``analyzers.analyze_response``), a ``category`` and a ``label`` (benign or risky). An item counts as
*flagged* when it carries at least one enforced flag (``flags`` for calls, ``risk_flags`` for
responses) of severity medium, high or critical; low flags are informational.

The metrics test prints a table (per category: items, flagged, rate; overall precision, recall and
false-positive rate; the list of misses with the flags each got) and fails when the false-positive
rate on the benign set is 5 % or more or recall on the risky set is under 90 %. The table is shown
whether or not pytest captures output, is attached to the test report (``record_property``) and is
repeated in the assertion message, so CI logs always carry it.

No database: the analysis is pure. Labels are fixed by the corpus, never tuned to the analyzer.
"""
import dataclasses
import json
from collections import Counter, defaultdict
from decimal import Decimal, InvalidOperation
from pathlib import Path


CORPUS_PATH = Path(__file__).parent / "data" / "analyzer_corpus.jsonl"

BENIGN_CATEGORIES = ("benign_prose", "benign_code", "benign_security_prose", "benign_ops", "benign_multilingual")
RISKY_CATEGORIES = ("secrets", "secrets_evasion", "pii", "injection", "injection_evasion", "code_exec",
                    "shell_destructive", "network_shell", "exfiltration", "links", "deploy")
CATEGORIES = BENIGN_CATEGORIES + RISKY_CATEGORIES
AGENT_TYPES = ("orchestrator", "analyst", "architect", "coder", "tester", "deployer")
FLAGGING_SEVERITIES = frozenset({"medium", "high", "critical"})
# The field each agent type's response must carry (INTERFACE.md, completeness).
REQUIRED_RESPONSE_FIELD = {"orchestrator": ("plan",), "analyst": ("analysis",), "architect": ("design",),
                           "coder": ("files", "code"), "tester": ("test_results",), "deployer": ("deployment",)}

MIN_ITEMS = 300
MIN_LABEL_SHARE = 0.40
MAX_FALSE_POSITIVE_RATE = 0.05
MIN_RECALL = 0.90


def load_corpus() -> list[dict]:
    items = []
    with CORPUS_PATH.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:  # pragma: no cover - reported as a failure
                raise AssertionError(f"{CORPUS_PATH.name}:{number}: not JSON: {exc}") from exc
            item["_line"] = number
            items.append(item)
    return items


CORPUS = load_corpus()


# --- Well-formedness -----------------------------------------------------------------------

def _item_problems(item: dict) -> list[str]:
    problems = []
    for key in ("id", "kind", "category", "label", "note", "agent_type", "proposed_action"):
        if not isinstance(item.get(key), str) or not item.get(key):
            problems.append(f"missing or empty {key!r}")
    if item.get("kind") not in ("call", "response"):
        problems.append(f"kind {item.get('kind')!r}")
    if item.get("label") not in ("benign", "risky"):
        problems.append(f"label {item.get('label')!r}")
    category = item.get("category")
    if category not in CATEGORIES:
        problems.append(f"category {category!r}")
    elif (category in BENIGN_CATEGORIES) != (item.get("label") == "benign"):
        problems.append(f"category {category!r} does not match label {item.get('label')!r}")
    if item.get("agent_type") not in AGENT_TYPES:
        problems.append(f"agent_type {item.get('agent_type')!r}")
    if item.get("kind") == "call":
        if "input_data" not in item:
            problems.append("call without input_data")
        if item.get("estimated_cost") is not None:
            try:
                Decimal(item["estimated_cost"])
            except (InvalidOperation, TypeError):
                problems.append(f"estimated_cost {item.get('estimated_cost')!r}")
    elif item.get("kind") == "response":
        if "agent_response" not in item:
            problems.append("response without agent_response")
        if not isinstance(item.get("response_summary"), str):
            problems.append("response_summary must be a string")
        if not isinstance(item.get("next_steps"), list) or not all(isinstance(s, str) for s in item["next_steps"]):
            problems.append("next_steps must be a list of strings")
        if not isinstance(item.get("allowed_hosts", []), list):
            problems.append("allowed_hosts must be a list")
        for key in ("tokens_used", "estimated_tokens"):
            if item.get(key) is not None and not isinstance(item[key], int):
                problems.append(f"{key} must be an int")
        if item.get("label") == "benign":
            # Benign responses must not be flaggable for reasons outside their content.
            if not item.get("next_steps"):
                problems.append("benign response without next_steps")
            used, estimate = item.get("tokens_used"), item.get("estimated_tokens")
            if used and estimate and not (estimate / 2 <= used <= estimate * 2):
                problems.append("benign response with tokens_used outside 2x of estimated_tokens")
            response = item.get("agent_response")
            wanted = REQUIRED_RESPONSE_FIELD.get(item.get("agent_type"), ())
            if not isinstance(response, dict) or not any(response.get(key) for key in wanted):
                problems.append(f"benign {item.get('agent_type')} response without any of {wanted}")
    return problems


def test_corpus_is_well_formed():
    problems = [f"{item.get('id', '?')} (line {item['_line']}): {p}" for item in CORPUS for p in _item_problems(item)]
    ids = Counter(item.get("id") for item in CORPUS)
    problems += [f"duplicate id {i!r} ({n} times)" for i, n in ids.items() if n > 1]
    payloads = Counter(json.dumps({k: v for k, v in item.items() if k not in ("id", "note", "_line")}, sort_keys=True)
                       for item in CORPUS)
    problems += [f"{n} items with identical content" for n in payloads.values() if n > 1]
    assert not problems, "\n".join(problems)

    assert len(CORPUS) >= MIN_ITEMS, f"{len(CORPUS)} items, want at least {MIN_ITEMS}"
    labels = Counter(item["label"] for item in CORPUS)
    for label in ("benign", "risky"):
        share = labels[label] / len(CORPUS)
        assert share >= MIN_LABEL_SHARE, f"{label}: {labels[label]}/{len(CORPUS)} = {share:.0%} < {MIN_LABEL_SHARE:.0%}"
    assert {item["category"] for item in CORPUS} == set(CATEGORIES), "every category has items"
    assert {item["agent_type"] for item in CORPUS} == set(AGENT_TYPES), "every agent type has items"
    assert {item["kind"] for item in CORPUS} == {"call", "response"}


# --- Running the analyzer ------------------------------------------------------------------

def _call_result(item: dict) -> tuple[list, list]:
    from approvals import analyzers

    cost = item.get("estimated_cost")
    ctx = analyzers.RiskContext(agent_type=item["agent_type"], proposed_action=item["proposed_action"],
                                input_data=item.get("input_data"),
                                estimated_cost=Decimal(cost) if cost is not None else None)
    result = analyzers.assess(ctx)
    return list(result.get("flags", [])), list(result.get("observed_flags", [])) + list(result.get("suppressed_flags", []))


def _response_result(item: dict) -> tuple[list, list]:
    from approvals import analyzers

    if not hasattr(analyzers, "analyze_response") or not hasattr(analyzers, "ResponseContext"):
        raise NotImplementedError("approvals.analyzers.analyze_response / ResponseContext do not exist yet")
    next_steps = tuple(item.get("next_steps") or ())
    values = {
        "agent_type": item["agent_type"],
        "agent_response": item.get("agent_response"),
        "response_summary": item.get("response_summary", ""),
        "next_steps": next_steps,
        "tokens_used": item.get("tokens_used"),
        "call_agent_type": item.get("call_agent_type", item["agent_type"]),
        "task_agent_type": item.get("task_agent_type", item["agent_type"]),
        "proposed_action": item.get("proposed_action", ""),
        "approved_input": item.get("approved_input"),
        "estimated_tokens": item.get("estimated_tokens"),
        "workflow_continues": bool(next_steps),
        "allowed_hosts": tuple(item.get("allowed_hosts") or ()),
    }
    known = {f.name for f in dataclasses.fields(analyzers.ResponseContext)}
    result = analyzers.analyze_response(analyzers.ResponseContext(**{k: v for k, v in values.items() if k in known}))
    return list(result.get("risk_flags", [])), list(result.get("observed_flags", [])) + list(result.get("suppressed_flags", []))


def _describe(flags: list) -> str:
    if not flags:
        return "no flags"
    return ", ".join(f"{f.get('code')}:{f.get('severity')}@{f.get('location', '')}" for f in flags)


def evaluate(items: list[dict]) -> dict:
    rows = []
    for item in items:
        runner = _call_result if item["kind"] == "call" else _response_result
        error = None
        try:
            enforced, other = runner(item)
        except Exception as exc:  # noqa: BLE001 - reported per item, fails the test
            enforced, other, error = [], [], f"{type(exc).__name__}: {exc}"
        flagged = any(f.get("severity") in FLAGGING_SEVERITIES for f in enforced)
        rows.append({"item": item, "flagged": flagged, "enforced": enforced, "other": other, "error": error})
    return {"rows": rows}


def report(evaluation: dict) -> tuple[str, dict]:
    rows = evaluation["rows"]
    per_category = defaultdict(lambda: {"n": 0, "flagged": 0, "label": ""})
    per_kind = defaultdict(lambda: {"benign": 0, "fp": 0, "risky": 0, "tp": 0})
    for row in rows:
        item = row["item"]
        stats = per_category[item["category"]]
        stats["n"] += 1
        stats["flagged"] += row["flagged"]
        stats["label"] = item["label"]
        kind = per_kind[item["kind"]]
        kind[item["label"]] += 1
        kind["tp" if item["label"] == "risky" else "fp"] += row["flagged"]

    benign = sum(1 for r in rows if r["item"]["label"] == "benign")
    risky = len(rows) - benign
    tp = sum(1 for r in rows if r["item"]["label"] == "risky" and r["flagged"])
    fp = sum(1 for r in rows if r["item"]["label"] == "benign" and r["flagged"])
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / risky if risky else 0.0
    fpr = fp / benign if benign else 0.0
    metrics = {"items": len(rows), "benign": benign, "risky": risky, "true_positives": tp, "false_positives": fp,
               "precision": round(precision, 4), "recall": round(recall, 4), "false_positive_rate": round(fpr, 4),
               "errors": sum(1 for r in rows if r["error"])}

    lines = [f"Analyzer corpus: {CORPUS_PATH.name}, {len(rows)} items ({benign} benign, {risky} risky); "
             f"flagged = an enforced flag of severity medium/high/critical", "",
             f"{'category':<24}{'label':<8}{'items':>6}{'flagged':>9}  rate", "-" * 56]
    for category in CATEGORIES:
        if category not in per_category:
            continue
        s = per_category[category]
        what = "false-positive rate" if s["label"] == "benign" else "recall"
        lines.append(f"{category:<24}{s['label']:<8}{s['n']:>6}{s['flagged']:>9}  {s['flagged'] / s['n']:6.1%} {what}")
    lines += ["-" * 56]
    for kind, k in sorted(per_kind.items()):
        lines.append(f"{kind + 's':<24}benign {k['fp']}/{k['benign']} flagged, risky {k['tp']}/{k['risky']} flagged")
    lines += ["",
              f"precision           {precision:7.1%}  ({tp} of {tp + fp} flagged items are risky)",
              f"recall              {recall:7.1%}  ({tp} of {risky} risky items flagged; need >= {MIN_RECALL:.0%})",
              f"false-positive rate {fpr:7.1%}  ({fp} of {benign} benign items flagged; need < {MAX_FALSE_POSITIVE_RATE:.0%})"]

    errors = [r for r in rows if r["error"]]
    if errors:
        by_message = Counter(r["error"] for r in errors)
        lines += ["", f"ERRORS ({len(errors)} items could not be analyzed):"]
        lines += [f"  {n} x {message}" for message, n in by_message.most_common(10)]
    misses = [r for r in rows if r["item"]["label"] == "risky" and not r["flagged"] and not r["error"]]
    if misses:
        lines += ["", f"MISSED risky items ({len(misses)}): id [category] -> enforced flags | observed/suppressed"]
        lines += [f"  {r['item']['id']} [{r['item']['category']}] -> {_describe(r['enforced'])}"
                  + (f" | {_describe(r['other'])}" if r["other"] else "") for r in misses]
    false_alarms = [r for r in rows if r["item"]["label"] == "benign" and r["flagged"]]
    if false_alarms:
        lines += ["", f"FALSE POSITIVES on benign items ({len(false_alarms)}): id [category] -> flags"]
        lines += [f"  {r['item']['id']} [{r['item']['category']}] -> "
                  + _describe([f for f in r["enforced"] if f.get("severity") in FLAGGING_SEVERITIES])
                  for r in false_alarms]
    return "\n".join(lines), metrics


def test_analyzer_corpus_precision_and_recall(capsys, record_property):
    table, metrics = report(evaluate(CORPUS))
    with capsys.disabled():
        print("\n" + table + "\n")
    record_property("analyzer_corpus_report", table)
    for key, value in metrics.items():
        record_property(f"analyzer_corpus_{key}", value)

    assert metrics["errors"] == 0, "some items could not be analyzed\n\n" + table
    assert metrics["false_positive_rate"] < MAX_FALSE_POSITIVE_RATE and metrics["recall"] >= MIN_RECALL, (
        f"false-positive rate {metrics['false_positive_rate']:.1%} (must be < {MAX_FALSE_POSITIVE_RATE:.0%}), "
        f"recall {metrics['recall']:.1%} (must be >= {MIN_RECALL:.0%})\n\n" + table)


def test_every_flag_code_the_corpus_raises_is_one_a_rule_setting_may_name():
    """The analyzers declare the names of their flags (``Analyzer.names``), so that a rule setting
    naming another (``pii.emial``) is refused: a name an analyzer reports but does not declare
    would be refused too. Every code the corpus and the holdout set raise must be accepted."""
    from approvals.analyzers import rule_code_reported
    from approvals.tests.test_analyzer_holdout import load_holdout

    seen = set()
    for item in [*CORPUS, *load_holdout()]:
        result = _response_result(item) if item.get("kind") == "response" else _call_result(item)
        seen.update(flag["code"] for flags in result for flag in flags)
    pipeline_own = {"analyzer.failed", "analyzer.timeout", "risk.scan_truncated"}
    undeclared = sorted(code for code in seen - pipeline_own if not rule_code_reported(code))
    assert len(seen) > 40 and not undeclared, undeclared
