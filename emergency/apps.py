from django.apps import AppConfig


class EmergencyConfig(AppConfig):
    """Emergency stops, their conditions and the 423 gate's state (Project.active_stop_id)."""

    name = "emergency"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from emergency.conditions import task_outcome_check
        from projects.hooks import task_outcome_reported

        task_outcome_reported.connect(task_outcome_check)
