"""Text helpers shared by the analyzers: masking and redaction for messages, the literal prefilter,
and the shape test for generated keys."""
from __future__ import annotations

from core.redaction import mask, random_looking, redact  # noqa: F401  (re-exported for the analyzers)

_PREFILTER_FROM = 256          # texts this long get a literal check before each regex
CONTEXT_CHARS = 200            # characters of a line looked at around a match


def has_hint(lower: str, hints: tuple[str, ...]) -> bool:
    """Cheap literal prefilter before a regex. Short texts skip it: the regex is cheaper there."""
    return len(lower) < _PREFILTER_FROM or any(h in lower for h in hints)
