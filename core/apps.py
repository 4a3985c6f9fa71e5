from django.apps import AppConfig


class CoreConfig(AppConfig):
    """What every app shares: base model, API errors, JSON parsing, idempotency, heartbeat."""

    name = "core"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from core import checks  # noqa: F401  (registers the middleware chains' check)
