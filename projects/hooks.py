"""Hooks that projects declares for the layers above it (see core/hooks.py)."""
from typing import Protocol

from core.hooks import Hook
from projects.models import Project, Task


class TaskOutcomeHandler(Protocol):
    def __call__(self, *, task: Task) -> None: ...


class TaskWorkerCheck(Protocol):
    def __call__(self, *, task: Task, user_id) -> bool: ...


class TaskCheck(Protocol):
    def __call__(self, *, task: Task) -> bool: ...


class ProjectCreatedHandler(Protocol):
    def __call__(self, *, project: Project, actor) -> None: ...


class TaskEndingHandler(Protocol):
    def __call__(self, *, uow, task: Task, actor, now) -> list[str]: ...  # the ids it cancelled


# After an outcome (completed / failed) is committed: emergency checks error rate and resources.
task_outcome_reported: Hook[TaskOutcomeHandler] = Hook("projects.task_outcome_reported", required=True)

# Whether a user works on a task it did not create (approvals: it requested one of the task's calls,
# as an agent running a task an orchestrator made for it does); such a user may report its outcome.
task_worked_on_by: Hook[TaskWorkerCheck] = Hook("projects.task_worked_on_by")

# Whether a task has an output waiting for a person's review (approvals: a pending response
# approval): its call ran, so it is no work abandoned before it ran (it is not reported cancelled).
task_output_under_review: Hook[TaskCheck] = Hook("projects.task_output_under_review")

# In the outcome's unit of work, the task locked and just saved completed / failed: approvals
# cancels the task's calls that can no longer run (pending, or approved and not started, their
# reservations given back at once) and its responses still pending review; hitl its pending
# questions and checkpoints (connected in that order: LOCK_ORDER approval, response, hitl).
task_ending: Hook[TaskEndingHandler] = Hook("projects.task_ending", required=True)

# In a new project's transaction, after its row and audit row: access gives a creator who is not an
# admin (a user given Django's "add project" permission) the manager role on what they made (they
# could not see it: projects are shown to those who hold a role on them).
project_created: Hook[ProjectCreatedHandler] = Hook("projects.project_created", required=True)
