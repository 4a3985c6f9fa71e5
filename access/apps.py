from django.apps import AppConfig


class AccessConfig(AppConfig):
    """API keys, the Bearer authentication class and the per-project roles."""

    name = "access"
    default_auto_field = "django.db.models.BigAutoField"
