import hashlib

from django.conf import settings
from django.db import models


def hash_key(raw: str) -> str:
    # Keys are 256 random bits: a plain SHA-256 is enough (no dictionary to guess from).
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiKey(models.Model):
    """An API key: shown once at creation, stored only as its hash, revocable."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True, default="")
    prefix = models.CharField(max_length=16, unique=True, help_text="Public part, to recognise the key")
    key_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self):
        return f"hitl_{self.prefix}_… ({self.user})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
