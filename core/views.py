"""JSON answers for API paths that no view handles, and the health endpoint."""
import functools
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout

from django.conf import settings
from django.db import DatabaseError, OperationalError, connection
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import (SCHEMA_BEHIND, error_body, is_api_path, retry_after_seconds, schema_behind,
                         transient_db_error_kind)
from core.models import Heartbeat


@csrf_exempt  # any method on an unknown API path is a JSON 404, not a CSRF page
def api_not_found(request, *args, **kwargs):
    return JsonResponse(error_body("not_found", "No such endpoint."), status=404)


def bad_request(request, exception=None):
    """handler400 (for example a Host header not in DJANGO_ALLOWED_HOSTS): JSON for the API (a
    page's form past the body limit: core.middleware)."""
    if is_api_path(request.path):
        return JsonResponse(error_body("invalid", "Bad request.", fields={"request": ["Bad request."]}), status=400)
    from django.views.defaults import bad_request as default

    return default(request, exception)


def server_error(request, *args, **kwargs):
    """handler500: JSON for the API, so even a bug keeps the error shape. A page (a reviewer's
    decision, a stop) that met a busy database (a lock held past HITL_DB_LOCK_TIMEOUT, a lost
    connection) or a schema behind the code says so, 503 with Retry-After, as the API does:
    nothing was done."""
    if is_api_path(request.path):
        if schema_behind(sys.exc_info()[1]):  # outside DRF's handler (a middleware's read, say)
            return JsonResponse(error_body("unavailable", SCHEMA_BEHIND), status=503,
                                headers={"Retry-After": str(retry_after_seconds())})
        return JsonResponse(error_body("server_error", "Internal server error."), status=500)
    error = sys.exc_info()[1]  # called inside Django's handling of the error
    if schema_behind(error):
        return HttpResponse(SCHEMA_BEHIND, status=503, content_type="text/plain; charset=utf-8",
                            headers={"Retry-After": str(retry_after_seconds())})
    kind = transient_db_error_kind(error)
    if kind is not None:
        return HttpResponse(f"The database is busy ({kind}): nothing was done. Send it again in a moment.",
                            status=503, content_type="text/plain; charset=utf-8",
                            headers={"Retry-After": str(retry_after_seconds())})
    from django.views.defaults import server_error as default

    return default(request)


def not_found(request, exception=None):
    if is_api_path(request.path):
        return api_not_found(request)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


class SchemaApi(SpectacularAPIView):
    """The OpenAPI schema. The API has one version (its path's ``v1``): drf-spectacular's
    ``?version=`` is not read. It was copied into the schema's ``info.version`` and the answer's
    ``Content-Disposition`` (a newline there was a 500, a NUL a malformed answer)."""

    def _get_version_parameter(self, request):
        return None


class SwaggerDocs(SpectacularSwaggerView):
    """Swagger UI of the schema. An HTML page: OPTIONS is answered as Django's own pages answer it
    (200, ``Allow``, no body); DRF's metadata answer went to the page's template renderer, which has
    no template for it (a 500)."""

    def options(self, request, *args, **kwargs):
        return HttpResponse(headers={"Allow": ", ".join(self.allowed_methods)})


class HealthApi(APIView):
    """Liveness of the database, Redis (when used) and Celery beat + worker (the heartbeat task's
    last run). 503 when the database does not answer: nothing can be decided then. Redis down is
    reported but still 200: decisions go on without it (live events and Celery wait for it)."""

    permission_classes = [AllowAny]
    authentication_classes = []

    @extend_schema(
        responses={
            200: inline_serializer(
                name="Health",
                fields={
                    "database": serializers.CharField(help_text="the database's vendor, or 'unreachable'"),
                    "redis": serializers.ChoiceField(choices=["ok", "unreachable", "not used"]),
                    "heartbeat": serializers.DateTimeField(allow_null=True,
                                                           help_text="last run of the beat heartbeat task"),
                    "heartbeat_age_seconds": serializers.FloatField(allow_null=True),
                    "emergency_heartbeat_age_seconds": serializers.FloatField(
                        allow_null=True, help_text="the same on the emergency queue (the stop conditions' checks)"),
                    "status": serializers.ChoiceField(
                        choices=["ok", "degraded"],
                        help_text="degraded: something below does not work (still 200: decisions go on)"),
                    "problems": serializers.ListField(child=serializers.CharField()),
                },
            ),
            503: OpenApiResponse(description="the database does not answer (the body also has error and detail)"),
        },
        auth=[],
    )
    def get(self, request):
        body = {"database": connection.vendor, "redis": _redis_health(), "heartbeat": None,
                "heartbeat_age_seconds": None}
        try:
            beats = _heartbeats()
        except Exception as exc:  # noqa: BLE001 - Django's, psycopg's or the pool's: the database does not answer
            if not isinstance(exc, DatabaseError) and not type(exc).__module__.startswith("psycopg"):
                raise
            if schema_behind(exc):  # it answers, without this version's tables: not migrated
                return Response({**error_body("unavailable", "The database answers but has not been migrated "
                                                             "to this version: run `manage.py migrate`."),
                                 **body, "problems": ["migrations not applied"]}, status=503)
            body["database"] = "unreachable"
            return Response({**error_body("unavailable", "The database does not answer."), **body}, status=503)
        now = timezone.now()
        beat, emergency = beats.get("beat"), beats.get("emergency")
        if beat:
            body["heartbeat"] = beat
            body["heartbeat_age_seconds"] = round((now - beat).total_seconds(), 3)
        body["emergency_heartbeat_age_seconds"] = round((now - emergency).total_seconds(), 3) if emergency else None
        body["problems"] = _problems(body)
        body["status"] = "degraded" if body["problems"] else "ok"
        return Response(body)


