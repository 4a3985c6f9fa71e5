"""The test suite's PostgreSQL backend (ENGINE "core.postgresql.testing", set by
botarmy_hitl/test_settings.py): ``core.postgresql`` with a cheaper flush.

Every transactional test (``django_db(transaction=True)``: the races, the real servers) ends with
Django's flush, which PostgreSQL answers with one TRUNCATE of every table: a new file per table,
about half a second each time on this suite's hosts, several minutes of a CI run. The test tables
hold a handful of rows, so DELETE empties them in about a hundredth of that; the foreign keys
Django creates are deferrable, checked once at the end of the flush's transaction. A flush that
resets sequences (or cascades) keeps Django's TRUNCATE."""
from django.db.backends.postgresql.operations import DatabaseOperations as PostgresOperations

from core.postgresql import base


class DatabaseOperations(PostgresOperations):
    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        if not tables or reset_sequences or allow_cascade:
            return super().sql_flush(style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        return ["SET CONSTRAINTS ALL DEFERRED;",
                *(f"{style.SQL_KEYWORD('DELETE FROM')} {style.SQL_FIELD(self.quote_name(table))};"
                  for table in tables)]


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations
