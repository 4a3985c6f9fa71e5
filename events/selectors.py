from django.db.models import Max

from core.errors import InvalidInput
from events.models import Event
from events.services import event_payload


def event_list(*, project, after: int = 0, limit: int = 100):
    return list(Event.objects.filter(project=project, id__gt=after).order_by("id")[:limit])


def past_every_event(event_id: int) -> bool:
    """A resume point no event has had yet (a restored database under a running client, or a
    made-up id): following from it, a client would silently miss every event to come."""
    return event_id > (Event.objects.aggregate(last=Max("id"))["last"] or 0)


def no_such_event(event_id: int, project_ids) -> str:
    """Why a cursor past every event is refused, naming the newest event of the projects the
    client reads (not of every project: that would show how busy the others are)."""
    last = Event.objects.filter(project_id__in=list(project_ids)).aggregate(last=Max("id"))["last"] or 0
    return f"No event has had the id {event_id} yet: the last one you can see is {last}."


def event_page(*, project, after: int, limit: int) -> dict:
    """GET /api/v1/events: ``{"results", "last_event_id", "has_more"}`` (one query; a second
    when the page is empty). An ``after`` past every event written so far is refused (400), as
    the websocket refuses such a ``last_event_id``: no event has had that id, so a client holding
    it (a corrupted cursor, a database restored from a backup) would otherwise be answered "no
    news" for ever and miss every event to come."""
    events = event_list(project=project, after=after, limit=limit + 1)
    if not events and after:
        if past_every_event(after):
            said = no_such_event(after, [project.pk])
            raise InvalidInput(said, fields={"after": [
                f"{said} Read again from 0 and keep the last_event_id each page answers."]})
    has_more = len(events) > limit
    events = events[:limit]
    return {"results": [event_payload(e) for e in events], "last_event_id": events[-1].id if events else after,
            "has_more": has_more}
