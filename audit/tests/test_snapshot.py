"""verify_audit reads in one snapshot transaction (the race itself: test_concurrency.py)."""
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.services import audit_record, audit_verify


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_verify_runs_in_one_repeatable_read_read_only_transaction(admin_user):
    audit_record(actor=admin_user, action="test.step", object_type="test", object_id="1")
    with CaptureQueriesContext(connection) as ctx:
        assert audit_verify() == []
    statements = [q["sql"] for q in ctx.captured_queries]
    # "BEGIN" / "COMMIT" are Django's markers of the transaction; SET must be its first statement.
    assert statements[:2] == ["BEGIN", "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"]
    assert statements[-1] == "COMMIT" and statements.count("BEGIN") == 1
    assert not connection.in_atomic_block and connection.get_autocommit()


@pytest.mark.django_db(transaction=True)
def test_on_sqlite_verify_reads_in_one_deferred_transaction(admin_user):
    """The settings begin transactions IMMEDIATE (the write lock); verify must not hold it."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite only")
    audit_record(actor=admin_user, action="test.step", object_type="test", object_id="1")
    mode = connection.transaction_mode
    with CaptureQueriesContext(connection) as ctx:
        assert audit_verify() == []
    statements = [q["sql"] for q in ctx.captured_queries]
    assert statements[0] == "BEGIN DEFERRED" and statements.count("BEGIN DEFERRED") == 1
    assert connection.transaction_mode == mode and not connection.in_atomic_block
