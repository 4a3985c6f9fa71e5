from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    """Token and cost budgets, reservations, overrides, alerts and the budget_critical condition."""

    name = "budgets"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        import budgets.conditions  # noqa: F401  (registers budget_critical's periodic check)
