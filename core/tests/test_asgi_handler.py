"""core/asgi.py's OneHopASGIHandler, through a real daphne serving botarmy_hitl.asgi:application
(and, for the saturation, queue and pool tests, through uvicorn too: bin/serve --server uvicorn).

Each test starts its own daphne (its settings come from the environment: HITL_WEB_THREADS,
HITL_QUEUE_TIMEOUT_SECONDS, HITL_DB_POOL_MAX...) against the rows the test made:

- PostgreSQL: the server uses the test database itself (a transactional test commits its rows,
  so another process sees them).
- SQLite: pytest-django's test database lives in memory, where no other process can see it;
  the fixture copies it (with its committed rows) to a file that the server then uses.

Every server is stopped (terminate, then kill after a grace period) when its test ends, before
the test database is flushed.
"""
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.db import connection

from access.services import api_key_create
from core.tests.daphne import free_port, stop, wait_until_healthy, wait_until_listening

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE_TIMEOUT = 0.5  # HITL_QUEUE_TIMEOUT_SECONDS of the saturation test's server
SERVER_APP_NAME = "hitl-asgi-handler-test"
RETRY_AFTER = 3  # HITL_RETRY_AFTER_SECONDS of every server here (not the default 1, to see it is used)


def _on_postgres() -> bool:
    return connection.vendor == "postgresql"


def _server_database_env(tmp_path) -> dict:
    """The environment that points a server process at this test's database."""
    if _on_postgres():
        name = connection.settings_dict["NAME"]  # the test database (test_<name>)
        parts = urlsplit(os.environ["DATABASE_URL"])
        return {"DATABASE_URL": urlunsplit(parts._replace(path="/" + quote(name)))}
    # SQLite: a file copy of the in-memory test database, its committed rows included.
    path = tmp_path / "server.sqlite3"
    connection.ensure_connection()
    target = sqlite3.connect(path)
    try:
        connection.connection.backup(target)
        target.execute("PRAGMA journal_mode=WAL")  # what the server's init_command sets, once and for all
    finally:
        target.close()
    return {"DATABASE_URL": "", "SQLITE_PATH": str(path)}


class Server:
    def __init__(self, port: int, proc: subprocess.Popen, log_path, db_env: dict):
        self.port, self.proc, self.log_path, self.db_env = port, proc, log_path, db_env

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def request(self, method, path, *, key=None, body=None, timeout=20.0):
        """(status, headers {lower name: value}, body bytes, seconds). A dropped connection raises."""
        headers = {"Accept": "application/json"} if path.startswith("/api/") else {}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        started = time.monotonic()
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            content = response.read()
            return (response.status, {k.lower(): v for k, v in response.getheaders()}, content,
                    time.monotonic() - started)
        finally:
            conn.close()


@pytest.fixture
def serve(tmp_path, transactional_db):
    """``serve(daphne_args=(), server="daphne", **env)``: a running daphne (or ``server="uvicorn"``:
    ``bin/serve --server uvicorn`` with one worker) with these extra environment variables."""
    started: list[Server] = []

    def start(daphne_args=(), server="daphne", **extra_env) -> Server:
        port = free_port()
        db_env = _server_database_env(tmp_path)
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "botarmy_hitl.settings", "REDIS_URL": "",
               "HITL_VAR_DIR": str(tmp_path / "var"), "DJANGO_SECRET_KEY": settings.SECRET_KEY, "DJANGO_DEBUG": "0",
               "DJANGO_ALLOWED_HOSTS": "127.0.0.1", "HITL_RETRY_AFTER_SECONDS": str(RETRY_AFTER),
               "PGAPPNAME": SERVER_APP_NAME,  # libpq: the server's connections, in pg_stat_activity
               **db_env, **{k: str(v) for k, v in extra_env.items()}}
        log_path = tmp_path / f"daphne-{port}.log"
        if server == "uvicorn":
            env["HITL_SERVE_GRACE"] = "5"
            command = [sys.executable, str(settings.BASE_DIR / "bin" / "serve"), "--server", "uvicorn",
                       "--workers", "1", "--port", str(port)]
        else:
            command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), *daphne_args,
                       "botarmy_hitl.asgi:application"]
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(command, cwd=settings.BASE_DIR, env=env, stdout=log_file,
                                    stderr=subprocess.STDOUT)
        server = Server(port, proc, log_path, db_env)
        started.append(server)
        wait_until_listening(proc, port, server.log)
        if command[1].endswith("serve"):
            wait_until_healthy(proc, port, server.log)
        return server

    try:
        yield start
    finally:
        for server in started:
            stop(server.proc)


