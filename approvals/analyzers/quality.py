"""Completeness and consistency of a response with its approved call (flag codes ``completeness.*`` and
``consistency.*``; metrics ``completeness`` and ``consistency`` in [0, 1])."""
from __future__ import annotations

import json
import re

from .base import Analyzer
from .deploy import _DEPLOY_VERB, _DRY_RUN, _PROD
from .text import redact

_PROD_WINDOW = 120

REQUIRED_FIELDS = {"orchestrator": ("plan",), "analyst": ("analysis",), "architect": ("design",),
                   "coder": ("files", "code"), "tester": ("test_results",), "deployer": ("deployment",)}
TOKENS_FACTOR = 5          # tokens_used above this many times the estimate is flagged


def _empty(value) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple, dict)):
        return not value or all(_empty(v) for v in (value.values() if isinstance(value, dict) else value))
    return False


class CompletenessAnalyzer(Analyzer):
    """Empty responses (medium); the agent type's field missing, ``next_steps`` missing where the
    workflow continues (low)."""
    code = "completeness"
    names = frozenset(("empty", "missing_field", "missing_next_steps"))
    kinds = ("response",)

    def run(self, ctx) -> tuple[list[dict], dict]:
        flags, checks = [], []
        response = ctx.agent_response
        empty = _empty(response) and not (ctx.response_summary or "").strip()
        checks.append(not empty)
        if empty:
            flags.append(self.flag("empty", "medium", "The response is empty", "agent_response", match="empty"))
        agent = (ctx.agent_type or "").strip().lower()
        fields = REQUIRED_FIELDS.get(agent)
        if fields and not empty:
            present = isinstance(response, dict) and any(not _empty(response.get(f)) for f in fields)
            checks.append(present)
            if not present:
                flags.append(self.flag("missing_field", "low", f"A {agent} response should carry "
                                                              f"{' or '.join(repr(f) for f in fields)}",
                                       "agent_response", match=agent))
        if ctx.workflow_continues:
            present = bool([s for s in (ctx.next_steps or ()) if str(s).strip()]) or (
                isinstance(response, dict) and not _empty(response.get("next_steps")))
            checks.append(present)
            if not present:
                flags.append(self.flag("missing_next_steps", "low", "The workflow continues but the response "
                                                                   "gives no next_steps", "next_steps",
                                       match="next_steps"))
        return flags, {"completeness": sum(checks) / len(checks)}

    def analyze(self, ctx) -> list[dict]:
        return self.run(ctx)[0]


# Claimed actions: (class, claim regex over the response's text, words that approve the class in the call)
_I = re.IGNORECASE
_AUX = r"(?:\b(?:i|we|it|they|this|that|(?:the|your|our)\s+[\w-]+(?:\s+[\w-]+)?)\s+)?(?:(?:have|has|had|was|were|'ve|is|are)\s+)?(?:(?:now|just|already|successfully|also|then|been)\s+){0,3}"
_CLAIMS = (
    ("deploy", re.compile(rf"(?:^|[.!\n;:]\s*|\b(?:i|we)\s+){_AUX}(?:deployed|released|rolled\s+out|shipped|promoted)\b"
                          r"(?!\s+(?:locally|to\s+(?:staging|dev|test|a\s+preview)))", _I),
     ("deploy", "release", "roll", "ship", "promot", "publish", "rollout", "helm", "kubectl apply")),
    ("delete", re.compile(rf"(?:^|[.!\n;:]\s*|\b(?:i|we)\s+){_AUX}(?:deleted|dropped|wiped|purged|destroyed|erased|"
                          r"truncated|removed)\s+(?:(?:the|all|every|your|our|its|their|of|old|existing|production|prod|"
                          r"remote)\s+){0,3}(?:database|db|tables?|branch(?:es)?|buckets?|records?|rows|users?|accounts?|"
                          r"customers?|data|repo(?:sitory)?|backups?|clusters?|namespaces?|instances?|volumes?|"
                          r"collections?|indexes|logs)\b", _I),
     ("delete", "remove", "drop", "wipe", "purge", "destroy", "erase", "truncate", "clean", "prune", "rm ",
      "rm -", "rmtree", "cleanup")),
    ("push", re.compile(rf"(?:^|[.!\n;:]\s*|\b(?:i|we)\s+){_AUX}(?:force[- ]pushed|pushed|merged)\s+(?:(?:it|them|the|"
                        r"my|our|all|changes|commits?|code|branch|fix|this)\s+){0,3}(?:to|into)\s+(?:the\s+)?"
                        r"(?:main|master|origin|remote|production|prod|release|trunk|upstream|github|repo)", _I),
     ("push", "merge", "git", "commit", "pull request", "pr ")),
    ("send", re.compile(rf"(?:^|[.!\n;:]\s*|\b(?:i|we)\s+){_AUX}(?:sent|emailed|e-mailed|mailed|posted|uploaded|"
                        r"forwarded|shared|messaged|published|texted)\s+(?:(?:it|them|the|a|an|all|this|our|your|"
                        r"their)\s+){0,3}(?:\w+\s+){0,2}(?:to|with)\s+(?:the\s+|an?\s+|all\s+|our\s+|your\s+)?"
                        r"(?:customers?|users?|clients?|team|channel|slack|email|external|public|everyone|list|"
                        r"[\w.-]+@[\w.-]+|https?://|webhook|server|s3|bucket|pastebin|third)", _I),
     ("send", "email", "mail", "post", "upload", "publish", "notify", "message", "slack", "webhook", "share",
      "forward", "announce")),
    ("payment", re.compile(rf"(?:^|[.!\n;:]\s*|\b(?:i|we)\s+){_AUX}(?:charged|refunded|paid|purchased|bought|"
                           r"transferred|wired)\s+(?:\$|€|£|\d|the\s+(?:customer|card|account|invoice)|funds|money)",
                           _I),
     ("charge", "refund", "pay", "purchase", "buy", "transfer", "invoice", "billing")),
)


