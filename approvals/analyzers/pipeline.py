"""One pipeline for proposed calls (``assess``) and agent responses (``analyze_response``).

1. The context is cut into segments (``context``) and normalised (``normalise``): every analyzer sees
   the original text, its normalised form and the decoded / joined derived texts.
2. The analyzers named in settings (``HITL_RISK_ANALYZERS`` for calls, ``HITL_RESPONSE_ANALYZERS`` for
   responses) run one after another in a worker thread, each within
   ``HITL_ANALYZER_TIME_LIMIT_SECONDS``. One that raises or overruns gets the status ``error`` /
   ``timeout`` and a high ``analyzer.failed`` / ``analyzer.timeout`` flag (failing closed); its late
   result is dropped, and the analyzers after it continue in a fresh thread.
3. Flags are merged per (code, location), fingerprinted (sha256 of code and the normalised matched
   text), and the project's rules move flags to ``observed_flags`` / ``suppressed_flags``.
4. Scores are pure functions of the enforced flags and the analyzer statuses (``scores``).

No clock, randomness, database or network in the result: the same input gives the same output
(timeouts aside, which are reported as such).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from django.conf import settings

from .base import SEVERITY_RANK, Analyzer, load_analyzers
from .context import MAX_SCAN_CHARS, ResponseContext, RiskContext, Segment
from .normalise import CONFUSABLE_TABLE, HIDDEN_RX, Finding, base_location, normalise_segments
from .scores import combine
from .text import mask

logger = logging.getLogger(__name__)

TOOLS = ("detect-secrets", "bandit", "presidio-analyzer")
_FROZEN = ("analyzer.", "risk.scan_truncated")   # fail-closed flags: no rule or suppression moves them


@dataclass(frozen=True)
class ProjectRules:
    """Built by the service from the database (see INTERFACE.md)."""
    settings: Mapping[str, Mapping] = field(default_factory=dict)
    suppressions: frozenset[tuple[str, str]] = frozenset()


@functools.lru_cache(maxsize=1)
def tool_versions() -> dict[str, str]:
    out = {}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


class ScanContext:
    """What an analyzer sees in the pipeline: the normalised segments of a call or a response, and the
    fields of the source context (``agent_type``, ``estimated_cost``, ``allowed_hosts``, ...)."""

    def __init__(self, source: RiskContext | ResponseContext, kind: str):
        self.source, self.kind = source, kind
        self.original_segments: tuple[Segment, ...] = source.segments
        normalised = normalise_segments(self.original_segments)
        self.segments = normalised.segments
        self.unicode_findings: tuple[Finding, ...] = normalised.findings
        self.decode_capped = normalised.capped
        self.truncated = source.truncated

    def __getattr__(self, name: str) -> Any:     # fields of the source context; None when it has none
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.source, name, None)

    @functools.cached_property
    def code_blocks(self):
        from .code import extract_code_blocks
        return extract_code_blocks(self)


# --- running the analyzers -----------------------------------------------------------------------------

class _Run:
    """One batch of analyzers run by one worker thread. The worker records which analyzer runs since
    when; the caller sleeps until the batch is done or the running analyzer overruns its limit: one
    wake-up per analysis (not one thread hand-off per analyzer)."""

    def __init__(self, analyzers: tuple[Analyzer, ...], ctx: ScanContext):
        self.analyzers, self.ctx = analyzers, ctx
        self.cond = threading.Condition()
        self.results: list[tuple[str, Any]] = []      # (status, value) per finished analyzer, in order
        self.started = time.monotonic()                 # when the running analyzer started
        self.finished = self.abandoned = False

    def work(self) -> None:
        for analyzer in self.analyzers:
            with self.cond:
                if self.abandoned:
                    return
                self.started = time.monotonic()
            try:
                outcome = ("ok", analyzer.run(self.ctx))
            except Exception as exc:   # reported by the caller
                outcome = ("error", exc)
            with self.cond:
                if self.abandoned:
                    return
                self.results.append(outcome)
        with self.cond:
            self.finished = True
            self.cond.notify()

    def wait(self, limit: float) -> bool:
        """True when every analyzer finished; False when the running one overran ``limit`` (then the
        worker is abandoned: its later results are dropped)."""
        with self.cond:
            while not self.finished:
                remaining = self.started + limit - time.monotonic()
                if remaining <= 0:
                    self.abandoned = True
                    return False
                self.cond.wait(timeout=remaining)
            return True


def _run_analyzers(analyzers: tuple[Analyzer, ...], ctx: ScanContext, limit: float):
    """[(analyzer, status, flags, metrics)] in order; each analyzer gets ``limit`` seconds."""
    results: list[tuple[Analyzer, str, list, dict]] = []
    pending = tuple(analyzers)
    while pending:
        run = _Run(pending, ctx)
        threading.Thread(target=run.work, daemon=True, name="hitl-analyzer").start()
        completed = run.wait(limit)
        with run.cond:
            finished = list(run.results)
        for analyzer, (status, value) in zip(pending, finished):
            if status == "error":
                logger.error("analyzer %s failed", type(analyzer).__name__, exc_info=value)
                results.append((analyzer, "error", [], {}))
            else:
                flags, metrics = value if isinstance(value, tuple) else (value, {})
                results.append((analyzer, "ok", list(flags or ()), dict(metrics or {})))
        if completed:
            break
        stuck = pending[len(finished)]             # the stuck thread is abandoned; the rest run in a new one
        logger.error("analyzer %s timed out after %.1fs", type(stuck).__name__, limit)
        results.append((stuck, "timeout", [], {}))
        pending = pending[len(finished) + 1:]
    return results


# --- flags -------------------------------------------------------------------------------------------------

_WS = re.compile(r"\s+")


def fingerprint(code: str, text: str) -> str:
    text = _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()
    return hashlib.sha256(f"{code}\x00{text}".encode()).hexdigest()[:16]


def _clean(flag: Any, analyzer_name: str) -> dict:
    flag = flag if isinstance(flag, dict) else {}
    severity = flag.get("severity")
    if severity not in SEVERITY_RANK:
        severity = "high"
    try:
        confidence = min(1.0, max(0.0, float(flag.get("confidence", 1.0))))
    except (TypeError, ValueError):
        confidence = 1.0
    code = str(flag.get("code", "risk.unknown"))
    message = str(flag.get("message", ""))
    match = flag.get("match")
    return {"code": code, "severity": severity, "message": message, "location": str(flag.get("location", "")),
            "fingerprint": fingerprint(code, str(match) if match is not None else message),
            "confidence": round(confidence, 3), "analyzer": analyzer_name}


class _Collector:
    """One flag per (code, location), the most severe; repeats with other fingerprints are counted."""

    def __init__(self) -> None:
        self.flags: dict[tuple[str, str], dict] = {}
        self.prints: dict[tuple[str, str], set[str]] = {}

    def add(self, flag: dict) -> None:
        key = (flag["code"], flag["location"])
        self.prints.setdefault(key, set()).add(flag["fingerprint"])
        old = self.flags.get(key)
        if old is None or (SEVERITY_RANK[flag["severity"]], flag["confidence"]) > (
                SEVERITY_RANK[old["severity"]], old["confidence"]):
            self.flags[key] = flag

    def _repeats_its_source(self, key: tuple[str, str]) -> bool:
        """A derived segment's flag (``... (joined)``, ``... (spaced)``) that finds only what was
        already found in the text it was derived from: the same finding, not a second one."""
        code, location = key
        source = base_location(location)
        return source != location and self.prints[key] <= self.prints.get((code, source), set())

    def result(self) -> list[dict]:
        out = []
        for key, flag in self.flags.items():
            if self._repeats_its_source(key):
                continue
            more = len(self.prints[key]) - 1
            if more > 0 and not flag["code"].startswith("cost."):
                flag = {**flag, "message": f"{flag['message']} (+{more} more)"}
            out.append(flag)
        return sorted(out, key=lambda f: -SEVERITY_RANK[f["severity"]])    # stable: analyzer order


# separators a secret may be written with (a card number's), and every ASCII space
_GAP_CHARS = frozenset(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85-./")
_ASCII_GAPS = str.maketrans("", "", "".join(_GAP_CHARS))


@functools.lru_cache(maxsize=8192)
def _folded_char(ch: str) -> str:
    """What ``ch`` counts as when a secret is looked for: nothing for an invisible character or a
    separator, else its NFKC form with look-alike letters folded (``ｇ`` and ``ɡ`` are ``g``)."""
    if ch in _GAP_CHARS or HIDDEN_RX.match(ch) or ch.isspace():
        return ""
    return "".join(c for c in unicodedata.normalize("NFKC", ch).translate(CONFUSABLE_TABLE) if c not in _GAP_CHARS)


def _folded(text: str) -> str:
    return text.translate(_ASCII_GAPS) if text.isascii() else "".join(map(_folded_char, text))


def _folded_index(text: str) -> list[int]:
    """For each character of ``_folded(text)``, the index in ``text`` of the character it came from."""
    return [i for i, ch in enumerate(text) for _ in (_folded_char(ch) if not ch.isascii() or ch in _GAP_CHARS
                                                        else ch)]


class _SecretMasker:
    """Masks the secrets the analyzers found (each as its first 4 characters) wherever they are
    written in a text, however: with invisible characters or separators between their characters,
    in full-width or look-alike letters. Linear in the text: the secrets are indexed by their
    first four folded characters and then by length, so at each place of a text one dictionary
    look-up per distinct length of the secrets sharing those four characters finds the longest
    that is there: thousands of them (an input of e-mail addresses, all `user...@`) cost no more per
    text than a few."""

    def __init__(self, secrets) -> None:
        # {first four folded characters: [(length, {folded secret: its mask}), ...] longest first}
        by_prefix: dict[str, dict[int, dict[str, str]]] = {}
        for secret in set(secrets):
            folded = _folded(secret)
            if len(folded) >= 4:
                by_prefix.setdefault(folded[:4], {}).setdefault(len(folded), {}).setdefault(folded, mask(secret))
        self.by_prefix = {prefix: sorted(lengths.items(), reverse=True) for prefix, lengths in by_prefix.items()}

    def __call__(self, text: str) -> str:
        if not self.by_prefix or len(text) < 4:
            return text
        folded = _folded(text)
        spans, i = [], 0
        while i <= len(folded) - 4:
            for length, secrets in self.by_prefix.get(folded[i:i + 4], ()):
                masked = secrets.get(folded[i:i + length])
                if masked is not None:
                    spans.append((i, i + length, masked))
                    i += length
                    break
            else:
                i += 1
        if not spans:
            return text
        index = _folded_index(text)
        out, at = [], 0
        for start, end, masked in spans:
            out += [text[at:index[start]], masked]
            at = index[end - 1] + 1
        return "".join(out) + text[at:]


def _secrets_masked(flags: list[dict], secrets: set[str]) -> list[dict]:
    """A location is a JSON path, whose keys are the agent's own text: a secret (or a card number)
    used as a key (``{"files": {"ghp_...": ...}}``) would be stored, sent in events and shown whole
    there; a message may quote the text another analyzer found a secret in (a command with a
    token in it). Each secret found is masked in every location and message (its first 4
    characters), also when invisible characters, separators, full-width or look-alike letters
    hide it; flags that then share a (code, location) are one flag, the most severe."""
    masked_in = _SecretMasker(secrets)
    if not masked_in.by_prefix:
        return flags
    collector = _Collector()
    for flag in flags:
        location, message = masked_in(flag["location"]), masked_in(flag["message"])
        if (location, message) != (flag["location"], flag["message"]):
            flag = {**flag, "location": location, "message": message}
        collector.add(flag)
    return collector.result()


def _rule_for(code: str, rules: Mapping[str, Mapping]) -> Mapping | None:
    if code in rules:
        return rules[code]
    best = None
    for prefix, rule in rules.items():
        if code.startswith(prefix.rstrip(".") + ".") and (best is None or len(prefix) > len(best[0])):
            best = (prefix, rule)
    return best[1] if best else None


def apply_rules(flags: list[dict], rules: ProjectRules | None) -> tuple[list[dict], list[dict], list[dict]]:
    """(enforced, observed, suppressed). Critical secret flags are never lowered by a threshold."""
    if rules is None:
        return flags, [], []
    enforced, observed, suppressed = [], [], []
    for flag in flags:
        code = flag["code"]
        if code.startswith(_FROZEN):
            enforced.append(flag)
            continue
        if (code, flag["fingerprint"]) in rules.suppressions:
            suppressed.append(flag)
            continue
        rule = _rule_for(code, rules.settings or {})
        if rule:
            try:
                threshold = float(rule.get("threshold") or 0.0)
            except (TypeError, ValueError):
                threshold = 0.0
            protected = code.startswith("secret.") and flag["severity"] == "critical"
            if rule.get("mode") == "observe" or (flag["confidence"] < threshold and not protected):
                observed.append(flag)
                continue
        enforced.append(flag)
    return enforced, observed, suppressed


# --- the pipeline --------------------------------------------------------------------------------------------

def _limit() -> float:
    return float(getattr(settings, "HITL_ANALYZER_TIME_LIMIT_SECONDS", 2.0))


def _configured_analyzers() -> tuple[Analyzer, ...]:
    return load_analyzers(tuple(settings.HITL_RISK_ANALYZERS)) + load_analyzers(tuple(settings.HITL_RESPONSE_ANALYZERS))


def rule_code_reported(code: str) -> bool:
    """Whether a configured analyzer can report ``code`` (a flag code, or a prefix of some such
    as ``secret`` or ``code.bandit``), as far as the analyzers declare their names."""
    family, _, rest = code.partition(".")
    analyzers = [a for a in _configured_analyzers() if a.code == family]
    return bool(analyzers) and (not rest or any(a.reports(rest) for a in analyzers))


def rule_names(family: str) -> list[str]:
    """The flag codes the configured analyzers of ``family`` declare (``code.bandit.B<nnn>`` for
    a family of them), sorted: what a refused rule setting is told it may name."""
    codes = set()
    for analyzer in _configured_analyzers():
        if analyzer.code == family:
            codes.update(f"{family}.{name}" for name in analyzer.names or ())
            codes.update(f"{family}.{shown}" for shown in analyzer.name_patterns.values())
    return sorted(codes)


def rule_families() -> tuple[str, ...]:
    """The first part of every flag code the configured analyzers can report (``secret`` of
    ``secret.github_token``), sorted: what a project's rule setting may name. The pipeline's own
    fail-closed flags (``analyzer.*``, ``risk.scan_truncated``) are not among them: no rule moves them."""
    return tuple(sorted({a.code for a in _configured_analyzers()} - {"analyzer"}))


def run_pipeline(source: RiskContext | ResponseContext, kind: str, paths, rules: ProjectRules | None) -> dict:
    ctx = ScanContext(source, kind)
    analyzers = load_analyzers(tuple(paths))
    statuses: dict[str, dict] = {}
    runnable = []
    collector = _Collector()
    for analyzer in analyzers:
        name = type(analyzer).__name__
        entry = statuses[name] = {"status": "skipped", "version": str(getattr(analyzer, "version", "1"))}
        try:
            analyzer.prepare()
            if kind in getattr(analyzer, "kinds", ("call", "response")) and analyzer.applies(ctx):
                runnable.append(analyzer)
        except Exception:
            logger.exception("analyzer %s could not be prepared", name)
            entry["status"] = "error"
    metrics: dict[str, float] = {}
    secrets: set[str] = set()
    for analyzer, status, flags, found in _run_analyzers(tuple(runnable), ctx, _limit()):
        name = type(analyzer).__name__
        statuses[name]["status"] = status
        for flag in flags:
            cleaned = _clean(flag, name)
            if cleaned["code"].startswith(("secret.", "pii.")) and isinstance(flag, dict) and flag.get("match"):
                secrets.add(str(flag["match"]))
            collector.add(cleaned)
        metrics.update({k: round(float(v), 3) for k, v in found.items()})
    for name, entry in statuses.items():
        if entry["status"] in ("error", "timeout"):
            failed = entry["status"] == "error"
            collector.add(_clean({"code": "analyzer.failed" if failed else "analyzer.timeout", "severity": "high",
                                  "location": "", "match": name,
                                  "message": f"{name} {'failed' if failed else 'ran out of time'}; "
                                             f"review this {kind} manually"}, "pipeline"))
    if ctx.truncated:
        where = "input_data" if kind == "call" else "agent_response"
        # failing closed, as an analyzer that ran out of time: what was not read may hide anything
        # (filler in front of a dangerous command), so the call is never rated below high
        collector.add(_clean({"code": "risk.scan_truncated", "severity": "high", "location": where,
                              "message": f"Input is larger than the scanned {MAX_SCAN_CHARS:,} characters "
                                         "(or too deeply nested); the rest was not checked: review it "
                                         "manually"}, "pipeline"))
    enforced, observed, suppressed = apply_rules(_secrets_masked(collector.result(), secrets), rules)
    ran = [e["status"] for e in statuses.values() if e["status"] != "skipped"]
    scored = combine(enforced, ran=len(ran), ok=ran.count("ok"),
                     truncated=ctx.truncated, decode_capped=ctx.decode_capped)
    return {"flags": enforced, "observed_flags": observed, "suppressed_flags": suppressed, "metrics": metrics,
            "analyzers": dict(sorted(statuses.items())), "tools": dict(tool_versions()), **scored}


def assess(ctx: RiskContext, rules: ProjectRules | None = None) -> dict:
    """The risk assessment of a proposed call: ``level``, ``score``, ``flags`` and the pipeline's keys."""
    out = run_pipeline(ctx, "call", settings.HITL_RISK_ANALYZERS, rules)
    return {"level": out["level"], "score": out["risk"], "flags": out["flags"],
            "confidence_score": out["confidence_score"], "safety_score": out["safety_score"],
            "observed_flags": out["observed_flags"], "suppressed_flags": out["suppressed_flags"],
            "analyzers": out["analyzers"], "tools": out["tools"]}


