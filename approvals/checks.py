"""System check of the analyzers named in settings: one that cannot be loaded made every request
it rates a 500 (HITL_RISK_ANALYZERS=no.such.Analyzer), though the server started healthy."""
from django.conf import settings
from django.core import checks

from approvals.analyzers.base import load_analyzers


@checks.register("hitl")
def analyzers_check(app_configs=None, **kwargs):
    found = []
    for name in ("HITL_RISK_ANALYZERS", "HITL_RESPONSE_ANALYZERS"):
        for path in getattr(settings, name):
            try:
                load_analyzers((path,))
            except Exception as exc:  # noqa: BLE001 - an import, a missing class, a failing constructor
                found.append(checks.Error(f"{name}: {path!r} cannot be loaded ({type(exc).__name__}: {exc}).",
                                          hint="Name an analyzer class by its dotted path, or leave it out.",
                                          id="approvals.E001"))
    return found