def _text_of(value, limit: int = 50_000) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text[:limit]


class ConsistencyAnalyzer(Analyzer):
    """Agent type / task differing from the call approval's, tokens far above the estimate, and claims of
    actions (deployed, deleted, pushed, sent, paid) the approved call did not cover (medium)."""
    code = "consistency"
    names = frozenset(("agent_mismatch", "task_agent_mismatch", "tokens_over_estimate", "tokens_negative",
                       "unapproved_action", "unapproved_production"))
    kinds = ("response",)

    def run(self, ctx) -> tuple[list[dict], dict]:
        flags, checks = [], []
        agent = (ctx.agent_type or "").strip().lower()
        for name, other, label in (("agent_mismatch", ctx.call_agent_type, "the call approval's"),
                                   ("task_agent_mismatch", ctx.task_agent_type, "the task's")):
            if other:
                ok = agent == str(other).strip().lower()
                checks.append(ok)
                if not ok:
                    flags.append(self.flag(name, "medium", f"Response agent type {agent!r} differs from {label} "
                                                           f"{str(other).strip().lower()!r}", "agent_type",
                                           match=f"{agent}/{other}"))
        used, estimate = ctx.tokens_used, ctx.estimated_tokens
        if isinstance(used, int) and isinstance(estimate, int) and estimate > 0:
            ok = used <= TOKENS_FACTOR * estimate
            checks.append(ok)
            if not ok:
                flags.append(self.flag("tokens_over_estimate", "medium", f"tokens_used {used} is more than "
                                                                         f"{TOKENS_FACTOR}× the estimate {estimate}",
                                       "tokens_used", match="tokens"))
        if isinstance(used, int) and used < 0:
            checks.append(False)
            flags.append(self.flag("tokens_negative", "medium", f"tokens_used is negative ({used})", "tokens_used",
                                   match="negative"))
        approved = f"{ctx.proposed_action or ''}\n{_text_of(ctx.approved_input)}".lower()
        claimed = set()
        for seg in ctx.original_segments:
            if seg.is_key or seg.key in ("content", "code", "source", "diff", "patch") or len(seg.text) > 20_000:
                continue
            for name, rx, approves in _CLAIMS:
                if name in claimed:
                    continue
                m = rx.search(seg.text)
                if m and not any(word in approved for word in approves):
                    claimed.add(name)
                    flags.append(self.flag("unapproved_action", "medium",
                                           f"Claims an action the approved call did not cover ({name}): "
                                           f"\"{redact(m.group(0).strip(' .;:!'))}\"", seg.location, match=name))
        checks.extend(name not in claimed for name, _, _ in _CLAIMS)
        if not _PROD.search(approved):
            hit = self._production(ctx)
            checks.append(hit is None)
            if hit is not None:
                flags.append(self.flag("unapproved_production", "high", "Acts on production although the approved "
                                                                       f"call did not: \"{redact(hit[1], 100)}\"",
                                       hit[0], match="production"))
        return flags, {"consistency": sum(checks) / len(checks)}

    def analyze(self, ctx) -> list[dict]:
        return self.run(ctx)[0]

    @staticmethod
    def _production(ctx):
        """(location, text) of the first place the response deploys / changes production, or None."""
        segments = [s for s in ctx.original_segments if not s.is_key and len(s.text) <= 20_000]
        mutating = any(_DEPLOY_VERB.search(s.text) and not _DRY_RUN.search(s.text) for s in segments)
        for seg in segments:
            if seg.key in ("content", "code", "source", "diff", "patch") or not _PROD.search(seg.text):
                continue
            if seg.key is not None and len(seg.text) < 40 and mutating:
                return seg.location, f"{seg.key}={seg.text.strip()}"
            for m in _PROD.finditer(seg.text):
                window = seg.text[max(0, m.start() - _PROD_WINDOW):m.end() + _PROD_WINDOW]
                if _DEPLOY_VERB.search(window) and not _DRY_RUN.search(window):
                    return seg.location, window.strip()
        return None
