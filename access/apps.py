from django.apps import AppConfig


class AccessConfig(AppConfig):
    """API keys, the Bearer authentication class and the per-project roles."""

    name = "access"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.contrib.auth.signals import user_logged_out

        from access.services import project_creator_role
        from projects.hooks import project_created

        project_created.connect(project_creator_role)
        user_logged_out.connect(signed_out, weak=False, dispatch_uid="access.logged_out")


def signed_out(*, request=None, **kwargs):
    """A signed-out page's event stream ends at once, not at its next heartbeat. Django sends
    ``user_logged_out`` before it deletes the session: the streams, told at once, found it still
    there and stayed open (now and then). The session is deleted here first (Django's own flush
    after this finds nothing more to delete)."""
    from access.services import access_changed_on_commit

    session = getattr(request, "session", None)
    if session is not None:
        session.flush()
    access_changed_on_commit()
