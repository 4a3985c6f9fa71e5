"""core.postgresql: Django's backend with timestamps loaded by psycopg's C loader and the
connection parameters built once; what comes back is what Django's own backend gives."""
from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection

from projects.models import Task

pytestmark = [pytest.mark.django_db,
              pytest.mark.skipif(connection.vendor != "postgresql", reason="the PostgreSQL backend (set DATABASE_URL)")]


def test_timestamps_load_through_the_c_loader_and_read_back_exactly(project, agent):
    from django.db.backends.postgresql.psycopg_any import BaseTzLoader

    loader = connection.connection.adapters.get_loader(1184, 0)  # timestamptz, text
    assert loader.__name__ == "CTzLoader" and not issubclass(loader, BaseTzLoader)
    assert loader.timezone == connection.timezone
    moments = [datetime(2026, 12, 2, 10, 30, 15, 123456, tzinfo=timezone.utc),
               datetime(1999, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
               datetime(2040, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=9)))]
    for moment in moments:
        task = Task.objects.create(project=project, agent_type="coder", title="t", created_by=agent)
        Task.objects.filter(pk=task.pk).update(started_at=moment)
        loaded = Task.objects.values_list("started_at", flat=True).get(pk=task.pk)
        assert loaded == moment and loaded.utcoffset() == timedelta(0) and loaded.tzinfo == connection.timezone
    with connection.cursor() as cursor:  # raw SQL too, and NULL
        cursor.execute("SELECT %s::timestamptz, NULL::timestamptz", [moments[1]])
        assert cursor.fetchone() == (moments[1], None)


def test_the_connection_parameters_follow_the_settings():
    first = connection.get_connection_params()
    assert connection.get_connection_params() == first and connection.get_connection_params() is not first
    saved = connection.settings_dict["NAME"]
    try:
        connection.settings_dict["NAME"] = "another_database"
        assert connection.get_connection_params()["dbname"] == "another_database"
    finally:
        connection.settings_dict["NAME"] = saved
    assert connection.get_connection_params()["dbname"] == saved
