"""Project alerts (emergency stops and budget alerts) sent to each active
``ProjectNotifier`` of a project: an e-mail, or a signed JSON POST to a webhook.

Callers use ``notify_project_on_commit`` inside their service transaction; the Celery task
``projects.deliver_notification`` (projects/tasks.py) then calls ``deliver`` once per notifier,
after the commit, and retries failed deliveries with a back-off.

Webhook requests carry::

    Content-Type: application/json
    User-Agent: BotArmy-HITL
    X-HITL-Event: <event_type>
    X-HITL-Delivery: <id>          (the same on every attempt of one alert to one notifier)
    X-HITL-Timestamp: <unix seconds>
    X-HITL-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>   (only with a secret)

and the body ``{"data": ..., "delivery_id": ..., "event_type": ..., "project_id": ..., "sent_at": ..., "subject": ...}``
(compact JSON, sorted keys). Receivers recompute the HMAC over the raw bytes they got.
"""
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import datetime
from datetime import timezone as dt_timezone

from django.conf import settings
from django.core.mail import send_mail
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from core import rawrows
from core.times import iso_utc

log = logging.getLogger(__name__)

USER_AGENT = "BotArmy-HITL"
ALLOWED_SCHEMES = ("http", "https")


class NotificationRefused(ValueError):
    """A notifier that can never be delivered to as configured (e.g. a file:// URL):
    retrying does not help, so the task logs it and gives up."""


class DeliveryFailed(RuntimeError):
    """The receiver answered with an error status; the task retries."""


def _as_json(payload: dict) -> dict:
    """JSON primitives only (UUIDs, datetimes and Decimals become strings); anything else
    (e.g. a model instance) is a caller bug and raises TypeError at the call site."""
    return json.loads(json.dumps(payload, cls=DjangoJSONEncoder))


def notify_project_on_commit(*, project_id, event_type: str, subject: str, payload: dict) -> None:
    """Queue one delivery per active notifier of the project, durably: the deliveries are written
    in the caller's transaction (QueuedNotification: one ``INSERT ... SELECT`` over the project's
    active notifiers, nothing if it rolls back) and handed to the broker after the commit. One the
    broker does not take (Redis down), or that a process dying right after the commit never
    handed over, stays there and is queued again by beat (``requeue_notifications``): an alert
    is delayed, never lost. Alerts are rare (a stop, a budget threshold once per window): the
    statement is sent only on the changes that raise one."""
    from projects.models import ProjectNotifier, QueuedNotification

    connection = rawrows.db()
    if not connection.in_atomic_block:
        raise RuntimeError("notify_project_on_commit runs inside the transaction of the change it reports")
    queued, notifiers, quote = QueuedNotification._meta, ProjectNotifier._meta, connection.ops.quote_name
    values = [queued.get_field(name).get_db_prep_save(value, connection) for name, value in (
        ("event_type", event_type), ("subject", subject[:500]), ("payload", _as_json(payload or {})),
        ("created_at", timezone.now()), ("alert_id", uuid.uuid4()))]
    with rawrows.kept_cursor(connection) as cursor:
        cursor.execute(
            f"INSERT INTO {quote(queued.db_table)} ({quote('notifier_id')}, {quote('event_type')}, "
            f"{quote('subject')}, {quote('payload')}, {quote('created_at')}, {quote('alert_id')}) "
            f"SELECT {quote('id')}, %s, %s, %s, %s, %s FROM {quote(notifiers.db_table)} "
            f"WHERE {quote('project_id')} = %s AND {quote('active')} = %s ORDER BY {quote('id')} "
            f"RETURNING {quote('id')}, {quote('notifier_id')}",
            [*values, notifiers.get_field("project").get_db_prep_value(project_id, connection), True])
        rows = [QueuedNotification(pk=pk, notifier_id=notifier_id, event_type=event_type)
                for pk, notifier_id in cursor.fetchall()]
    if rows:
        transaction.on_commit(lambda: queue_notifications(rows), robust=True)


