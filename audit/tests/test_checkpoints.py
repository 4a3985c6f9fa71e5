"""Checkpoints: signed chain heads outside the database, and verify_audit --checkpoints."""
import io
import json
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError

from audit import hashing
from audit.checkpoints import checkpoint_file_read
from audit.keys import signing_key
from audit.models import AuditChain, AuditEvent
from audit.services import audit_checkpoint_write, audit_record
from audit.tasks import audit_checkpoint_task
from audit.tests.utils import rewrite_chain, verify

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def keys(settings):
    settings.HITL_AUDIT_KEYS = ["k1:first-secret-0123456789abcdef0123456789"]
    settings.HITL_AUDIT_CHECKPOINT_KEY = "checkpoint-secret-0123456789abcdef01234"


@pytest.fixture
def record(admin_user):
    def record(n, project_id=None):
        return [audit_record(actor=admin_user, action="test.step", project_id=project_id, object_type="test",
                             object_id=str(i), reason=f"step {i}") for i in range(n)]
    return record


def checkpoint(directory):
    out = io.StringIO()
    call_command("audit_checkpoint", "--dir", str(directory), stdout=out)
    return out.getvalue()


def signed_by_the_real_key(row):
    """The attacker also holds the chain key (a compromised app host): rows re-sign cleanly."""
    return hashing.signed_digest(row, row.chain.key, dict([signing_key()])[row.key_id])


def test_checkpoint_command_writes_the_signed_heads(tmp_path, record, project):
    record(3)
    out = checkpoint(tmp_path)
    [path] = tmp_path.glob("checkpoint-*.json")
    assert out == f"Checkpoint written: {path}\n"
    payload = checkpoint_file_read(path)
    heads = {c.key: c for c in AuditChain.objects.all()}
    assert {c["key"]: (c["last_seq"], c["last_hash"]) for c in payload["chains"]} == {
        key: (c.last_seq, c.last_hash) for key, c in heads.items()}
    assert set(heads) == {"global", str(project.pk)}
    assert payload["format"] == "botarmy-hitl.audit-checkpoint.v1" and payload["created_at"].endswith("Z")
    assert verify("--checkpoints", str(tmp_path)) == (0, "OK: 4 audit rows in 2 chains verified against "
                                                         "1 checkpoint.\n")


def test_checkpoints_of_a_growing_trail_keep_verifying(tmp_path, record):
    for _ in range(3):
        record(2)
        audit_checkpoint_write(tmp_path)
    assert len(list(tmp_path.glob("checkpoint-*.json"))) == 3
    assert verify("--checkpoints", str(tmp_path))[0] == 0


def test_consistent_rewrite_after_a_checkpoint_is_reported(tmp_path, record):
    rows = record(4)
    audit_checkpoint_write(tmp_path)
    record(2)
    # Rows and head rewritten consistently and re-signed with the real key: the chain alone looks fine...
    rewrite_chain(rows[1], lambda r: setattr(r, "reason", "nothing to see"), signed_by_the_real_key)
    assert verify() == (0, "OK: 6 audit rows in 1 chains verified.\n")
    # ...but row 4 no longer hashes to what the checkpoint recorded.
    code, err = verify("--checkpoints", str(tmp_path))
    assert code == 1
    assert "TAMPERED: chain global: checkpoint checkpoint-" in err
    assert "recorded 4 rows ending in" in err and "row seq=4 now hashes to" in err and "rewritten after" in err


def test_only_the_oldest_disagreeing_checkpoint_is_reported_per_chain(tmp_path, record):
    rows = record(2)
    for _ in range(3):
        audit_checkpoint_write(tmp_path)
        record(1)
    rewrite_chain(rows[0], lambda r: setattr(r, "reason", "x"), signed_by_the_real_key)
    code, err = verify("--checkpoints", str(tmp_path))
    assert code == 1 and err.count("TAMPERED") == 1 and "recorded 2 rows" in err
    assert "(and 2 later checkpoints disagree)" in err


def test_chain_shorter_than_a_checkpoint_is_reported(tmp_path, record):
    rows = record(5)
    audit_checkpoint_write(tmp_path)
    # The last two rows deleted and the head moved back: consistent, but shorter than the checkpoint.
    AuditEvent.objects.filter(seq__gte=4).delete()  # queryset delete: the database, not the model
    AuditChain.objects.filter(key="global").update(last_seq=3, last_hash=rows[2].hash)
    assert verify()[0] == 0
    code, err = verify("--checkpoints", str(tmp_path))
    assert code == 1 and "recorded 5 rows" in err and "the chain has only 3 rows (rows deleted)" in err


def test_chain_missing_from_the_database_is_reported(tmp_path, record, project):
    record(2, project_id=project.pk)
    audit_checkpoint_write(tmp_path)
    chain = AuditChain.objects.get(key=str(project.pk))
    AuditEvent.objects.filter(chain=chain).delete()
    AuditChain.objects.filter(pk=chain.pk).delete()
    # the project is still there: its chain is missing even without a checkpoint (it said OK, while the
    # reviewer page's verify named it: found by an auditor)
    code, err = verify()
    assert code == 1 and f"chain {project.pk}: the project has no audit chain (deleted)" in err
    code, err = verify("--checkpoints", str(tmp_path))
    assert code == 1 and f"chain {project.pk}: " in err and "the chain is missing (deleted)" in err


