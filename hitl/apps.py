from django.apps import AppConfig


class HitlConfig(AppConfig):
    """Questions and checkpoints to a person (the seed's HitlRequest): an agent or orchestrator
    asks, a reviewer approves, rejects or amends; beat times them out, a stop or the end of
    their task cancels them."""

    name = "hitl"
    verbose_name = "Questions and checkpoints"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from emergency.hooks import project_halting
        from hitl.services import cancel_hitl_requests_of_ended_task, cancel_open_hitl_requests
        from projects.hooks import task_ending

        # Connected after approvals' handlers (INSTALLED_APPS order): LOCK_ORDER approval, response, hitl.
        project_halting.connect(cancel_open_hitl_requests)
        task_ending.connect(cancel_hitl_requests_of_ended_task)
