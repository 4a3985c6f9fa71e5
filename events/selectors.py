from django.db.models import Max, OuterRef, Subquery

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
