from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The append-only, keyed hash-chained audit trail of every state change."""

    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from audit import checks  # noqa: F401  (registers the key checks)
