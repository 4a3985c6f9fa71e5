"""A cache that lives for one request: what a request looks up several times (the user's
project roles, say) is loaded once and reused by every check in it, and forgotten when the
request ends, so a change made by another request is seen by the next one.

``core.middleware.request_scope_middleware`` opens the scope around every request. Outside a
request (Celery, management commands, tests calling services) there is no scope and ``memo``
just loads every time."""
from contextlib import contextmanager
from contextvars import ContextVar

_cache: ContextVar[dict | None] = ContextVar("hitl_request_cache", default=None)


@contextmanager
def request_scope():
    token = _cache.set({})
    try:
        yield
    finally:
        _cache.reset(token)


def memo(key, load):
    """``load()``, or what it returned earlier in this request for ``key``."""
    cache = _cache.get()
    if cache is None:
        return load()
    try:
        return cache[key]
    except KeyError:
        value = cache[key] = load()
        return value


def forget(key) -> None:
    """Drop ``key`` from this request's cache (after a write that changes it)."""
    cache = _cache.get()
    if cache is not None:
        cache.pop(key, None)
