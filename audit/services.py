import json

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.models import AuditChain, AuditEvent


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


def _lock_chain(key: str) -> AuditChain:
    chain = AuditChain.objects.select_for_update().filter(key=key).first()
    if chain is None:
        try:
            with transaction.atomic():
                AuditChain.objects.create(key=key)
        except IntegrityError:
            pass  # created concurrently
        chain = AuditChain.objects.select_for_update().get(key=key)
    return chain


@transaction.atomic
def audit_record(*, actor, action: str, obj=None, project_id=None, object_type: str = "",
                 object_id: str = "", before=None, after=None, reason: str = "") -> AuditEvent:
    """Append one row to the project's chain, in the caller's transaction.

    Call it last in a service (after the row locks of the change): the chain head's lock is
    then held only until the commit, and always taken after the domain rows, so no deadlock."""
    if obj is not None:
        object_type = object_type or obj._meta.label_lower
        object_id = object_id or str(obj.pk)
        if project_id is None:
            project_id = obj.pk if obj._meta.label_lower == "projects.project" else getattr(obj, "project_id", None)
    chain = _lock_chain(chain_key(project_id))
    event = AuditEvent(
        chain=chain,
        seq=chain.last_seq + 1,
        created_at=timezone.now(),
        actor=actor if actor_repr(actor) != "system" else None,
        actor_repr=actor_repr(actor),
        action=action,
        project_id=project_id,
        object_type=object_type,
        object_id=str(object_id),
        before=to_json(before),
        after=to_json(after),
        reason=reason or "",
        prev_hash=chain.last_hash,
    )
    event.hash = event.compute_hash()
    event.save()
    chain.last_seq, chain.last_hash = event.seq, event.hash
    chain.save(update_fields=["last_seq", "last_hash"])
    return event


def audit_verify() -> list[str]:
    """Walk every chain; return the problems found, first bad row of each chain first."""
    problems = []
    known = set()
    for chain in AuditChain.objects.order_by("key"):
        known.add(chain.pk)
        expected_seq, expected_prev = 1, "0" * 64
        for row in AuditEvent.objects.filter(chain=chain).select_related("chain").order_by("seq").iterator():
            where = f"chain {chain.key}: row id={row.pk} seq={row.seq} ({row.action} {row.object_type}:{row.object_id})"
            if row.seq != expected_seq:
                kind = "a row is missing before it (deleted)" if row.seq > expected_seq else "duplicated sequence"
                problems.append(f"{where}: expected seq {expected_seq}, {kind}")
                break
            if row.prev_hash != expected_prev:
                problems.append(f"{where}: previous-hash link broken (a row before it was changed, "
                                f"deleted or inserted)")
                break
            if row.compute_hash() != row.hash:
                problems.append(f"{where}: content does not match its hash (edited)")
                break
            expected_seq, expected_prev = row.seq + 1, row.hash
        else:
            if chain.last_seq != expected_seq - 1 or chain.last_hash != expected_prev:
                problems.append(
                    f"chain {chain.key}: head says {chain.last_seq} rows ending in {chain.last_hash[:12]}, "
                    f"found {expected_seq - 1} ending in {expected_prev[:12]} (rows deleted or inserted at the end)"
                )
    orphans = AuditEvent.objects.exclude(chain_id__in=known)
    for row in orphans.order_by("pk")[:1]:
        problems.append(f"row id={row.pk}: belongs to no known chain (inserted)")
    return problems
