"""Hooks that budgets declares for the layers above it (see core/hooks.py)."""
from typing import Protocol

from core.hooks import Hook
from projects.uow import ProjectUnitOfWork


class LimitsChangedHandler(Protocol):
    def __call__(self, *, uow: ProjectUnitOfWork) -> None:
        """A project's limits changed, inside that change's unit of work (after stage
        "project_state"): approvals admits again the calls only a limit kept blocked."""


budget_limits_changed: Hook[LimitsChangedHandler] = Hook("budgets.budget_limits_changed")


class WindowsEndedHandler(Protocol):
    def __call__(self, *, uow: ProjectUnitOfWork, now) -> None:
        """Some of a project's budget windows ended (beat, before it closes them, first in the
        project's unit of work): approvals admits again, in the new windows, the calls blocked
        behind an override of a window that ended."""


budget_windows_ended: Hook[WindowsEndedHandler] = Hook("budgets.budget_windows_ended")
