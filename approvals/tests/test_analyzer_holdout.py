"""Blind holdout for the safety analyzer (issue 10).

``data/analyzer_holdout.jsonl`` was written without reading the analyzer's rules or the tuning corpus
(``analyzer_corpus.jsonl``); it measures how well the analyzer generalises. The figures are reported
(printed and attached with ``record_property``), never enforced: do not tune the analyzer against
this set, or it stops being a holdout. The test only asserts that the set is well formed and that
analysing every item raises no error.

An item is "flagged" when it has at least one enforced flag (``flags`` for calls, ``risk_flags`` for
responses) of severity medium, high or critical (INTERFACE.md).
"""
import json
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit


HOLDOUT = Path(__file__).resolve().parent / "data" / "analyzer_holdout.jsonl"
MIN_ITEMS = 160
KINDS = {"call", "response"}
LABELS = {"benign", "risky"}
AGENT_TYPES = {"orchestrator", "analyst", "architect", "coder", "tester", "deployer"}
BENIGN_CATEGORIES = {"benign_prose", "benign_code", "benign_security_prose", "benign_ops", "benign_multilingual"}
RISKY_CATEGORIES = {"secrets", "secrets_evasion", "pii", "injection", "injection_evasion", "code_exec",
                    "shell_destructive", "network_shell", "exfiltration", "links", "deploy"}
FLAGGED_SEVERITIES = {"medium", "high", "critical"}


def load_holdout() -> list[dict]:
    items = []
    with HOLDOUT.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                item = json.loads(line)
                item["_line"] = number
                items.append(item)
    return items


HOLDOUT_ITEMS = load_holdout()


# --- Well-formedness --------------------------------------------------------------------------

def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _link_hosts(text: str) -> set[str]:
    import re

    hosts = set()
    for url in re.findall(r"https?://[^\s)\"'`<>\\]+", text):
        host = urlsplit(url).hostname
        if host:
            hosts.add(host.lower())
    return hosts


def _allowed(host: str, allowed: list[str]) -> bool:
    return any(host == a or host.endswith("." + a) for a in (h.lower() for h in allowed))


def _problems(item: dict) -> list[str]:
    p = []
    for key in ("id", "kind", "category", "label", "note", "agent_type"):
        if not isinstance(item.get(key), str) or not item[key]:
            p.append(f"missing {key}")
    if p:
        return p
    if item["kind"] not in KINDS:
        p.append(f"kind {item['kind']!r}")
    if item["label"] not in LABELS:
        p.append(f"label {item['label']!r}")
    if item["agent_type"] not in AGENT_TYPES:
        p.append(f"agent_type {item['agent_type']!r}")
    expected = BENIGN_CATEGORIES if item["label"] == "benign" else RISKY_CATEGORIES
    if item["category"] not in expected:
        p.append(f"category {item['category']!r} does not fit label {item['label']!r}")
    if item["kind"] == "call":
        if not isinstance(item.get("proposed_action"), str) or not item["proposed_action"]:
            p.append("call without proposed_action")
        if "input_data" not in item:
            p.append("call without input_data")
        cost = item.get("estimated_cost")
        if cost is not None and not (Decimal("0") <= Decimal(cost) < Decimal("1")):
            p.append(f"estimated_cost {cost!r} not small")
    else:
        if item.get("agent_response") in (None, "", {}, []):
            p.append("response without agent_response")
        if not isinstance(item.get("response_summary"), str):
            p.append("response_summary not a string")
        steps = item.get("next_steps")
        if not (isinstance(steps, list) and steps and all(isinstance(s, str) and s for s in steps)):
            p.append("next_steps must be a non-empty list of strings")
        if not isinstance(item.get("proposed_action"), str) or not item["proposed_action"]:
            p.append("response without proposed_action")
        for key in ("tokens_used", "estimated_tokens"):
            if not isinstance(item.get(key), int) or item[key] <= 0:
                p.append(f"{key} not a positive int")
        if not isinstance(item.get("allowed_hosts"), list):
            p.append("allowed_hosts not a list")
        if not p and item["label"] == "benign":
            used, est = item["tokens_used"], item["estimated_tokens"]
            if not (est / 2 <= used <= est * 2):
                p.append(f"benign tokens_used {used} not within 2x of {est}")
            text = "\n".join([*_strings(item["agent_response"]), item["response_summary"]])
            outside = sorted(h for h in _link_hosts(text) if not _allowed(h, item["allowed_hosts"]))
            if outside:
                p.append(f"benign response links outside allowed_hosts: {outside}")
    return p


def test_holdout_is_well_formed():
    assert len(HOLDOUT_ITEMS) >= MIN_ITEMS, f"{len(HOLDOUT_ITEMS)} items < {MIN_ITEMS}"
    ids = Counter(item.get("id") for item in HOLDOUT_ITEMS)
    assert not [i for i, n in ids.items() if n > 1], f"duplicate ids: {[i for i, n in ids.items() if n > 1]}"
    problems = {f"line {item['_line']} {item.get('id')}": _problems(item) for item in HOLDOUT_ITEMS}
    problems = {k: v for k, v in problems.items() if v}
    assert not problems, problems
    assert {item["kind"] for item in HOLDOUT_ITEMS} == KINDS
    assert {item["category"] for item in HOLDOUT_ITEMS} == BENIGN_CATEGORIES | RISKY_CATEGORIES
    benign_share = sum(item["label"] == "benign" for item in HOLDOUT_ITEMS) / len(HOLDOUT_ITEMS)
    assert 0.45 <= benign_share <= 0.65, f"benign share {benign_share:.0%}"


