from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import BooleanField, ExpressionWrapper, Max, OuterRef, Q, Subquery
from django.db.models.functions import Now

from core.errors import InvalidInput
from events.models import Event
from events.services import event_payload
from projects.permissions import project_visible_to


def event_list(*, project, after: int = 0, limit: int = 100):
    return list(Event.objects.filter(project=project, id__gt=after).order_by("id")[:limit])


def newest_visible_event_id(user) -> int:
    """The id of the newest event of the projects ``user`` may see (0 when none): where a client
    that has read everything resumes. Not of every project: a client must not learn, id by id,
    how busy the projects it may not see are. One index lookup per project ((project, id)), not a
    scan of every event of theirs: it runs on every reviewer page, and the outbox keeps its history."""
    newest = Event.objects.filter(project=OuterRef("pk")).order_by("-id").values("id")[:1]
    return (project_visible_to(user=user).order_by().annotate(newest=Subquery(newest))
            .aggregate(last=Max("newest"))["last"] or 0)


SETTLE_BATCH = 2000


def _settle_cutoff():
    """HITL_EVENT_SETTLE_SECONDS before now, by the database's clock: on PostgreSQL an event's
    ``created_at`` is that clock's, read once its project's lock is held (events.services)."""
    return Now() - timedelta(seconds=settings.HITL_EVENT_SETTLE_SECONDS)


def settled_start() -> int:
    """Where ``settled_through`` may start walking: the newest event written longer than
    HITL_EVENT_SETTLE_SECONDS ago (every id below it is settled: see ``settled_through``), else
    just before the oldest event there is. Reads the events of the last few seconds (backwards by
    id), not the history."""
    old = (Event.objects.filter(created_at__lt=_settle_cutoff()).order_by("-id")
           .values_list("id", flat=True).first())
    if old is not None:
        return old
    first = Event.objects.order_by("id").values_list("id", flat=True).first()
    return first - 1 if first else 0


def settled_through(after: int) -> tuple[int, bool]:
    """The highest id S >= ``after`` such that every event with an id up to S that will ever be
    visible is visible now, and whether visible events lie beyond S (a wait for one to settle).

    Ids are drawn before commit, and only a project's own events commit in id order (a per-project
    lock: events.services): an event of project B with id 7 can become visible after one of
    project A with id 8. A stream of several projects that resumes after 8 would never send 7.
    So it sends an event only once every lower id is settled: visible, or a gap that will never
    fill (a rolled-back write, ids a crash skipped). A gap is taken for one of those once the
    visible event after it was written more than HITL_EVENT_SETTLE_SECONDS ago, by the database's
    clock (its id was drawn after the gap's; events are written at the end of their unit of work,
    so what holds a drawn id uncommitted is the rest of its commit, which takes milliseconds: a
    commit held up longer, a lock wait for the audit chain say, may be passed, and its event is then
    sent late, out of order). Across every project, whoever may see them: only ids are compared.

    On PostgreSQL a gap is also taken as settled as soon as no transaction that has written
    anything and began before the event after it was written is still running: the gap's own
    transaction began before then, so it has ended (committed: its event is visible; else rolled
    back). A rolled-back write then holds nothing up, and a commit held up long is waited for,
    up to HITL_EVENT_SETTLE_SECONDS."""
    fresh = ExpressionWrapper(Q(created_at__gt=_settle_cutoff()), output_field=BooleanField())
    oldest_writer = _NOT_READ
    while True:
        rows = list(Event.objects.filter(id__gt=after).order_by("id").annotate(fresh=fresh)
                    .values_list("id", "fresh", "created_at")[:SETTLE_BATCH])
        for event_id, is_fresh, created_at in rows:
            if event_id != after + 1 and is_fresh:
                if oldest_writer is _NOT_READ:
                    oldest_writer = _oldest_writer_start()
                if oldest_writer is _UNKNOWN or (oldest_writer is not None and oldest_writer <= created_at):
                    return after, True
            after = event_id
        if len(rows) < SETTLE_BATCH:
            return after, False


_NOT_READ, _UNKNOWN = object(), object()


def _oldest_writer_start():
    """When the oldest transaction still running that has written something began (another
    connection's; None when there is none), or _UNKNOWN (not PostgreSQL). Transactions of other
    roles show no start to a role without pg_read_all_stats: they write no events."""
    if connection.vendor != "postgresql":
        return _UNKNOWN
    with connection.cursor() as cursor:
        cursor.execute("SELECT min(xact_start) FROM pg_stat_activity WHERE backend_xid IS NOT NULL "
                       "AND pid <> pg_backend_pid() AND datname = current_database()")
        return cursor.fetchone()[0]


def resume_point(user) -> int:
    """Where a page's stream of every project resumes: the newest event ``user`` can see, or the
    settled point before it when an event below it may still commit (see ``settled_through``)."""
    return min(newest_visible_event_id(user), settled_through(settled_start())[0])


def past_every_event(event_id: int, *, user) -> str | None:
    """Why a resume point is refused, or None: an id past every event ``user`` can see (a restored
    database under a running client, or a made-up id) would have the client silently miss every
    event to come."""
    last = newest_visible_event_id(user)
    if event_id <= last:
        return None
    return f"No event has had the id {event_id} yet: the last one you can see is {last}."


def event_page(*, project, user, after: int, limit: int) -> dict:
    """GET /api/v1/events: ``{"results", "last_event_id", "has_more"}`` (one query; a second
    when the page is empty). An ``after`` past every event written so far is refused (400), as
    the websocket refuses such a ``last_event_id``: no event has had that id, so a client holding
    it (a corrupted cursor, a database restored from a backup) would otherwise be answered "no
    news" for ever and miss every event to come."""
    events = event_list(project=project, after=after, limit=limit + 1)
    if not events and after:
        said = past_every_event(after, user=user)
        if said:
            raise InvalidInput(said, fields={"after": [
                f"{said} Read again from 0 and keep the last_event_id each page answers."]})
    has_more = len(events) > limit
    events = events[:limit]
    return {"results": [event_payload(e) for e in events], "last_event_id": events[-1].id if events else after,
            "has_more": has_more}
