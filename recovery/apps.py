from django.apps import AppConfig


class RecoveryConfig(AppConfig):
    """Recovery sessions walked step by step after a stop (the top domain layer)."""

    name = "recovery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from emergency.hooks import stop_condition_added
        from recovery.services import fail_open_recovery

        stop_condition_added.connect(fail_open_recovery)
