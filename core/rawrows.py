"""Instances from hand-written SQL, converted exactly as the ORM converts them.

A few statements run on every request (the API key with its user, the project row under a
shared lock); building them with the ORM cost more CPU than running them. ``Columns`` lists a
model's columns under a table alias for such a statement and turns that part of a result row
back into an instance (``Model.from_db``, with the backend's and the fields' converters), so the
caller gets the same objects as from a queryset."""
from django.db import connection


class Columns:
    def __init__(self, model, alias: str):
        self.model, self.alias = model, alias
        self.fields = list(model._meta.concrete_fields)
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
