"""Hooks that emergency declares for the layers above it (see core/hooks.py)."""
from datetime import datetime
from typing import Protocol

from core.hooks import Hook
from emergency.models import EmergencyStop
from projects.models import Project
from projects.uow import ProjectUnitOfWork


class HaltHandler(Protocol):
    def __call__(self, *, uow: ProjectUnitOfWork, project: Project, now: datetime) -> list[str]:
        """Cancel the project's open work of one domain inside the stop's unit of work, taking
        locks after "task" in LOCK_ORDER; return the ids of what was cancelled."""


class ConditionAddedHandler(Protocol):
    def __call__(self, *, uow: ProjectUnitOfWork, stop: EmergencyStop, condition: str, actor) -> None:
        """A new condition joined an active stop (stage "project_state" of the unit of work)."""


# approvals: cancel pending and approved-not-started calls, release reservations, withdraw overrides
project_halting: Hook[HaltHandler] = Hook("emergency.project_halting", required=True)
# recovery: a new condition voids an open recovery plan
stop_condition_added: Hook[ConditionAddedHandler] = Hook("emergency.stop_condition_added")
