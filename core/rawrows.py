"""Instances from hand-written SQL, converted exactly as the ORM converts them.

A few statements run on every request (the API key with its user, the project row under a
shared lock); building them with the ORM cost more CPU than running them. ``Columns`` lists a
model's columns under a table alias for such a statement and turns that part of a result row
back into an instance (``Model.from_db``, with the backend's and the fields' converters), so the
caller gets the same objects as from a queryset."""
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections
from django.db.models import signals


class Columns:
    def __init__(self, model, alias: str, names: tuple[str, ...] | None = None):
        """``names``: only these fields (by name; the primary key among them), else every column.
        The columns come in the model's field order, whatever the order of ``names``
        (``Model.from_db`` reads partial rows in that order)."""
        self.model, self.alias = model, alias
        self.fields = list(model._meta.concrete_fields)
        if names:
            wanted = {model._meta.get_field(n) for n in names}
            self.fields = [f for f in self.fields if f in wanted]
        quote = connection.ops.quote_name
        self.sql = ", ".join(f"{alias}.{quote(f.column)}" for f in self.fields)
        self._converters = []
        for field in self.fields:
            expression = field.get_col(model._meta.db_table)
            self._converters.append((expression, connection.ops.get_db_converters(expression)
                                     + field.get_db_converters(connection)))
        self._names = [f.attname for f in self.fields]
        self._alias = connection.alias

    def __len__(self):
        return len(self.fields)

    def build(self, values):
        """The instance of these values (None when the row had none: an outer join's missing side)."""
        if values[0] is None and all(v is None for v in values):
            return None
        converted, wrapper = [], None
        for (expression, functions), value in zip(self._converters, values):
            for convert in functions:
                wrapper = wrapper or db()
                value = convert(value, expression, wrapper)
            converted.append(value)
        return self.model.from_db(self._alias, self._names, converted)


_BY_PK: dict[tuple, tuple] = {}


def by_pk(model, pk, names: tuple[str, ...] | None = None, *, lock: bool = False, **equal):
    """The row of ``model`` whose primary key is ``pk`` (and whose fields ``equal`` has, by name:
    ``project_id=...``), as an instance (only the fields ``names`` when given, the rest
    deferred), or None: one hand-written statement, for the reads every request of a kind makes
    (a task, a call's route). ``lock``: ``FOR NO KEY UPDATE``, as ``UnitOfWork.lock`` takes it
    (the caller enters the stage)."""
    connection = db()  # this thread's database wrapper (the module's is a proxy)
    key = (model, names, lock, tuple(sorted(equal)))
    if key not in _BY_PK:
        columns = Columns(model, "t", names)
        quote, meta = connection.ops.quote_name, model._meta
        extra = [meta.get_field(name) for name in key[3]]
        where = "".join(f" AND t.{quote(f.column)} = %s" for f in extra)
        suffix = " FOR NO KEY UPDATE" if lock and connection.features.has_select_for_no_key_update else ""
        _BY_PK[key] = (f"SELECT {columns.sql} FROM {quote(meta.db_table)} t "
                       f"WHERE t.{quote(meta.pk.column)} = %s{where}{suffix}", columns, extra)
    sql, columns, extra = _BY_PK[key]
    params = [model._meta.pk.get_db_prep_value(pk, connection)]
    params += [f.get_db_prep_value(equal[f.name] if f.name in equal else equal[f.attname], connection)
               for f in extra]
    with kept_cursor(connection) as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else columns.build(row)



_WITH: dict[tuple, tuple] = {}


