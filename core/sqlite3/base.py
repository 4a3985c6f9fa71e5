"""Django's SQLite backend (ENGINE "core.sqlite3", the embedded default) with one difference:
an amount past its column's precision is refused as PostgreSQL refuses it.

SQLite stores any number in a NUMERIC(14,4) column; Django then fails to read the row back
(``decimal.InvalidOperation`` on every later read of the project's budget, a stop included). So
a value with more digits than the field holds raises ``NumericValueOutOfRange`` (SQLSTATE 22003,
PostgreSQL's "numeric value out of range") when it is written: the unit of work rolls back and
the API answers 409, as on PostgreSQL (core.errors.out_of_range).

Everything else is Django's backend, unchanged.
"""
from decimal import Decimal, InvalidOperation

from django.db import DataError
from django.db.backends.sqlite3 import base, operations


class NumericValueOutOfRange(DataError):
    sqlstate = "22003"


class DatabaseOperations(operations.DatabaseOperations):
    def adapt_decimalfield_value(self, value, max_digits=None, decimal_places=None):
        # (Also for a lookup's value: a comparison with an amount no column holds raises too,
        # where PostgreSQL would compare; nothing here filters on such amounts.)
        if value is not None and max_digits is not None and decimal_places is not None:
            try:  # as stored: rounded to its places first (9.99995 in a (5,4) column is 10.0000)
                stored = Decimal(value).quantize(Decimal(1).scaleb(-decimal_places))
            except InvalidOperation:
                stored = None
            if stored is None or abs(stored) >= Decimal(10) ** (max_digits - decimal_places):
                raise NumericValueOutOfRange(f"numeric field overflow: {value} needs more than {max_digits} "
                                             f"digits ({decimal_places} after the point)")
        return super().adapt_decimalfield_value(value, max_digits, decimal_places)


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations
