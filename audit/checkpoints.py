"""Checkpoint files: the chain heads at one moment, signed with HITL_AUDIT_CHECKPOINT_KEY and kept
outside the database. Someone who can rewrite the database (rows and heads, even with the chain
key) cannot rewrite what a checkpoint already recorded; ``verify_audit --checkpoints`` compares.

    {"format": "botarmy-hitl.audit-checkpoint.v1", "created_at": "2026-11-25T10:00:00.000000Z",
     "chains": [{"key": "global", "last_seq": 12, "last_hash": "<64 hex>"}, ...],
     "signature": "<HMAC-SHA256 hex of the canonical JSON of everything else>"}
"""
import hashlib
import hmac
import json
import os
import re
import tempfile
from pathlib import Path

from audit.hashing import canonical_json
from audit.keys import checkpoint_key, checkpoint_verify_keys

FORMAT = "botarmy-hitl.audit-checkpoint.v1"
SIGNED_DOMAIN = b"botarmy-hitl audit checkpoint v1\n"
FILE_GLOB = "checkpoint-*.json"
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


class CheckpointInvalid(ValueError):
    """Unreadable, malformed or badly signed checkpoint file."""


def checkpoint_signature(payload: dict, key: bytes | None = None) -> str:
    body = {k: v for k, v in payload.items() if k != "signature"}
    return hmac.new(checkpoint_key() if key is None else key, SIGNED_DOMAIN + canonical_json(body),
                    hashlib.sha256).hexdigest()


def checkpoint_file_write(directory, payload: dict, stamp: str) -> Path:
    """Write ``payload`` signed, atomically (temporary file, fsync, rename); never overwrite."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = json.dumps({**payload, "signature": checkpoint_signature(payload)}, indent=1, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        for n in range(1000):
            path = directory / f"checkpoint-{stamp}{f'-{n}' if n else ''}.json"
            if not path.exists():
                os.replace(tmp, path)
                return path
        raise FileExistsError(f"no free checkpoint file name for {stamp} in {directory}")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_file_read(path: Path) -> dict:
    """The payload of a checkpoint file whose signature holds; ``CheckpointInvalid`` otherwise."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointInvalid(f"unreadable ({exc.__class__.__name__})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("signature"), str):
        raise CheckpointInvalid("not a signed checkpoint")
    try:
        expected = [checkpoint_signature(payload, key) for key in checkpoint_verify_keys()]
    except ValueError:  # NaN and the like: not something this code wrote
        raise CheckpointInvalid("not a signed checkpoint") from None
    if not any(hmac.compare_digest(payload["signature"], signature) for signature in expected):
        raise CheckpointInvalid("bad signature (file edited, or signed with a HITL_AUDIT_CHECKPOINT_KEY no longer "
                                "listed: add the old one to HITL_AUDIT_CHECKPOINT_OLD_KEYS)")
    chains = payload.get("chains")
    if payload.get("format") != FORMAT or not isinstance(payload.get("created_at"), str) \
            or not isinstance(chains, list):
        raise CheckpointInvalid(f"unknown format {payload.get('format')!r}")
    for entry in chains:
        if not (isinstance(entry, dict) and isinstance(entry.get("key"), str)
                and type(entry.get("last_seq")) is int and entry["last_seq"] >= 0
                and isinstance(entry.get("last_hash"), str) and _HASH_RE.match(entry["last_hash"])):
            raise CheckpointInvalid(f"malformed chain entry {entry!r:.80}")
    return payload
