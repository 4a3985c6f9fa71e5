"""Reads that see one moment of the database.

A page that counts rows in one statement and lists them in another can show a count and a list
that disagree (an item committed between the two: "37 pending" over 38 rows). ``one_snapshot()``
runs its reads in one transaction that sees one snapshot: REPEATABLE READ on PostgreSQL (read
committed takes a new snapshot per statement); on SQLite a transaction's reads already see the
database as of its first read. Inside a transaction already open (a unit of work, a test's), the
reads join it as they are.
"""
from __future__ import annotations

from contextlib import contextmanager

from django.db import DEFAULT_DB_ALIAS, transaction


@contextmanager
def one_snapshot(using: str = DEFAULT_DB_ALIAS):
    connection = transaction.get_connection(using)
    if connection.in_atomic_block:
        yield
        return
    with transaction.atomic(using=using):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:  # the transaction's first statement, as it must be
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        yield
