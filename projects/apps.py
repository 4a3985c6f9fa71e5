from django.apps import AppConfig


class ProjectsConfig(AppConfig):
    """Projects, their tasks and the state of each agent type in a project."""

    name = "projects"
    default_auto_field = "django.db.models.BigAutoField"
