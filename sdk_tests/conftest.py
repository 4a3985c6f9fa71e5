"""The SDK against a real server: a daphne on a free port serving this test's database
(core/tests/test_asgi_handler.py's pattern: PostgreSQL serves the test database itself; SQLite
serves a file copy of the in-memory test database, made when the first server starts).

Everything the server must see from Django (users, roles, keys, the project) is made before
the server starts; the rest goes through the API, as an agent's would. A server can be
restarted on the same port and the same database (``world.restart()``)."""
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import pytest
from django.conf import settings
from django.db import connection

SDK_DIR = Path(__file__).resolve().parent.parent / "hitl_sdk"
if str(SDK_DIR) not in sys.path:  # the package itself, not the repository's hitl_sdk/ directory
    sys.path.insert(0, str(SDK_DIR))

from access.services import api_key_create  # noqa: E402
from core.tests.daphne import free_port, stop, wait_until_healthy, wait_until_listening  # noqa: E402
from core.tests.test_asgi_handler import _server_database_env  # noqa: E402
from hitl_sdk import HitlClient, RetryPolicy  # noqa: E402

FAST_RETRY = RetryPolicy(attempts=4, backoff_base=0.1, backoff_max=0.5, retry_after_max=2)


@dataclass
class World:
    tmp_path: Path
    port: int
    db_env: dict
    project_id: str
    keys: dict
    proc: Optional[subprocess.Popen] = None
    server: str = "daphne"  # or "uvicorn": bin/serve --server uvicorn (one worker)
    clients: List[HitlClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.tmp_path / f"daphne-{self.port}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def start(self) -> None:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "botarmy_hitl.settings",
               "REDIS_URL": os.environ.get("REDIS_URL", ""),  # the run's Redis, when it has one: pushes through it
               "HITL_VAR_DIR": str(self.tmp_path / "var"), "DJANGO_SECRET_KEY": settings.SECRET_KEY,
               "DJANGO_DEBUG": "0", "DJANGO_ALLOWED_HOSTS": "127.0.0.1", "HITL_RETRY_AFTER_SECONDS": "1",
               "HITL_WAIT_POLL_SECONDS": "0.5", "PGAPPNAME": "hitl-sdk-test", **self.db_env}
        if self.server == "uvicorn":
            command = [sys.executable, str(Path(settings.BASE_DIR) / "bin" / "serve"), "--server", "uvicorn",
                       "--workers", "1", "--port", str(self.port)]
            env["HITL_SERVE_GRACE"] = "5"
        else:
            command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                       "botarmy_hitl.asgi:application"]
        with open(self.tmp_path / f"daphne-{self.port}.log", "ab") as log_file:
            # Its own process group: a kill reaches bin/serve's worker too.
            self.proc = subprocess.Popen(command, cwd=settings.BASE_DIR, env=env, stdout=log_file,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_until_listening(self.proc, self.port, self.log)
        if self.server == "uvicorn":
            wait_until_healthy(self.proc, self.port, self.log)

    def stop(self, kill: bool = False) -> None:
        """Terminate (``kill``: SIGKILL, a crash) and wait for the process to end."""
        if self.proc is not None:
            if kill:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
            else:
                # bin/serve's worker needs up to HITL_SERVE_GRACE (5 s) to stop; daphne stops at once.
                stop(self.proc, grace=8 if self.server == "uvicorn" else 1)
                try:  # whatever of the group outlived its launcher (never a worker left holding connections)
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc = None

    def restart(self) -> None:
        """The same port, the same database (not a new copy)."""
        self.stop()
        self.start()

    def client(self, who: str, **kwargs) -> HitlClient:
        kwargs.setdefault("retry", FAST_RETRY)
        kwargs.setdefault("recheck_seconds", 2.0)
        made = HitlClient(self.url, self.keys[who], **kwargs)
        self.clients.append(made)
        return made

    def sql(self, statement: str, params=()) -> None:
        """Run a statement on the server's database (``%s`` placeholders)."""
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(statement, params)
            return
        db = sqlite3.connect(self.db_env["SQLITE_PATH"], timeout=10)
        try:
            db.execute(statement.replace("%s", "?"), params)
            db.commit()
        finally:
            db.close()

    def db_uuid(self, value: str):
        return value if connection.vendor == "postgresql" else uuid.UUID(value).hex

    def expire_approval(self, approval_id: str) -> None:
        """Move a call's deadline into the past (what beat or a waiter then times out)."""
        past = "2000-01-01 00:00:00+00:00" if connection.vendor == "postgresql" else "2000-01-01 00:00:00"
        self.sql("UPDATE approvals_agentcallapproval SET expires_at = %s WHERE id = %s",
                 (past, self.db_uuid(approval_id)))


@pytest.fixture
def world_server() -> str:
    """The server the ``world`` runs (a test module overrides it: sdk_tests/test_uvicorn.py)."""
    return "daphne"


@pytest.fixture
def world(tmp_path, transactional_db, project, agent, reviewer, manager, world_server):
    keys = {who: api_key_create(user=user, name="sdk-test")[1]
            for who, user in (("agent", agent), ("reviewer", reviewer), ("manager", manager))}
    w = World(tmp_path=tmp_path, port=free_port(), db_env=_server_database_env(tmp_path),
              project_id=str(project.pk), keys=keys, server=world_server)
    w.start()
    try:
        yield w
    finally:
        for made in w.clients:
            made.close()
        w.stop(kill=True)  # nothing of the server is needed any more: no graceful shutdown to wait for


class Bot(threading.Thread):
    """A reviewer in another thread: for each step, waits for a pending object of its kind
    (``agent`` or ``response``) it has not handled yet, then calls ``action(reviewer, obj)``."""

    def __init__(self, reviewer: HitlClient, project_id: str, steps: list, timeout: float = 40):
        super().__init__(daemon=True)
        self.reviewer, self.project_id, self.steps, self.timeout = reviewer, project_id, steps, timeout
        self.seen: set = set()
        self.handled: list = []
        self.error: Optional[BaseException] = None

    def next_pending(self, kind: str):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            page = (self.reviewer.list_approvals if kind == "agent" else self.reviewer.list_responses)(
                self.project_id, status="pending")
            for obj in page.results:
                if obj.approval_id not in self.seen:
                    self.seen.add(obj.approval_id)
                    return obj
            time.sleep(0.1)
        raise TimeoutError(f"no pending {kind} approval came")

    def run(self) -> None:
        try:
            for kind, action in self.steps:
                obj = self.next_pending(kind)
                action(self.reviewer, obj)
                self.handled.append(obj)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    def check(self, timeout: float = 30) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the reviewer bot is still waiting"
        if self.error:
            raise self.error


def approve(reviewer, obj):
    if hasattr(obj, "original_call_approval_id"):
        reviewer.respond_response(obj.approval_id, "approve")
    else:
        reviewer.respond_approval(obj.approval_id, "approve")


@pytest.fixture
def bot(world) -> Callable[..., Bot]:
    started: List[Bot] = []

    def make(*steps, timeout: float = 40) -> Bot:
        b = Bot(world.client("reviewer"), world.project_id, list(steps), timeout)
        b.start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.join(5)