@pytest.fixture
def agent_key(agent):
    return api_key_create(user=agent, name="daphne")[1]


def assert_json(status_headers_body, status: int) -> dict:
    status_got, headers, body, _ = status_headers_body
    assert status_got == status, (status_got, body[:500])
    assert headers.get("content-type", "").split(";")[0] == "application/json", headers
    return json.loads(body)


def assert_unavailable(result, *, api=True):
    status, headers, body, seconds = result
    assert status == 503, (status, body[:500])
    assert headers.get("retry-after") == str(RETRY_AFTER), headers
    if api:
        assert headers.get("content-type", "").split(";")[0] == "application/json", headers
        payload = json.loads(body)
        assert payload["error"] == "unavailable" and payload["detail"], payload
    else:
        assert headers.get("content-type", "").split(";")[0] == "text/plain", headers
    # It waited its turn for the queue timeout, no more (the slot never came free).
    assert QUEUE_TIMEOUT * 0.8 <= seconds < QUEUE_TIMEOUT + 5, seconds


# --- saturation: a 503 with Retry-After instead of an unbounded queue ----------------------
class _Lock:
    """Holds the lock that task creation needs, from this process, until ``release()``:
    PostgreSQL: the project's row (``SELECT ... FOR UPDATE``), which task_create locks first;
    SQLite: the database's write lock (``BEGIN IMMEDIATE``), which every write transaction takes."""

    def __init__(self, server: Server, project):
        if _on_postgres():
            import psycopg

            params = connection.settings_dict
            self.conn = psycopg.connect(dbname=params["NAME"], user=params["USER"] or None,
                                        password=params["PASSWORD"] or None, host=params["HOST"] or None,
                                        port=params["PORT"] or None, autocommit=False)
            self.conn.execute(f"SELECT id FROM {project._meta.db_table} WHERE id = %s FOR UPDATE", [project.pk])
        else:
            self.conn = sqlite3.connect(server.db_env["SQLITE_PATH"], isolation_level=None, timeout=10)
            self.conn.execute("BEGIN IMMEDIATE")

    def server_waits_for_it(self, timeout=10.0) -> bool:
        """PostgreSQL: True once another backend waits for the row lock. SQLite cannot tell:
        True (the caller then probes until the slot is taken)."""
        if not _on_postgres():
            return True
        deadline = time.monotonic() + timeout
        with self.conn.cursor() as cursor:  # pg_stat_activity is not transactional: fresh on every read
            while time.monotonic() < deadline:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                               "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'")
                if cursor.fetchone()[0]:
                    return True
                time.sleep(0.05)
        return False

    def release(self):
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()
            self.conn = None


def _blocked_task_creation(project):
    return {"project_id": str(project.pk), "agent_type": "coder", "title": "blocked"}


def _first_probe_once_saturated(server: Server, lock: _Lock, path: str, key: str):
    """The answer to a GET of ``path`` sent once the blocked request holds the only thread.
    PostgreSQL: sent once the server waits for the row lock. SQLite: probes until one is not a
    200 (a 200 means the blocked request had not reached the thread yet)."""
    assert lock.server_waits_for_it(), server.log()
    deadline = time.monotonic() + 10
    while True:
        result = server.request("GET", path, key=key)
        if result[0] != 200 or _on_postgres() or time.monotonic() > deadline:
            return result


