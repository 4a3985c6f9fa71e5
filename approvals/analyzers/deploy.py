"""Production deploys by the deployer agent (flag code ``deploy.production``)."""
from __future__ import annotations

import re

from .base import Analyzer
from .context import RiskContext
from .text import has_hint, redact

_I = re.IGNORECASE

_PROD = re.compile(r"(?<![a-z])(?<!non-)(?<!non_)(?<!pre-)(?<!pre_)(?:production|prod|prd)(?![a-z])|"
                   r"(?<![\w-])live(?=\s+(?:env|environment|site|cluster|servers?|stack)\b)", _I)
_ENV_VALUE = re.compile(r"[\w.:/@-]{2,60}")
_DEPLOY_VERB = re.compile(
    r"\b(?:(?:re-?)?deploy(?:s|ed|ing)?(?![/.\w-])|release|releasing|roll(?:ing)?\s+out|"
    r"rollout\s+(?:restart|undo|resume)|"
    r"promot(?:e|es|ed|ing)|ship(?:s|ping)?|publish(?:es|ing)?|migrat(?:e|es|ed|ing|ions?)|upgrade|apply|"
    r"helm\s+(?:install|upgrade|rollback)|roll\s*back|scale|restart|go\s+live|cut\s*over|switch\s+traffic|"
    r"failover|push|workflow\s+run|trigger(?:ed|s)?)\b", _I)
_DRY_RUN = re.compile(r"--dry-run|\bdry[- ]run\b|\bterraform\s+plan\b|\bhelm\s+diff\b|\bread[- ]only\b", _I)
_WINDOW = 100


class ProductionDeployAnalyzer(Analyzer):
    """Deployer agent deploying, migrating or rolling out to a production environment (high)."""
    code = "deploy"
    names = frozenset(("production",))

    def analyze(self, ctx: RiskContext) -> list[dict]:
        if (ctx.agent_type or "").strip().lower() != "deployer":
            return []
        # a dry run / plan only exempts the text it appears in, never the whole call
        mutating = any(_DEPLOY_VERB.search(s.text) and not _DRY_RUN.search(s.text) for s in ctx.segments)
        flags = []
        for seg in ctx.segments:
            text = seg.text
            if seg.is_key or not has_hint(text.lower(), ("prod", "prd", "live")):
                continue
            if seg.key is not None and _ENV_VALUE.fullmatch(text.strip()) and _PROD.search(text) and mutating:
                flags.append(self.flag("production", "high", f"Deploy to production target "
                                                             f"{seg.key}={text.strip()!r}", seg.location))
                continue
            if _DRY_RUN.search(text):
                continue
            for m in _PROD.finditer(text):
                window = text[max(0, m.start() - _WINDOW):m.end() + _WINDOW]
                if _DEPLOY_VERB.search(window):
                    flags.append(self.flag("production", "high",
                                           f"Deploy/migration touching production: \"{redact(window.strip(), 100)}\"",
                                           seg.location))
                    break
        return flags
