"""Hooks that projects declares for the layers above it (see core/hooks.py)."""
from typing import Protocol

from core.hooks import Hook
from projects.models import Task


class TaskOutcomeHandler(Protocol):
    def __call__(self, *, task: Task) -> None: ...


# After an outcome (completed / failed) is committed: emergency checks error rate and resources.
task_outcome_reported: Hook[TaskOutcomeHandler] = Hook("projects.task_outcome_reported", required=True)
