from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The append-only, hash-chained audit trail of every state change."""

    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"
