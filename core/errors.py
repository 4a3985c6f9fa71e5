"""Domain errors and the one DRF exception handler that gives every error API.md's shape.

Every error body is ``{"error": <code>, "detail": <text>, ...}``; see ``../shared/API.md``.
"""
import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

log = logging.getLogger(__name__)


class DomainError(Exception):
    """A refused state change; services raise these, the API maps them to 4xx."""

    status_code = status.HTTP_409_CONFLICT
    code = "conflict"

    def __init__(self, detail: str = "", **extra):
        super().__init__(detail)
        self.detail = detail or self.__class__.__doc__ or self.code
        self.extra = extra

    def body(self) -> dict:
        return {"error": self.code, "detail": self.detail, **self.extra}


class TransitionError(DomainError):
    """The object is not in a state that allows this."""

    def __init__(self, detail: str = "", *, current_status: str, **extra):
        super().__init__(detail, status=current_status, **extra)


class Expired(DomainError):
    """The approval timed out before this decision."""

    status_code = status.HTTP_410_GONE
    code = "expired"


class EmergencyStopActive(DomainError):
    """The project is under an emergency stop."""

    status_code = status.HTTP_423_LOCKED
    code = "emergency_stop"

    def __init__(self, detail: str = "", *, emergency_stop_id=None):
        super().__init__(detail, emergency_stop_id=str(emergency_stop_id) if emergency_stop_id else None)


class Forbidden(DomainError):
    """Authenticated but not allowed."""

    status_code = status.HTTP_403_FORBIDDEN
    code = "forbidden"


class NotFoundError(DomainError):
    """No such object, or not visible to this user."""

    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class InvalidInput(DomainError):
    """A well-formed request whose content a service refuses (400 with ``fields``)."""

    status_code = status.HTTP_400_BAD_REQUEST
    code = "invalid"

    def __init__(self, detail: str = "", *, fields: dict):
        super().__init__(detail or "Invalid input.", fields=fields)


def _flatten(detail):
    """DRF error details as plain JSON: strings, lists and dicts."""
    if isinstance(detail, dict):
        return {str(k): _flatten(v) for k, v in detail.items()}
    if isinstance(detail, list):
        return [_flatten(v) for v in detail]
    return str(detail)


def error_body(code: str, detail: str, **extra) -> dict:
    return {"error": code, "detail": detail, **extra}


def api_exception_handler(exc, context):
    """DRF EXCEPTION_HANDLER: every error becomes ``{"error", "detail", ...}``."""
    headers = {}
    if isinstance(exc, DomainError):
        return Response(exc.body(), status=exc.status_code)
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        if not isinstance(fields, dict):
            fields = {"non_field_errors": fields if isinstance(fields, list) else [fields]}
        return Response(error_body("invalid", "Invalid input.", fields=fields), status=400)
    if isinstance(exc, (exceptions.ParseError, exceptions.UnsupportedMediaType, RequestDataTooBig)):
        detail = str(getattr(exc, "detail", exc)) or "Malformed request body."
        return Response(error_body("invalid", detail, fields={"body": [detail]}), status=400)
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        authenticate = context["request"] and context["view"].get_authenticate_header(context["request"])
        if authenticate:
            headers["WWW-Authenticate"] = authenticate
        return Response(error_body("unauthenticated", str(exc.detail)), status=401, headers=headers)
    if isinstance(exc, (exceptions.PermissionDenied, DjangoPermissionDenied)):
        detail = str(getattr(exc, "detail", "")) or "You may not do this."
        return Response(error_body("forbidden", detail), status=403)
    if isinstance(exc, (exceptions.NotFound, Http404)):
        return Response(error_body("not_found", "Not found."), status=404)
    if isinstance(exc, exceptions.Throttled):
        if exc.wait is not None:
            headers["Retry-After"] = str(int(exc.wait) + 1)
        return Response(error_body("throttled", str(exc.detail)), status=429, headers=headers)
    if isinstance(exc, exceptions.MethodNotAllowed):
        return Response(error_body("method_not_allowed", str(exc.detail)), status=405)
    if isinstance(exc, exceptions.NotAcceptable):
        return Response(error_body("not_acceptable", str(exc.detail)), status=406)
    if isinstance(exc, SuspiciousOperation):
        return Response(error_body("invalid", str(exc), fields={"body": [str(exc)]}), status=400)
    if isinstance(exc, exceptions.APIException):
        return Response(error_body(exc.default_code, str(exc.detail)), status=exc.status_code)
    return None  # unexpected: Django's 500 handler (JSON for /api/, see core.views)
