"""The platform pieces: settings from the environment, health/heartbeat, Celery through a
real broker, the Redis channel layer, the OpenAPI schema and docs."""
import os
import threading

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connection, connections
from rest_framework.test import APIClient

from core.models import Heartbeat
from core.tasks import heartbeat_task
from projects.models import Task

pytestmark = pytest.mark.django_db


def test_database_follows_database_url():
    url = os.environ.get("DATABASE_URL", "")
    assert connection.vendor == ("postgresql" if url.startswith("postgres") else "sqlite")


def test_channel_layer_and_broker_follow_redis_url():
    from botarmy_hitl import settings as real

    if os.environ.get("REDIS_URL"):
        assert real.CHANNEL_LAYERS["default"]["BACKEND"] == "core.channel_layer.RedisChannelLayer"
        assert settings.CELERY_BROKER_URL.startswith("redis://")
    else:
        assert real.CHANNEL_LAYERS["default"]["BACKEND"] == "channels.layers.InMemoryChannelLayer"
        assert settings.CELERY_BROKER_URL == "filesystem://"


@pytest.mark.django_db(transaction=True)  # the health check reads on a pooled connection of its own
def test_health_reports_the_beat_heartbeat():
    client = APIClient()
    body = client.get("/api/v1/health").json()
    assert body["heartbeat"] is None and body["database"] == connection.vendor
    assert body["status"] == "degraded" and len(body["problems"]) == 2  # neither queue has been heard from
    assert body["problems"][0] == ("No heartbeat from the default queue (celery) yet (time-outs and budget resets "
                                   "wait for it): is Celery beat running, and a worker consuming that queue?")
    heartbeat_task.delay()
    body = client.get("/api/v1/health").json()
    assert body["heartbeat"] is not None and 0 <= body["heartbeat_age_seconds"] < 60
    assert body["status"] == "degraded" and ["emergency queue" in p for p in body["problems"]] == [True]
    heartbeat_task.delay(name="emergency")
    r = client.get("/api/v1/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["problems"] == []
    assert 0 <= r.json()["emergency_heartbeat_age_seconds"] < 60


@pytest.mark.django_db(transaction=True)  # the health check reads on a pooled connection of its own
def test_health_says_which_queue_no_worker_has_served_lately(settings):
    """A worker consuming only the default queue left the automatic stop conditions unchecked while
    the health answer looked fine: a stale heartbeat of either queue now makes it degraded."""
    from datetime import timedelta

    from django.utils import timezone

    from core.models import Heartbeat

    now = timezone.now()
    Heartbeat.objects.create(name="beat", last_seen=now)
    stale = timedelta(seconds=3 * settings.HITL_HEARTBEAT_SECONDS + 5)
    Heartbeat.objects.create(name="emergency", last_seen=now - stale)
    body = APIClient().get("/api/v1/health").json()
    assert body["status"] == "degraded" and len(body["problems"]) == 1
    assert "emergency queue" in body["problems"][0] and "worker consuming that queue" in body["problems"][0]


def test_health_reports_redis(settings):
    client = APIClient()
    body = client.get("/api/v1/health").json()
    assert body["redis"] == ("ok" if os.environ.get("REDIS_URL") else "not used")
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    r = client.get("/api/v1/health")
    assert r.status_code == 200 and r.json()["redis"] == "unreachable"  # decisions go on without Redis


def test_health_is_503_when_the_database_does_not_answer(monkeypatch):
    from django.db import OperationalError

    def refuse(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(connection, "ensure_connection", refuse)
    if getattr(connection, "pool", None) is not None:  # PostgreSQL: the health check's own pooled connection
        from psycopg_pool import PoolTimeout

        def no_connection(*args, **kwargs):
            raise PoolTimeout("couldn't get a connection after 3.00 sec")

        monkeypatch.setattr(connection.pool, "connection", no_connection)
    r = APIClient().get("/api/v1/health")
    assert r.status_code == 503
    assert r.json()["error"] == "unavailable" and r.json()["database"] == "unreachable"


@pytest.mark.postgres
def test_health_is_503_in_time_when_the_database_connection_stalls(monkeypatch, settings):
    """A connection that stalls without refusing (a network partition, a hung server) held the
    health check for good: HITL_HEALTH_DB_TIMEOUT bounded only the wait for a pooled connection."""
    import contextlib

    stalled, released = threading.Event(), threading.Event()

    class Stalled:
        autocommit = True

        def execute(self, *args, **kwargs):
            stalled.set()
            released.wait(30)
            raise AssertionError("the health check did not wait for this")

    @contextlib.contextmanager
    def stalled_connection(*args, **kwargs):
        yield Stalled()

    settings.HITL_HEALTH_DB_TIMEOUT = 0.5
    monkeypatch.setattr(connection.pool, "connection", stalled_connection)
    try:  # without its own bound it waits for the read (which here gives up after 30 s with an error: a 500)
        r = APIClient().get("/api/v1/health")
        assert stalled.is_set() and r.status_code == 503 and r.json()["database"] == "unreachable", r.content
    finally:
        released.set()


def test_beat_schedule_runs_the_heartbeat_on_both_queues():
    entry = settings.CELERY_BEAT_SCHEDULE["core-heartbeat"]
    assert entry["task"] == heartbeat_task.name == "core.heartbeat"
    assert entry["schedule"].total_seconds() == settings.HITL_HEARTBEAT_SECONDS
    emergency = settings.CELERY_BEAT_SCHEDULE["core-heartbeat-emergency"]
    assert emergency["task"] == "core.heartbeat" and emergency["kwargs"] == {"name": "emergency"}
    assert emergency["options"]["queue"] == "emergency"
    assert emergency["schedule"].total_seconds() == settings.HITL_HEARTBEAT_SECONDS


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_runs_a_task_sent_through_the_configured_broker(settings, tmp_path):
    """Not eager: the task goes through the broker (Redis in CI, the filesystem broker on the
    embedded default) and a worker thread consumes it."""
    from celery.contrib.testing.worker import start_worker

    from botarmy_hitl.celery import app

    settings.CELERY_TASK_ALWAYS_EAGER = False
    app.conf.task_always_eager = False
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10,
                          loglevel="WARNING"):
            heartbeat_task.apply_async()
            for _ in range(100):
                if Heartbeat.objects.filter(name="beat").exists():
                    break
                threading.Event().wait(0.1)
    finally:
        app.conf.task_always_eager = True
        connections.close_all()
    assert Heartbeat.objects.filter(name="beat").exists()


@pytest.mark.redis
def test_redis_channel_layer_round_trip(settings):
    from channels.layers import get_channel_layer

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [os.environ["REDIS_URL"]]}}}
    layer = get_channel_layer()

    async def round_trip():
        channel = await layer.new_channel()
        await layer.group_add("events.project.test", channel)
        await layer.group_send("events.project.test", {"type": "hitl.event", "event": {"id": 1}})
        message = await layer.receive(channel)
        await layer.group_discard("events.project.test", channel)
        return message

    assert async_to_sync(round_trip)() == {"type": "hitl.event", "event": {"id": 1}}


