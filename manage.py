#!/usr/bin/env python
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botarmy_hitl.settings")
    # A command runs on one connection at a time: no pool (settings.py), so a database that
    # refuses it (a wrong name, port or user) is said at once in one line.
    os.environ.setdefault("HITL_DB_POOL", "0")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line
    from django.db import OperationalError, connections

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:  # the environment, not the code: one line, not a traceback
        print(f"manage.py: {exc}", file=sys.stderr)
        if not os.environ.get("DJANGO_DEBUG") and not os.environ.get("DJANGO_SECRET_KEY"):
            print("manage.py: on the embedded demo (what `make run` starts) run it as "
                  "`DJANGO_DEBUG=1 .venv/bin/python manage.py ...`", file=sys.stderr)
        sys.exit(2)
    except OperationalError as exc:
        from core.errors import transient_db_error_kind

        reason = " ".join(str(exc).split())  # libpq's hint on a line of its own: one line all the same
        if transient_db_error_kind(exc) == "lock not available":  # it said "cannot connect" (a migrate)
            print(f"manage.py: a table stayed locked by another transaction for HITL_DB_LOCK_TIMEOUT seconds "
                  f"({reason}): the step that waited was rolled back; end what holds the lock (a server still "
                  f"running the old version, an open psql session) and run the command again", file=sys.stderr)
            sys.exit(2)
        if connections["default"].connection is not None:
            raise  # a statement failed on an open connection: its traceback says where
        print(f"manage.py: cannot connect to the database of DATABASE_URL: {reason}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