def by_pk_with(model, pk, related: tuple[str, ...], *, share_lock: bool = False):
    """``by_pk`` with the rows of the relations ``related`` (by name: foreign keys, or reverse
    one-to-ones such as a project's budget) joined in the same statement and cached on the
    instance, as ``select_related`` does (a missing one cached as None); None when there is no
    such row. ``share_lock``: the row (not the joined ones) under PostgreSQL's ``FOR SHARE`` (the
    caller enters the stage). For the reads of one object that every request of a kind makes."""
    connection = db()  # this thread's database wrapper (the module's is a proxy)
    key = (model, related, share_lock)
    if key not in _WITH:
        quote, meta = connection.ops.quote_name, model._meta
        columns = Columns(model, "t")
        parts, joins = [], []
        for i, name in enumerate(related):
            field = meta.get_field(name)
            other = Columns(field.related_model, f"r{i}")
            if field.concrete:  # a foreign key of this row
                on = f"r{i}.{quote(field.target_field.column)} = t.{quote(field.column)}"
            else:  # a reverse one-to-one: the other row's key points here
                on = f"r{i}.{quote(field.field.column)} = t.{quote(meta.pk.column)}"
            joins.append(f"LEFT JOIN {quote(field.related_model._meta.db_table)} r{i} ON {on}")
            parts.append((field, other))
        select = ", ".join([columns.sql, *(other.sql for _, other in parts)])
        lock = " FOR SHARE OF t" if share_lock and connection.features.has_select_for_update_of else ""
        _WITH[key] = (f"SELECT {select} FROM {quote(meta.db_table)} t {' '.join(joins)} "
                      f"WHERE t.{quote(meta.pk.column)} = %s{lock}", columns, parts)
    sql, columns, parts = _WITH[key]
    with kept_cursor(connection) as cursor:
        cursor.execute(sql, [model._meta.pk.get_db_prep_value(pk, connection)])
        row = cursor.fetchone()
    if row is None:
        return None
    obj = columns.build(row[:len(columns)])
    offset = len(columns)
    for field, other in parts:
        field.set_cached_value(obj, other.build(row[offset:offset + len(other)]))
        offset += len(other)
    return obj


_INSERT: dict = {}


def insert(instance, *, skip_if_duplicate: bool = False) -> bool:
    """INSERT ``instance`` as ``save(force_insert=True)`` would (defaults and ``auto_now`` fields
    filled by the fields' own ``pre_save``; an auto primary key read back), in one statement
    written out once per model. For the rows every call writes (the call itself, its ledger
    entry), where the ORM's save machinery cost more CPU than the insert. A unique or foreign-key
    violation raises Django's IntegrityError, as ``save`` does; with ``skip_if_duplicate`` a row
    that would break a unique constraint is not written and False is returned (``ON CONFLICT DO
    NOTHING``: no savepoint needed around it; other violations still raise). No signals are
    sent: a model with save receivers is refused (``ImproperlyConfigured``), never written
    behind their back."""
    connection = db()  # this thread's database wrapper (the module's is a proxy)
    model = type(instance)
    _refuse_receivers(model)
    key = (model, skip_if_duplicate)
    if key not in _INSERT:
        meta, quote = model._meta, connection.ops.quote_name
        auto_pk = meta.pk if meta.auto_field is not None and meta.pk is meta.auto_field else None
        fields = [f for f in meta.concrete_fields if f is not auto_pk]
        returning = ""
        if auto_pk is not None and connection.features.can_return_columns_from_insert:
            returning = f" RETURNING {quote(auto_pk.column)}"
        conflict = " ON CONFLICT DO NOTHING" if skip_if_duplicate else ""  # PostgreSQL, SQLite 3.24+
        _INSERT[key] = (f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
                        f"VALUES ({', '.join(['%s'] * len(fields))}){conflict}{returning}", fields, auto_pk)
    sql, fields, auto_pk = _INSERT[key]
    values = [f.get_db_prep_save(f.pre_save(instance, True), connection) for f in fields]
    with kept_cursor(connection) as cursor:
        cursor.execute(sql, values)
        if skip_if_duplicate and cursor.rowcount == 0:
            return False
        if auto_pk is not None:
            setattr(instance, auto_pk.attname, cursor.fetchone()[0] if connection.features.can_return_columns_from_insert
                    else connection.ops.last_insert_id(cursor, model._meta.db_table, auto_pk.column))
    instance._state.adding, instance._state.db = False, connection.alias
    return True


