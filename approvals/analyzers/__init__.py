"""Deterministic risk assessment for agent call approvals.

``assess(ctx)`` runs the analyzer classes named in ``settings.HITL_RISK_ANALYZERS`` over the
proposed action and every key and string in ``input_data`` (walked recursively, with a JSON
path for each), and returns ``{"level", "score", "flags"}`` for reviewers. There is no I/O, no
clock and no randomness: the same context always gives the same result. The scanned text is
capped (``MAX_SCAN_CHARS``), so a huge input costs bounded time; a capped scan is itself flagged.

Modules: ``context`` (what is scanned), ``base`` (``Analyzer`` and ``assess``), ``text`` (shared
helpers), and one module per analyzer: ``credentials``, ``pii``, ``injection``, ``destructive``,
``exfiltration``, ``deploy``, ``cost``.
"""
from .base import SEVERITIES, Analyzer, assess
from .context import MAX_SCAN_CHARS, RiskContext, Segment
from .cost import CostAnalyzer
from .credentials import SecretsAnalyzer
from .deploy import ProductionDeployAnalyzer
from .destructive import DestructiveCommandAnalyzer
from .exfiltration import ExfiltrationAnalyzer
from .injection import PromptInjectionAnalyzer
from .pii import PersonalDataAnalyzer
from .text import mask

__all__ = ["RiskContext", "Segment", "Analyzer", "assess", "mask", "SecretsAnalyzer", "PersonalDataAnalyzer",
           "PromptInjectionAnalyzer", "DestructiveCommandAnalyzer", "ExfiltrationAnalyzer",
           "ProductionDeployAnalyzer", "CostAnalyzer", "MAX_SCAN_CHARS", "SEVERITIES"]
