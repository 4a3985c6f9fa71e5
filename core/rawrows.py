"""Instances from hand-written SQL, converted exactly as the ORM converts them.

A few statements run on every request (the API key with its user, the project row under a
shared lock); building them with the ORM cost more CPU than running them. ``Columns`` lists a
model's columns under a table alias for such a statement and turns that part of a result row
back into an instance (``Model.from_db``, with the backend's and the fields' converters), so the
caller gets the same objects as from a queryset."""
from django.db import connection


class Columns:
    def __init__(self, model, alias: str, names: tuple[str, ...] | None = None):
        """``names``: only these fields (by name; the primary key first), else every column."""
        self.model, self.alias = model, alias
        self.fields = [model._meta.get_field(n) for n in names] if names else list(model._meta.concrete_fields)
        quote = connection.ops.quote_name
        self.sql = ", ".join(f"{alias}.{quote(f.column)}" for f in self.fields)
        self._converters = []
        for field in self.fields:
            expression = field.get_col(model._meta.db_table)
            self._converters.append((expression, connection.ops.get_db_converters(expression)
                                     + field.get_db_converters(connection)))
        self._names = [f.attname for f in self.fields]

    def __len__(self):
        return len(self.fields)

    def build(self, values):
        """The instance of these values (None when the row had none: an outer join's missing side)."""
        if values[0] is None and all(v is None for v in values):
            return None
        converted = []
        for (expression, functions), value in zip(self._converters, values):
            for convert in functions:
                value = convert(value, expression, connection)
            converted.append(value)
        return self.model.from_db(connection.alias, self._names, converted)


_BY_PK: dict[tuple, tuple] = {}


def by_pk(model, pk, names: tuple[str, ...] | None = None):
    """The row of ``model`` whose primary key is ``pk``, as an instance (only the fields ``names``
    when given, the rest deferred), or None: one hand-written statement, for the reads every
    request of a kind makes (a task, a call's route)."""
    key = (model, names)
    if key not in _BY_PK:
        columns = Columns(model, "t", names)
        quote = connection.ops.quote_name
        _BY_PK[key] = (f"SELECT {columns.sql} FROM {quote(model._meta.db_table)} t "
                       f"WHERE t.{quote(model._meta.pk.column)} = %s", columns)
    sql, columns = _BY_PK[key]
    with connection.cursor() as cursor:
        cursor.execute(sql, [model._meta.pk.get_db_prep_value(pk, connection)])
        row = cursor.fetchone()
    return None if row is None else columns.build(row)
