"""A momentarily busy database (deadlock, serialization failure, lock timeout, exhausted
connection pool, SQLite "database is locked") is 503 ``unavailable`` with ``Retry-After``,
never a 500; any other OperationalError stays a (JSON) 500.

The errors are raised through DRF views defined here (routed by this module's ``urlpatterns``
with ``@pytest.mark.urls``), so the whole stack answers: view, exception handler, renderer.
"""
import json
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from django.db import IntegrityError, OperationalError, connection, connections, transaction
from django.urls import path
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout, TooManyRequests
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.test import APIClient
from rest_framework.views import APIView

from core.tests.test_asgi_handler import serve  # noqa: F401  (a real daphne on the test database)
from core.errors import api_exception_handler, is_transient_db_error, transient_db_error_kind
from core.uow import retry_transient


def wrapped(driver_error: Exception) -> OperationalError:
    """The error as Django raises it: its OperationalError, caused by the driver's error (what
    ``DatabaseErrorWrapper`` does on every cursor call, commit and connect)."""
    try:
        try:
            raise driver_error
        except Exception as exc:
            raise OperationalError(*exc.args) from exc
    except OperationalError as django_error:
        return django_error


TRANSIENT = {
    "deadlock": (pg_errors.DeadlockDetected("deadlock detected"), "deadlock detected"),
    "serialization": (pg_errors.SerializationFailure("could not serialize access due to concurrent update"),
                      "serialization failure"),
    "lock-timeout": (pg_errors.LockNotAvailable("canceling statement due to lock timeout"), "lock not available"),
    "pool-timeout": (PoolTimeout("couldn't get a connection after 30.00 sec"), "connection pool exhausted"),
    "pool-queue-full": (TooManyRequests("the pool has already 10 requests waiting"), "connection pool exhausted"),
    "admin-shutdown": (pg_errors.AdminShutdown("terminating connection due to administrator command"),
                       "connection lost"),
    "closed-unexpectedly": (psycopg.OperationalError("consuming input failed: server closed the connection "
                                                     "unexpectedly"), "connection lost"),
    "sqlite-locked": (sqlite3.OperationalError("database is locked"), "database is locked"),
    "sqlite-table-locked": (sqlite3.OperationalError("database table is locked: projects_project"),
                            "database is locked"),
}
NOT_TRANSIENT = {
    "connection-refused": wrapped(psycopg.OperationalError("connection failed: Connection refused")),
    "statement-timeout": wrapped(pg_errors.QueryCanceled("canceling statement due to statement timeout")),
    "sqlite-no-such-table": wrapped(sqlite3.OperationalError("no such table: projects_project")),
    "bare-operational-error": OperationalError("deadlock detected"),  # no driver error behind it
    "integrity": IntegrityError("duplicate key value violates unique constraint"),
    "value-error": ValueError("database is locked"),
}


# --- the classifier the transaction helper reuses for its retries -------------------------
@pytest.mark.parametrize("name", TRANSIENT)
def test_transient_errors_are_recognised_wrapped_or_raw(name):
    driver_error, kind = TRANSIENT[name]
    assert is_transient_db_error(wrapped(driver_error)) and transient_db_error_kind(wrapped(driver_error)) == kind
    assert is_transient_db_error(driver_error)


@pytest.mark.parametrize("name", NOT_TRANSIENT)
def test_other_errors_are_not_transient(name):
    assert not is_transient_db_error(NOT_TRANSIENT[name]) and transient_db_error_kind(NOT_TRANSIENT[name]) is None


# A service runs again after an error of concurrent work (HITL_DB_RETRIES times), not after one
# that already waited its whole limit (a pooled connection, a lock): its client decides.
@pytest.mark.parametrize("name, runs", [("deadlock", 4), ("serialization", 4), ("sqlite-locked", 4),
                                        ("lock-timeout", 1), ("pool-timeout", 1), ("pool-queue-full", 1)])
