from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    """Agent call and response approvals. Not built yet: see the README's status table."""

    name = "approvals"
    default_auto_field = "django.db.models.BigAutoField"
