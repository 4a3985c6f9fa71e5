"""The analyzer base class, the severities and the loader of the configured analyzer classes."""
from __future__ import annotations

import functools
import re

from django.utils.module_loading import import_string

from .context import RiskContext

SEVERITIES = ("low", "medium", "high", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
SEVERITY_WEIGHT = {"low": 0.1, "medium": 0.3, "high": 0.6, "critical": 0.9}


class Analyzer:
    """Subclasses set ``code`` (the flag code prefix) and implement ``analyze``.

    ``kinds`` names what the analyzer looks at ("call", "response"); ``version`` is recorded with each
    result (bump it when the rules change); ``prepare()`` builds heavy engines once, before the timed
    run; ``run()`` may also return quality metrics. Flags may carry ``confidence`` (default 1.0) and
    the matched text (``match``, used only for the fingerprint, never shown).
    """
    code = "risk"
    version = "1"
    kinds: tuple[str, ...] = ("call", "response")
    #: The names (after ``<code>.``) of every flag it can report, and regexes for families of them,
    #: each with the form a refusal shows it in (``{r"bandit\.B\d{3}": "bandit.B<nnn>"}``): a
    #: project's rule setting naming another is refused (a typo would match nothing). None: not
    #: declared, and a setting is checked against ``code`` alone.
    names: frozenset[str] | None = None
    name_patterns: dict[str, str] = {}

    @classmethod
    def reports(cls, rest: str) -> bool:
        """Whether ``rest`` (a rule code after ``<code>.``) names a flag of this analyzer, or a
        prefix of some (``bandit`` of ``bandit.B602``)."""
        if cls.names is None:
            return True
        if any(name == rest or name.startswith(rest + ".") for name in cls.names):
            return True
        return any(re.fullmatch(pattern, rest) for pattern in cls.name_patterns)

    def prepare(self) -> None:
        """Build engines once (called outside the time limit); must be idempotent and thread-safe."""

    def applies(self, ctx) -> bool:
        return True

    def analyze(self, ctx: RiskContext) -> list[dict]:
        raise NotImplementedError

    def run(self, ctx) -> tuple[list[dict], dict]:
        return self.analyze(ctx), {}

    def flag(self, name: str, severity: str, message: str, location: str, *, confidence: float | None = None,
             match: str | None = None) -> dict:
        flag = {"code": f"{self.code}.{name}", "severity": severity, "message": message, "location": location}
        if confidence is not None:
            flag["confidence"] = confidence
        if match is not None:
            flag["match"] = match
        return flag

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


@functools.lru_cache(maxsize=16)
def load_analyzers(paths: tuple[str, ...]) -> tuple[Analyzer, ...]:
    return tuple(import_string(path)() for path in paths)
