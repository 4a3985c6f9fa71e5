import zlib

from django.db import transaction
from django.utils import timezone

from audit.services import to_json
from core.rawrows import db, kept_cursor
from core import broadcast
from core.times import iso_utc
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
        "created_at": iso_utc(event.created_at),
    }


def _stream_lock_key(project_id) -> list[int]:
    """The advisory lock that serialises a project's event inserts until commit (PostgreSQL),
    so ids of one project are committed in increasing order and a reader polling ``after=N``
    can never see N+1 before N. SQLite has one writer at a time already."""
    return [4242, zlib.crc32(str(project_id).encode()) - 2**31]  # signed 32-bit


def event_emit(*, project_id, event_type: str, data: dict, task_id=None) -> Event | None:
    """Write an outbox row in the caller's transaction; push it to live listeners after commit.
    Inside a unit of work (core/uow.py) the row is written at its end, in the order emitted, with
    ``data`` as it was at this call; the return value is then None."""
    if event_type not in EventType.values:
        raise ValueError(f"unknown event type {event_type!r}")
    data = to_json(data) or {}
    return defer_or_run("outbox", lambda: _write(project_id=project_id, event_type=event_type, data=data,
                                                 task_id=task_id))


def event_emit_many(*, project_id, events: list[tuple[str, object, dict]]) -> None:
    """``event_emit`` for many events of one project, each ``(event_type, task_id, data)``: one
    insert for them all, after every other event of the unit of work (an emergency stop's own
    event goes out before those of the calls, outputs and questions it cancelled)."""
    if not events:
        return
    for event_type, _task_id, _data in events:
        if event_type not in EventType.values:
            raise ValueError(f"unknown event type {event_type!r}")
    rows = [(event_type, task_id, to_json(data) or {}) for event_type, task_id, data in events]
    defer_or_run("outbox", lambda: _write_many(project_id=project_id, rows=rows), last=True)


@transaction.atomic(savepoint=False)
def _write_many(*, project_id, rows) -> list[Event]:
    connection = db()
    now = timezone.now()
    events = [Event(project_id=project_id, task_id=task_id, event_type=event_type, data=data, created_at=now)
              for event_type, task_id, data in rows]
    if connection.features.can_return_rows_from_bulk_insert:
        if connection.vendor == "postgresql":
            with kept_cursor(connection) as cursor:   # stamped once the lock is held (see _insert)
                cursor.execute("SELECT clock_timestamp() FROM (SELECT pg_advisory_xact_lock(%s, %s)) AS stream",
                               _stream_lock_key(project_id))
                stamped = cursor.fetchone()[0]
            for event in events:
                event.created_at = stamped
        Event.objects.bulk_create(events)
    else:  # (SQLite before 3.35) one insert each, ids returned as event_emit's are
        for event in events:
            _insert(event)
    group = project_group(project_id)
    for event in events:  # each push on its own: one lost (Redis down) loses no other
        message = {"type": "hitl.event", "group": group, "event": event_payload(event)}
        transaction.on_commit(lambda message=message: broadcast.group_send(group, message), robust=True)
    return events


_INSERT = None


def _insert(event: Event) -> None:
    """INSERT the outbox row (one hand-written statement: every write emits at least one). On
    PostgreSQL the same statement takes the project's stream lock first (a materialised WITH
    that the row's select reads from, so the id is drawn once the lock is held): one round trip
    fewer while it is held. There ``created_at`` is the database's clock once the lock is held,
    not the caller's before it: how old an event is tells how long ago its id was drawn
    (events.selectors.settled_through), though it waited for the lock, and whatever the clock of
    the process that wrote it."""
    global _INSERT
    connection = db()  # this thread's database wrapper (the module's is a proxy)
    postgres = connection.vendor == "postgresql"
    if _INSERT is None:
        quote = connection.ops.quote_name
        fields = [f for f in Event._meta.concrete_fields if not f.primary_key]
        returning = f" RETURNING {quote(Event._meta.pk.column)}" \
            if connection.features.can_return_columns_from_insert else ""
        table = quote(Event._meta.db_table)
        if postgres:
            stamp = quote(Event._meta.get_field("created_at").column)
            fields = [f for f in fields if f.attname != "created_at"]
            values = ", ".join(f"CAST(%s AS {f.db_type(connection)})" for f in fields)
            _INSERT = (f"WITH stream AS MATERIALIZED (SELECT pg_advisory_xact_lock(%s, %s)) "
                       f"INSERT INTO {table} ({', '.join(quote(f.column) for f in fields)}, {stamp}) "
                       f"SELECT {values}, clock_timestamp() FROM stream{returning}, {stamp}", fields)
        else:
            into = f"INSERT INTO {table} ({', '.join(quote(f.column) for f in fields)})"
            _INSERT = (f"{into} VALUES ({', '.join(['%s'] * len(fields))}){returning}", fields)
    sql, fields = _INSERT
    params = [f.get_db_prep_save(getattr(event, f.attname), connection) for f in fields]
    with kept_cursor(connection) as cursor:
        cursor.execute(sql, [*_stream_lock_key(event.project_id), *params] if postgres else params)
        if postgres:
            event.pk, event.created_at = cursor.fetchone()
        else:
            event.pk = cursor.fetchone()[0] if connection.features.can_return_columns_from_insert else \
                connection.ops.last_insert_id(cursor, Event._meta.db_table, Event._meta.pk.column)
    event._state.adding, event._state.db = False, connection.alias


@transaction.atomic(savepoint=False)  # inside a unit of work: its failure fails the whole write
def _write(*, project_id, event_type: str, data: dict, task_id) -> Event:
    event = Event(project_id=project_id, task_id=task_id, event_type=event_type, data=data, created_at=timezone.now())
    _insert(event)
    payload = event_payload(event)

    message = {"type": "hitl.event", "group": project_group(project_id), "event": payload}
    # a failed push loses nothing: the row is the truth
    transaction.on_commit(lambda: broadcast.group_send(project_group(project_id), message), robust=True)
    return event
