"""The analyzer base class and ``assess()``: run the configured analyzers, merge their flags
per (code, location), and combine them into a level and a score."""
from __future__ import annotations

import functools
import logging

from django.conf import settings
from django.utils.module_loading import import_string

from .context import MAX_SCAN_CHARS, RiskContext

logger = logging.getLogger(__name__)

SEVERITIES = ("low", "medium", "high", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
SEVERITY_WEIGHT = {"low": 0.1, "medium": 0.3, "high": 0.6, "critical": 0.9}


class Analyzer:
    """Subclasses set ``code`` (the flag code prefix) and implement ``analyze``."""
    code = "risk"

    def analyze(self, ctx: RiskContext) -> list[dict]:
        raise NotImplementedError

    def flag(self, name: str, severity: str, message: str, location: str) -> dict:
        return {"code": f"{self.code}.{name}", "severity": severity, "message": message, "location": location}

    def for_each_segment(self, ctx: RiskContext, check) -> list[dict]:
        """``check(segment) -> flags`` over every segment. Repeated texts (the keys and many values of
        tabular input) are checked once; messages must not depend on the location."""
        flags: list[dict] = []
        seen: dict[tuple, list[dict]] = {}
        for seg in ctx.segments:
            memo = (seg.text, seg.key, seg.is_key)
            if memo not in seen:
                seen[memo] = check(seg)
                flags.extend(seen[memo])
            else:
                flags.extend({**f, "location": seg.location} for f in seen[memo])
        return flags


class _Collector:
    """Keeps one flag per (code, location), the most severe, and counts repeats."""

    def __init__(self) -> None:
        self.flags: dict[tuple[str, str], dict] = {}
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, flag: dict) -> None:
        key = (flag["code"], flag["location"])
        self.counts[key] = self.counts.get(key, 0) + 1
        old = self.flags.get(key)
        if old is None or SEVERITY_RANK[flag["severity"]] > SEVERITY_RANK[old["severity"]]:
            self.flags[key] = flag

    def result(self) -> list[dict]:
        out = []
        for key, flag in self.flags.items():
            if self.counts[key] > 1 and not flag["code"].startswith("cost."):
                flag = {**flag, "message": f"{flag['message']} (+{self.counts[key] - 1} more)"}
            out.append(flag)
        return out


@functools.lru_cache(maxsize=16)
def _load_analyzers(paths: tuple[str, ...]) -> tuple[Analyzer, ...]:
    return tuple(import_string(path)() for path in paths)


def _normalise(flag: dict) -> dict:
    severity = flag.get("severity")
    if severity not in SEVERITY_RANK:
        severity = "high"
    return {"code": str(flag.get("code", "risk.unknown")), "severity": severity,
            "message": str(flag.get("message", "")), "location": str(flag.get("location", ""))}


def assess(ctx: RiskContext) -> dict:
    """Run every configured analyzer; flags are deduplicated by (code, location)."""
    collector = _Collector()
    for analyzer in _load_analyzers(tuple(settings.HITL_RISK_ANALYZERS)):
        try:
            flags = [_normalise(flag) for flag in analyzer.analyze(ctx)]
        except Exception:   # an analyzer bug must not hide the call from review: fail towards "look"
            logger.exception("risk analyzer %s failed", type(analyzer).__name__)
            flags = [{"code": "risk.analyzer_failed", "severity": "high", "location": "",
                      "message": f"{type(analyzer).__name__} failed; review this call manually"}]
        for flag in flags:
            collector.add(flag)
    if ctx.truncated:
        collector.add({"code": "risk.scan_truncated", "severity": "medium", "location": "input_data",
                       "message": f"Input is larger than the scanned {MAX_SCAN_CHARS:,} characters "
                                  "(or too deeply nested); the rest was not checked"})
    flags = sorted(collector.result(), key=lambda f: -SEVERITY_RANK[f["severity"]])   # stable
    remaining = 1.0
    for flag in flags:
        remaining *= 1.0 - SEVERITY_WEIGHT[flag["severity"]]
    level = flags[0]["severity"] if flags else "low"
    return {"level": level, "score": round(1.0 - remaining, 3) if flags else 0.0, "flags": flags}
