import hmac
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.db.models import Max
from django.utils import timezone

from audit.checkpoints import FILE_GLOB, FORMAT, CheckpointInvalid, checkpoint_file_read, checkpoint_file_write
from audit.hashing import floats_hashed_otherwise_before, signed_digest
from audit.hooks import expected_chains
from audit.keys import DEV_KEY_PREFIX, UnknownKeyId, chain_keys, dev_chain_key, signing_key
from audit.models import GENESIS_HASH, AuditChain, AuditEvent
from core.rawrows import db, kept_cursor
from core.uow import defer_or_run


def to_json(value):
    """Plain JSON (UUIDs, Decimals and datetimes as strings), exactly as it reads back."""
    if value is None:
        return None
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def actor_repr(actor) -> str:
    if actor is None or not getattr(actor, "is_authenticated", False):
        return "system"
    return f"{actor.get_username()}#{actor.pk}"


def chain_key(project_id) -> str:
    return str(project_id) if project_id else "global"


_SQL: dict[str, str] = {}


def _sql() -> dict[str, str]:
    """The three statements of an append, written out once (every write runs them; the ORM's
    compiling cost more CPU than running them). On PostgreSQL the insert and the head's update go
    as one statement (a data-modifying WITH), one round trip fewer while the chain's head is held."""
    if not _SQL:
        quote = connection.ops.quote_name
        chain, event = AuditChain._meta, AuditEvent._meta
        columns = [f for f in event.concrete_fields if not f.primary_key]
        returning = f" RETURNING {quote(event.pk.column)}" if connection.features.can_return_columns_from_insert else ""
        _SQL.update(
            lock=f"SELECT {quote(chain.pk.column)}, {quote('key')}, last_seq, last_hash FROM {quote(chain.db_table)} "
                 f"WHERE {quote('key')} = %s" + (" FOR NO KEY UPDATE" if connection.features.has_select_for_update else ""),
            insert=f"INSERT INTO {quote(event.db_table)} ({', '.join(quote(f.column) for f in columns)}) "
                   f"VALUES ({', '.join(['%s'] * len(columns))}){returning}",
            head=f"UPDATE {quote(chain.db_table)} SET last_seq = %s, last_hash = %s WHERE {quote(chain.pk.column)} = %s",
        )
        if connection.vendor == "postgresql":  # the insert and the head's update in one statement
            _SQL["insert_and_head"] = (f"WITH e AS ({_SQL['insert']}) {_SQL['head']} "
                                       f"RETURNING (SELECT {quote(event.pk.column)} FROM e)")
        _SQL["columns"] = columns
    return _SQL


def _lock_chain(key: str) -> AuditChain:
    connection = db()  # this thread's database wrapper (the module's is a proxy)
    sql = _sql()
    with kept_cursor(connection) as cursor:
        cursor.execute(sql["lock"], [key])
        row = cursor.fetchone()
        if row is None:
            try:
                with transaction.atomic():
                    AuditChain.objects.create(key=key)
            except IntegrityError:
                pass  # created concurrently
            cursor.execute(sql["lock"], [key])
            row = cursor.fetchone()
    return AuditChain.from_db(connection.alias, ["id", "key", "last_seq", "last_hash"], list(row))


def audit_record(*, actor, action: str, obj=None, project_id=None, object_type: str = "",
                 object_id: str = "", before=None, after=None, reason: str = "") -> AuditEvent | None:
    """Append one row to the project's chain, in the caller's transaction.

    Call it last in a service (after the row locks of the change): the chain head's lock is
    then held only until the commit, and always taken after the domain rows, so no deadlock.
    Inside a unit of work (core/uow.py) the row is written at its end (stage ``audit_chain``),
    with ``before``/``after`` as they were at this call; the return value is then None."""
    if obj is not None:
        object_type = object_type or obj._meta.label_lower
        object_id = object_id or str(obj.pk)
        if project_id is None:
            project_id = obj.pk if obj._meta.label_lower == "projects.project" else getattr(obj, "project_id", None)
    row = {"actor": actor, "action": action, "project_id": project_id, "object_type": object_type,
           "object_id": str(object_id), "before": to_json(before), "after": to_json(after), "reason": reason or ""}
    return defer_or_run("audit_chain", lambda: _append(**row))


