"""The audit trail's keys, read from settings (env).

``HITL_AUDIT_KEYS`` signs and verifies chain rows: ``"k2:secret2,k1:secret1"`` (or a list of
``"id:secret"``); the first key signs new rows, the others only verify older rows. Each row stores
the id of the key that signed it. ``HITL_AUDIT_CHECKPOINT_KEY`` signs checkpoint files.

Unset, both fall back to development keys derived from ``SECRET_KEY`` (the dev chain key's id is
``dev-`` plus a fingerprint, so rows signed under another secret key read as "unknown key").
Production must set random keys of its own: ``manage.py check --deploy`` warns otherwise.
"""
import hashlib
import hmac
import re

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

KEY_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
DEV_KEY_PREFIX = "dev-"
MIN_SECRET_LENGTH = 32  # below this, `check --deploy` warns


class UnknownKeyId(LookupError):
    """A row names a key id that is not in HITL_AUDIT_KEYS."""


def _derived(purpose: str) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), f"botarmy-hitl {purpose}".encode(), hashlib.sha256).hexdigest()


def parse_keys(raw) -> dict[str, bytes]:
    """``"id:secret,id:secret"`` or a list of ``"id:secret"`` -> ``{id: secret}`` in order (first signs)."""
    entries = raw.split(",") if isinstance(raw, str) else list(raw)
    keys = {}
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        key_id, sep, secret = entry.partition(":")
        key_id = key_id.strip()
        if not sep or not secret:
            raise ImproperlyConfigured(f"HITL_AUDIT_KEYS: {key_id or entry[:8]!r} is not 'id:secret'.")
        if not KEY_ID_RE.match(key_id):
            raise ImproperlyConfigured(f"HITL_AUDIT_KEYS: key id {key_id!r} must match {KEY_ID_RE.pattern}.")
        if key_id in keys:
            raise ImproperlyConfigured(f"HITL_AUDIT_KEYS: key id {key_id!r} is listed twice.")
        keys[key_id] = secret.encode()
    return keys


def using_dev_chain_keys() -> bool:
    return not parse_keys(settings.HITL_AUDIT_KEYS)


def dev_chain_key() -> tuple[str, str]:
    """(key id, secret) of the development chain key that ``SECRET_KEY`` derives."""
    secret = _derived("audit chain key")
    return f"{DEV_KEY_PREFIX}{hashlib.sha256(secret.encode()).hexdigest()[:8]}", secret


def chain_keys() -> dict[str, bytes]:
    """Every key rows may be verified with, by id; the first one signs new rows."""
    keys = parse_keys(settings.HITL_AUDIT_KEYS)
    if not keys:
        key_id, secret = dev_chain_key()
        keys = {key_id: secret.encode()}
    return keys


def signing_key() -> tuple[str, bytes]:
    """(key id, secret) that signs new rows."""
    return next(iter(chain_keys().items()))


def checkpoint_key() -> bytes:
    return (settings.HITL_AUDIT_CHECKPOINT_KEY or dev_checkpoint_key()).encode()


def dev_checkpoint_key() -> str:
    """The checkpoint key SECRET_KEY derives (used while HITL_AUDIT_CHECKPOINT_KEY is unset)."""
    return _derived("audit checkpoint key")


def checkpoint_verify_keys() -> list[bytes]:
    """The key that signs new checkpoint files, then those of older ones (HITL_AUDIT_CHECKPOINT_OLD_KEYS)."""
    return [checkpoint_key(), *(key.encode() for key in getattr(settings, "HITL_AUDIT_CHECKPOINT_OLD_KEYS", []))]
