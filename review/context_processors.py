"""Context for every template (registered in settings): the emergency banners of base.html and
the id of the newest event, from which the page's websocket resumes (no event is missed between
the page's rendering and the socket's opening). Lazy: a partial that uses neither costs no query."""
from django.utils.functional import SimpleLazyObject


def review(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not request.path.startswith("/review/"):
        return {}
    from review.selectors import latest_event_id, stopped_projects

    return {"stopped_projects": SimpleLazyObject(lambda: stopped_projects(user=user)),
            "last_event_id": SimpleLazyObject(latest_event_id)}