@transaction.atomic(savepoint=False)  # inside a unit of work: its failure fails the whole write
def _append(*, actor, action, project_id, object_type, object_id, before, after, reason) -> AuditEvent:
    connection = db()  # this thread's database wrapper (the module's is a proxy)
    chain = _lock_chain(chain_key(project_id))
    key_id, secret = signing_key()
    event = AuditEvent(
        chain=chain,
        seq=chain.last_seq + 1,
        created_at=timezone.now(),
        actor=actor if actor_repr(actor) != "system" else None,
        actor_repr=actor_repr(actor),
        action=action,
        project_id=project_id,
        object_type=object_type,
        object_id=object_id,
        before=before,
        after=after,
        reason=reason,
        prev_hash=chain.last_hash,
        key_id=key_id,
    )
    event.hash = signed_digest(event, chain.key, secret)
    sql = _sql()
    values = [f.get_db_prep_save(getattr(event, f.attname), connection) for f in sql["columns"]]
    with kept_cursor(connection) as cursor:
        if "insert_and_head" in sql:
            cursor.execute(sql["insert_and_head"], [*values, event.seq, event.hash, chain.pk])
            event.pk = cursor.fetchone()[0]
        else:
            cursor.execute(sql["insert"], values)
            event.pk = cursor.fetchone()[0] if connection.features.can_return_columns_from_insert else \
                connection.ops.last_insert_id(cursor, AuditEvent._meta.db_table, AuditEvent._meta.pk.column)
            cursor.execute(sql["head"], [event.seq, event.hash, chain.pk])
        event._state.adding, event._state.db = False, connection.alias
    chain.last_seq, chain.last_hash = event.seq, event.hash
    return event


@contextmanager
def _read_snapshot(using: str = DEFAULT_DB_ALIAS):
    """One consistent view of the database for a multi-query read.

    PostgreSQL: a REPEATABLE READ, READ ONLY transaction (a snapshot taken at its first query).
    SQLite: one read transaction, which is a snapshot too; it is begun DEFERRED even though the
    settings begin transactions IMMEDIATE, so the walk does not hold the write lock and block
    every writer for its duration. Inside a caller's transaction, that transaction is used as is."""
    connection = connections[using]
    if connection.in_atomic_block:
        yield
        return
    sqlite_mode = None
    if connection.vendor == "sqlite":
        connection.ensure_connection()  # connecting (re)sets transaction_mode from the settings
        sqlite_mode, connection.transaction_mode = connection.transaction_mode, "DEFERRED"
    try:
        with transaction.atomic(using=using):
            if connection.vendor == "sqlite":
                connection.transaction_mode = sqlite_mode  # BEGIN DEFERRED is issued by now
            elif connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield
    finally:
        if connection.vendor == "sqlite":
            connection.transaction_mode = sqlite_mode


@dataclass
class AuditVerification:
    problems: list[str] = field(default_factory=list)
    rows: int = 0
    chains: int = 0
    checkpoints: int = 0
    chain_keys: list[str] = field(default_factory=list)  # the chains walked


CHAIN_PROBLEMS_SHOWN = 5  # per chain; the rest are counted


def _hash_holds(row: AuditEvent, keys: dict[str, bytes]) -> bool:
    """``UnknownKeyId`` if its key is not configured."""
    if hmac.compare_digest(row.compute_hash(keys), row.hash):
        return True
    # written before whole floats past 2**53 were hashed as their text says (1e23): on SQLite such
    # a row reads back as written and holds under the rule it was hashed with
    return (bool(row.key_id) and (floats_hashed_otherwise_before(row.before) or floats_hashed_otherwise_before(row.after))
            and hmac.compare_digest(row.compute_hash(keys, exact_floats=False), row.hash))


