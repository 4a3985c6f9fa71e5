"""Deterministic safety analysis of agent calls and responses: one analyzer pipeline for both.

``assess(ctx, rules=None)`` rates a proposed call (``RiskContext``) with the analyzers named in
``settings.HITL_RISK_ANALYZERS``; ``analyze_response(ctx, rules=None)`` rates an agent's response
(``ResponseContext``) with ``settings.HITL_RESPONSE_ANALYZERS``. Both normalise the text first
(``normalise``: invisible characters stripped, NFKC, look-alike letters folded, encoded candidates
decoded, split string literals joined), run each analyzer within a time limit, failing closed
(``pipeline``), and score the findings as pure functions of them (``scores``). There is no I/O
besides temporary files, no clock and no randomness in a result. The scanned text is capped
(``MAX_SCAN_CHARS``); a capped scan is itself flagged. See INTERFACE.md for the result shapes.

Modules: ``context`` (what is scanned), ``normalise``, ``pipeline``, ``scores``, ``base``
(``Analyzer``), ``text`` (shared helpers), and the analyzers: ``credentials``, ``pii``,
``injection``, ``invisible``, ``links``, ``destructive``, ``exfiltration``, ``code``, ``deploy``,
``cost``, ``quality`` (completeness and consistency).
"""
from .base import SEVERITIES, Analyzer
from .code import CodeSafetyAnalyzer
from .context import MAX_SCAN_CHARS, ResponseContext, RiskContext, Segment
from .cost import CostAnalyzer
from .credentials import SecretsAnalyzer
from .deploy import ProductionDeployAnalyzer
from .destructive import DestructiveCommandAnalyzer
from .exfiltration import ExfiltrationAnalyzer
from .injection import PromptInjectionAnalyzer
from .invisible import InvisibleUnicodeAnalyzer
from .links import LinkAnalyzer
from .pii import PersonalDataAnalyzer
from .pipeline import ProjectRules, analyze_response, assess, fingerprint, rule_code_reported, rule_families, rule_names
from .quality import CompletenessAnalyzer, ConsistencyAnalyzer
from .text import mask

__all__ = ["RiskContext", "ResponseContext", "ProjectRules", "Segment", "Analyzer", "assess", "analyze_response",
           "fingerprint", "rule_code_reported", "rule_families", "rule_names", "mask", "SecretsAnalyzer", "PersonalDataAnalyzer", "PromptInjectionAnalyzer",
           "InvisibleUnicodeAnalyzer", "LinkAnalyzer", "DestructiveCommandAnalyzer", "ExfiltrationAnalyzer",
           "CodeSafetyAnalyzer", "ProductionDeployAnalyzer", "CostAnalyzer", "CompletenessAnalyzer",
           "ConsistencyAnalyzer", "MAX_SCAN_CHARS", "SEVERITIES"]
