"""Prompt injection and jailbreak phrasings anywhere in the call (flag codes ``injection.*``)."""
from __future__ import annotations

import re

from .base import Analyzer
from .context import RiskContext, Segment
from .text import has_hint, redact

_I = re.IGNORECASE

_INJECTION = [   # (name, hints, regex): all "high"
    # text addressed to the person reviewing the output, asking them not to look
    ("reviewer_manipulation", ("review", "approv"), re.compile(
        r"\b(?:note|message|instructions?)\s+(?:to|for)\s+(?:the\s+)?(?:human\s+)?(?:reviewer|approver|moderator)s?\b|"
        r"\b(?:approve|accept|merge|sign\s+off)\s+(?:this|it|the\s+(?:output|change|response|request))\s+"
        r"(?:without|before)\s+(?:reading|review(?:ing)?|checking|looking|testing)|"
        r"\b(?:the\s+)?(?:reviewer|approver)\s+(?:must|should|has\s+to|is\s+required\s+to)\s+(?:approve|accept)\b|"
        r"\bno\s+(?:need|reason)\s+to\s+(?:review|check|read)\s+(?:this|it|the\s+(?:output|code|diff))", _I)),
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
_QUAL = (r"(?:previous|prior|above|earlier|preceding|former|original|initial|system|developer|old|existing|"
         r"given|provided|aforementioned)")
_NOUN = (r"(?:instructions?|prompts?|rules|directions|guidelines|directives|messages?|context|guidance|orders|"
         r"commands|constraints|policies|programming|training)")
_INJECTION += [
    # "Disregard earlier guidance", "ignore the instructions you were given above", "set aside any prior rules"
    ("ignore_instructions", ("ignore", "disregard", "forget", "override", "bypass", "aside", "attention", "follow",
                             "discard", "abandon", "skip"), re.compile(
        r"\b(?:ignore|disregard|forget|override|bypass|discard|abandon|skip|set\s+aside|throw\s+out|"
        r"pay\s+no\s+attention\s+to|(?:do\s+not|don't|stop)\s+(?:follow(?:ing)?|obey(?:ing)?))\s+"
        r"(?:(?:all|any|the|your|my|of|these|those|every|each|whatever)\s+){0,3}"
        rf"(?:{_QUAL}\s+(?:\w+\s+){{0,1}}{_NOUN}\b|{_NOUN}\s+(?:(?:that\s+)?you\s+(?:were|have\s+been|"
        r"got|received)\s+(?:given|told|provided)?|(?:given|provided)\s+(?:to\s+you\s+)?(?:above|before|earlier|"
        r"previously|so\s+far)|(?:from\s+)?(?:above|before|earlier|previously|so\s+far)\b|(?:in|of)\s+"
        r"(?:the|your)\s+system\s+prompt))", _I)),
]
# The same override in other languages: (verb ... noun) within a short window. Each entry: hints, regex.
_FOREIGN = [
    ("fr", ("ignor", "oubli", "compte", "fais abstraction"), re.compile(
        r"\b(?:ignore[rz]?|ignorez|oublie[rz]?|oubliez|ne\s+tiens?\s+(?:pas|plus)\s+compte|"
        r"ne\s+tenez\s+(?:pas|plus)\s+compte|fais\s+abstraction|faites\s+abstraction)\b.{0,50}?"
        r"\b(?:instructions?|consignes?|directives?|r[eè]gles|ordres|indications)\b", _I)),
    ("de", ("ignorier", "vergiss", "vergessen", "missacht", "beacht"), re.compile(
        r"\b(?:ignorier\w*|vergiss|vergessen\s+sie|missachte\w*|beachte\s+nicht|übergeh\w*)\b.{0,50}?"
        r"\b(?:Anweisung(?:en)?|Instruktion(?:en)?|Regeln|Vorgaben|Befehle|Richtlinien|Anordnungen)\b", _I)),
    ("es", ("ignor", "olvid", "caso omiso", "omite", "descart"), re.compile(
        r"\b(?:ignora[rd]?|ignore[ns]?|olvida[rd]?|olvide[ns]?|haz\s+caso\s+omiso|haga\s+caso\s+omiso|omite|"
        r"descarta)\b.{0,50}?\b(?:instrucciones|indicaciones|reglas|directrices|órdenes|ordenes|normas)\b", _I)),
    ("it", ("ignor", "dimentic", "trascur", "non considerare"), re.compile(
        r"\b(?:ignora(?:re)?|ignori|dimentica(?:re)?|dimentichi|trascura(?:re)?|non\s+considerare)\b.{0,50}?"
        r"\b(?:istruzioni|indicazioni|regole|direttive|ordini)\b", _I)),
    ("pt", ("ignor", "esque", "desconsider", "despreze"), re.compile(
        r"\b(?:ignor[ae]r?|ignore|esque[çc]a|esquecer|desconsider[ae]r?|despreze)\b.{0,50}?"
        r"\b(?:instru[çc][õo]es|orienta[çc][õo]es|regras|diretrizes|ordens)\b", _I)),
    ("nl", ("negeer", "vergeet", "negeren"), re.compile(
        r"\b(?:negeer|negeren|vergeet|vergeten)\b.{0,50}?\b(?:instructies|aanwijzingen|regels|richtlijnen|"
        r"opdrachten)\b", _I)),
    ("ru", ("игнор", "забуд", "не обращ", "проигнор", "пренебре"), re.compile(
        r"(?:игнорир\w*|проигнорир\w*|забудь\w*|забудьте|не\s+обращай\w*\s+внимани\w*|пренебреги\w*)"
        r".{0,50}?(?:инструкци\w*|указани\w*|правил\w*|команд\w*|директив\w*)", _I)),
    ("zh", ("忽略", "无视", "無視", "忽视", "忽視", "忘记", "忘記", "不要理会", "不要遵守", "不要遵循"), re.compile(
        r"(?:忽略|无视|無視|忽视|忽視|忘记|忘記|忘掉|不要理会|不要理會|不要遵守|不要遵循|别管|別管)[^。\n]{0,15}?"
        r"(?:指令|指示|说明|說明|规则|規則|提示词|提示詞|提示|命令|要求|设定|設定)")),
    ("ja", ("無視", "忘れ", "従わ"), re.compile(
        r"(?:指示|命令|ルール|指令|プロンプト|設定|規則)[^。\n]{0,12}?(?:無視|忘れ|従わない|従うな)|"
        r"(?:無視|忘れ)[^。\n]{0,6}?(?:指示|命令|ルール|指令)")),
    ("ko", ("무시", "잊어"), re.compile(r"(?:지시|명령|규칙|지침|프롬프트)[^.\n]{0,12}?(?:무시|잊어)")),
]
_INJECTION += [
    ("jailbreak_persona", ("grand", "without", "no ", "jailbr", "never refuse"), re.compile(
        r"\bact\s+as\s+my\s+(?:deceased|dead|late|dear)\s+grand(?:mother|ma|father|pa)\b|"
        r"\b(?:an?\s+)?(?:AI|assistant|chatbot|model|bot)\s+(?:that\s+has|which\s+has|with|without)\s+"
        r"(?:no\s+|any\s+)?(?:ethical\s+(?:or\s+moral\s+)?|moral\s+|safety\s+)?"
        r"(?:restrictions|filters|guidelines|rules|limits|limitations|censorship)\b|"
        r"\bwithout\s+(?:any\s+)?(?:ethical|moral)\s+(?:or\s+(?:ethical|moral)\s+)?(?:guidelines|restrictions|"
        r"constraints|principles)|\b(?:has\s+been|have\s+been|you\s+are|you're)\s+jailbroken\b|"
        r"\bnever\s+refuses?\s+(?:a|any)\s+request", _I)),
    ("system_prompt_leak", ("above", "hidden", "system prompt"), re.compile(
        r"\b(?:output|print|repeat|reveal|show|dump|return|write)\s+(?:out\s+)?everything\s+(?:above|before)\b|"
        r"\b(?:your|the)\s+(?:hidden|secret|internal)\s+(?:instructions|prompt|rules)\b", _I)),
    ("ignore_instructions", ("follow", "obey"), re.compile(
        r"\b(?:stop|quit|do\s+not|don't|never)\s+(?:following|obeying|follow|obey)\s+(?:your|the|any|all)\s+"
        r"(?:own\s+)?(?:rules|guidelines|instructions|policies|restrictions)\b", _I)),
    ("new_instructions", ("instructions", "new task"), re.compile(
        r"\b(?:your\s+)?new\s+instructions\s+(?:are|is)\s*:|(?:^|[-#>*]\s*|\n\s*)new\s+task\s*:", _I)),
]
_INJECTION_LABELS = {
    "reviewer_manipulation": "Text telling the reviewer to approve without looking",
    "ignore_instructions": "Instruction override", "system_prompt_leak": "Request to reveal the system prompt",
    "jailbreak_persona": "Jailbreak / role-play persona", "safety_bypass": "Request to bypass safety rules",
    "chat_template_tokens": "Chat-template control tokens", "new_instructions": "Injected 'new instructions' block",
    "credential_request": "Instruction to send credentials somewhere",
}


class PromptInjectionAnalyzer(Analyzer):
    """Known injection and jailbreak phrasings, anywhere in the call (high)."""
    code = "injection"
    names = frozenset(("ignore_instructions", *(rule[0] for rule in _INJECTION)))

    def analyze(self, ctx: RiskContext) -> list[dict]:
        return self.for_each_segment(ctx, self._segment)

    def _segment(self, seg: Segment) -> list[dict]:
        flags, lower, names = [], seg.text.lower(), set()
        for name, hints, rx in _INJECTION:
            if name in names:
                continue
            m = has_hint(lower, hints) and rx.search(seg.text)
            if m:
                names.add(name)
                flags.append(self.flag(name, "high", f"{_INJECTION_LABELS[name]}: \"{redact(m.group(0))}\"",
                                       seg.location, match=m.group(0)))
        if "ignore_instructions" not in names:
            for lang, hints, rx in _FOREIGN:
                m = has_hint(lower, hints) and rx.search(seg.text)
                if m:
                    flags.append(self.flag("ignore_instructions", "high", f"Instruction override ({lang}): "
                                                                          f"\"{redact(m.group(0))}\"",
                                           seg.location, match=m.group(0)))
                    break
        return flags
