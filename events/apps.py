from django.apps import AppConfig


class EventsConfig(AppConfig):
    """The event outbox: every event is a row written in the transaction of its change."""

    name = "events"
    default_auto_field = "django.db.models.BigAutoField"
