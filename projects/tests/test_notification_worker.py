"""An alert survives its worker being killed mid-delivery: real Celery worker processes on the
Redis broker (the production shape), one killed with SIGKILL while the webhook receiver holds its
request, a new one started. The alert reaches the receiver again within seconds (the broker's
visibility timeout, HITL_BROKER_VISIBILITY_TIMEOUT, set short here; Redis's default held it for an
hour), with the same X-HITL-Delivery id, so the receiver can tell it is the same alert."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.db import connection

from projects.models import ProjectNotifier, QueuedNotification

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres, pytest.mark.redis]

VISIBILITY = 3  # seconds, the workers' HITL_BROKER_VISIBILITY_TIMEOUT here


class _HoldingReceiver:
    """A webhook receiver that holds its first request open (the worker is mid-delivery) and
    answers 200 to the next ones; every request is recorded (headers, body)."""

    def __init__(self):
        self.requests, self.first_arrived, self.release = [], threading.Event(), threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if len(receiver.requests) == 1:
                    receiver.first_arrived.set()
                    receiver.release.wait(60)
                try:
                    self.send_response(200)
                    self.end_headers()
                except OSError:  # the killed worker's connection is gone
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _spare_broker_url() -> str:
    """A Redis database of its own for this test's broker (the REDIS_URL's number + 8, or
    HITL_TEST_SPARE_REDIS_DB): its workers' short visibility timeout hands out again every
    unacknowledged task of the database they consume, which must not reach anything else's."""
    parts = urlsplit(os.environ["REDIS_URL"])
    number = int((parts.path or "/0").strip("/") or 0)
    spare = int(os.environ.get("HITL_TEST_SPARE_REDIS_DB", (number + 8) % 16))
    return urlunsplit(parts._replace(path=f"/{spare}"))


def _worker(queue: str, tmp_path, name: str) -> subprocess.Popen:
    parts = urlsplit(os.environ["DATABASE_URL"])
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "botarmy_hitl.settings", "DJANGO_DEBUG": "0",
           "DJANGO_SECRET_KEY": settings.SECRET_KEY, "HITL_VAR_DIR": str(tmp_path / "var"),
           "DATABASE_URL": urlunsplit(parts._replace(path="/" + quote(connection.settings_dict["NAME"]))),
           "REDIS_URL": "", "CELERY_BROKER_URL": _spare_broker_url(),
           "HITL_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY)}
    log = open(tmp_path / f"{name}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "botarmy_hitl", "worker", "-Q", queue, "--pool", "solo",
         "-n", f"{name}-{queue}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--loglevel", "INFO"],
        cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_an_alert_whose_worker_is_killed_mid_delivery_is_delivered_by_the_next_worker(project, tmp_path):
    from botarmy_hitl.celery import app

    receiver = _HoldingReceiver()
    queue = f"hitl-test-{uuid.uuid4().hex[:12]}"  # this test's own queue on the shared Redis
    workers = []
    try:
        notifier = ProjectNotifier.objects.create(project=project, kind="webhook", target=receiver.url, secret="s")
        queued = QueuedNotification.objects.create(notifier=notifier, event_type="emergency_stop_triggered",
                                                   subject="stop", payload={"reason": "test"}, alert_id=uuid.uuid4())
        # What queue_notifications hands the broker (the task acknowledges late), on this test's queue.
        with app.connection_for_write(_spare_broker_url()) as broker:
            app.send_task("projects.deliver_notification", queue=queue, connection=broker, kwargs={
                "notifier_id": notifier.pk, "event_type": queued.event_type, "subject": queued.subject,
                "payload": queued.payload, "delivery_id": queued.delivery_id})

        workers.append(_worker(queue, tmp_path, "first"))
        assert receiver.first_arrived.wait(60), (tmp_path / "first.log").read_text(errors="replace")[-3000:]
        _kill(workers[0])  # killed while the receiver holds its request: the task was never acknowledged
        time.sleep(VISIBILITY + 1)
        workers.append(_worker(queue, tmp_path, "second"))
        deadline = time.monotonic() + 60
        while len(receiver.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(receiver.requests) >= 2, (tmp_path / "second.log").read_text(errors="replace")[-3000:]
        (first_headers, first_body), (again_headers, again_body) = receiver.requests[:2]
        assert again_headers["x-hitl-delivery"] == first_headers["x-hitl-delivery"] == queued.delivery_id
        assert json.loads(again_body)["delivery_id"] == queued.delivery_id  # signed with the body
        assert json.loads(again_body)["data"] == {"reason": "test"}
        assert json.loads(again_body)["event_type"] == "emergency_stop_triggered"
    finally:
        for proc in workers:
            _kill(proc)
        receiver.close()
        import redis

        spare = redis.Redis.from_url(_spare_broker_url())
        leftovers = [key for key in spare.scan_iter(f"*{queue}*")]  # its queue and bindings
        if leftovers:
            spare.delete(*leftovers)
