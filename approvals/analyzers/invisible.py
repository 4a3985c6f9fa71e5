"""Invisible Unicode and bidi controls found by the normalisation (flag codes ``unicode.*``)."""
from __future__ import annotations

from .base import Analyzer

_LABELS = {
    "invisible": ("invisible", "medium", "Zero-width / invisible characters"),
    "tags": ("invisible", "high", "Unicode tag characters (hidden ASCII text)"),
    "bidi": ("bidi", "high", "Bidirectional override / isolate controls (text reads differently than it runs)"),
    "bidi_mark": ("bidi", "low", "Bidirectional marks"),
}


class InvisibleUnicodeAnalyzer(Analyzer):
    """Zero-width characters (medium), Unicode tags and bidi overrides (high), bidi marks (low)."""
    code = "unicode"
    names = frozenset(label[0] for label in _LABELS.values())

    def analyze(self, ctx) -> list[dict]:
        flags = []
        for finding in getattr(ctx, "unicode_findings", ()):
            name, severity, label = _LABELS[finding.kind]
            flags.append(self.flag(name, severity, f"{label}: {finding.count} × {', '.join(finding.chars)}",
                                   finding.location, match=" ".join(finding.chars)))
        return flags
