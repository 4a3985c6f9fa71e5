from django.apps import AppConfig


class AccessConfig(AppConfig):
    """API keys, the Bearer authentication class and the per-project roles."""

    name = "access"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from access.services import project_creator_role
        from projects.hooks import project_created

        project_created.connect(project_creator_role)
