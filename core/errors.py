"""Domain errors and the one DRF exception handler that gives every error API.md's shape.

Every error body is ``{"error": <code>, "detail": <text>, ...}``; see ``../shared/API.md``.
Errors are always rendered as JSON, whatever the request's ``Accept`` header asks for (the
browsable API may still render successful answers as HTML).

A database that is momentarily busy (a deadlock, a serialization failure, a lock timeout, no
free pooled connection, SQLite's "database is locked") is 503 ``unavailable`` with
``Retry-After`` (HITL_RETRY_AFTER_SECONDS), never a 500: the client should simply retry.
"""
import logging
import math
import sqlite3
from datetime import timezone as dt_timezone

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import OperationalError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from core.times import iso_utc

log = logging.getLogger(__name__)


class OneLineRefusals(logging.Filter):
    """A refused request (any 4xx: 403, 404, 409, ...) is logged as one warning line, without
    traceback. Django's ``log_response`` (logger ``django.request``, and ``django.security.*``
    for a suspicious request, at error level) passes the exception as ``exc_info`` since
    Django 4.1, so a plain 403 in the admin wrote a whole traceback into the log. Server errors
    (5xx) keep their traceback. Installed on the console handler by settings.LOGGING."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if isinstance(status, int) and 400 <= status < 500:
            record.exc_info = record.exc_text = record.stack_info = None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            message = record.getMessage()
            if "\n" in message or "\r" in message:
                record.msg, record.args = " ".join(message.split()), None
        return True


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


class AlreadyDecided(TransitionError):
    """A decision that came second (409): says who decided first and when, in its text and as
    ``decided_by`` (a username, null when nobody decided it: cancelled by a stop or its agent) and ``decided_at``, so a
    reviewer beaten to it by a colleague knows by whom."""

    def __init__(self, detail: str, *, current_status: str, decider_id=None, decided_at=None, **extra):
        if current_status == "cancelled":  # nobody decided it: an approved call a stop cancelled keeps its approver
            decider_id = decided_at = None  # (one that timed out is 410 expired before this)
        user = get_user_model()
        name = (user.objects.filter(pk=decider_id).values_list(user.USERNAME_FIELD, flat=True).first()
                if decider_id is not None else None)
        when = f" at {decided_at.astimezone(dt_timezone.utc):%Y-%m-%d %H:%M:%S} UTC" if decided_at else ""
        if name:
            detail = f"{detail.rstrip('.')} (by {name}{when})."
        super().__init__(detail, current_status=current_status, decided_by=name, decided_at=iso_utc(decided_at),
                         **extra)


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


def _messages(detail, where: str = "") -> list[str]:
    """One field's DRF error details as API.md's list of messages: the errors of a list's items
    and of a nested object's keys (a dict in DRF's details) are said in the message, "Item 0:
    Must be a string." or "agent_types: ...", never as a nested object."""
    if isinstance(detail, dict):
        return [message for key, value in detail.items()
                for message in _messages(value, f"{where}{'Item ' + str(key) if str(key).isdigit() else key}: ")]
    if isinstance(detail, list):
        if any(isinstance(value, dict) for value in detail):  # a list of objects: one entry per item
            return [message for i, value in enumerate(detail) for message in _messages(value, f"{where}Item {i}: ")]
        return [message for value in detail for message in _messages(value, where)]
    return [f"{where}{detail}"]


def _fields(detail) -> dict[str, list[str]]:
    if isinstance(detail, dict):
        return {str(key): _messages(value) for key, value in detail.items()}
    return {"non_field_errors": _messages(detail)}


def is_api_path(path: str) -> bool:
    """Is an error to ``path`` answered in the API's JSON format? Also ``//api/...`` (a client whose
    base URL ends in a slash) and a request line's ``api/...`` without its slash: they got Django's
    HTML 404, which a JSON client cannot read."""
    return path.lstrip("/").startswith("api/")


def error_body(code: str, detail: str, **extra) -> dict:
    return {"error": code, "detail": detail, **extra}


# --- transient database errors ------------------------------------------------------
# PostgreSQL SQLSTATEs worth retrying: the transaction was rolled back (or never got its lock)
# only because of concurrent work; the same request succeeds when run again.
_TRANSIENT_SQLSTATES = {
    "40P01": "deadlock detected",       # psycopg.errors.DeadlockDetected
    "40001": "serialization failure",   # psycopg.errors.SerializationFailure
    "55P03": "lock not available",      # psycopg.errors.LockNotAvailable (lock_timeout, NOWAIT)
    # the server ended this connection (pg_terminate_backend, a restart, a failover): the next one works
    "57P01": "connection lost",         # psycopg.errors.AdminShutdown
    "57P02": "connection lost",         # psycopg.errors.CrashShutdown
    "57P03": "connection lost",         # psycopg.errors.CannotConnectNow (the server is starting)
}
# ... or it went away without a word: the driver's own message (no SQLSTATE)
_LOST_CONNECTION_MESSAGES = ("consuming input failed", "server closed the connection unexpectedly",
                             "the connection is closed", "the connection is lost")
# SQLite's SQLITE_BUSY / SQLITE_LOCKED: another connection holds the write lock past the timeout.
_SQLITE_BUSY_MESSAGES = ("database is locked", "database table is locked", "database schema is locked")


def _pool_exhausted_types() -> tuple:
    try:
        from psycopg_pool import PoolTimeout, TooManyRequests
    except ImportError:  # SQLite-only installs need not have psycopg
        return ()
    return PoolTimeout, TooManyRequests


