"""Prompt injection and jailbreak phrasings anywhere in the call (flag codes ``injection.*``)."""
from __future__ import annotations

import re

from .base import Analyzer
from .context import RiskContext, Segment
from .text import has_hint, redact

_I = re.IGNORECASE

_INJECTION = [   # (name, hints, regex): all "high"
    ("ignore_instructions", ("ignore", "disregard", "forget", "override", "bypass"), re.compile(
        r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:(?:all|any|the|your|my|of|these|those|every)\s+){0,3}"
        r"(?:previous|prior|above|earlier|preceding|former|original|initial|system|developer)\s+"
        r"(?:instructions?|prompts?|rules|directions|guidelines|directives|messages?|context)", _I)),
    ("ignore_instructions", ("ignore", "disregard", "forget"), re.compile(
        r"\b(?:ignore|disregard|forget)\s+(?:all|everything)\s+"
        r"(?:you\s+were\s+told|above|before|(?:of\s+)?your\s+(?:instructions|rules))", _I)),
    ("system_prompt_leak", ("system", "instructions", "prompt"), re.compile(
        r"\b(?:reveal|show|print|output|repeat|display|leak|dump|tell\s+me|give\s+me|what\s+(?:is|are))\s+"
        r"(?:me\s+)?(?:your|the)\s+(?:(?:full|exact|original|hidden|initial|secret|complete)\s+)*"
        r"(?:system\s+(?:prompt|message|instructions)|initial\s+instructions|hidden\s+instructions|"
        r"prompt\s+verbatim)", _I)),
    ("jailbreak_persona", ("now",), re.compile(
        r"\byou\s+are\s+now\s+(?:DAN\b|in\s+(?:developer|god|jailbreak|unrestricted)\s+mode|"
        r"an?\s+(?:unrestricted|unfiltered|uncensored|jailbroken|evil|amoral)|free\s+(?:from|of)\s+)", _I)),
    ("jailbreak_persona", ("anything", "mode"), re.compile(
        r"\bdo\s+anything\s+now\b|\b(?:enable|enter|activate|switch\s+to)\s+(?:DAN|jailbreak|developer|god)\s+mode\b|"
        r"\bdeveloper\s+mode\s+(?:enabled|activated)", _I)),
    ("jailbreak_persona", ("pretend", "imagine", "act"), re.compile(
        r"\b(?:pretend|imagine|act\s+as\s+if)\s+(?:that\s+)?you\s+(?:have|had|are|were)\s+"
        r"(?:no|without|not\s+bound\s+by)\s+(?:any\s+)?"
        r"(?:restrictions|rules|limits|limitations|filters|guidelines|safety|content\s+polic)", _I)),
    ("jailbreak_persona", ("unrestricted", "unfiltered", "uncensored", "jailbroken", "evil", "amoral"), re.compile(
        r"\b(?:act|behave|respond|roleplay|role-play)\s+as\s+(?:an?\s+)?"
        r"(?:unrestricted|unfiltered|uncensored|jailbroken|evil|amoral)\b", _I)),
    ("safety_bypass", ("safety", "content", "ethical", "moral", "guardrails"), re.compile(
        r"\b(?:bypass|disable|override|circumvent|ignore|turn\s+off)\s+(?:(?:your|all|the|any)\s+){0,2}"
        r"(?:safety|content|ethical|moral)\s+"
        r"(?:filters?|guidelines|guardrails|restrictions|polic(?:y|ies)|constraints)|"
        r"\b(?:bypass|disable|circumvent|ignore)\s+(?:(?:your|all|the|any)\s+){0,2}guardrails", _I)),
    ("chat_template_tokens", ("<|", "inst]", "sys>>"), re.compile(
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id)\|>|"
        r"\[/?INST\]|<</?SYS>>")),
    ("new_instructions", ("instructions",), re.compile(
        r"(?:^|\n)\s*(?:#+\s*)?(?:IMPORTANT\W+)?(?:new|updated|real|actual)\s+instructions\s*"
        r"(?:for\s+(?:the\s+)?(?:AI|assistant|agent|model)\s*)?:", _I)),
    ("credential_request", ("key", "credential", "secret", "password", "token", "env"), re.compile(
        r"\b(?:send|post|upload|email|forward|leak|exfiltrate)\s+(?:(?:all|the|your|any|of)\s+){0,3}"
        r"(?:api\s+keys?|credentials|secrets|passwords|tokens|environment\s+variables|env\s+vars|private\s+keys?)"
        r"(?:\s*(?:,|and|&|or)\s*(?:(?:all|the|your|any)\s+)?(?:api\s+keys?|credentials|secrets|passwords|tokens|"
        r"environment\s+variables|env\s+vars|private\s+keys?)){0,3}\s+to\b", _I)),
]
_INJECTION_LABELS = {
    "ignore_instructions": "Instruction override", "system_prompt_leak": "Request to reveal the system prompt",
    "jailbreak_persona": "Jailbreak / role-play persona", "safety_bypass": "Request to bypass safety rules",
    "chat_template_tokens": "Chat-template control tokens", "new_instructions": "Injected 'new instructions' block",
    "credential_request": "Instruction to send credentials somewhere",
}


class PromptInjectionAnalyzer(Analyzer):
    """Known injection and jailbreak phrasings, anywhere in the call (high)."""
    code = "injection"

    def analyze(self, ctx: RiskContext) -> list[dict]:
        return self.for_each_segment(ctx, self._segment)

    def _segment(self, seg: Segment) -> list[dict]:
        flags, lower = [], seg.text.lower()
        for name, hints, rx in _INJECTION:
            m = has_hint(lower, hints) and rx.search(seg.text)
            if m:
                flags.append(self.flag(name, "high", f"{_INJECTION_LABELS[name]}: \"{redact(m.group(0))}\"",
                                       seg.location))
        return flags