def test_a_service_runs_again_after_a_deadlock_not_after_a_whole_wait(name, runs, settings, monkeypatch):
    settings.HITL_DB_RETRIES = 3
    monkeypatch.setattr("core.uow.time.sleep", lambda seconds: None)
    calls = []

    @retry_transient
    def service():
        calls.append(1)
        raise wrapped(TRANSIENT[name][0])

    with pytest.raises(OperationalError):
        service()
    assert len(calls) == runs


def test_the_classifier_takes_none_and_survives_a_cause_cycle():
    assert not is_transient_db_error(None)
    a, b = OperationalError("a"), OperationalError("b")
    a.__cause__, b.__cause__ = b, a
    assert not is_transient_db_error(a)


def test_a_real_sqlite_busy_error_is_transient(tmp_path):
    """The text SQLite really gives when another connection holds the write lock."""
    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(tmp_path / "busy.db", timeout=0.05, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError) as raised:
            other.execute("INSERT INTO t VALUES (1)")
    finally:
        holder.rollback()
        holder.close()
        other.close()
    assert transient_db_error_kind(wrapped(raised.value)) == "database is locked"


# --- through a DRF view ------------------------------------------------------------------
class Raising(APIView):
    permission_classes = [AllowAny]
    authentication_classes = []
    error: Exception | None = None

    def get(self, request):
        raise self.error

    def post(self, request):
        raise self.error


class Fine(APIView):
    permission_classes = [AllowAny]
    authentication_classes = []

    def get(self, request):
        return Response({"ok": True})


def raising_page(request):
    raise Raising.error


urlpatterns = [path("api/v1/raising", Raising.as_view()), path("api/v1/fine", Fine.as_view()),
               path("review/raising", raising_page)]
handler500 = "core.views.server_error"


@pytest.fixture
def raising(monkeypatch):
    def set_error(error):
        monkeypatch.setattr(Raising, "error", error)
        client = APIClient()
        client.raise_request_exception = False  # answer as the server would (a 500 is a response)
        return client

    return set_error


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("accept", [None, "application/json", "text/html", "*/*"])
@pytest.mark.parametrize("name", TRANSIENT)
def test_a_transient_database_error_is_503_with_retry_after(raising, name, accept):
    driver_error, kind = TRANSIENT[name]
    client = raising(wrapped(driver_error))
    r = client.get("/api/v1/raising", **({"HTTP_ACCEPT": accept} if accept else {}))
    assert r.status_code == 503, r.content[:500]
    assert r["Content-Type"].startswith("application/json") and r["Retry-After"] == "1"
    body = json.loads(r.content)
    assert body["error"] == "unavailable" and kind in body["detail"]


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("value, header", [(5, "5"), (2.5, "3"), (0, "0")])
def test_retry_after_follows_the_setting(raising, settings, value, header):
    settings.HITL_RETRY_AFTER_SECONDS = value
    r = raising(wrapped(pg_errors.DeadlockDetected("deadlock detected"))).post("/api/v1/raising", {}, format="json")
    assert r.status_code == 503 and r["Retry-After"] == header


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("error", [NOT_TRANSIENT["sqlite-no-such-table"],
                                   wrapped(sqlite3.OperationalError("table projects_task has no column named x")),
                                   wrapped(pg_errors.UndefinedColumn('column "open_questions" does not exist')),
                                   wrapped(pg_errors.UndefinedTable('relation "hitl_x" does not exist'))])
