"""Helpers shared by every app's API views."""
import hashlib
import json
import logging
import re
import uuid
from functools import wraps
from typing import Protocol

from django.db import IntegrityError, transaction
from django.http import HttpResponse
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.renderers import JSONRenderer

from core.errors import DomainError, NotFoundError
from core.hooks import Hook
from core.models import IdempotencyRecord
from core.uow import retry_transient

logger = logging.getLogger(__name__)


def parse_uuid(value, *, field: str | None = None) -> uuid.UUID:
    """A UUID from a path or query value. Bad path ids are 404 (no such object); bad
    query/body ids are 400 naming the field."""
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        if field:
            raise ValidationError({field: ["Must be a valid UUID string."]}) from None
        raise NotFound() from None


def get_or_404(queryset: QuerySet, pk):
    """One object of an already permission-filtered queryset, or 404."""
    obj = queryset.filter(pk=parse_uuid(pk)).first()
    if obj is None:
        raise NotFound()
    return obj


# --- OpenAPI: the error shape --------------------------------------------------------
ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "error": serializers.CharField(help_text="invalid, unauthenticated, forbidden, not_found, conflict, "
                                       "expired, emergency_stop or throttled (API.md); also method_not_allowed "
                                       "(405), not_acceptable (406), request_timeout (408), unavailable (503, "
                                       "with Retry-After: retry the same request) and server_error (500)"),
        "detail": serializers.CharField(),
        "fields": serializers.DictField(
            child=serializers.ListField(child=serializers.CharField()), required=False,
            help_text="400 only: each bad field and its messages"),
        "status": serializers.CharField(required=False, allow_null=True,
                                        help_text="409 only: the current status (null when the refusal is about "
                                                  "no object's status: a total past what the database holds)"),
        "emergency_stop_id": serializers.UUIDField(required=False, allow_null=True, help_text="423 only"),
        "decided_by": serializers.CharField(required=False, allow_null=True,
                                            help_text="409 for a decision that came second: who decided first "
                                                      "(null: nobody did, a stop or its agent cancelled it)"),
        "decided_at": serializers.DateTimeField(required=False, allow_null=True,
                                                help_text="409 for a decision that came second: when"),
    },
)


def require_output_fields(result, generator, request, public):
    """Every field of an answer (a ``...Output`` component) is always there, null when it has no
    value: the schema says so (drf-spectacular left a model field with a default optional, and a
    client generated from it had to handle a missing ``status``). Checked against real answers by
    core/tests/test_schema_conformance.py."""
    for name, component in result.get("components", {}).get("schemas", {}).items():
        if name.endswith("Output") and component.get("type") == "object" and component.get("properties"):
            component["required"] = sorted(component["properties"])
    return result


def error_responses(*codes: int) -> dict:
    """The error answers of an operation: ``codes``, plus 401 and the 503 any request may get
    while the database is busy (``Retry-After``; README "Errors")."""
    return {code: ErrorSerializer for code in (401, *codes, 503)}


IDEMPOTENCY_HEADER = OpenApiParameter(
    name="Idempotency-Key", type=OpenApiTypes.STR, location=OpenApiParameter.HEADER, required=False,
    description="A retry with the same key and body returns the first result and creates nothing new.",
)


# --- Idempotency-Key -----------------------------------------------------------------
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")


