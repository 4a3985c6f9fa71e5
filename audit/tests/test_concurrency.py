"""verify reads one snapshot: writers appending while it runs cause no false alarms (PostgreSQL)."""
import threading
import uuid

import pytest
from django.db import connections

from audit.models import AuditEvent
from audit.services import audit_record, audit_verify

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_verify_reports_nothing_while_writers_append(admin_user, project):
    """Four threads append to a busy project chain, the global chain and freshly created chains
    while verify walks the trail again and again. Read outside one snapshot, the heads fall behind
    the rows ("rows deleted or inserted at the end") and new chains' rows look like orphans."""
    stop = threading.Event()
    errors, appended = [], []
    fresh_projects = [uuid.uuid4() for _ in range(40)]

    def writer(i):
        try:
            n = 0
            while not stop.is_set():
                n += 1
                target = [project.pk, None, fresh_projects[(i * 10 + n) % len(fresh_projects)]][n % 3]
                audit_record(actor=admin_user, action="test.append", project_id=target,
                             object_type="test", object_id=f"{i}-{n}", after={"n": n})
                appended.append(1)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        reports = [audit_verify() for _ in range(25)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(appended) > 100, "the writers must really have run during the verifications"
    assert [problem for report in reports for problem in report] == []
    assert audit_verify() == []
    assert AuditEvent.objects.filter(action="test.append").count() == len(appended)
