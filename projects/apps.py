import uuid

from django.apps import AppConfig


class ProjectsConfig(AppConfig):
    """Projects, their tasks and the state of each agent type in a project."""

    name = "projects"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from core.api import idempotent_replay_visible

        idempotent_replay_visible.connect(replay_visible)


def replay_visible(*, user, project_id) -> bool:
    """core.api's idempotent replay: the caller may still see the stored answer's project."""
    from projects.permissions import may_see

    try:
        return may_see(user, uuid.UUID(str(project_id)))
    except ValueError:
        return False