def queue_notifications(rows) -> int:
    """Hand each queued notification to the broker, noting when (``handed_over_at``); the row
    stays until its delivery is over (the task deletes it), so a task the broker loses is queued
    again by beat's sweep. The ones the broker does not take stay for the next try. Returns how
    many were queued."""
    from projects.tasks import deliver_notification_task

    queued = 0
    for row in rows:
        try:
            with transaction.atomic():
                # claimed while it is handed over: a sweep running beside the commit's own hand-over
                # (or another sweep) skips it rather than queueing it twice
                claimed = type(row).objects.select_for_update(skip_locked=True).filter(pk=row.pk).first()
                if claimed is None:
                    continue
                type(row).objects.filter(pk=claimed.pk).update(handed_over_at=timezone.now())
                deliver_notification_task.delay(notifier_id=claimed.notifier_id, event_type=claimed.event_type,
                                                subject=claimed.subject, payload=claimed.payload,
                                                delivery_id=claimed.delivery_id, queued_id=claimed.pk)
        except Exception:  # noqa: BLE001 - the broker did not take it: it stays for the next sweep
            log.exception("could not queue %s notification for notifier %s; it is tried again later",
                          row.event_type, row.notifier_id)
            break  # nor would it take the next ones now: the thread (a request's) is not held for each
        queued += 1
    return queued


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``timestamp + "." + body`` keyed with ``secret``."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def deliver(*, notifier_id: int, event_type: str, subject: str, payload: dict, delivery_id: str | None = None) -> dict:
    """Send one alert to one notifier. Returns a small dict describing the outcome; raises on a
    failed delivery (HTTP status >= 400, connection error, no answer within
    HITL_WEBHOOK_TIMEOUT_SECONDS, mail error) so the task retries, and ``NotificationRefused`` for
    a target that can never work (non-http(s) URL). ``delivery_id`` (the queued row's id) is sent
    as ``X-HITL-Delivery`` on every attempt, so a receiver can drop a copy it already has."""
    from projects.models import ProjectNotifier

    notifier = ProjectNotifier.objects.select_related("project").filter(pk=notifier_id).first()
    if notifier is None:
        return {"notifier_id": notifier_id, "status": "skipped", "reason": "deleted"}
    if not notifier.active:
        return {"notifier_id": notifier_id, "status": "skipped", "reason": "inactive"}

    now = time.time()
    sent_at = iso_utc(datetime.fromtimestamp(now, tz=dt_timezone.utc))
    if notifier.kind == ProjectNotifier.Kind.EMAIL:
        return _deliver_email(notifier, event_type=event_type, subject=subject, payload=payload, sent_at=sent_at)
    if notifier.kind == ProjectNotifier.Kind.WEBHOOK:
        return _deliver_webhook(notifier, event_type=event_type, subject=subject, payload=payload,
                                sent_at=sent_at, timestamp=str(int(now)), delivery_id=delivery_id)
    raise NotificationRefused(f"notifier {notifier_id}: unknown kind {notifier.kind!r}")


def _deliver_email(notifier, *, event_type: str, subject: str, payload: dict, sent_at: str) -> dict:
    project = notifier.project
    subject = " ".join(subject.split())  # no newlines in a mail header
    body = "\n".join([
        subject,
        "",
        f"Project: {project.name} ({project.slug})",
        f"Event:   {event_type}",
        f"Sent at: {sent_at}",
        "",
        "Details:",
        json.dumps(payload, indent=2, sort_keys=True, cls=DjangoJSONEncoder),
        "",
        "-- ",
        "BotArmy HITL",
    ])
    sent = send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [notifier.target], fail_silently=False)
    if not sent:
        raise DeliveryFailed(f"notifier {notifier.pk}: the mail backend sent nothing")
    return {"notifier_id": notifier.pk, "kind": "email", "status": "sent", "to": notifier.target}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would drop the POST body (or point anywhere): treat 3xx as a failure."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def webhook_body(*, event_type: str, project_id, subject: str, sent_at: str, payload: dict,
                 delivery_id: str | None = None) -> bytes:
    document = {"event_type": event_type, "project_id": str(project_id), "subject": subject,
                "sent_at": sent_at, "data": payload}
    if delivery_id:
        document["delivery_id"] = delivery_id  # signed with the body (the header repeats it)
    return json.dumps(document, separators=(",", ":"), sort_keys=True, cls=DjangoJSONEncoder).encode()


def _deliver_webhook(notifier, *, event_type: str, subject: str, payload: dict, sent_at: str,
                     timestamp: str, delivery_id: str | None = None) -> dict:
    url = notifier.target.strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not parts.hostname:
        raise NotificationRefused(f"notifier {notifier.pk}: only http(s) URLs are allowed, not {url!r}")

    body = webhook_body(event_type=event_type, project_id=notifier.project_id, subject=subject,
                        sent_at=sent_at, payload=payload, delivery_id=delivery_id)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-HITL-Event": event_type,
        "X-HITL-Timestamp": timestamp,
    }
    if delivery_id:
        headers["X-HITL-Delivery"] = delivery_id
    if notifier.secret:
        headers["X-HITL-Signature"] = "sha256=" + sign(notifier.secret, timestamp, body)

    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _opener.open(request, timeout=settings.HITL_WEBHOOK_TIMEOUT_SECONDS) as response:
            status = response.status
            response.read(4096)  # let the receiver finish; the answer itself is not used
    except urllib.error.HTTPError as exc:  # any status >= 300 (redirects are not followed)
        exc.close()
        raise DeliveryFailed(f"notifier {notifier.pk}: {url} answered HTTP {exc.code}") from exc
    # urllib.error.URLError, TimeoutError and other OSErrors (connection refused, DNS, TLS)
    # propagate unchanged: the task retries them.
    if status >= 400:  # unreachable with urllib's default handlers, kept as a guard
        raise DeliveryFailed(f"notifier {notifier.pk}: {url} answered HTTP {status}")
    return {"notifier_id": notifier.pk, "kind": "webhook", "status": "sent", "http_status": status}