def _chain_walk(chain: AuditChain, keys: dict[str, bytes]) -> list[str]:
    """The problems of one chain (none: it holds). The walk goes on past a bad row, taking its stored
    hash and seq as the next row's link: one bad row (an edit, or a row a bug hashed wrongly) must
    not hide a forgery after it. The first CHAIN_PROBLEMS_SHOWN are named, the rest counted."""
    problems: list[str] = []
    expected_seq, expected_prev, keyed_seen = 1, GENESIS_HASH, False
    for row in AuditEvent.objects.filter(chain=chain).order_by("seq").iterator(chunk_size=2000):
        row.chain = chain
        where = f"chain {chain.key}: row id={row.pk} seq={row.seq} ({row.action} {row.object_type}:{row.object_id})"
        if row.seq != expected_seq:
            kind = "a row is missing before it (deleted)" if row.seq > expected_seq else "duplicated sequence"
            problems.append(f"{where}: expected seq {expected_seq}, {kind}")
        elif row.prev_hash != expected_prev:
            problems.append(f"{where}: previous-hash link broken (a row before it was changed, deleted or inserted)")
        elif not row.key_id and keyed_seen:
            problems.append(f"{where}: unkeyed row after keyed rows (forged, or re-hashed without the key)")
        else:
            try:
                if not _hash_holds(row, keys):
                    problems.append(f"{where}: content does not match its hash (edited)")
            except UnknownKeyId:
                problems.append(f"{where}: signed with unknown key id {row.key_id!r} ({_unknown_key_cause(row.key_id)})")
        keyed_seen = keyed_seen or bool(row.key_id)
        expected_seq, expected_prev = row.seq + 1, row.hash
    if expected_seq > 1 and not keyed_seen:
        problems.append(f"chain {chain.key}: all {expected_seq - 1} rows are unkeyed, with no keyed row after them "
                        f"(re-hashed without the key, or migration audit 0002 did not run)")
    if chain.last_seq != expected_seq - 1 or chain.last_hash != expected_prev:
        problems.append(f"chain {chain.key}: head says {chain.last_seq} rows ending in {chain.last_hash[:12]}, "
                        f"found {expected_seq - 1} ending in {expected_prev[:12]} (rows deleted or inserted at the end)")
    if len(problems) > CHAIN_PROBLEMS_SHOWN:
        more = len(problems) - CHAIN_PROBLEMS_SHOWN
        problems = problems[:CHAIN_PROBLEMS_SHOWN] + [f"chain {chain.key}: and {more} more problem{'s' if more > 1 else ''}"]
    return problems


def _unknown_key_cause(key_id: str) -> str:
    if key_id == dev_chain_key()[0]:
        return ("the development key DJANGO_SECRET_KEY derives: a process ran without HITL_AUDIT_KEYS; list "
                "`manage.py audit_dev_key`'s output after your keys to verify these rows")
    if key_id.startswith(DEV_KEY_PREFIX):
        return "a development key of another DJANGO_SECRET_KEY, or the row was forged"
    return "not in HITL_AUDIT_KEYS: an old key was dropped, or the row was forged"


