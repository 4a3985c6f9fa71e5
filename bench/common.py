"""Pieces the benchmarks in this folder share.

Imported as ``from common import ...``: running ``python bench/x.py`` puts this folder on sys.path.
Every script still inserts the project's root (ROOT) itself, before Django is imported.

  percentile, latency_summary   statistics of a list of milliseconds
  Client                        a keep-alive HTTP client that authenticates with a Bearer API key
  free_port                     a free TCP port on 127.0.0.1
  arm_traceback_dump            dump every thread's stack after $BENCH_DUMP_AFTER seconds
  arm_deadline                  after N seconds: kill the servers this run started, print a JSON error, exit 2
  bench_defaults                the environment a benchmark runs in (secret, hosts, throwaway SQLite)
  backend_description           which database and channel layer the environment selects
  setup_django, migrate         django.setup() on the project's settings, and the migrations
  run_stamp, set_large_budget   unique names per run, and budget limits the run cannot reach
  agent_and_reviewer_fixtures   a project with an agent, a reviewer, their keys and N tasks
  approval_request_body         the body of POST /api/v1/agent-approvals for one task
  daphne_server                 the real server in a subprocess, its stderr in a temp file
"""
import faulthandler
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LARGE_TOKENS = 10**12
LARGE_COST = Decimal("1000000")


# --- statistics -------------------------------------------------------------------------------

def percentile(values, p):
    """The p-th percentile of ``values`` (nearest rank, rounded to 2 places), None when empty."""
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))], 2)


def latency_summary(values, *points):
    """{"p50": ..., "p99": ..., "max": ...} for the given percentile points, then the maximum."""
    summary = {f"p{p}": percentile(values, p) for p in points}
    summary["max"] = round(max(values), 2) if values else None
    return summary


# --- HTTP -------------------------------------------------------------------------------------