@pytest.mark.parametrize("server_name", ["daphne", "uvicorn"])
def test_a_saturated_server_answers_503_with_retry_after_then_recovers(server_name, serve, project, agent,
                                                                       agent_key):
    server = serve(server=server_name, HITL_WEB_THREADS=1, HITL_QUEUE_TIMEOUT_SECONDS=QUEUE_TIMEOUT)
    detail = f"/api/v1/projects/{project.pk}"
    assert_json(server.request("GET", detail, key=agent_key), 200)  # warm: connection, key's last use

    lock = _Lock(server, project)
    pool = ThreadPoolExecutor(max_workers=8)
    try:
        # The only thread: a task creation that waits for the lock this test holds.
        blocked = pool.submit(server.request, "POST", "/api/v1/tasks", key=agent_key,
                              body=_blocked_task_creation(project))
        # A concurrent API request: no thread within the queue timeout, so 503 unavailable.
        assert_unavailable(_first_probe_once_saturated(server, lock, detail, agent_key))
        assert not blocked.done(), blocked.result()

        # Several at once: each is a 503 in API.md's shape (never a 500, never a dropped connection).
        burst = [pool.submit(server.request, "GET", detail, key=agent_key) for _ in range(5)]
        burst.append(pool.submit(server.request, "GET", "/api/v1/projects", key=agent_key))
        for future in burst:
            assert_unavailable(future.result(30))
        # A page outside the API: the same 503 and Retry-After, in plain text.
        assert_unavailable(server.request("GET", "/admin/login/"), api=False)
        # The health check has a thread of its own: a monitor still hears the database answer
        # (it was a 503 "saturated", read as the node being down, while a lock held every thread).
        health = assert_json(server.request("GET", "/api/v1/health"), 200)
        assert health["database"] == connection.vendor, health
        # The long poll and the events feed hold no request thread: they are still served.
        feed = assert_json(server.request("GET", f"/api/v1/events?project_id={project.pk}", key=agent_key), 200)
        assert feed["has_more"] is False
        assert not blocked.done(), blocked.result()
    finally:
        lock.release()
        pool.shutdown(wait=True)

    # The load has passed: the request that held the thread is answered, then everything is 200.
    created = assert_json(blocked.result(30), 201)
    assert created["title"] == "blocked"
    for _ in range(5):
        assert_json(server.request("GET", detail, key=agent_key), 200)
    assert assert_json(server.request("GET", f"/api/v1/tasks/{created['task_id']}", key=agent_key),
                       200)["task_id"] == created["task_id"]
    assert server.proc.poll() is None, server.log()
    assert "Traceback" not in server.log(), server.log()


def test_a_client_that_gives_up_does_not_free_the_busy_thread_for_others(serve, project, agent_key):
    """A client gives up on a request that holds the only thread (it disconnects; daphne kills
    the application after --application-close-timeout). The thread is still busy: the next request
    must still get its 503 within the queue timeout, not wait behind it."""
    server = serve(daphne_args=["--application-close-timeout", "1"], HITL_WEB_THREADS=1,
                   HITL_QUEUE_TIMEOUT_SECONDS=QUEUE_TIMEOUT)
    detail = f"/api/v1/projects/{project.pk}"
    assert_json(server.request("GET", detail, key=agent_key), 200)
    lock = _Lock(server, project)
    try:
        body = json.dumps(_blocked_task_creation(project)).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as gone:
            gone.sendall(b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + agent_key.encode() + b"\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            assert_unavailable(_first_probe_once_saturated(server, lock, detail, agent_key))
        # The client has gone away while its request holds the thread.
        deadline = time.monotonic() + 10
        while "took too long to shut down and was killed" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        try:
            after = server.request("GET", detail, key=agent_key, timeout=QUEUE_TIMEOUT + 4)
        except TimeoutError:
            raise AssertionError("the request hung behind the busy thread instead of a 503") from None
        assert_unavailable(after)
    finally:
        lock.release()


@pytest.mark.parametrize("server_name", ["daphne", "uvicorn"])
def test_requests_queue_for_a_thread_within_the_queue_timeout(server_name, serve, project, agent_key):
    """More concurrent requests than threads, each quicker than the queue timeout: they wait
    their turn and are all answered 200 (the 503 is for a saturated server, not for a queue)."""
    server = serve(server=server_name, HITL_WEB_THREADS=1, HITL_QUEUE_TIMEOUT_SECONDS=20)
    detail = f"/api/v1/projects/{project.pk}"
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda _: server.request("GET", detail, key=agent_key), range(30)))
    assert [r[0] for r in results] == [200] * 30, [(r[0], r[2][:200]) for r in results if r[0] != 200]


# --- database connections go back to the pool ----------------------------------------------
@pytest.mark.postgres
@pytest.mark.parametrize("server_name", ["daphne", "uvicorn"])
def test_every_request_hands_its_connection_back_to_the_pool(server_name, serve, project, agent_key):
    """A pool of 2 connections: 50 requests in a row, then concurrent ones spread over 4 threads
    (more threads than connections), are all 200. A connection kept by a request (or by an
    idle thread) would leave the others waiting for the pool until they fail (503 after the
    2 s pool timeout)."""
    server = serve(server=server_name, HITL_DB_POOL_MIN=1, HITL_DB_POOL_MAX=2, HITL_DB_POOL_TIMEOUT=2,
                   HITL_WEB_THREADS=4, HITL_QUEUE_TIMEOUT_SECONDS=20)
    detail = f"/api/v1/projects/{project.pk}"
    statuses = [server.request("GET", detail, key=agent_key)[0] for _ in range(50)]
    assert statuses == [200] * 50, statuses

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: server.request("GET", detail, key=agent_key), range(60)))
    assert [r[0] for r in results] == [200] * 60, [(r[0], r[2][:200]) for r in results if r[0] != 200]

    # Nothing is left inside a transaction, and the server never had more than its 2 connections.
    with connection.cursor() as cursor:
        cursor.execute("SELECT state FROM pg_stat_activity WHERE datname = current_database() "
                       "AND application_name = %s", [SERVER_APP_NAME])
        states = [row[0] for row in cursor.fetchall()]
    assert 1 <= len(states) <= 2 and "idle in transaction" not in states, states
    assert "Traceback" not in server.log(), server.log()