def test_a_table_or_column_the_code_needs_missing_is_503_naming_migrate(raising, error):
    """The schema behind the code (the new version started before `migrate`): not transient, and
    not a bug of the request either: 503 saying what to run, not a 500."""
    r = raising(error).post("/api/v1/raising", {}, format="json")
    assert r.status_code == 503 and r["Retry-After"] == "1"
    assert r.json()["error"] == "unavailable" and "run `manage.py migrate`" in r.json()["detail"]


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("name", ["connection-refused", "statement-timeout", "bare-operational-error"])
def test_another_operational_error_stays_a_json_500(raising, name):
    r = raising(NOT_TRANSIENT[name]).get("/api/v1/raising", HTTP_ACCEPT="text/html")
    assert r.status_code == 500 and "Retry-After" not in r
    assert r["Content-Type"].startswith("application/json") and r.json()["error"] == "server_error"


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("name", ["lock-timeout", "admin-shutdown", "deadlock"])
def test_a_page_that_met_a_busy_database_says_so_503_not_a_500_page(raising, name):
    """A reviewer's page (a decision, a stop) held up past the lock timeout was Django's 500 page."""
    from django.test import Client

    raising(wrapped(TRANSIENT[name][0]))
    r = Client(raise_request_exception=False).post("/review/raising")
    assert r.status_code == 503 and r["Retry-After"] == "1" and r["Content-Type"].startswith("text/plain")
    assert r.content.decode().startswith(f"The database is busy ({TRANSIENT[name][1]}): nothing was done.")


@pytest.mark.urls(__name__)
def test_a_successful_answer_still_negotiates():
    client = APIClient()
    assert client.get("/api/v1/fine", HTTP_ACCEPT="text/html")["Content-Type"].startswith("text/html")
    assert client.get("/api/v1/fine")["Content-Type"].startswith("application/json")


# --- real lock conflicts on PostgreSQL ----------------------------------------------------
def _in_thread(fn):
    result = {}

    def run():
        try:
            result["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_connections_the_server_ended_are_503_then_replaced_never_a_500(project, agent, client_for):
    """pg_terminate_backend (a restart, a failover) left a pooled connection broken: its next
    request was a 500 (AdminShutdown, "server closed the connection unexpectedly"). Now it is 503
    with Retry-After and changes nothing, and the broken connection is dropped when the request ends."""
    from projects.models import Task

    client = client_for(agent)
    client.raise_request_exception = False  # answer as the server would
    params = connections["default"].get_connection_params()
    admin = psycopg.connect(**{k: v for k, v in params.items() if k in ("dbname", "user", "host", "port", "password")},
                            autocommit=True)

    def end_this_threads_connection():  # only the one this test's requests use: nobody else's
        connections["default"].ensure_connection()
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]

    try:
        for request in (lambda: client.get(f"/api/v1/projects/{project.pk}"),
                        lambda: client.post("/api/v1/tasks", {"project_id": str(project.pk), "agent_type": "coder",
                                                              "title": "again"}, format="json")):
            end_this_threads_connection()
            refused = request()
            assert refused.status_code == 503 and refused["Retry-After"], refused.content
            assert "connection lost" in refused.json()["detail"]
            connections["default"].close()  # as a server's request ends (the test client keeps its connection)
            assert request().status_code in (200, 201)  # the broken one was dropped: a new connection
        assert Task.objects.filter(project=project, title="again").count() == 1  # the refused write made nothing
    finally:
        connections["default"].close()
        admin.close()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_real_lock_timeout_and_deadlock_are_transient(project, other_project):
    from projects.models import Project

    # Lock timeout: another transaction holds the row.
    locked, release = threading.Event(), threading.Event()

    def hold():
        with transaction.atomic():
            Project.objects.select_for_update().get(pk=project.pk)
            locked.set()
            release.wait(10)

    holder, _ = _in_thread(hold)
    assert locked.wait(10)
    try:
        with pytest.raises(OperationalError) as raised, transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '50ms'")
            Project.objects.select_for_update().get(pk=project.pk)
    finally:
        release.set()
        holder.join(10)
    assert transient_db_error_kind(raised.value) == "lock not available"
    response = api_exception_handler(raised.value, {"request": None, "view": None})
    assert response.status_code == 503 and response["Retry-After"] == "1"

    # Deadlock: two transactions lock the same two rows in opposite orders.
    barrier = threading.Barrier(2)

    def lock(first, second):
        def run():
            with transaction.atomic():
                Project.objects.select_for_update().get(pk=first)
                barrier.wait(10)
                Project.objects.select_for_update().get(pk=second)
        return run

    threads = [_in_thread(lock(project.pk, other_project.pk)), _in_thread(lock(other_project.pk, project.pk))]
    for thread, _ in threads:
        thread.join(20)
    errors = [result["error"] for _, result in threads if "error" in result]
    assert len(errors) == 1, errors  # PostgreSQL picks one victim; the other commits
    assert transient_db_error_kind(errors[0]) == "deadlock detected"