class Client:
    """One keep-alive connection to the server on 127.0.0.1:``port``, authenticated by API ``key``.

    ``call`` sends JSON and returns (status, decoded JSON body or None when empty). A dropped
    connection is reopened and the request sent once more; a second failure raises. With
    ``text_fallback`` a body that is not JSON comes back as its first 500 characters instead of
    raising ValueError.
    """

    def __init__(self, port, key, text_fallback=False):
        self.port, self.key = port, key
        self.text_fallback = text_fallback
        self.conn = None
        self.retry_after = None  # the Retry-After header of the last answer, if any

    def call(self, method, path, body=None, timeout=75, retry=True):
        """With ``retry=False`` a dropped connection raises at once (a burst counts it)."""
        for attempt in range(2 if retry else 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                headers = {"Authorization": f"Bearer {self.key}", "Host": "localhost"}
                payload = None
                if body is not None:
                    payload = json.dumps(body)
                    headers["Content-Type"] = "application/json"
                self.conn.request(method, path, body=payload, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
                self.retry_after = response.getheader("Retry-After")
                return response.status, self._decode(data)
            except (ConnectionError, http.client.HTTPException, socket.timeout):
                self.conn.close()
                self.conn = None
                if attempt or not retry:
                    raise
        raise RuntimeError("unreachable")

    def _decode(self, data):
        try:
            return json.loads(data) if data else None
        except ValueError:
            if not self.text_fallback:
                raise
            return data[:500].decode(errors="replace")


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on at the moment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- environment and Django -------------------------------------------------------------------

def arm_traceback_dump():
    """Dump every thread's traceback to stderr after $BENCH_DUMP_AFTER seconds (default: never)."""
    faulthandler.dump_traceback_later(int(os.environ.get("BENCH_DUMP_AFTER", "0")) or 10**6)


_SERVERS: list = []  # how to kill each server this run started (callables), for the deadline


def arm_deadline(seconds: float, name: str):
    """The run's deadline: if it is still running after ``seconds``, every server it started is
    killed (SIGKILL), ``{"benchmark": name, "error": "deadline", ...}`` is printed and the process
    exits with code 2, whatever its threads are waiting for."""
    import threading

    def expire():
        for kill in list(_SERVERS):
            try:
                kill()
            except OSError:
                pass
        print(json.dumps({"benchmark": name, "error": "deadline",
                          "detail": f"the run did not finish within {seconds} s; its servers were killed"}),
              flush=True)
        os._exit(2)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def bench_defaults():
    """Settings the benchmarks need unless the environment gives them.

    Without DATABASE_URL the project uses SQLite in $HITL_VAR_DIR: point that at a fresh
    temporary folder so that every run starts from an empty database.
    """
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only")
    os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1")
    if not os.environ.get("DATABASE_URL"):
        os.environ["HITL_VAR_DIR"] = tempfile.mkdtemp(prefix="hitl-bench-")


def backend_description():
    """{"database": ..., "channel_layer": ...} as the environment selects them, for the report."""
    return {
        "database": "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite",
        "channel_layer": "redis" if os.environ.get("REDIS_URL") else "in-memory",
    }


def setup_django():
    """django.setup() on the project's settings (ROOT must be on sys.path already)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botarmy_hitl.settings")
    django.setup()


def database_reachable_or_exit():
    """Before the first query: when DATABASE_URL names a PostgreSQL database that cannot be
    reached (no server, no such database, refused), print ``{"benchmark": ..., "error":
    "database", "detail": ...}`` and exit 2 at once, instead of a traceback after the
    connection pool's 30 s timeout."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        return
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        name = os.path.splitext(os.path.basename(sys.argv[0]))[0] or "bench"
        print(json.dumps({"benchmark": name, "error": "database",
                          "detail": f"cannot connect to DATABASE_URL: {str(exc).strip()}"}), flush=True)
        sys.exit(2)


def migrate():
    """Apply every migration to the configured database, quietly (exits with a JSON error when
    the database cannot be reached)."""
    from django.core.management import call_command

    database_reachable_or_exit()
    call_command("migrate", verbosity=0)


# --- fixtures ---------------------------------------------------------------------------------

def run_stamp():
    """Milliseconds since the epoch, as text: makes this run's usernames and slugs unique."""
    return str(int(time.time() * 1000))


def set_large_budget(project, **limits):
    """Give ``project`` budget limits far above what a run needs; ``limits`` replace single ones."""
    from budgets.models import ProjectBudget

    ProjectBudget.objects.update_or_create(project=project, defaults={
        "daily_token_limit": LARGE_TOKENS, "monthly_token_limit": LARGE_TOKENS,
        "daily_cost_limit": LARGE_COST, "monthly_cost_limit": LARGE_COST, **limits})


def bench_project(name="Bench", slug="bench"):
    """Set up Django, migrate, and write straight to the database: an admin, a project
    ``"{name} {stamp}"`` (slug ``"{slug}-{stamp}"``) with a large budget, and an agent and a
    reviewer with their roles on it. Returns (admin, project, agent, reviewer, stamp)."""
    setup_django()
    from django.contrib.auth import get_user_model

    from access.services import role_grant
    from projects.services import project_create

    migrate()
    User = get_user_model()
    stamp = run_stamp()
    admin = User.objects.create_superuser(username=f"{slug}-admin-{stamp}", password="x", email="b@example.com")
    project = project_create(actor=admin, name=f"{name} {stamp}", slug=f"{slug}-{stamp}")
    # Limits far above what the run needs: this measures approvals, not budget blocks.
    set_large_budget(project)
    agent = User.objects.create_user(username=f"{slug}-agent-{stamp}")
    role_grant(user=agent, project=project, role="agent")
    reviewer = User.objects.create_user(username=f"{slug}-reviewer-{stamp}")
    role_grant(user=reviewer, project=project, role="reviewer")
    return admin, project, agent, reviewer, stamp


def agent_and_reviewer_fixtures(n_tasks, name="Bench", slug="bench"):
    """Set up Django, migrate, and write straight to the database: an admin, a project
    ``"{name} {stamp}"`` (slug ``"{slug}-{stamp}"``) with a large budget, an agent and a reviewer
    with their roles on it, and ``n_tasks`` tasks created by the agent.

    Returns (project_id, [task_id, ...], agent_key, reviewer_key), ids as text.
    """
    _admin, project, agent, reviewer, _stamp = bench_project(name, slug)
    from access.services import api_key_create
    from projects.services import task_create

    tasks = [task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"bench {i}").pk
             for i in range(n_tasks)]
    return (str(project.pk), [str(t) for t in tasks], api_key_create(user=agent)[1],
            api_key_create(user=reviewer)[1])


def approval_request_body(project_id, task_id):
    """The body of POST /api/v1/agent-approvals: one coder call on ``task_id``, small estimate."""
    return {"project_id": project_id, "task_id": task_id, "agent_type": "coder",
            "proposed_action": "Implement the feature described in the task", "input_data": {"task": task_id},
            "estimated_tokens": 1200, "estimated_cost": "0.0100"}


# --- the server -------------------------------------------------------------------------------

@contextmanager
def daphne_server(port, key):
    """Run the project under daphne on 127.0.0.1:``port`` with this process's environment.

    Waits until GET /api/v1/health answers 200 (as ``key``), about 20 s at most, else exits with
    the end of the server's stderr. Yields (server Popen, path of its stderr log); on leaving,
    terminates the server. The log is a temp file (a pipe nobody reads could fill up and block
    the server) and is left on disk: the caller reads and removes it.
    """
    stderr_file = tempfile.NamedTemporaryFile(prefix="hitl-bench-daphne-", suffix=".log", delete=False)
    server = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                               "botarmy_hitl.asgi:application"], cwd=ROOT, env=os.environ.copy(),
                              stdout=subprocess.DEVNULL, stderr=stderr_file)
    _SERVERS.append(server.kill)
    try:
        for _ in range(100):
            try:
                if Client(port, key, text_fallback=True).call("GET", "/api/v1/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit("server did not start: " + Path(stderr_file.name).read_text()[-2000:])
        yield server, stderr_file.name
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:  # never leave a daphne behind
            server.kill()
            server.wait(timeout=20)
        _SERVERS.remove(server.kill)
        stderr_file.close()