# --- ordinary answers through the handler ----------------------------------------------------
def test_pages_and_api_answers_keep_their_status_and_content_type(serve, project, agent_key):
    server = serve(HITL_WEB_THREADS=2)

    status, headers, body, _ = server.request("GET", "/admin/login/")
    assert status == 200 and headers["content-type"].split(";")[0] == "text/html", (status, headers)
    assert b"<form" in body

    status, headers, _, _ = server.request("GET", "/")
    assert status == 302 and headers["location"] == "/admin/", (status, headers)

    status, headers, body, _ = server.request("GET", "/no-such-page")
    assert status == 404 and headers["content-type"].split(";")[0] == "text/html", (status, headers, body[:200])

    assert assert_json(server.request("GET", "/api/v1/no-such-endpoint"), 404)["error"] == "not_found"
    assert assert_json(server.request("GET", "/api/v1/no-such-endpoint", key=agent_key), 404)["error"] == \
        "not_found"
    assert assert_json(server.request("GET", "/api/v1/tasks/00000000-0000-0000-0000-000000000000",
                                      key=agent_key), 404)["error"] == "not_found"
    assert assert_json(server.request("GET", "/api/v1/projects"), 401)["error"] == "unauthenticated"
    # A base URL ending in a slash (`//api/...`), or a request line without its slash: JSON too (it
    # was Django's HTML 404, which a JSON client cannot read).
    for method, path in (("POST", "//api/v1/tasks"), ("GET", "//api/v1/health"), ("GET", "api/v1/projects")):
        answer = server.request(method, path, key=agent_key, body={"project_id": str(project.pk),
                                                                    "agent_type": "coder", "title": "doubled"})
        assert assert_json(answer, 404)["error"] == "not_found", (method, path)

    assert assert_json(server.request("GET", f"/api/v1/projects/{project.pk}", key=agent_key), 200)["id"] == \
        str(project.pk)
    # A request body reaches the view through the handler (and a write commits).
    created = assert_json(server.request("POST", "/api/v1/tasks", key=agent_key,
                                         body={"project_id": str(project.pk), "agent_type": "coder",
                                               "title": "through daphne"}), 201)
    assert assert_json(server.request("GET", f"/api/v1/tasks/{created['task_id']}", key=agent_key), 200)["title"] == \
        "through daphne"
    assert server.proc.poll() is None, server.log()


def test_the_events_feed_served_async_answers_as_the_view_does(serve, project, agent, agent_key, make_user,
                                                               client_for):
    """GET /api/v1/events is served by an async consumer (approvals.consumers.EventFeedConsumer)
    with the same answers as the DRF view (the test client's): pages, `after`, validation errors,
    404 for a project the user cannot see, 401 without a key; other methods still reach the view."""
    from events.services import event_emit
    from projects.services import project_create

    for i in range(5):
        event_emit(project_id=project.pk, event_type="agent_approval_requested", data={"n": i})
    admin = make_user("feed-admin", superuser=True)
    hidden = project_create(actor=admin, name="Hidden", slug="hidden")
    server = serve()
    view = client_for(agent)
    for query in (f"project_id={project.pk}", f"project_id={project.pk}&limit=2",
                  f"project_id={project.pk}&after=1&limit=3", f"project_id={project.pk}&limit=0",
                  "project_id=not-a-uuid", "", f"project_id={hidden.pk}", f"project_id={project.pk}&after=-1"):
        status, headers, body, _ = server.request("GET", f"/api/v1/events?{query}", key=agent_key)
        expected = view.get(f"/api/v1/events?{query}")
        assert status == expected.status_code, (query, body)
        assert headers["content-type"].startswith("application/json")
        assert json.loads(body) == expected.json(), query
    first = json.loads(server.request("GET", f"/api/v1/events?project_id={project.pk}&limit=2", key=agent_key)[2])
    assert len(first["results"]) == 2 and first["has_more"] is True
    status, headers, body, _ = server.request("GET", f"/api/v1/events?project_id={project.pk}")
    assert status == 401 and json.loads(body)["error"] == "unauthenticated" and "www-authenticate" in headers
    status, _, body, _ = server.request("POST", f"/api/v1/events?project_id={project.pk}", key=agent_key, body={})
    assert status == 405 and json.loads(body)["error"] == "method_not_allowed"


