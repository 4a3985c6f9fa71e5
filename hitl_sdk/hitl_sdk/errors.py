"""The API's errors (API.md, "Errors") and the outcomes of a wait, as exceptions.

Every exception is a :class:`HitlError` carrying ``status`` (the HTTP status, or None for an
outcome that is not an HTTP error), ``code`` (the API's ``error`` code, or the outcome) and
``detail``. The messages of the approval outcomes are worded for a language model: an agent
may put ``str(exc)`` straight into its transcript.
"""
from __future__ import annotations

from typing import Any, Optional


class HitlError(Exception):
    """Base of every SDK error: ``status``, ``code``, ``detail`` and the JSON ``body``."""

    def __init__(self, detail: str = "", *, status: Optional[int] = None, code: Optional[str] = None,
                 body: Optional[dict] = None, message: Optional[str] = None) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.body: dict = body or {}
        super().__init__(message or (f"{status} {code}: {detail}" if status else detail))


# --- HTTP errors ---------------------------------------------------------------------------
class BadRequest(HitlError):
    """400 ``invalid``: ``fields`` maps each bad field to its messages, which ``str(exc)`` names
    too, so an agent that puts it in its transcript learns what to change."""

    def __init__(self, detail: str = "", *, status: Optional[int] = None, code: Optional[str] = None,
                 body: Optional[dict] = None, message: Optional[str] = None) -> None:
        fields = (body or {}).get("fields")
        if message is None and status and isinstance(fields, dict) and fields:
            named = "; ".join(f"{name}: {_messages(problems)}" for name, problems in fields.items())
            # a detail that only repeats a field's message ("No event has had the id ...") is said once
            said = [str(p) for problems in fields.values() for p in (problems if isinstance(problems, list)
                                                                     else [problems])]
            message = f"{status} {code}: {named}" if detail in said else f"{status} {code}: {detail} {named}"
        super().__init__(detail, status=status, code=code, body=body, message=message)

    @property
    def fields(self) -> dict:
        return self.body.get("fields") or {}


class Unauthenticated(HitlError):
    """401: no or bad API key."""


class Forbidden(HitlError):
    """403: authenticated but not allowed."""


class NotFound(HitlError):
    """404: no such object, or not visible to this key."""


class Conflict(HitlError):
    """409: the object is not in a state that allows this; ``current_status`` is its status."""

    @property
    def current_status(self) -> Optional[str]:
        return self.body.get("status")


class Expired(HitlError):
    """410: the approval timed out before this decision (or a grant came too late)."""


class Throttled(HitlError):
    """429 after every retry."""


class ServerError(HitlError):
    """5xx (503 ``unavailable`` included) after every retry."""