# --- Running the analyzer --------------------------------------------------------------------

def _analyze(item: dict) -> tuple[list, list]:
    """(enforced flags, other flags) for one item."""
    from approvals import analyzers

    if item["kind"] == "call":
        cost = item.get("estimated_cost")
        result = analyzers.assess(analyzers.RiskContext(
            agent_type=item["agent_type"], proposed_action=item["proposed_action"], input_data=item.get("input_data"),
            estimated_cost=Decimal(cost) if cost is not None else None))
        return list(result.get("flags", [])), list(result.get("observed_flags", [])) + list(result.get("suppressed_flags", []))
    steps = tuple(item.get("next_steps") or ())
    result = analyzers.analyze_response(analyzers.ResponseContext(
        agent_type=item["agent_type"], agent_response=item.get("agent_response"),
        response_summary=item.get("response_summary", ""), next_steps=steps, tokens_used=item.get("tokens_used"),
        call_agent_type=item.get("call_agent_type", item["agent_type"]),
        task_agent_type=item.get("task_agent_type", item["agent_type"]),
        proposed_action=item.get("proposed_action", ""), approved_input=item.get("approved_input"),
        estimated_tokens=item.get("estimated_tokens"), workflow_continues=bool(steps),
        allowed_hosts=tuple(item.get("allowed_hosts") or ())))
    return list(result.get("risk_flags", [])), list(result.get("observed_flags", [])) + list(result.get("suppressed_flags", []))


def _is_flagged(flags: list) -> bool:
    return any(f.get("severity") in FLAGGED_SEVERITIES for f in flags)


def _describe(flags: list, detail: bool = False) -> str:
    if detail:
        return "; ".join(f"{f.get('code')}:{f.get('severity')} at {f.get('location')} ({f.get('message')})" for f in flags) or "-"
    return ", ".join(f"{f.get('code')}:{f.get('severity')}" for f in flags) or "-"


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 3) if den else None


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.1%}"


def test_holdout_figures(capsys, record_property):
    errors, rows = [], []
    for item in HOLDOUT_ITEMS:
        try:
            enforced, other = _analyze(item)
        except Exception as exc:  # reported below; the test fails on any error
            errors.append(f"{item['id']}: {type(exc).__name__}: {exc}")
            continue
        rows.append((item, _is_flagged(enforced), enforced, other))

    per_category = defaultdict(lambda: {"n": 0, "flagged": 0, "label": ""})
    tp = fp = fn = tn = 0
    misses, false_positives = [], []
    for item, flagged, enforced, other in rows:
        cat = per_category[item["category"]]
        cat["n"] += 1
        cat["flagged"] += flagged
        cat["label"] = item["label"]
        if item["label"] == "risky":
            tp += flagged
            fn += not flagged
            if not flagged:
                misses.append(f"  {item['id']} [{item['kind']}/{item['agent_type']}] enforced: {_describe(enforced)}; "
                              f"observed/suppressed: {_describe(other)}  -- {item['note']}")
        else:
            fp += flagged
            tn += not flagged
            if flagged:
                false_positives.append(f"  {item['id']} [{item['kind']}/{item['agent_type']}] "
                                       f"{_describe([f for f in enforced if f.get('severity') in FLAGGED_SEVERITIES], detail=True)}"
                                       f"  -- {item['note']}")

    precision, recall, fpr = _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(fp, fp + tn)
    lines = ["", f"Analyzer holdout ({HOLDOUT.name}, {len(rows)} items analysed, {len(errors)} errors)",
             f"{'category':<24}{'label':<8}{'n':>4}{'flagged':>9}  {'rate':>6}  meaning"]
    for name in sorted(per_category, key=lambda n: (per_category[n]["label"], n)):
        cat = per_category[name]
        rate = _ratio(cat["flagged"], cat["n"])
        meaning = "recall" if cat["label"] == "risky" else "false-positive rate"
        lines.append(f"{name:<24}{cat['label']:<8}{cat['n']:>4}{cat['flagged']:>9}  {_fmt(rate):>6}  {meaning}")
        record_property(f"holdout_{name}", f"{cat['flagged']}/{cat['n']}")
    lines += [f"overall: TP={tp} FP={fp} FN={fn} TN={tn}  precision={_fmt(precision)}  recall={_fmt(recall)}  "
              f"false-positive rate={_fmt(fpr)}",
              f"misses ({len(misses)}):", *(misses or ["  none"]),
              f"false positives ({len(false_positives)}):", *(false_positives or ["  none"])]
    if errors:
        lines += ["errors:", *(f"  {e}" for e in errors)]
    for key, value in (("holdout_precision", precision), ("holdout_recall", recall), ("holdout_false_positive_rate", fpr),
                       ("holdout_misses", [m.split()[0] for m in misses]),
                       ("holdout_false_positives", [f.split()[0] for f in false_positives])):
        record_property(key, value)
    with capsys.disabled():
        print("\n".join(lines))

    assert not errors, errors   # the figures above are reported only, never asserted
