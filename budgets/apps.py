from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    """Token and cost budgets, reservations, overrides. Not built yet: see the README."""

    name = "budgets"
    default_auto_field = "django.db.models.BigAutoField"
