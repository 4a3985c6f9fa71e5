"""Explicit, typed hooks: how a lower layer lets a higher one take part in its flows without
importing it (the apps form layers; see README "Layers" and .importlinter).

The lower app declares the hook next to the flow that calls it, with the signature as a
Protocol; a higher app connects its handler in ``AppConfig.ready``. A required hook with no
handler fails loudly instead of silently skipping a safety step.

    # projects/hooks.py (lower layer)
    class TaskOutcomeHandler(Protocol):
        def __call__(self, *, task: Task) -> None: ...
    task_outcome_reported: Hook[TaskOutcomeHandler] = Hook("projects.task_outcome_reported")

    # emergency/apps.py (higher layer)
    task_outcome_reported.connect(check_error_rate)
"""
from typing import Generic, TypeVar

H = TypeVar("H")


class HookNotConnected(RuntimeError):
    pass


class Hook(Generic[H]):
    def __init__(self, name: str, *, required: bool = False):
        self.name = name
        self.required = required
        self._handlers: list[H] = []

    def connect(self, handler: H) -> H:
        if handler not in self._handlers:
            self._handlers.append(handler)
        return handler

    def disconnect(self, handler: H) -> None:
        self._handlers.remove(handler)

    @property
    def handlers(self) -> list[H]:
        if self.required and not self._handlers:
            raise HookNotConnected(f"hook {self.name} has no handler: is the app that handles it installed?")
        return list(self._handlers)

    def __call__(self, **kwargs) -> list:
        """Call every handler in connection order with keyword arguments; their results."""
        return [handler(**kwargs) for handler in self.handlers]

    def __repr__(self):
        return f"<Hook {self.name}: {len(self._handlers)} handler(s)>"