class HitlConnectionError(HitlError):
    """The server could not be reached (or did not answer in time), after every retry. For a
    create, ``idempotency_key`` is the key its attempts sent: the request may have reached the
    server all the same (a hung server works through it later), and sending it again with
    ``idempotency_key=`` that key returns what it made, or makes it once."""

    def __init__(self, detail: str = "", *, idempotency_key: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.idempotency_key = idempotency_key


class EmergencyStopped(HitlError):
    """The project is under an emergency stop (423, or the stop event during a wait or a run).
    Stop working on this project: nothing is admitted until a person completes the recovery."""

    def __init__(self, detail: str = "", *, emergency_stop_id: Optional[str] = None, project_id: Optional[str] = None,
                 status: Optional[int] = 423, body: Optional[dict] = None) -> None:
        self.emergency_stop_id = emergency_stop_id or (body or {}).get("emergency_stop_id")
        self.project_id = project_id
        super().__init__(detail or "The project is under an emergency stop.", status=status, code="emergency_stop",
                         body=body,
                         message=(f"The project was emergency-stopped by a person or a safety condition "
                                  f"(stop {self.emergency_stop_id}): {(detail or 'no reason given').rstrip('. ')}. "
                                  "Stop all work on this project now; do not retry."))


# --- outcomes of an approval (no HTTP error: the request itself worked) -----------------------
class ApprovalError(HitlError):
    """An approval (call, response or question) did not end in an approval."""

    def __init__(self, detail: str = "", *, approval_id: Optional[str] = None, approval: Any = None,
                 code: Optional[str] = None, message: Optional[str] = None) -> None:
        self.approval_id = approval_id
        self.approval = approval
        super().__init__(detail, code=code, message=message)


class ApprovalRejected(ApprovalError):
    """A person refused the action. ``reason`` says why; ``rejected_by`` who."""

    def __init__(self, reason: str = "", *, approval_id: Optional[str] = None, approval: Any = None,
                 rejected_by: Optional[str] = None) -> None:
        self.reason = reason or "no reason given"
        self.rejected_by = rejected_by
        super().__init__(self.reason, approval_id=approval_id, approval=approval, code="rejected",
                         message=f"A person refused this action: {self.reason}. Do not retry it as is.")


class ApprovalTimedOut(ApprovalError):
    """Nobody decided before ``expires_at``: the request failed closed."""

    def __init__(self, detail: str = "", *, approval_id: Optional[str] = None, approval: Any = None,
                 output: bool = False) -> None:
        message = ("No person approved this output in time, so it must not be used. Do not use it; send it "
                   "for review again later if it is still needed." if output else
                   "No person approved this action in time, so it was not allowed. "
                   "Do not run it; ask again later if it is still needed.")
        super().__init__(detail, approval_id=approval_id, approval=approval, code="timed_out", message=message)


class WaitTimeout(ApprovalError):
    """The caller's own ``timeout`` passed while the request was still pending (it still is)."""

    def __init__(self, *, approval_id: Optional[str] = None, approval: Any = None) -> None:
        super().__init__("still pending", approval_id=approval_id, approval=approval, code="wait_timeout",
                         message=f"Still waiting for a person's decision on {approval_id}.")


class ApprovalCancelled(ApprovalError):
    """The request was cancelled before a person decided it: a call before it ran, an output
    before it was approved, a question before it was answered (by its agent, its task's end, or
    the server). ``kind`` is ``"agent"`` (a call), ``"response"`` (an output) or ``"hitl"``."""

    MESSAGES = {
        "agent": "This action was cancelled before it ran{}. Do not run it.",
        "response": "This output was cancelled before a person approved it{}, so it must not be used. Do not use it.",
        "hitl": "This question was cancelled before a person answered it{}. No answer will come: do not act as "
                "if it had been answered.",
    }

    def __init__(self, detail: str = "", *, approval_id: Optional[str] = None, approval: Any = None,
                 kind: str = "agent") -> None:
        self.kind = kind
        template = self.MESSAGES.get(kind, self.MESSAGES["agent"])
        super().__init__(detail, approval_id=approval_id, approval=approval, code="cancelled",
                         message=template.format(f": {detail.rstrip().rstrip('.')}" if detail else ""))


class ModificationRequired(ApprovalError):
    """A reviewer sent the output back: ``modifications_required`` says what must change."""

    def __init__(self, modifications_required: Any = None, *, approval_id: Optional[str] = None,
                 approval: Any = None) -> None:
        self.modifications_required = modifications_required
        super().__init__(str(modifications_required), approval_id=approval_id, approval=approval,
                         code="requires_modification",
                         message=f"A person asked for changes to this output: {modifications_required}. "
                                 "Redo the work with these changes.")


class BudgetOverrideRequired(ApprovalError):
    """The call would pass a budget limit: it cannot be approved until the budget override
    ``override_id`` is approved by a person."""

    def __init__(self, detail: str = "", *, override_id: Optional[str] = None, approval_id: Optional[str] = None,
                 approval: Any = None) -> None:
        self.override_id = override_id
        super().__init__(detail, approval_id=approval_id, approval=approval, code="budget_override_required",
                         message=(f"This action would pass the project's budget; it needs the budget override "
                                  f"{override_id} approved by a person first ({detail or 'over a limit'})."))


def _messages(problems: Any) -> str:
    """A field's messages as one line (a list of strings, or nested fields of an object)."""
    if isinstance(problems, dict):
        return "; ".join(f"{name}: {_messages(inner)}" for name, inner in problems.items())
    if isinstance(problems, (list, tuple)):
        return " ".join(_messages(p) for p in problems)
    return str(problems)


_BY_STATUS = {400: BadRequest, 401: Unauthenticated, 403: Forbidden, 404: NotFound, 409: Conflict, 410: Expired,
              429: Throttled}


def error_from_response(status: int, body: Any) -> HitlError:
    """The exception for an error answer of the API."""
    body = body if isinstance(body, dict) else {"detail": str(body)[:500]}
    code, detail = body.get("error"), str(body.get("detail") or "")
    if status == 423:
        return EmergencyStopped(detail, emergency_stop_id=body.get("emergency_stop_id"), body=body)
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else HitlError)
    return cls(detail, status=status, code=code, body=body)
