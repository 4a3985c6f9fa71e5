"""Context for every template (registered in settings): the emergency banners of base.html (and of
the admin's base_site.html) and the event id from which the page's websocket resumes (events.selectors.resume_point)
(no event is missed between the page's rendering and the socket's opening). Lazy: a partial that
uses neither costs no query."""
from django.utils.functional import SimpleLazyObject


# The top bar's sections (review/project_partials/nav.html) and the pages under each: the section's
# own page is marked aria-current="page", a page under it aria-current="true".
NAV_SECTIONS = {
    "inbox": ("inbox", "agent_approval", "response_approval", "hitl_request"),
    "projects": ("projects", "project", "project_stop", "recovery_start", "recovery", "recovery_step_decide"),
    "audit": ("audit",),
}
_SECTION_OF = {name: section for section, names in NAV_SECTIONS.items() for name in names}


def review(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not request.path.startswith(("/review/", "/admin/")):
        return {}
    from events.selectors import resume_point
    from review.selectors import stopped_projects

    if request.path.startswith("/admin/"):  # the admin shows the same stop banners (admin/base_site.html)
        return {"stopped_projects": SimpleLazyObject(lambda: stopped_projects(user=user))}

    match = getattr(request, "resolver_match", None)
    page = match.url_name if match is not None else None
    return {"stopped_projects": SimpleLazyObject(lambda: stopped_projects(user=user)),
            "last_event_id": (request.hitl_last_event_id if hasattr(request, "hitl_last_event_id")   # review.auth
                              else SimpleLazyObject(lambda: resume_point(user))),
            "nav_page": page, "nav_section": _SECTION_OF.get(page)}
