from django.conf import settings
from django.db import models

from audit.hashing import legacy_digest, signed_digest
from audit.keys import UnknownKeyId, chain_keys

GENESIS_HASH = "0" * 64


class AuditChain(models.Model):
    """Head of one hash chain: one per project plus ``global``. Its row lock orders the
    chain's appends, and its last seq/hash anchor the tail (a deleted last row shows)."""

    key = models.CharField(max_length=64, unique=True)
    last_seq = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default=GENESIS_HASH)

    def __str__(self):
        return f"{self.key} #{self.last_seq}"


class AuditEvent(models.Model):
    """One recorded state change. Written only by ``audit.services.audit_record`` in the
    transaction of the change; never updated or deleted by the application.

    ``hash`` is the HMAC-SHA256, under key ``key_id``, of every column and ``prev_hash``
    (audit/hashing.py). Rows from before keying have an empty ``key_id`` and a plain SHA-256."""

    chain = models.ForeignKey(AuditChain, on_delete=models.PROTECT, related_name="events")
    seq = models.BigIntegerField()
    created_at = models.DateTimeField()
    # PROTECT: actor_id is signed, so it must never change (deactivate users who acted instead).
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                              related_name="+")
    actor_repr = models.CharField(max_length=200, help_text="username#id, or 'system'")
    action = models.CharField(max_length=100, db_index=True)
    project_id = models.UUIDField(null=True, blank=True, db_index=True)
    object_type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=64)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True, default="")
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)
    key_id = models.CharField(max_length=32, blank=True, default="",
                              help_text="Id of the HITL_AUDIT_KEYS key that signed the row; empty: unkeyed "
                                        "row from before keying (plain SHA-256)")

    class Meta:
        ordering = ["chain_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["chain", "seq"], name="audit_chain_seq_unique")]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self):
        return f"{self.action} {self.object_type}:{self.object_id} by {self.actor_repr}"

    def compute_hash(self, keys: dict[str, bytes] | None = None, exact_floats: bool = True) -> str:
        """The row's hash as it should be; ``UnknownKeyId`` if its key is not configured.
        ``exact_floats=False``: as rows holding a whole float past 2**53 were hashed before
        (audit.hashing._normalize)."""
        if not self.key_id:
            return legacy_digest(self, self.chain.key)
        keys = chain_keys() if keys is None else keys
        if self.key_id not in keys:
            raise UnknownKeyId(self.key_id)
        return signed_digest(self, self.chain.key, keys[self.key_id], exact_floats)

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ValueError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("Audit events are append-only.")
