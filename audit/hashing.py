"""How a row's hash is computed. Both forms are frozen: rows keep the hash they were written with.

Keyed rows (``key_id`` set): HMAC-SHA256 under that key over the canonical JSON of every column
(chain key, seq, created_at, actor_id, actor_repr, action, project_id, object_type, object_id,
before, after, reason, prev_hash, key_id). Without the key, nobody can recompute a valid chain.

Unkeyed rows (``key_id`` empty) were written before keying: plain SHA-256 of ``prev_hash`` plus a
content dict without actor_id. Anyone can recompute those, so verify accepts them only as a prefix
of a chain that a keyed row follows (the seal appended by migration 0002 anchors that prefix).
"""
import hashlib
import hmac
import json
import uuid
from datetime import timezone as dt_timezone
from decimal import Decimal

SIGNED_DOMAIN = b"botarmy-hitl audit row v2\n"


def _normalize(value, exact_floats=True):
    """JSON as it reads back from any backend: PostgreSQL jsonb returns 1e+20 as an integer, the
    integer its text names: 1e+23 reads back as 100000000000000000000000, not as int(1e23) (the
    double nearest to it, 99999999999999991611392), so a whole float is taken as its shortest
    decimal text says. ``exact_floats=False``: the rule before that (rows written under it on
    SQLite, whose JSON reads back as the float, verify with it)."""
    if isinstance(value, float) and value.is_integer():
        return int(Decimal(repr(value))) if exact_floats else int(value)
    if isinstance(value, dict):
        return {k: _normalize(v, exact_floats) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize(v, exact_floats) for v in value]
    return value


def floats_hashed_otherwise_before(value) -> bool:
    """Whether the rule before would hash ``value`` otherwise (a whole float past 2**53 in it)."""
    return _normalize(value) != _normalize(value, exact_floats=False)


def canonical_json(value, exact_floats=True) -> bytes:
    return json.dumps(_normalize(value, exact_floats), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def signed_content(row, chain_key: str) -> dict:
    """Every column of ``row`` (an AuditEvent, also a migration's historical one)."""
    project_id = row.project_id
    if project_id is not None and not isinstance(project_id, uuid.UUID):
        project_id = uuid.UUID(str(project_id))
    return {
        "chain": chain_key,
        "seq": row.seq,
        "created_at": row.created_at.astimezone(dt_timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor_id": None if row.actor_id is None else str(row.actor_id),
        "actor_repr": row.actor_repr,
        "action": row.action,
        "project_id": None if project_id is None else str(project_id),
        "object_type": row.object_type,
        "object_id": row.object_id,
        "before": row.before,
        "after": row.after,
        "reason": row.reason,
        "prev_hash": row.prev_hash,
        "key_id": row.key_id,
    }


def signed_digest(row, chain_key: str, secret: bytes, exact_floats=True) -> str:
    return hmac.new(secret, SIGNED_DOMAIN + canonical_json(signed_content(row, chain_key), exact_floats),
                    hashlib.sha256).hexdigest()


def legacy_digest(row, chain_key: str) -> str:
    """The unkeyed hash of rows written before migration 0002 (exactly the old compute_hash)."""
    content = {
        "chain": chain_key,
        "seq": row.seq,
        "created_at": row.created_at.isoformat(),
        "actor": row.actor_repr,
        "action": row.action,
        "project_id": str(row.project_id) if row.project_id else None,
        "object_type": row.object_type,
        "object_id": row.object_id,
        "before": row.before,
        "after": row.after,
        "reason": row.reason,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{row.prev_hash}{canonical}".encode()).hexdigest()
