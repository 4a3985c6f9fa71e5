"""Helpers for the audit tests: run verify_audit, and play the attacker who can write the database."""
import io

from django.core.management import call_command

from audit.models import AuditChain, AuditEvent

CHAIN_FIELDS = [f.attname for f in AuditEvent._meta.concrete_fields if f.attname != "id"]


def verify(*args):
    """Run `manage.py verify_audit *args`; return (exit code, output)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("verify_audit", *args, stdout=out, stderr=err)
        return 0, out.getvalue()
    except SystemExit as exc:
        return exc.code, err.getvalue()


def rewrite_chain(row, mutate, digest, *, key_id=None):
    """What an attacker with write access to the database does: change ``row`` with ``mutate(row)``,
    then relink and re-hash it and every later row of its chain with ``digest(row) -> hex`` (each
    row's ``key_id`` set to ``key_id`` first, unless None), and move the head to the new last hash.
    Plain UPDATEs: the model's append-only guard is the application's, not the database's."""
    chain = AuditChain.objects.get(pk=row.chain_id)
    rows = list(AuditEvent.objects.filter(chain=chain, seq__gte=row.seq).select_related("chain").order_by("seq"))
    prev = rows[0].prev_hash
    for i, r in enumerate(rows):
        if i == 0:
            mutate(r)
        if key_id is not None:
            r.key_id = key_id
        r.prev_hash = prev
        r.hash = digest(r)
        AuditEvent.objects.filter(pk=r.pk).update(**{name: getattr(r, name) for name in CHAIN_FIELDS})
        prev = r.hash
    AuditChain.objects.filter(pk=chain.pk).update(last_hash=prev)
    return prev