def _fingerprint(request) -> str:
    body = json.dumps(request.data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


class ReplayVisible(Protocol):
    def __call__(self, *, user, project_id) -> bool: ...


# Whether ``user`` may still see the project ``project_id`` (projects connects it): a replay
# of a stored answer is an answer about that project, refused as any request of theirs would be.
idempotent_replay_visible: Hook[ReplayVisible] = Hook("core.idempotent_replay_visible", required=True)


def _replay_allowed(user, answer, replay_allowed) -> bool:
    body = json.loads(answer) if isinstance(answer, str) else answer
    body = body if isinstance(body, dict) else {}
    if replay_allowed is not None:
        return replay_allowed(user, body)
    project_id = body.get("project_id")
    if project_id is None:  # a create whose answer names no project: every replay of it would be 404
        logger.error("idempotent replay: the stored answer has no project_id; refused")
        return False
    return all(idempotent_replay_visible(user=user, project_id=project_id))


def idempotent(post=None, *, replay_allowed=None):
    """Decorate an APIView's create (or decision) ``post``: with an ``Idempotency-Key`` header, the first
    2xx answer is stored in the same transaction as what it created, and a retry with the
    same key and body gets that answer again (a different body with the same key is 400).
    Concurrent retries wait for the first one on the key's unique constraint. A replay is
    answered only while the caller may still see the answer's project (its ``project_id``), or
    while ``replay_allowed(user, answer)`` says so where that is given: a role taken away since is
    404, as their new request would be."""
    if post is None:
        return lambda view: idempotent(view, replay_allowed=replay_allowed)
    from rest_framework.response import Response

    @wraps(post)
    @retry_transient  # the wrapper owns the outermost transaction, so it retries (core/uow.py)
    def wrapper(self, request, *args, **kwargs):
        key = request.META.get("HTTP_IDEMPOTENCY_KEY")  # not request.headers (built from every header)
        if key is None:
            return post(self, request, *args, **kwargs)
        if not IDEMPOTENCY_KEY_RE.fullmatch(key):
            raise ValidationError({"Idempotency-Key": ["Must be 1 to 255 visible ASCII characters."]})
        fingerprint = _fingerprint(request)  # parses the body: a bad body is 400 here
        refused = None
        with transaction.atomic():
            try:
                with transaction.atomic():
                    record = IdempotencyRecord.objects.create(
                        user=request.user, key=key, fingerprint=fingerprint, status_code=0, response_body={}
                    )
            except IntegrityError:
                previous = IdempotencyRecord.objects.get(user=request.user, key=key)
                if previous.fingerprint != fingerprint:
                    raise ValidationError(
                        {"Idempotency-Key": ["This key was already used with a different request."]}
                    ) from None
                if not _replay_allowed(request.user, previous.response_body, replay_allowed):
                    raise NotFoundError("Not found.")
                replayed = {"Idempotent-Replayed": "true"}
                if isinstance(previous.response_body, str):  # the answer's JSON text, byte for byte
                    return HttpResponse(previous.response_body, status=previous.status_code,
                                        content_type="application/json", headers=replayed)
                return Response(previous.response_body, status=previous.status_code, headers=replayed)
            try:
                response = post(self, request, *args, **kwargs)
            except DomainError as exc:
                # A refusal is not stored (a retry tries again), and what was committed before it is
                # kept, as without a key: a request can trip a stop (security_threat, budget_critical)
                # before it is refused, a decision past the deadline times the item out (410); what a
                # refused service began was rolled back by its own unit of work.
                record.delete()
                refused = exc
            else:
                if not 200 <= response.status_code < 300:
                    transaction.set_rollback(True)  # errors are not stored: a retry tries again
                    return response
                record.status_code = response.status_code
                # The JSON text itself (a JSON string in the column): stored as an object, PostgreSQL's
                # jsonb would give its keys back in its own order and the replay would differ.
                record.response_body = JSONRenderer().render(response.data).decode()
                record.save(update_fields=["status_code", "response_body"])
                return response
        raise refused

    return wrapper


def paginated(item_serializer, name: str):
    """OpenAPI shape of a PageNumberPagination answer: {count, next, previous, results}."""
    return type(name, (serializers.Serializer,), {
        "count": serializers.IntegerField(),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": item_serializer(many=True),
    })


# --- content negotiation --------------------------------------------------------------
class JsonFirstNegotiation(DefaultContentNegotiation):
    """DRF's negotiation, with a shortcut for what agents send: no ``Accept`` header, ``*/*`` or
    ``application/json`` (and no format suffix) is answered by the first renderer, JSON, at once.
    Parsing the header and building the query dict for a format override cost about a twentieth
    of a trivial GET; the answer is the same as DRF's for these headers. Anything else (a browser
    asking for HTML, for the browsable API) goes through DRF's own negotiation."""

    JSON_ACCEPTS = frozenset(("", "*/*", "application/json"))

    def select_renderer(self, request, renderers, format_suffix=None):
        if format_suffix is None and renderers and renderers[0].media_type == "application/json" \
                and request.META.get("HTTP_ACCEPT", "").strip() in self.JSON_ACCEPTS:
            return renderers[0], renderers[0].media_type
        return super().select_renderer(request, renderers, format_suffix)
