"""Django's PostgreSQL backend (ENGINE "core.postgresql") with two costs taken off every request.

- Timestamps load through psycopg's C loader. Django registers its own ``timestamptz`` loader (to
  give values its time zone), a subclass of psycopg's pure-Python one, so every timestamp of every
  row was parsed by a regular expression in Python: a twentieth of a trivial GET's CPU. Here the
  loader hands the text to psycopg_binary's C loader and sets the same time zone on the result.
  Without psycopg_binary (a pure-Python or a self-built psycopg), Django's loader stays.
- The connection parameters are built once per connection wrapper (each of a web process's
  threads keeps its own) instead of on every checkout from the pool: they come from the settings,
  which do not change while the process runs.

And one thing added: when a statement finds its connection lost (the server restarted, failed
over or ended it), the process's pool checks its idle connections at once, dropping the dead
ones. Each of them was handed to a request of its own, which failed (503): after a restart, a
third of the next 30 requests, and the health check said the database was unreachable while it
answered.

Everything else is Django's backend, unchanged.
"""
import copy
import logging
import threading

from django.db.backends.postgresql import base
from django.db.backends.postgresql.psycopg_any import is_psycopg3
from django.db.utils import DatabaseErrorWrapper
from django.utils.functional import cached_property

from core.errors import transient_db_error_kind

try:
    from psycopg.adapt import AdaptersMap, Loader
    from psycopg_binary import _psycopg

    _CLoader = _psycopg.TimestamptzLoader
except ImportError:  # no C implementation: Django's own loader is kept
    _CLoader = None

_CONTEXTS: dict = {}


def _fast_context(template, timezone):
    """``template`` (Django's adapters map for ``timezone``) with the C-backed timestamptz loader
    (one map per time zone, as Django keeps one template per time zone)."""
    key = (id(template), timezone)
    if key not in _CONTEXTS:

        class CTzLoader(Loader):
            """Django's BaseTzLoader (``timezone`` set on each value, or chopped when None),
            parsing in C."""

            def __init__(self, oid, context=None):
                super().__init__(oid, context)
                self._load = _CLoader(oid, context).load

            def load(self, data):
                return self._load(data).replace(tzinfo=self.timezone)

        CTzLoader.timezone = timezone
        context = AdaptersMap(template)
        context.register_loader("timestamptz", CTzLoader)
        _CONTEXTS[key] = (template, context)  # the template kept alive: its id stays its own
    return _CONTEXTS[key][1]


log = logging.getLogger(__name__)
_checking = threading.Lock()  # one check of the pool at a time: the others' requests go on


def check_pool_after_a_lost_connection(wrapper) -> None:
    """Drop the dead idle connections of ``wrapper``'s pool (psycopg_pool's ``check``: each idle
    connection tried, a broken one replaced), unless another thread is doing it already."""
    pool = getattr(wrapper, "pool", None)
    if pool is None or not _checking.acquire(blocking=False):
        return
    try:
        pool.check()
    except Exception:  # noqa: BLE001 - the server may be down still: the pool reconnects by itself
        log.info("checking the connection pool after a lost connection failed", exc_info=True)
    finally:
        _checking.release()


class _ErrorWrapper(DatabaseErrorWrapper):
    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is not None and transient_db_error_kind(exc_value) == "connection lost":
            check_pool_after_a_lost_connection(self.wrapper)
        return super().__exit__(exc_type, exc_value, traceback)


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self):
        cached = self.__dict__.get("_hitl_connection_params")
        # Rebuilt when the settings change (the test runner renames the database, a test
        # overrides the time zone); comparing them costs a fraction of building the parameters.
        if cached is None or cached[0] != self.settings_dict or cached[1] != self.timezone_name:
            params = super().get_connection_params()
            if is_psycopg3 and _CLoader is not None and "context" in params:
                params["context"] = _fast_context(params["context"], self.timezone)
            cached = self._hitl_connection_params = (copy.deepcopy(self.settings_dict), self.timezone_name, params)
        return dict(cached[2])

    @cached_property
    def wrap_database_errors(self):
        return _ErrorWrapper(self)
