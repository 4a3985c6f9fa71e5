from django.apps import AppConfig


class ReviewConfig(AppConfig):
    """The reviewers' pages (/review/): server-rendered, htmx for partial updates, live over the
    /ws/events/ websocket. The top layer: it reads and decides through every domain's services."""

    name = "review"
    default_auto_field = "django.db.models.BigAutoField"