def transient_db_error_kind(exc: BaseException | None) -> str | None:
    """What makes ``exc`` a transient database error ("deadlock detected", "serialization
    failure", "lock not available", "connection pool exhausted", "database is locked"), or None
    when it is not one. Follows the ``__cause__`` chain, so it sees the driver's error behind
    Django's ``OperationalError`` wrapper (and accepts the driver's error itself)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        if sqlstate in _TRANSIENT_SQLSTATES:
            return _TRANSIENT_SQLSTATES[sqlstate]
        if isinstance(sqlstate, str) and sqlstate.startswith("08"):  # connection_exception's class
            return "connection lost"
        if sqlstate is None and type(exc).__module__.startswith("psycopg") and \
                any(text in str(exc) for text in _LOST_CONNECTION_MESSAGES):
            return "connection lost"
        pool_errors = _pool_exhausted_types()
        if pool_errors and isinstance(exc, pool_errors):
            return "connection pool exhausted"
        if isinstance(exc, (OperationalError, sqlite3.OperationalError)):
            message = str(exc).strip().lower()
            if message.startswith(_SQLITE_BUSY_MESSAGES):
                return "database is locked"
        exc = exc.__cause__
    return None


_SCHEMA_SQLSTATES = {"42P01", "42703"}  # undefined_table, undefined_column
_SQLITE_SCHEMA_MESSAGES = ("no such table", "no such column")
SCHEMA_BEHIND = ("The database's schema is behind this version of the server (run `manage.py migrate`): "
                 "nothing was done.")


def schema_behind(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an error behind it) says a table or column this code uses does not exist:
    the new version runs on a database not yet migrated (a 500 on every write, while the health
    check said ok)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if (getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)) in _SCHEMA_SQLSTATES:
            return True
        message = str(exc).strip().lower()
        if isinstance(exc, (OperationalError, sqlite3.OperationalError)) and \
                (message.startswith(_SQLITE_SCHEMA_MESSAGES) or " has no column named " in message):
            return True
        exc = exc.__cause__
    return False


def is_transient_db_error(exc: BaseException | None) -> bool:
    """True for a deadlock, serialization failure, lock timeout, exhausted connection pool or
    SQLite "database is locked": running the same transaction again may well succeed. (An
    exhausted pool has already waited HITL_DB_POOL_TIMEOUT; see ``transient_db_error_kind``
    to tell it apart.)"""
    return transient_db_error_kind(exc) is not None


def retry_after_seconds() -> int:
    """The ``Retry-After`` of a 503 (setting HITL_RETRY_AFTER_SECONDS, default 1)."""
    try:
        value = float(getattr(settings, "HITL_RETRY_AFTER_SECONDS", 1))
    except (TypeError, ValueError):
        value = 1.0
    return max(int(math.ceil(value)), 0) if math.isfinite(value) else 1


def unavailable_body(kind: str) -> dict:
    return error_body("unavailable", f"The database is busy ({kind}); retry the request shortly.")


def api_exception_handler(exc, context):
    """DRF EXCEPTION_HANDLER: every error becomes ``{"error", "detail", ...}``, rendered as JSON
    even when the client asked for HTML (the browsable API) or anything else."""
    response = _error_response(exc, context)
    request = context.get("request") if context else None
    if response is not None and request is not None:
        # finalize_response renders with the request's negotiated renderer: make it JSON.
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = JSONRenderer.media_type
    return response


def _error_response(exc, context):
    headers = {}
    if isinstance(exc, DomainError):
        return Response(exc.body(), status=exc.status_code)
    if isinstance(exc, exceptions.ValidationError):
        return Response(error_body("invalid", "Invalid input.", fields=_fields(exc.detail)), status=400)
    if isinstance(exc, (exceptions.ParseError, exceptions.UnsupportedMediaType, RequestDataTooBig)):
        detail = str(getattr(exc, "detail", exc)) or "Malformed request body."
        if isinstance(exc, RequestDataTooBig):  # Django's says "exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE"
            detail = f"Request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
        elif isinstance(exc, exceptions.UnsupportedMediaType):
            media_type = (context.get("request") and context["request"].content_type or "").split(";")[0].strip()
            detail = (f"The body is {media_type}: send it as JSON, with Content-Type: application/json."
                      if media_type else "The body has no Content-Type: send it as JSON, with "
                                         "Content-Type: application/json.")
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
    if schema_behind(exc):
        log.error("the database's schema is behind the code (run manage.py migrate), answered 503: %s", exc)
        return Response(error_body("unavailable", SCHEMA_BEHIND), status=503,
                        headers={"Retry-After": str(retry_after_seconds())})
    kind = transient_db_error_kind(exc)
    if kind is not None:
        log.warning("transient database error, answered 503: %s: %s", kind, exc)
        return Response(unavailable_body(kind), status=503, headers={"Retry-After": str(retry_after_seconds())})
    if out_of_range(exc):  # the whole unit of work rolled back with it: nothing was changed
        log.warning("a total out of the database's range, answered 409: %s", exc)
        return Response(error_body("conflict", "A value this request would store (a budget total, an override or "
                                               "an alert amount, all under 10,000,000,000) is beyond what the "
                                               "database holds: nothing was changed.",
                                   status=None), status=409)  # every 409 has one: here no object's is at issue
    return None  # unexpected: Django's 500 handler (JSON for /api/, see core.views)


def out_of_range(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an error behind it) is PostgreSQL's "numeric value out of range"
    (SQLSTATE 22003): a sum past its column's precision (NUMERIC(14,4) amounts)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if (getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)) == "22003":
            return True
        exc = exc.__cause__
    return False
