import zlib

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection, transaction

from audit.services import to_json
from core.uow import defer_or_run
from events.models import Event, EventType


def project_group(project_id) -> str:
    """Channel-layer group of a project's events (used by live delivery and long polls)."""
    return f"events.project.{project_id}"


def event_payload(event: Event) -> dict:
    """The event as API.md shows it; JSON primitives only."""
    return {
        "id": event.id,
        "event_type": event.event_type,
        "project_id": str(event.project_id),
        "task_id": str(event.task_id) if event.task_id else None,
        "data": event.data,
        "created_at": event.created_at.isoformat().replace("+00:00", "Z"),
    }


def _lock_project_stream(project_id) -> None:
    """Serialise a project's event inserts until commit (PostgreSQL advisory lock), so ids
    of one project are committed in increasing order and a reader polling ``after=N`` can
    never see N+1 before N. SQLite has one writer at a time already."""
    if connection.vendor == "postgresql":
        key = zlib.crc32(str(project_id).encode()) - 2**31  # signed 32-bit
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [4242, key])


def event_emit(*, project_id, event_type: str, data: dict, task_id=None) -> Event | None:
    """Write an outbox row in the caller's transaction; push it to live listeners after commit.
    Inside a unit of work (core/uow.py) the row is written at its end, in the order emitted, with
    ``data`` as it was at this call; the return value is then None."""
    if event_type not in EventType.values:
        raise ValueError(f"unknown event type {event_type!r}")
    data = to_json(data) or {}
    return defer_or_run("outbox", lambda: _write(project_id=project_id, event_type=event_type, data=data,
                                                 task_id=task_id))


@transaction.atomic(savepoint=False)  # inside a unit of work: its failure fails the whole write
def _write(*, project_id, event_type: str, data: dict, task_id) -> Event:
    _lock_project_stream(project_id)
    event = Event.objects.create(project_id=project_id, task_id=task_id, event_type=event_type, data=data)
    payload = event_payload(event)

    def broadcast():
        async_to_sync(get_channel_layer().group_send)(
            project_group(project_id), {"type": "hitl.event", "event": payload}
        )

    transaction.on_commit(broadcast, robust=True)  # a failed push loses nothing: the row is the truth
    return event
