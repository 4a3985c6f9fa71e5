"""Hooks that budgets declares for the layers above it (see core/hooks.py)."""
from typing import Protocol

from core.hooks import Hook
from projects.uow import ProjectUnitOfWork


class LimitsChangedHandler(Protocol):
    def __call__(self, *, uow: ProjectUnitOfWork) -> None:
        """A project's limits changed, inside that change's unit of work (after stage
        "project_state"): approvals admits again the calls only a limit kept blocked."""


budget_limits_changed: Hook[LimitsChangedHandler] = Hook("budgets.budget_limits_changed")