@pytest.mark.urls(__name__)
def test_an_api_server_error_is_json_under_debug_too(raising, settings, caplog):
    """`make run` runs with DJANGO_DEBUG=1, where Django answers a bug with its HTML debug page
    (the handler500 only runs without DEBUG): on /api/ it is the API's JSON 500 there too, with
    the traceback in the log."""
    settings.DEBUG = True
    r = raising(RuntimeError("a bug")).get("/api/v1/raising", HTTP_ACCEPT="text/html")
    assert r.status_code == 500 and r["Content-Type"].startswith("application/json"), r.content[:200]
    assert r.json() == {"error": "server_error", "detail": "Internal server error."}
    assert any("a bug" in (record.exc_text or "") or (record.exc_info and "a bug" in str(record.exc_info[1]))
               for record in caplog.records)


@pytest.mark.postgres
def test_after_the_server_ends_every_connection_one_request_is_refused_not_one_per_pooled_connection(
        serve, project, agent):  # noqa: F811
    """A restart (here: every connection of the web process ended) left each idle pooled
    connection dead, and each was handed to a request of its own: 503 after 503 while the database
    answered, and the health check said "unreachable". The first lost connection now has the pool
    drop the others."""
    from access.services import api_key_create
    from core.tests.test_asgi_handler import SERVER_APP_NAME

    key = api_key_create(user=agent, name="pool")[1]
    server = serve(HITL_DB_POOL_MIN=6, HITL_DB_POOL_MAX=6)
    with ThreadPoolExecutor(6) as pool:  # six connections open and idle in the pool
        assert set(pool.map(lambda _: server.request("GET", f"/api/v1/projects/{project.pk}", key=key)[0],
                            range(24))) == {200}
    params = connections["default"].get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k in ("dbname", "user", "host", "port", "password")},
                         autocommit=True) as admin:
        ended = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                              "WHERE application_name = %s", [SERVER_APP_NAME]).fetchone()[0]
    assert ended >= 2, ended
    statuses = [server.request("GET", f"/api/v1/projects/{project.pk}", key=key)[0] for _ in range(12)]
    assert statuses.count(503) <= 1 and statuses.count(200) >= 11, statuses
    status, _, body, _ = server.request("GET", "/api/v1/health")
    assert status == 200 and json.loads(body)["database"] == "postgresql", body


@pytest.mark.postgres
def test_the_health_check_says_the_database_does_not_answer_within_its_own_timeout(serve):  # noqa: F811
    """It waited for a pooled connection as long as any request (HITL_DB_POOL_TIMEOUT, 30 s) while
    the database was down: a monitor's probe (1 to 10 s) saw a hung server."""
    fresh = serve()  # its first request: the pool is not open yet (it answered 503, the pool "not open yet")
    status, _, body, _ = fresh.request("GET", "/api/v1/health")
    assert status == 200 and json.loads(body)["database"] == "postgresql", body
    server = serve(DATABASE_URL="postgres://postgres@127.0.0.1:9/nothing_listens_here", HITL_DB_POOL_TIMEOUT=60,
                   HITL_HEALTH_DB_TIMEOUT=1)
    status, _, body, _ = server.request("GET", "/api/v1/health", timeout=20)  # well before the pool's 60 s
    answer = json.loads(body)
    assert status == 503 and answer["database"] == "unreachable" and answer["error"] == "unavailable", body