_RECOMMENDATIONS = (   # (code prefix, advice), first match per prefix
    ("secret.", "Remove the credential from the output and rotate it; it must not be stored or reused."),
    ("pii.", "Remove or mask the personal data before the output is used."),
    ("injection.", "Treat the text as untrusted: it tries to steer the agent or the reviewer."),
    ("unicode.", "Look at the raw text: it hides characters that change how it reads."),
    ("destructive.", "Do not run the destructive command without a backup and an explicit decision."),
    ("code.", "Review the code's security findings before it is merged or run."),
    ("exfil.", "Check where data is sent; block transfers to hosts outside the project."),
    ("link.", "Check the linked hosts; links outside the project's allow list may be unsafe."),
    ("consistency.", "The response does not match what was approved: compare it with the approved call."),
    ("completeness.", "The response is incomplete for its agent type: ask for the missing parts."),
    ("analyzer.", "An analyzer did not finish: review this output manually."),
)


def analyze_response(ctx: ResponseContext, rules: ProjectRules | None = None) -> dict:
    """The safety analysis of an agent's response (see INTERFACE.md for the shape)."""
    out = run_pipeline(ctx, "response", settings.HITL_RESPONSE_ANALYZERS, rules)
    metrics = out["metrics"]
    quality = {"completeness": metrics.get("completeness", 1.0), "consistency": metrics.get("consistency", 1.0)}
    if (ctx.agent_type or "").strip().lower() == "coder":
        quality["code_quality"] = metrics.get("code_quality", 0.0)
    recommendations = []
    for prefix, advice in _RECOMMENDATIONS:
        if any(f["code"].startswith(prefix) for f in out["flags"]) and advice not in recommendations:
            recommendations.append(advice)
    return {"risk_flags": out["flags"], "observed_flags": out["observed_flags"],
            "suppressed_flags": out["suppressed_flags"], "confidence_score": out["confidence_score"],
            "safety_score": out["safety_score"], "quality_metrics": quality, "recommendations": recommendations,
            "level": out["level"], "analyzers": out["analyzers"], "tools": out["tools"]}