def _checkpoints_load(directory) -> tuple[list[tuple[str, dict]], list[str]]:
    """(name, payload) of every checkpoint file in ``directory`` whose signature holds, oldest first,
    and a problem for every other one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    loaded, problems = [], []
    for path in sorted(directory.glob(FILE_GLOB)):
        try:
            loaded.append((path.name, checkpoint_file_read(path)))
        except CheckpointInvalid as exc:
            problems.append(f"checkpoint {path.name}: {exc}")
    loaded.sort(key=lambda item: (item[1]["created_at"], item[0]))
    return loaded, problems


def _checkpoints_compare(checkpoints, chains: dict[str, AuditChain], only=None) -> list[str]:
    """Each chain must still hold, at every checkpoint's last_seq, the row hash the checkpoint recorded.
    Reports the oldest disagreeing checkpoint of each chain; with ``only`` (chain keys), of those."""
    by_chain: dict[str, list[tuple[str, str, int, str]]] = {}
    for name, payload in checkpoints:
        for entry in payload["chains"]:
            if only is not None and entry["key"] not in only:
                continue
            by_chain.setdefault(entry["key"], []).append(
                (name, payload["created_at"], entry["last_seq"], entry["last_hash"]))
    problems = []
    for key, entries in sorted(by_chain.items()):
        chain = chains.get(key)
        found = {}
        if chain is not None:
            seqs = sorted({seq for _, _, seq, _ in entries if seq > 0})
            for i in range(0, len(seqs), 500):
                found.update(AuditEvent.objects.filter(chain=chain, seq__in=seqs[i:i + 500])
                             .values_list("seq", "hash"))
            length = AuditEvent.objects.filter(chain=chain).aggregate(n=Max("seq"))["n"] or 0
        bad = []
        for name, created_at, seq, expected in entries:
            at = f"checkpoint {name} ({created_at}) recorded {seq} rows ending in {expected[:12]}"
            if chain is None:
                bad.append(f"chain {key}: {at}, but the chain is missing (deleted)")
            elif seq == 0:
                continue
            elif seq > length:
                bad.append(f"chain {key}: {at}, but the chain has only {length} rows (rows deleted)")
            elif seq not in found:
                bad.append(f"chain {key}: {at}, but row seq={seq} is missing (deleted)")
            elif not hmac.compare_digest(found[seq], expected):
                bad.append(f"chain {key}: {at}, but row seq={seq} now hashes to {found[seq][:12]} "
                           f"(rows up to it were rewritten after the checkpoint)")
        if bad:
            more = f" (and {len(bad) - 1} later checkpoints disagree)" if len(bad) > 1 else ""
            problems.append(bad[0] + more)
    return problems


def audit_verify_report(*, checkpoint_dir=None, project_ids=None) -> AuditVerification:
    """Walk every chain in one snapshot and report the first bad row of each; with ``checkpoint_dir``,
    also compare the chains with every checkpoint file in it (an unreadable or badly signed file is
    a problem too). ``FileNotFoundError`` if ``checkpoint_dir`` does not exist. With ``project_ids``,
    only those projects' chains (and rows of theirs that belong to no chain)."""
    report = AuditVerification()
    checkpoints = []
    if checkpoint_dir is not None:
        # Read before the snapshot: every row a checkpoint names was committed before it was written.
        checkpoints, report.problems = _checkpoints_load(checkpoint_dir)
        report.checkpoints = len(checkpoints)
    keys = chain_keys()
    with _read_snapshot():
        walked, rows = AuditChain.objects.order_by("key"), AuditEvent.objects.all()
        if project_ids is not None:
            walked = walked.filter(key__in=[chain_key(pk) for pk in project_ids])
            rows = rows.filter(project_id__in=list(project_ids))
        chains = {chain.key: chain for chain in walked}
        for chain in chains.values():
            report.problems += _chain_walk(chain, keys)
        expected = {key for keys_of in expected_chains() for key in keys_of}
        if project_ids is not None:
            expected &= {chain_key(pk) for pk in project_ids}
        report.problems += [f"chain {key}: the project has no audit chain (deleted)"
                            for key in sorted(expected - set(chains))]
        orphans = rows.exclude(chain_id__in=AuditChain.objects.values("pk"))
        for row in orphans.order_by("pk")[:1]:
            report.problems.append(f"row id={row.pk}: belongs to no known chain (inserted)")
        only = None if project_ids is None else {chain_key(pk) for pk in project_ids}
        report.problems += _checkpoints_compare(checkpoints, chains, only)
        report.rows, report.chains, report.chain_keys = rows.count(), len(chains), sorted(chains)
    return report


def audit_verify(*, checkpoint_dir=None) -> list[str]:
    """The problems ``audit_verify_report`` finds (empty: the trail is intact)."""
    return audit_verify_report(checkpoint_dir=checkpoint_dir).problems


def audit_checkpoint_write(directory=None) -> Path:
    """Write the heads of every chain, signed, to a new file in ``directory`` (default
    HITL_AUDIT_CHECKPOINT_DIR); return its path. Running it twice only writes two checkpoints."""
    now = timezone.now()
    heads = AuditChain.objects.order_by("key").values_list("key", "last_seq", "last_hash")  # one query: consistent
    payload = {
        "format": FORMAT,
        "created_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "chains": [{"key": key, "last_seq": seq, "last_hash": last_hash} for key, seq, last_hash in heads],
    }
    return checkpoint_file_write(directory or settings.HITL_AUDIT_CHECKPOINT_DIR, payload,
                                 stamp=now.strftime("%Y%m%dT%H%M%S.%fZ"))