@pytest.mark.parametrize("version", ["x\ny", "x\r", "x\x00", "2.0"])
def test_the_schema_does_not_take_a_version_from_its_query_string(version):
    """``?version=x%0Ay`` was a 500 (copied into the Content-Disposition header), ``x%00`` a
    malformed answer, and any other value was written into the schema's info.version."""
    r = APIClient().get("/api/schema/", {"version": version}, HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert r.status_code == 200
    assert r["Content-Disposition"] == 'inline; filename="BotArmy HITL API.json"'
    assert r.json()["info"]["version"] == "1.0.0"


def test_openapi_schema_documents_the_endpoints():
    r = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert r.status_code == 200
    schema = r.json()
    paths = schema["paths"]
    for path in ["/api/v1/projects", "/api/v1/projects/{project_id}", "/api/v1/tasks", "/api/v1/tasks/{task_id}",
                 "/api/v1/tasks/{task_id}/status", "/api/v1/events", "/api/v1/agent-approvals",
                 "/api/v1/agent-approvals/{approval_id}", "/api/v1/agent-approvals/{approval_id}/respond",
                 "/api/v1/agent-approvals/{approval_id}/start", "/api/v1/agent-approvals/{approval_id}/cancel",
                 "/api/v1/agent-approvals/{approval_id}/wait", "/api/v1/agent-approvals/project/{project_id}"]:
        assert path in paths, path
    create = paths["/api/v1/tasks"]["post"]
    assert set(create["responses"]) >= {"201", "400", "401", "403", "404", "423"}
    body = schema["components"]["schemas"]["TaskCreateInputRequest"]
    assert set(body["required"]) == {"project_id", "agent_type", "title"}
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


def test_swagger_ui_is_served_without_a_cdn():
    client = APIClient()
    r = client.get("/api/docs/")
    assert r.status_code == 200
    html = r.content.decode()
    assert "cdn" not in html.lower() and "/static/drf_spectacular_sidecar/" in html
    # OPTIONS as Django's pages answer it (it was a 500: DRF's metadata answer had no template)
    r = client.options("/api/docs/")
    assert r.status_code == 200 and "GET" in r["Allow"] and not r.content


def test_unknown_api_path_is_json_404():
    r = APIClient().get("/api/v2/whatever")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_with_one_idempotency_key_create_one_task(project, agent, client_for):
    body = {"project_id": str(project.pk), "agent_type": "coder", "title": "once"}
    clients = [client_for(agent) for _ in range(10)]
    start = threading.Barrier(10)
    results = []

    def call(client):
        try:
            start.wait()
            r = client.post("/api/v1/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="same")
            results.append((r.status_code, r.json()["task_id"]))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=call, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 10 and {status for status, _ in results} == {201}
    assert len({task_id for _, task_id in results}) == 1
    assert Task.objects.filter(project=project).count() == 1


@pytest.mark.parametrize("pool_max, answer", [("1", "1 1"), ("0", "HITL_DB_POOL_MAX must be 1 or more (it is 0).")])
def test_a_small_database_pool_is_taken_or_refused_with_a_clear_message(pool_max, answer):
    """A pool maximum under the default minimum (2) used to make every request a 500 (psycopg
    refuses min_size > max_size): the minimum follows the maximum; a maximum under 1 is refused
    at start-up, naming the setting."""
    import subprocess
    import sys

    from django.conf import settings as django_settings

    code = ("import django; from django.conf import settings; django.setup(); "
            "pool = settings.DATABASES['default']['OPTIONS']['pool']; print(pool['min_size'], pool['max_size'])")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "botarmy_hitl.settings", "DJANGO_SECRET_KEY": "test",
           "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/nowhere", "HITL_DB_POOL_MAX": pool_max,
           "HITL_VAR_DIR": os.environ.get("HITL_VAR_DIR", str(django_settings.VAR_DIR))}
    done = subprocess.run([sys.executable, "-c", code], cwd=django_settings.BASE_DIR, env=env,
                          capture_output=True, text=True, timeout=60)
    assert answer in (done.stdout + done.stderr), done.stderr[-2000:]
    assert (done.returncode == 0) == (pool_max == "1")


@pytest.mark.parametrize("value, answer", [
    (None, "'-c lock_timeout=10000'"), ("2.5", "'-c lock_timeout=2500'"), ("0", "None"),
    ("-1", "HITL_DB_LOCK_TIMEOUT must be 0 or more (it is -1)."),
])
def test_the_lock_timeout_is_a_connection_option_or_refused_with_a_clear_message(value, answer):
    import subprocess
    import sys

    from django.conf import settings as django_settings

    code = ("import django; from django.conf import settings; django.setup(); "
            "print(repr(settings.DATABASES['default']['OPTIONS'].get('options')))")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "botarmy_hitl.settings", "DJANGO_SECRET_KEY": "test",
           "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/nowhere",
           "HITL_VAR_DIR": os.environ.get("HITL_VAR_DIR", str(django_settings.VAR_DIR))}
    env.pop("HITL_DB_LOCK_TIMEOUT", None)
    if value is not None:
        env["HITL_DB_LOCK_TIMEOUT"] = value
    done = subprocess.run([sys.executable, "-c", code], cwd=django_settings.BASE_DIR, env=env,
                          capture_output=True, text=True, timeout=60)
    assert answer in (done.stdout + done.stderr), done.stderr[-2000:]
    assert (done.returncode == 0) == (value != "-1")


