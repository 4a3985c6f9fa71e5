"""System checks of the audit keys: malformed HITL_AUDIT_KEYS always, derived keys with DEBUG off at
every start, weak keys on --deploy."""
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from audit.keys import MIN_SECRET_LENGTH, parse_keys


@checks.register(checks.Tags.security)
def audit_keys_check(app_configs=None, **kwargs):
    try:
        parse_keys(settings.HITL_AUDIT_KEYS)
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="audit.E001")]
    return []


@checks.register(checks.Tags.security)
def audit_keys_unset_check(app_configs=None, **kwargs):
    """A production process (DEBUG off) without HITL_AUDIT_KEYS signs with the key SECRET_KEY
    derives, and said so only under ``check --deploy``: one process started without the variable
    (a worker's unit file that missed it) signed its rows with a key the others' ``verify_audit``
    then called unknown. Each web, Celery and ``manage.py`` process now says it when it starts."""
    if settings.DEBUG or settings.HITL_AUDIT_KEYS:
        return []
    return [checks.Warning(
        "HITL_AUDIT_KEYS is not set while DJANGO_DEBUG is off: this process signs audit rows with the "
        "development key derived from DJANGO_SECRET_KEY.",
        hint="Set the same HITL_AUDIT_KEYS on every web, Celery and manage.py process (README, Audit trail: Keys).",
        id="audit.W005")]


@checks.register(checks.Tags.security, deploy=True)
def audit_keys_deploy_check(app_configs=None, **kwargs):
    try:
        keys = parse_keys(settings.HITL_AUDIT_KEYS)
    except ImproperlyConfigured:
        return []  # audit.E001
    found = []
    if not keys and settings.DEBUG:  # DEBUG off: audit.W005, at every start
        found.append(checks.Warning(
            "HITL_AUDIT_KEYS is not set: audit rows are signed with a key derived from SECRET_KEY.",
            hint="Set HITL_AUDIT_KEYS=<id>:<random secret> (32+ characters), kept out of the database.",
            id="audit.W001"))
    if not settings.HITL_AUDIT_CHECKPOINT_KEY:
        found.append(checks.Warning(
            "HITL_AUDIT_CHECKPOINT_KEY is not set: checkpoints are signed with a key derived from SECRET_KEY.",
            hint="Set HITL_AUDIT_CHECKPOINT_KEY to a random secret (32+ characters), not one of HITL_AUDIT_KEYS.",
            id="audit.W002"))
    weak = [key_id for key_id, secret in keys.items() if len(secret) < MIN_SECRET_LENGTH]
    if 0 < len(settings.HITL_AUDIT_CHECKPOINT_KEY) < MIN_SECRET_LENGTH:
        weak.append("HITL_AUDIT_CHECKPOINT_KEY")
    if weak:
        found.append(checks.Warning(f"Audit keys shorter than {MIN_SECRET_LENGTH} characters: {', '.join(weak)}.",
                                    id="audit.W003"))
    if settings.HITL_AUDIT_CHECKPOINT_KEY and settings.HITL_AUDIT_CHECKPOINT_KEY.encode() in keys.values():
        found.append(checks.Warning("HITL_AUDIT_CHECKPOINT_KEY is also a chain key: keep them separate.",
                                    id="audit.W004"))
    return found
