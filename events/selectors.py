from events.models import Event


def event_list(*, project, after: int = 0, limit: int = 100):
    return list(Event.objects.filter(project=project, id__gt=after).order_by("id")[:limit])
