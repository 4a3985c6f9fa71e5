from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    """Agent call approvals and response approvals: requests, decisions, the budget
    flows that combine calls with budgets, and what a stop does to calls."""

    name = "approvals"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        import approvals.checks  # noqa: F401  (registers the analyzers' check)
        import approvals.conditions  # noqa: F401  (registers the call conditions)
        from approvals.services import (
            cancel_calls_of_ended_task,
            cancel_open_calls,
            cancel_open_responses,
            cancel_responses_of_ended_task,
            has_output_under_review,
            readmit_after_limits_change,
            readmit_after_windows_ended,
            requested_the_first_call_on,
        )
        from budgets.hooks import budget_limits_changed, budget_windows_ended
        from emergency.hooks import project_halting
        from projects.hooks import task_ending, task_output_under_review, task_worked_on_by

        project_halting.connect(cancel_open_calls)
        project_halting.connect(cancel_open_responses)  # after the calls: LOCK_ORDER approval, response
        budget_limits_changed.connect(readmit_after_limits_change)
        budget_windows_ended.connect(readmit_after_windows_ended)
        task_ending.connect(cancel_calls_of_ended_task)
        task_worked_on_by.connect(requested_the_first_call_on)
        task_output_under_review.connect(has_output_under_review)
        task_ending.connect(cancel_responses_of_ended_task)  # after the calls, as for a stop
