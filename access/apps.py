from django.apps import AppConfig


class AccessConfig(AppConfig):
    """API keys, the Bearer authentication class and the per-project roles."""

    name = "access"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.contrib.auth.signals import user_logged_out

        from access.services import access_changed_on_commit, project_creator_role
        from projects.hooks import project_created

        project_created.connect(project_creator_role)
        # a signed-out page's event stream ends at once, not at its next heartbeat
        user_logged_out.connect(lambda **kwargs: access_changed_on_commit(), weak=False,
                                dispatch_uid="access.logged_out")
