"""Signing in on the reviewer pages, as the pages' scripts see it.

A page's own requests (htmx: the inbox's re-fetch, a decision button) from someone whose session
has ended get a 401 with a plain-text note instead of the login page's redirect: the browser would
follow the redirect and htmx would paste the login form into the inbox list or the decision panel.
live.js shows the note and says "Signed out: reload to sign in". A plain navigation still goes to
the login page."""
from functools import wraps
from urllib.parse import urlsplit

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.csrf import csrf_failure as django_csrf_failure
from django.views.decorators.http import require_GET

from events.selectors import resume_point

SIGNED_OUT = "You are signed out: nothing was changed. Reload the page to sign in again."
GONE = ("This is not yours to see any more: your role in its project was removed, or it no longer exists. "
        "Nothing was changed. Reload the page.")
SESSION_CHANGED = ("Your session changed (signed out or in again elsewhere): nothing was changed. "
                   "Reload the page, then try again.")


NOT_SENT = ("Nothing was done: a form was not sent (after signing in again, a browser opens its address "
            "instead of sending it). Do it again here.")


def post_only(page: str, **names):
    """``require_POST`` for a form's target, except for a GET: the browser following the login
    page's ``next`` after the session ended mid-form (an emergency stop's reason typed, the
    Continue pressed). It goes back to the page the form is on (the URL name ``page``, its
    arguments from the view's, renamed by ``names``), saying nothing was done, instead of a bare
    "405 Method Not Allowed" that lost the action."""
    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method == "GET":
                messages.error(request, NOT_SENT)
                return redirect(reverse(page, kwargs={names.get(k, k): v for k, v in kwargs.items()
                                                      if names.get(k, k) is not None}))
            if request.method != "POST":
                return HttpResponseNotAllowed(["POST"])
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def is_htmx(request) -> bool:
    """A page's own request (htmx sends HX-Request), not a navigation."""
    return bool(getattr(request, "htmx", False))


def signed_in(view):
    """``login_required``, with a 401 note for the pages' own htmx requests."""
    redirecting = login_required(view)

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if is_htmx(request) and not request.user.is_authenticated:
            return HttpResponse(SIGNED_OUT, status=401, content_type="text/plain; charset=utf-8")
        if request.method == "GET" and not is_htmx(request) and request.user.is_authenticated:
            # A page's websocket resumes after the point the user had seen BEFORE the view
            # read the page's data: read while rendering (after it), an event committed in between
            # (a second trigger of a stop) counted as seen and never reached the page. Or before it,
            # where a lower id may still commit (events.selectors.settled_through).
            request.hitl_last_event_id = resume_point(request.user)
        if not is_htmx(request):
            return redirecting(request, *args, **kwargs)
        try:  # a page's own request for what the user can no longer see (a role removed meanwhile)
            return redirecting(request, *args, **kwargs)
        except Http404:
            return HttpResponse(GONE, status=404, content_type="text/plain; charset=utf-8")

    return wrapper


@require_GET
@signed_in
def session_probe(request):
    """204 while signed in (401 to the pages' script once not): live.js asks after a reconnect of
    its event stream is refused, since a refused websocket handshake does not say why."""
    return HttpResponse(status=204)


def _page_to_go_back_to(request) -> str:
    """The reviewer page the refused form was on (its Referer, when it is one of ours), else the inbox."""
    referer = request.META.get("HTTP_REFERER", "")
    if referer and url_has_allowed_host_and_scheme(referer, allowed_hosts={request.get_host()},
                                                   require_https=request.is_secure()):
        path = urlsplit(referer).path
        if path.startswith("/review/"):
            return referer
    return reverse("review:inbox")


def csrf_failure(request, reason=""):
    """CSRF_FAILURE_VIEW: the pages' htmx posts get a plain note (a session rotated by signing in
    again in another tab); their plain form posts (JavaScript off, the question page, the project's
    stop and recovery forms) a page saying the same, with the way back; anything else (the admin)
    Django's own page."""
    if is_htmx(request):
        return HttpResponse(SESSION_CHANGED, status=403, content_type="text/plain; charset=utf-8")
    if request.path.startswith("/review/"):
        return render(request, "review/session_changed.html", {"back": _page_to_go_back_to(request)}, status=403)
    return django_csrf_failure(request, reason=reason)