_UPDATE: dict = {}


def update_fields(instance, names) -> None:
    """``instance.save(update_fields=names)`` in one statement written out once per (model,
    fields): each field's ``pre_save`` runs (``auto_now`` stamps ``updated_at``), and a row that
    is gone raises DatabaseError as ``save`` does. For the rows a call's every step changes (the
    call, its task), which the caller has locked. No signals are sent: a model with save
    receivers is refused, as by ``insert``."""
    connection = db()  # this thread's database wrapper (the module's is a proxy)
    model, names = type(instance), tuple(names)
    _refuse_receivers(model)
    key = (model, names)
    if key not in _UPDATE:
        meta, quote = model._meta, connection.ops.quote_name
        fields = [meta.get_field(name) for name in names]
        _UPDATE[key] = (f"UPDATE {quote(meta.db_table)} SET {', '.join(f'{quote(f.column)} = %s' for f in fields)} "
                        f"WHERE {quote(meta.pk.column)} = %s", fields)
    sql, fields = _UPDATE[key]
    values = [f.get_db_prep_save(f.pre_save(instance, False), connection) for f in fields]
    with kept_cursor(connection) as cursor:
        cursor.execute(sql, [*values, model._meta.pk.get_db_prep_value(instance.pk, connection)])
        if cursor.rowcount != 1:
            raise DatabaseError(f"{model._meta.label} {instance.pk}: the row to update is gone.")


def _refuse_receivers(model) -> None:
    """A receiver of ``pre_save``/``post_save`` (an audit hook, a cache invalidation, a
    library's) that the hand-written statements would silently skip is a bug: refused at once,
    so the model is written with ``save()`` instead (checked on each call, about a microsecond:
    a receiver connected after the first write is refused too)."""
    if signals.pre_save.has_listeners(model) or signals.post_save.has_listeners(model):
        raise ImproperlyConfigured(f"{model._meta.label} has pre_save/post_save receivers, which core.rawrows "
                                   f"would skip: write it with save().")


class _Kept:
    """A kept cursor's wrapper for one statement: ``with`` hands it out and does not close it."""

    __slots__ = ("cursor",)

    def __init__(self, cursor):
        self.cursor = cursor

    def __enter__(self):
        return self.cursor

    def __exit__(self, *exc_info):
        return False


def kept_cursor(connection=None):
    """A cursor for one hand-written statement, as ``with rawrows.kept_cursor(connection) as cursor:``.

    Each database connection keeps one driver cursor for these statements instead of opening one
    per statement: a new psycopg cursor looks up again how to send each parameter's type and read
    each result column's type, which cost more CPU than the statement's own round trip. The cursor
    lives on the driver's connection (a pooled connection checked out again brings its own; it is
    this thread's alone while checked out) and gets Django's wrapper per statement, so errors are
    Django's and tests still count the queries (a debug wrapper while queries are logged). The
    connection is opened and health-checked as for any cursor. On PostgreSQL only; elsewhere Django
    makes and closes a cursor as usual."""
    connection = connection or db()
    if connection.vendor != "postgresql":
        return connection.cursor()
    connection.close_if_health_check_failed()  # what connection.cursor() does before a cursor
    connection.ensure_connection()
    raw = connection.connection
    connection.validate_thread_sharing()
    kept = getattr(raw, "_hitl_kept_cursor", None)
    if kept is None or kept.closed:
        with connection.wrap_database_errors:
            kept = raw._hitl_kept_cursor = connection.create_cursor()
    return _Kept(connection.make_debug_cursor(kept) if connection.queries_logged else connection.make_cursor(kept))


def db():
    """This thread's database wrapper. ``django.db.connection`` is a proxy that looks the
    wrapper up on every attribute access (about a microsecond each): the hot statements take it
    once and hand it to the fields' conversions."""
    return connections[DEFAULT_DB_ALIAS]
