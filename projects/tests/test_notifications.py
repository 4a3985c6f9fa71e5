"""Project alerts: e-mail via the locmem backend, webhooks against a real local HTTP server."""
import hashlib
import hmac
import json
import re
import socket
import threading
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from celery.exceptions import Retry
from django.db import transaction

from projects.models import ProjectNotifier
from projects.notifications import (
    DeliveryFailed,
    NotificationRefused,
    deliver,
    notify_project_on_commit,
    sign,
)
from projects.tasks import deliver_notification_task

pytestmark = pytest.mark.django_db

SECRET = "s3cret-key"


class _Receiver:
    def __init__(self, status: int):
        self.status = status
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                # self.headers is case-insensitive (urllib sends e.g. "X-Hitl-Event": names are title-cased)
                receiver.requests.append({"path": self.path, "headers": self.headers,
                                          "body": self.rfile.read(length)})
                answer = b'{"ok": true}' if receiver.status < 400 else b"boom"
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def webhook_server():
    """``webhook_server(status=200)`` starts a receiver on 127.0.0.1 (random port)."""
    started = []

    def start(status: int = 200) -> _Receiver:
        receiver = _Receiver(status)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.close()


def _notifier(project, kind="webhook", target="", secret="", active=True) -> ProjectNotifier:
    return ProjectNotifier.objects.create(project=project, kind=kind, target=target, secret=secret, active=active)


def _notify(project, **overrides):
    kwargs = {"project_id": project.pk, "event_type": "emergency.stopped", "subject": "Demo: emergency stop",
              "payload": {"reason": "runaway costs", "stopped_by": "admin"}}
    kwargs.update(overrides)
    notify_project_on_commit(**kwargs)