def test_a_hung_redis_broker_holds_a_task_hand_over_for_seconds_not_for_ever():
    import subprocess
    import sys

    from django.conf import settings as django_settings

    code = ("import django; from django.conf import settings as s; django.setup(); "
            "o = s.CELERY_BROKER_TRANSPORT_OPTIONS; "
            "print(o['socket_timeout'], o['socket_connect_timeout'], s.CELERY_BROKER_CONNECTION_TIMEOUT, "
            "s.CELERY_TASK_PUBLISH_RETRY_POLICY['max_retries'])")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "botarmy_hitl.settings", "DJANGO_SECRET_KEY": "test",
           "REDIS_URL": "redis://127.0.0.1:6379/15", "CELERY_BROKER_URL": "",
           "HITL_VAR_DIR": os.environ.get("HITL_VAR_DIR", str(django_settings.VAR_DIR))}
    env.pop("CELERY_BROKER_URL")
    env.pop("HITL_BROKER_SOCKET_TIMEOUT", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=django_settings.BASE_DIR, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["2.0", "2.0", "2.0", "1"], done.stderr[-2000:]


def test_behind_an_https_proxy_requests_are_secure_and_cookies_https_only():
    import subprocess
    import sys

    from django.conf import settings as django_settings

    code = ("import django; from django.conf import settings as s; django.setup(); "
            "print(s.SECURE_PROXY_SSL_HEADER, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS)")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "botarmy_hitl.settings", "DJANGO_SECRET_KEY": "test",
           "DATABASE_URL": "", "REDIS_URL": "", "HITL_BEHIND_HTTPS_PROXY": "1", "HITL_HSTS_SECONDS": "3600",
           "HITL_VAR_DIR": os.environ.get("HITL_VAR_DIR", str(django_settings.VAR_DIR))}
    done = subprocess.run([sys.executable, "-c", code], cwd=django_settings.BASE_DIR, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["('HTTP_X_FORWARDED_PROTO',", "'https')", "True", "True", "3600"], done.stderr


@pytest.mark.django_db(transaction=True)  # the health check reads on a pooled connection of its own
def test_health_names_migrations_not_applied_and_a_schema_behind_the_code_is_503_not_500(monkeypatch):
    """Found by an operator's upgrade: the new version started before `migrate` answered every write
    500 ("column open_questions does not exist") while the health check said ok; on a database never
    migrated it said the database "does not answer"."""
    from django.db.migrations.recorder import MigrationRecorder

    from core import views

    monkeypatch.setattr(views, "_SCHEMA", {"unapplied": None, "checked_at": 0.0})
    client = APIClient()
    body = client.get("/api/v1/health").json()
    assert not any("migration" in p for p in body["problems"]), body
    last = MigrationRecorder(connection).applied_migrations()
    app, name = max(key for key in last if key[0] == "projects")
    MigrationRecorder(connection).record_unapplied(app, name)    # as a database one version behind
    try:
        monkeypatch.setattr(views, "_SCHEMA", {"unapplied": None, "checked_at": 0.0})
        r = client.get("/api/v1/health")
        assert r.status_code == 200 and r.json()["status"] == "degraded", r.content
        assert f"1 migration of this version not applied ({app}.{name}): run `manage.py migrate`" in \
            " ".join(r.json()["problems"]), r.json()
    finally:
        MigrationRecorder(connection).record_applied(app, name)

    # a table the code reads is not there (a database never migrated): it answers, without the schema
    def no_table(*args, **kwargs):
        raise views.OperationalError("no such table: core_heartbeat")

    monkeypatch.setattr(views, "_heartbeats", no_table)
    r = client.get("/api/v1/health")
    assert r.status_code == 503 and "has not been migrated to this version" in r.json()["detail"], r.content
    assert r.json()["database"] == connection.vendor


@pytest.mark.django_db(transaction=True)
def test_a_write_on_a_schema_behind_the_code_is_503_and_changes_nothing(project, agent):
    """A column the code writes is missing (the new version before `migrate`): 503 in the API's error
    shape, naming the fix, instead of a 500."""
    from access.services import api_key_create

    key = api_key_create(user=agent, name="schema")[1]
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE projects_task RENAME COLUMN open_questions TO open_questions_old")
    try:
        r = APIClient().post("/api/v1/tasks", {"project_id": str(project.pk), "agent_type": "coder", "title": "x"},
                             format="json", HTTP_AUTHORIZATION=f"Bearer {key}")
        assert r.status_code == 503 and r.json()["error"] == "unavailable", r.content
        assert "schema is behind this version of the server (run `manage.py migrate`)" in r.json()["detail"]
        assert r["Retry-After"]
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE projects_task RENAME COLUMN open_questions_old TO open_questions")
    assert not Task.objects.filter(project=project, title="x").exists()


def test_more_web_threads_than_pooled_connections_is_named_by_the_checks(settings, monkeypatch):
    """An operator set HITL_WEB_THREADS=30 with a pool of 20: nothing said so, and the threads past
    the pool waited for connections until their requests ended 503 under load."""
    from django.core import checks

    from core.checks import web_threads_check

    options = {**settings.DATABASES["default"].get("OPTIONS", {}), "pool": {"min_size": 2, "max_size": 20, "timeout": 30}}
    monkeypatch.setitem(settings.DATABASES["default"], "OPTIONS", options)  # read by the check only
    settings.HITL_WEB_THREADS = 30
    found = web_threads_check()
    assert [m.id for m in found] == ["core.W001"] and "HITL_WEB_THREADS (30) is above HITL_DB_POOL_MAX (20)" in found[0].msg
    assert found[0].level == checks.WARNING  # said at every start; the process still starts
    settings.HITL_WEB_THREADS = 20
    assert web_threads_check() == []
