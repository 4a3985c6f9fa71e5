"""Key the audit chain: rows get ``key_id`` and an HMAC-SHA256 over every column (audit/hashing.py).

Existing rows are not touched (the trail stays append-only and keeps the hashes it had): their
``key_id`` is "" and they keep verifying with the plain SHA-256 they were written with. Anyone can
recompute plain hashes, so on its own an unkeyed prefix would prove nothing; this migration
therefore appends one keyed "audit.chain_keyed" row to every chain that has only unkeyed rows.
Its HMAC covers the last unkeyed hash (as prev_hash), which anchors the whole prefix, and verify
accepts unkeyed rows only before the first keyed row of a chain. Run it with the production
HITL_AUDIT_KEYS set: the seal is signed with the current key.

Reversing drops ``key_id`` but leaves the seal rows, which the old code cannot verify.
"""
import uuid

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.utils import timezone

from audit.hashing import signed_digest
from audit.keys import signing_key


def _project_id(chain_key):
    try:
        return uuid.UUID(chain_key)
    except ValueError:
        return None  # "global"


def seal_unkeyed_chains(apps, schema_editor):
    AuditChain = apps.get_model("audit", "AuditChain")
    AuditEvent = apps.get_model("audit", "AuditEvent")
    key_id, secret = signing_key()
    for chain in AuditChain.objects.select_for_update().order_by("key"):
        rows = AuditEvent.objects.filter(chain=chain)
        if not rows.exists() or rows.exclude(key_id="").exists():
            continue  # empty, or keyed already
        if rows.filter(seq=chain.last_seq + 1).exists():
            continue  # head behind its rows: appends fail here already; verify reports the chain
        seal = AuditEvent(
            chain=chain, seq=chain.last_seq + 1, created_at=timezone.now(), actor=None, actor_repr="system",
            action="audit.chain_keyed", project_id=_project_id(chain.key), object_type="audit.auditchain",
            object_id=str(chain.pk), before=None, after={"unkeyed_rows": rows.count(), "key_id": key_id},
            reason="Chain keyed: the unkeyed rows before this one are anchored by its HMAC.",
            prev_hash=chain.last_hash, key_id=key_id,
        )
        seal.hash = signed_digest(seal, chain.key, secret)
        seal.save()
        chain.last_seq, chain.last_hash = seal.seq, seal.hash
        chain.save(update_fields=["last_seq", "last_hash"])


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0001_initial'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='auditevent',
            name='key_id',
            field=models.CharField(blank=True, default='', help_text='Id of the HITL_AUDIT_KEYS key that signed the row; empty: unkeyed row from before keying (plain SHA-256)', max_length=32),
        ),
        migrations.AlterField(
            model_name='auditevent',
            name='actor',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.RunPython(seal_unkeyed_chains, migrations.RunPython.noop),
    ]
