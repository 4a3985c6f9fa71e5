from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The demo fleet (``python manage.py run_demo_fleet``): six BotArmy agents that talk to a
    BotArmy HITL server only through the agent SDK (``hitl_sdk``), over HTTP and the websocket,
    like any real fleet. No models, no imports of the other apps."""

    name = "demo"
    verbose_name = "Demo fleet"
    default_auto_field = "django.db.models.BigAutoField"