def _verify(secret: str, headers, body: bytes) -> bool:
    """What a receiver does (the README example)."""
    timestamp = headers["X-HITL-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers.get("X-HITL-Signature", ""))


def test_sign_is_hex_hmac_sha256_of_timestamp_dot_body():
    expected = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign("k", "1700000000", b"{}") == expected


def test_webhook_receives_signed_json_after_commit(project, webhook_server, django_capture_on_commit_callbacks):
    server = webhook_server()
    _notifier(project, target=f"{server.url}/hook", secret=SECRET)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with transaction.atomic():
            _notify(project)
        assert server.requests == []  # not yet committed: nothing sent
    assert len(callbacks) == 1
    assert len(server.requests) == 1

    request = server.requests[0]
    headers, body = request["headers"], request["body"]
    assert request["path"] == "/hook"
    document = json.loads(body)
    assert document == {"event_type": "emergency.stopped", "project_id": str(project.pk),
                        "subject": "Demo: emergency stop", "sent_at": document["sent_at"],
                        "delivery_id": headers["X-HITL-Delivery"],
                        "data": {"reason": "runaway costs", "stopped_by": "admin"}}
    assert body == json.dumps(document, separators=(",", ":"), sort_keys=True).encode()  # compact, sorted
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", document["sent_at"])  # UTC with a Z, as the API
    # the same on every attempt (the alert's id and the notifier's), unique across installations,
    # and signed: the body carries it too
    assert re.fullmatch(r"[0-9a-f-]{36}\.\d+", headers["X-HITL-Delivery"])
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == "BotArmy-HITL"
    assert headers["X-HITL-Event"] == "emergency.stopped"
    assert headers["X-HITL-Timestamp"].isdigit()
    assert headers["X-HITL-Signature"].startswith("sha256=")
    assert _verify(SECRET, headers, body)
    assert not _verify("wrong-secret", headers, body)
    assert not _verify(SECRET, headers, body + b" ")  # a tampered body fails too


def test_webhook_without_secret_sends_no_signature(project, webhook_server):
    server = webhook_server()
    notifier = _notifier(project, target=server.url + "/", secret="")

    result = deliver(notifier_id=notifier.pk, event_type="budget.exceeded", subject="s", payload={"x": 1})

    assert result["status"] == "sent" and result["http_status"] == 200
    assert len(server.requests) == 1
    assert "X-HITL-Signature" not in server.requests[0]["headers"]
    assert server.requests[0]["headers"]["X-HITL-Event"] == "budget.exceeded"


def test_email_lands_in_outbox(project, mailoutbox, django_capture_on_commit_callbacks, settings):
    _notifier(project, kind="email", target="ops@example.com")

    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            _notify(project)
        assert mailoutbox == []

    assert len(mailoutbox) == 1
    message = mailoutbox[0]
    assert message.subject == "Demo: emergency stop"
    assert message.to == ["ops@example.com"]
    assert message.from_email == settings.DEFAULT_FROM_EMAIL
    assert "Demo (demo)" in message.body
    assert "emergency.stopped" in message.body
    assert '  "reason": "runaway costs"' in message.body  # pretty-printed JSON


def test_rolled_back_transaction_delivers_nothing(project, webhook_server, mailoutbox,
                                                  django_capture_on_commit_callbacks):
    server = webhook_server()
    _notifier(project, target=server.url, secret=SECRET)
    _notifier(project, kind="email", target="ops@example.com")

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                _notify(project)
                raise RuntimeError("service failed")

    assert callbacks == []
    assert server.requests == []
    assert mailoutbox == []


def test_inactive_and_other_project_notifiers_receive_nothing(project, other_project, webhook_server, mailoutbox,
                                                              django_capture_on_commit_callbacks):
    server = webhook_server()
    _notifier(project, target=f"{server.url}/active")
    _notifier(project, target=f"{server.url}/inactive", active=False)
    _notifier(project, kind="email", target="off@example.com", active=False)
    _notifier(other_project, target=f"{server.url}/other")
    _notifier(other_project, kind="email", target="other@example.com")

    with django_capture_on_commit_callbacks(execute=True):
        _notify(project)

    assert [r["path"] for r in server.requests] == ["/active"]
    assert mailoutbox == []


def test_error_status_raises_so_the_task_retries(project, webhook_server):
    server = webhook_server(status=500)
    notifier = _notifier(project, target=server.url, secret=SECRET)

    with pytest.raises(DeliveryFailed, match="HTTP 500"):
        deliver(notifier_id=notifier.pk, event_type="e", subject="s", payload={})
    assert len(server.requests) == 1


def test_connection_error_raises(project):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    notifier = _notifier(project, target=f"http://127.0.0.1:{port}/hook")

    with pytest.raises(urllib.error.URLError):
        deliver(notifier_id=notifier.pk, event_type="e", subject="s", payload={})


@pytest.mark.parametrize(("retries", "countdown"), [(0, 5), (1, 10), (4, 80)])
def test_task_schedules_a_retry_with_back_off(project, webhook_server, retries, countdown):
    server = webhook_server(status=503)
    notifier = _notifier(project, target=server.url, secret=SECRET)

    with pytest.raises(Retry) as excinfo:  # eager + propagate: the retry request surfaces as Retry
        deliver_notification_task.apply(kwargs={"notifier_id": notifier.pk, "event_type": "e",
                                                "subject": "s", "payload": {}}, retries=retries)
    assert excinfo.value.when == countdown
    assert isinstance(excinfo.value.exc, DeliveryFailed)
    assert len(server.requests) == 1


def test_task_retries_failed_delivery_then_gives_up(project, webhook_server, monkeypatch):
    server = webhook_server(status=503)
    notifier = _notifier(project, target=server.url, secret=SECRET)

    # Without propagation, eager Celery runs each retry at once (countdowns ignored).
    monkeypatch.setitem(deliver_notification_task.app.conf, "task_eager_propagates", False)
    result = deliver_notification_task.apply(kwargs={"notifier_id": notifier.pk, "event_type": "e",
                                                     "subject": "s", "payload": {}})
    assert result.state == "FAILURE"
    assert isinstance(result.result, DeliveryFailed)
    assert len(server.requests) == 1 + deliver_notification_task.max_retries


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://example.com/x", "gopher://x", "example.com/hook"])
def test_non_http_targets_are_refused(project, target):
    notifier = _notifier(project, target=target)

    with pytest.raises(NotificationRefused):
        deliver(notifier_id=notifier.pk, event_type="e", subject="s", payload={})
    # The task gives up at once instead of retrying a target that can never work.
    result = deliver_notification_task.apply(kwargs={"notifier_id": notifier.pk, "event_type": "e",
                                                     "subject": "s", "payload": {}}).get()
    assert result["status"] == "refused"


def test_task_skips_deleted_or_deactivated_notifier(project, webhook_server):
    server = webhook_server()
    notifier = _notifier(project, target=server.url)
    kwargs = {"notifier_id": notifier.pk, "event_type": "e", "subject": "s", "payload": {}}

    notifier.active = False
    notifier.save(update_fields=["active", "updated_at"])
    assert deliver_notification_task.apply(kwargs=kwargs).get()["reason"] == "inactive"
    notifier.delete()
    assert deliver_notification_task.apply(kwargs=kwargs).get()["reason"] == "deleted"
    assert server.requests == []


def test_payload_must_be_json(project):
    with pytest.raises(TypeError):
        _notify(project, payload={"project": project})


def test_an_alert_the_broker_does_not_take_is_kept_and_queued_again_later(project, webhook_server, monkeypatch,
                                                                          django_capture_on_commit_callbacks):
    """The broker (Redis) is down when a stop commits: its alert stays in the database, and beat's
    sweep queues it once the broker is back (it used to be logged and lost)."""
    from datetime import timedelta

    from django.utils import timezone

    from projects.models import QueuedNotification
    from projects.tasks import requeue_notifications_task

    server = webhook_server()
    _notifier(project, target=f"{server.url}/hook", secret=SECRET)
    original = deliver_notification_task.delay

    def broker_down(*args, **kwargs):
        raise ConnectionRefusedError("the broker does not answer")

    monkeypatch.setattr(deliver_notification_task, "delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            _notify(project)
    assert server.requests == [] and QueuedNotification.objects.count() == 1
    assert requeue_notifications_task.apply().get() == 0  # still down, and too fresh for the sweep anyway

    monkeypatch.setattr(deliver_notification_task, "delay", original)   # the broker is back
    assert requeue_notifications_task.apply().get() == 0  # under a minute old: the commit's own hand-over
    QueuedNotification.objects.update(created_at=timezone.now() - timedelta(minutes=2))
    assert requeue_notifications_task.apply().get() == 1
    assert len(server.requests) == 1 and json.loads(server.requests[0]["body"])["event_type"] == "emergency.stopped"
    assert not QueuedNotification.objects.exists()
    assert requeue_notifications_task.apply().get() == 0  # sent once


def test_an_alert_whose_task_the_broker_lost_is_queued_again_and_sent_once(
        project, webhook_server, monkeypatch, settings, django_capture_on_commit_callbacks):
    """The row was deleted as soon as the task was in the broker: a Redis restarted without
    persistence before a worker took it lost the alert for good. The row now stays until the
    delivery is over, and beat's sweep queues a task handed over long ago again."""
    from datetime import timedelta

    from django.utils import timezone

    from projects.models import QueuedNotification
    from projects.tasks import requeue_notifications_task

    server = webhook_server()
    _notifier(project, target=f"{server.url}/hook", secret=SECRET)
    original, lost = deliver_notification_task.delay, []
    monkeypatch.setattr(deliver_notification_task, "delay", lambda *a, **kw: lost.append(kw))  # taken, then lost
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            _notify(project)
    assert len(lost) == 1 and server.requests == []
    row = QueuedNotification.objects.get()
    assert row.handed_over_at is not None                                   # kept, handed over
    monkeypatch.setattr(deliver_notification_task, "delay", original)      # Redis is back, empty
    assert requeue_notifications_task.apply().get() == 0                    # not before it could have been done
    QueuedNotification.objects.update(handed_over_at=timezone.now() - timedelta(
        minutes=settings.HITL_NOTIFICATION_REQUEUE_MINUTES + 1))
    assert requeue_notifications_task.apply().get() == 1
    assert len(server.requests) == 1 and server.requests[0]["headers"]["x-hitl-delivery"] == row.delivery_id
    assert not QueuedNotification.objects.exists()                          # over: nothing left to send
    # the lost task turning up after all sends nothing (its row is gone)
    assert deliver_notification_task.apply(kwargs=lost[0]).get()["reason"] == "delivered already"
    assert len(server.requests) == 1


def test_a_broker_that_does_not_take_an_alert_is_not_asked_again_for_the_next_ones(
        project, webhook_server, monkeypatch, django_capture_on_commit_callbacks):
    """A hung broker held the request's thread for each of its alerts in turn (for ever, before
    HITL_BROKER_SOCKET_TIMEOUT): after the first refusal the others wait in the database too."""
    from projects.models import QueuedNotification

    server = webhook_server()
    for name in ("a", "b", "c"):
        _notifier(project, target=f"{server.url}/{name}", secret=SECRET)
    tried = []

    def broker_hangs_then_fails(*args, **kwargs):
        tried.append(kwargs["notifier_id"])
        raise TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(deliver_notification_task, "delay", broker_hangs_then_fails)
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            _notify(project)
    assert len(tried) == 1 and QueuedNotification.objects.count() == 3


def test_a_delivered_alert_leaves_nothing_queued(project, webhook_server, django_capture_on_commit_callbacks):
    from projects.models import QueuedNotification

    server = webhook_server()
    _notifier(project, target=f"{server.url}/hook")
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            _notify(project)
    assert len(server.requests) == 1 and not QueuedNotification.objects.exists()


def test_an_alert_is_written_with_its_change_so_a_process_dying_after_the_commit_loses_nothing(
        project, other_project, webhook_server, django_capture_on_commit_callbacks):
    """The change commits and the process dies before its after-commit hand-over (captured here and
    never run): the alert's rows are already in the database, one per active notifier of that
    project, and beat's sweep sends them."""
    from datetime import timedelta

    from django.utils import timezone

    from projects.models import QueuedNotification
    from projects.tasks import requeue_notifications_task

    server = webhook_server()
    first, second = _notifier(project, target=f"{server.url}/a"), _notifier(project, target=f"{server.url}/b")
    _notifier(project, target=f"{server.url}/inactive", active=False)
    _notifier(other_project, target=f"{server.url}/other")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with transaction.atomic():
            _notify(project)
            rows = list(QueuedNotification.objects.order_by("pk").values_list("notifier_id", "event_type", "payload"))
    assert len(callbacks) == 1 and server.requests == []
    payload = {"reason": "runaway costs", "stopped_by": "admin"}
    assert rows == [(first.pk, "emergency.stopped", payload), (second.pk, "emergency.stopped", payload)]

    QueuedNotification.objects.update(created_at=timezone.now() - timedelta(minutes=2))
    assert requeue_notifications_task.apply().get() == 2
    assert sorted(r["path"] for r in server.requests) == ["/a", "/b"]
    assert not QueuedNotification.objects.exists()


def test_a_project_without_notifiers_queues_nothing(project, django_capture_on_commit_callbacks):
    from projects.models import QueuedNotification

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with transaction.atomic():
            _notify(project)
    assert callbacks == [] and not QueuedNotification.objects.exists()
