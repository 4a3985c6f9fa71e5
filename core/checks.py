"""System checks of the API's short middleware chain (core/asgi.py): a Bearer API request runs
through HITL_API_MIDDLEWARE instead of MIDDLEWARE, so a middleware added to MIDDLEWARE alone
would silently never see an agent's request. Each middleware of MIDDLEWARE is either in the short
chain (in the same order) or named here as one only browsers need."""
from django.conf import settings
from django.core import checks

# What a request authenticated by ``Authorization: Bearer`` (never a browser) has no use for.
BROWSER_ONLY_MIDDLEWARE = frozenset({
    "core.middleware.StaticFilesMiddleware",                         # /static/ is not under /api/
    "django.contrib.sessions.middleware.SessionMiddleware",          # no cookie: no session
    "django.middleware.csrf.CsrfViewMiddleware",                     # DRF exempts Bearer requests
    "django.contrib.auth.middleware.AuthenticationMiddleware",       # DRF authenticates the key
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",        # JSON is never framed
    "django_htmx.middleware.HtmxMiddleware",
})


@checks.register(checks.Tags.security)
def api_middleware_check(app_configs=None, **kwargs):
    full, short = list(settings.MIDDLEWARE), getattr(settings, "HITL_API_MIDDLEWARE", None)
    if short is None:
        return []  # core/asgi.py then runs every request through MIDDLEWARE
    found = []
    unknown = [name for name in short if name not in full]
    if unknown:
        found.append(checks.Error(
            f"HITL_API_MIDDLEWARE has middleware that MIDDLEWARE does not: {', '.join(unknown)}.",
            hint="The short chain is MIDDLEWARE without what only browsers need: add it to MIDDLEWARE too.",
            id="core.E001"))
    in_full = [name for name in full if name in short]
    if not unknown and in_full != list(short):
        found.append(checks.Error(
            "HITL_API_MIDDLEWARE runs its middleware in another order than MIDDLEWARE does.",
            hint=f"Order it as MIDDLEWARE does: {', '.join(in_full)}.", id="core.E002"))
    skipped = [name for name in full if name not in short and name not in BROWSER_ONLY_MIDDLEWARE]
    if skipped:
        found.append(checks.Error(
            f"Bearer API requests would skip {', '.join(skipped)}: it is in MIDDLEWARE but not in "
            f"HITL_API_MIDDLEWARE.",
            hint="Add it to HITL_API_MIDDLEWARE (in MIDDLEWARE's order), or, if only browsers need it, "
                 "to core.checks.BROWSER_ONLY_MIDDLEWARE.", id="core.E003"))
    return found


@checks.register()
def web_threads_check(app_configs=None, **kwargs):
    """HITL_WEB_THREADS above the pool's HITL_DB_POOL_MAX: the threads past it wait for a connection
    (HITL_DB_POOL_TIMEOUT) and their requests end 503 under load (the README said to keep it at or
    below; nothing said so when it was not)."""
    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
    threads = getattr(settings, "HITL_WEB_THREADS", 1)
    if isinstance(pool, dict) and threads > pool.get("max_size", threads):
        return [checks.Warning(
            f"HITL_WEB_THREADS ({threads}) is above HITL_DB_POOL_MAX ({pool['max_size']}): the threads past the "
            f"pool wait for a database connection and their requests end 503 under load.",
            hint="Keep HITL_WEB_THREADS at or below HITL_DB_POOL_MAX (the long polls and the health check use "
                 "a few connections of the pool too).", id="core.W001")]
    return []


def refuse_to_start_on_errors(process: str) -> None:
    """Django's system checks (those of ``manage.py check``, without the database's), run when a
    web or Celery process starts: an error stops it there, naming what is wrong. Neither ran them,
    so a server with malformed audit keys or an analyzer that cannot be loaded started, answered
    its health check ``ok`` and then failed every request that needed them with a 500. A warning
    (a thread count above the pool, audit keys not set) is logged and the process starts."""
    import logging

    from django.core.exceptions import ImproperlyConfigured

    found = [m for m in checks.run_checks() if not m.is_silenced()]
    for warning in (m for m in found if not m.is_serious()):
        logging.getLogger("botarmy_hitl.checks").warning("%s: %s: %s%s", process, warning.id, warning.msg,
                                                         f" ({warning.hint})" if warning.hint else "")
    errors = [m for m in found if m.is_serious()]
    if errors:
        raise ImproperlyConfigured(f"{process} not started: " + " ".join(
            f"{m.id}: {m.msg}{f' ({m.hint})' if m.hint else ''}" for m in errors))
