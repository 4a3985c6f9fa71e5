from django.apps import AppConfig


class EmergencyConfig(AppConfig):
    """Emergency stops and their conditions. Not built yet: see the README."""

    name = "emergency"
    default_auto_field = "django.db.models.BigAutoField"