def _server_processes(pid: int) -> list[int]:
    """``pid`` and its descendants (bin/serve's workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def _largest_file_open_under(pids: list[int], directory) -> int:
    """The size of the largest file the processes hold open in ``directory`` (deleted ones too)."""
    largest = 0
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(directory)):
                    largest = max(largest, os.stat(f"/proc/{pid}/fd/{fd}").st_size)
            except OSError:
                continue
    return largest


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("server_name", ["daphne", "uvicorn"])
def test_a_huge_body_fills_no_disk_and_is_still_refused(server_name, chunked, serve, tmp_path, project, agent_key):
    """Twisted (under daphne) kept a request's whole body in a temporary file before the
    application saw it, and Django's body spooling did the same under uvicorn: one client's 40 MB
    (or endless) upload was 40 MB on the server's disk. Now at most the limit + 1 byte is kept; the
    rest is read and dropped, and the answer is the same 400."""
    scratch = tmp_path / "server-tmp"
    scratch.mkdir()
    server = serve(server=server_name, TMPDIR=str(scratch))
    limit, total, sent_first = settings.DATA_UPLOAD_MAX_MEMORY_SIZE, 40 * 2**20, 30 * 2**20
    head = (f"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {agent_key}\r\n"
            f"Content-Type: application/json\r\nAccept: application/json\r\n"
            + ("Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {total}\r\n") + "\r\n").encode()
    piece = b" " * 2**20

    def frame(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        for _ in range(sent_first // len(piece)):
            sock.sendall(frame(piece))
        held, deadline = 0, time.monotonic() + 1
        while time.monotonic() < deadline:  # the server reads what the socket buffers still hold
            held = max(held, _largest_file_open_under(_server_processes(server.proc.pid), scratch))
            time.sleep(0.05)
        for _ in range((total - sent_first) // len(piece)):
            sock.sendall(frame(piece))
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 20:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert held <= limit + 1, f"{held:,} bytes of the body kept on the server's disk"
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"400", answer[:500]
    assert b"larger than" in rest, answer[:500]
    # the server goes on serving
    assert_json(server.request("GET", f"/api/v1/projects/{project.pk}", key=agent_key), 200)
    assert "Traceback" not in server.log(), server.log()


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                total += next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total


@pytest.mark.parametrize("server_name", ["daphne", "uvicorn"])
def test_a_huge_body_sent_to_a_long_poll_is_not_kept_in_memory(server_name, serve, project, agent_key):
    """The long polls' consumers (paths ending in /wait) collect a body in memory before they
    refuse its method: under uvicorn, which streams it to them, a 40 MB POST was 40 MB of the
    web process's memory (any ``Bearer`` header will do, the key is checked after). Only the limit
    + 1 byte reaches them now."""
    server = serve(server=server_name)
    pids = _server_processes(server.proc.pid)
    total, piece = 40 * 2**20, b" " * 2**20
    path = f"/api/v1/agent-approvals/{project.pk}/wait"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        before = _rss(pids)
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer junk\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {total}\r\n\r\n".encode())
        grown = 0
        for _ in range(total // len(piece)):
            sock.sendall(piece)
            grown = max(grown, _rss(pids) - before)
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert grown < 20 * 2**20, f"the web process grew by {grown:,} bytes"
    assert answer.split(b"\r\n", 1)[0].split()[1] in (b"400", b"401", b"405"), answer[:300]
    assert "Traceback" not in server.log(), server.log()


@pytest.mark.parametrize("server_name", ["daphne", "uvicorn"])
def test_a_chunked_page_form_past_the_limit_is_refused_not_parsed_short(server_name, serve):
    """A multipart page form sent chunked, past the body limit: kept to the limit + 1 byte, it was
    parsed as a smaller form and acted on (a login succeeded, a decision was made). It gets the
    page's plain-text 400, as the same form with a Content-Length does."""
    server = serve(server=server_name)
    boundary = "hitlboundary"
    parts = [("username", "admin"), ("password", "nope"), ("pad", "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 4096))]
    body = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                   for name, value in parts).encode() + f"--{boundary}--\r\n".encode()
    conn = HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/admin/login/", body=(body[at:at + 65536] for at in range(0, len(body), 65536)),
                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                              "Transfer-Encoding": "chunked"}, encode_chunked=True)
        answer = conn.getresponse()
        status, text = answer.status, answer.read().decode(errors="replace")
    finally:
        conn.close()
    assert status == 400, (status, text[:500])
    assert text.startswith("The form sent is larger than this server takes"), text[:800]