def _heartbeats() -> dict:
    """{name: last_seen} of the heartbeats, read on a connection of its own from the pool, taken
    within HITL_HEALTH_DB_TIMEOUT seconds (else the pool's error: the database does not answer).
    Through Django's connection it waited for one as long as any request (HITL_DB_POOL_TIMEOUT,
    30 s) while the database was down: a monitor's probe saw a hung server, not a 503. A dead
    connection (the server restarted) is dropped with the pool's other dead ones and read again
    once, instead of reporting a database that answers as unreachable."""
    names = ("beat", "emergency")
    pool = getattr(connection, "pool", None)
    if pool is None:  # SQLite, or PostgreSQL without a pool
        return dict(Heartbeat.objects.filter(name__in=names).values_list("name", "last_seen"))
    # Read on a thread of its own, waited for a little longer than the pool's wait: a connection
    # that stalls without refusing (a network partition, a hung server) held the check for good.
    # A stalled read keeps that one thread; the next checks queue behind it and answer 503 in time.
    future = _HEALTH_READER.submit(_pooled_heartbeats, pool, names)
    try:
        return future.result(timeout=settings.HITL_HEALTH_DB_TIMEOUT + 1)
    except FuturesTimeout:
        raise OperationalError("the database did not answer in time") from None


_HEALTH_READER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hitl-health-db")


def _pooled_heartbeats(pool, names) -> dict:
    from core.postgresql.base import check_pool_after_a_lost_connection

    query = f"SELECT name, last_seen FROM {Heartbeat._meta.db_table} WHERE name = ANY(%s)"
    pool.open()  # as Django opens it on its first connection (a no-op once open): a fresh process's is not yet
    for attempt in range(2):
        try:
            with pool.connection(timeout=settings.HITL_HEALTH_DB_TIMEOUT) as conn:
                rows = conn.execute(query, [list(names)]).fetchall()
                if not conn.autocommit:
                    conn.rollback()  # back to the pool idle
            return dict(rows)
        except Exception as exc:
            if attempt or transient_db_error_kind(exc) != "connection lost":
                raise
            check_pool_after_a_lost_connection(connection)
    raise AssertionError("unreachable")


_SCHEMA = {"unapplied": None, "checked_at": 0.0}
_SCHEMA_RECHECK_SECONDS = 10.0


def unapplied_migrations() -> list[str]:
    """This version's migrations the database lacks (``app.name``). Reading the migration files costs
    a tenth of a second or more: read once per _SCHEMA_RECHECK_SECONDS until none lacks (then never
    again in this process: a migration is not undone under a running server)."""
    if _SCHEMA["unapplied"] == []:
        return []
    now = time.monotonic()
    if _SCHEMA["unapplied"] is None or now - _SCHEMA["checked_at"] >= _SCHEMA_RECHECK_SECONDS:
        from django.db.migrations.executor import MigrationExecutor

        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        _SCHEMA.update(unapplied=[f"{migration.app_label}.{migration.name}" for migration, _ in plan], checked_at=now)
    return _SCHEMA["unapplied"]


def _problems(body) -> list[str]:
    """What a monitor should page someone about (the answer stays 200: decisions go on)."""
    stale = 3 * settings.HITL_HEARTBEAT_SECONDS
    problems = []
    unapplied = unapplied_migrations()
    if unapplied:  # the new version started before `migrate`: what needs the new schema fails (503)
        named = ", ".join(unapplied[:5]) + (f" and {len(unapplied) - 5} more" if len(unapplied) > 5 else "")
        problems.append(f"{len(unapplied)} migration{'s' if len(unapplied) > 1 else ''} of this version not applied "
                        f"({named}): run `manage.py migrate` (requests that need them are answered 503).")
    if body["redis"] == "unreachable":
        problems.append("Redis does not answer: live events and Celery wait for it.")
    for key, queue, work in (
            ("heartbeat_age_seconds", "the default queue (celery)", "time-outs and budget resets"),
            ("emergency_heartbeat_age_seconds", "the emergency queue", "the automatic stop conditions")):
        age = body[key]
        if age is None or age > stale:
            problems.append(f"No heartbeat from {queue} " + ("yet" if age is None else f"for {age:.0f} s")
                            + f" ({work} wait for it): is Celery beat running, and a worker consuming that queue?")
    return problems


def _redis_health() -> str:
    url = getattr(settings, "REDIS_URL", "")
    if not url:
        return "not used"
    import redis

    try:
        _redis_client(url).ping()
    except (redis.RedisError, OSError, ValueError):  # ValueError: a URL it cannot read (settings refuse one)
        return "unreachable"
    return "ok"


@functools.lru_cache(maxsize=4)
def _redis_client(url: str):
    """One client (a pool of at most 2 connections) per URL for every health check: an
    unauthenticated endpoint must not open a connection per request."""
    import redis

    return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
        url, max_connections=2, timeout=1, socket_timeout=1, socket_connect_timeout=1))