def test_tampered_checkpoint_file_is_reported(tmp_path, record):
    record(3)
    path = audit_checkpoint_write(tmp_path)
    payload = json.loads(path.read_text())
    payload["chains"][0]["last_hash"] = "0" * 64  # would hide a later rewrite of the whole chain
    path.write_text(json.dumps(payload))
    code, err = verify("--checkpoints", str(tmp_path))
    assert code == 1
    assert err == f"TAMPERED: checkpoint {path.name}: bad signature (file edited, or signed with a " \
                  f"HITL_AUDIT_CHECKPOINT_KEY no longer listed: add the old one to HITL_AUDIT_CHECKPOINT_OLD_KEYS)\n"


def test_checkpoint_signed_with_another_key_is_reported(tmp_path, record, settings):
    record(1)
    path = audit_checkpoint_write(tmp_path)
    settings.HITL_AUDIT_CHECKPOINT_KEY = "another-checkpoint-secret-0123456789abc"
    code, err = verify("--checkpoints", str(tmp_path))
    assert code == 1 and f"checkpoint {path.name}: bad signature" in err


def test_the_checkpoint_key_can_be_rotated_with_the_old_one_listed(tmp_path, record, settings):
    """Found by an operator: changing HITL_AUDIT_CHECKPOINT_KEY (the README asks to move off the
    derived one) made every older file "bad signature", the only way out deleting the evidence."""
    from io import StringIO

    from django.core.management import call_command

    record(1)
    derived = StringIO()
    call_command("audit_dev_key", "--checkpoint", stdout=derived)
    settings.HITL_AUDIT_CHECKPOINT_KEY = ""
    audit_checkpoint_write(tmp_path)                       # signed with the derived key (none set)
    settings.HITL_AUDIT_CHECKPOINT_KEY = "first-checkpoint-secret-0123456789abcdef"
    audit_checkpoint_write(tmp_path)
    settings.HITL_AUDIT_CHECKPOINT_KEY = "second-checkpoint-secret-0123456789abcde"
    code, err = verify("--checkpoints", str(tmp_path))
    assert code == 1 and err.count("bad signature") == 2    # both older files, until their keys are listed
    settings.HITL_AUDIT_CHECKPOINT_OLD_KEYS = ["first-checkpoint-secret-0123456789abcdef", derived.getvalue().strip()]
    code, out = verify("--checkpoints", str(tmp_path))
    assert code == 0 and "against 2 checkpoints" in out, out
    audit_checkpoint_write(tmp_path)                       # new ones: the new key
    settings.HITL_AUDIT_CHECKPOINT_OLD_KEYS = []
    code, err = verify("--checkpoints", str(tmp_path))
    assert code == 1 and err.count("bad signature") == 2


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"signature": "00"}', b"\xff\xfe"])
def test_unreadable_checkpoint_file_is_reported(tmp_path, record, content):
    record(1)
    audit_checkpoint_write(tmp_path)
    (tmp_path / "checkpoint-junk.json").write_bytes(content)
    code, err = verify("--checkpoints", str(tmp_path))
    assert code == 1 and err.count("TAMPERED") == 1 and "checkpoint checkpoint-junk.json: " in err


def test_checkpoints_default_to_the_setting_and_need_an_existing_directory(tmp_path, record, settings):
    record(1)
    settings.HITL_AUDIT_CHECKPOINT_DIR = tmp_path / "cp"
    audit_checkpoint_task.delay()  # eager in tests, as beat would run it
    assert len(list((tmp_path / "cp").glob("checkpoint-*.json"))) == 1
    assert verify("--checkpoints")[1].endswith("against 1 checkpoint.\n")
    with pytest.raises(CommandError, match="does not exist: no checkpoint has been written there yet") as caught:
        verify("--checkpoints", str(tmp_path / "nowhere"))
    assert caught.value.returncode == 2  # 1 says the trail was tampered with


def test_a_checkpoint_that_cannot_be_written_is_a_command_error_not_a_traceback(tmp_path):
    from django.core.management import call_command

    (tmp_path / "file").write_text("")
    with pytest.raises(CommandError, match="The checkpoint could not be written") as caught:
        call_command("audit_checkpoint", "--dir", str(tmp_path / "file" / "below"))
    assert caught.value.returncode == 2


def test_empty_trail_and_empty_directory(tmp_path):
    path = audit_checkpoint_write(tmp_path)
    assert checkpoint_file_read(path)["chains"] == []
    assert verify("--checkpoints", str(tmp_path))[0] == 0


def test_beat_writes_a_checkpoint_every_configured_interval():
    entry = django_settings.CELERY_BEAT_SCHEDULE["audit-checkpoint"]
    minutes = django_settings.HITL_AUDIT_CHECKPOINT_MINUTES
    assert entry == {"task": "audit.checkpoint", "schedule": timedelta(minutes=minutes),
                     "options": {"expires": minutes * 60}}
    assert audit_checkpoint_task.name == "audit.checkpoint"
