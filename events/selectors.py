from events.models import Event
from events.services import event_payload


def event_list(*, project, after: int = 0, limit: int = 100):
    return list(Event.objects.filter(project=project, id__gt=after).order_by("id")[:limit])


def event_page(*, project, after: int, limit: int) -> dict:
    """GET /api/v1/events: ``{"results", "last_event_id", "has_more"}`` (one query)."""
    events = event_list(project=project, after=after, limit=limit + 1)
    has_more = len(events) > limit
    events = events[:limit]
    return {"results": [event_payload(e) for e in events], "last_event_id": events[-1].id if events else after,
            "has_more": has_more}
