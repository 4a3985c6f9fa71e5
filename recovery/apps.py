from django.apps import AppConfig


class RecoveryConfig(AppConfig):
    """Recovery sessions walked step by step after a stop. Not built yet: see the README."""

    name = "recovery"
    default_auto_field = "django.db.models.BigAutoField"
