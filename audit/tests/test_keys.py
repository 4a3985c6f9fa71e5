"""The keyed chain: HMAC over every column, key rotation, unkeyed (pre-0002) rows and the seal."""
import importlib
from datetime import timedelta

import pytest
from django.apps import apps as django_apps
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.db.models.deletion import ProtectedError
from django.utils import timezone

from audit import hashing
from audit.keys import chain_keys, parse_keys, signing_key
from audit.models import GENESIS_HASH, AuditChain, AuditEvent
from audit.services import audit_record, audit_verify
from audit.tests.utils import rewrite_chain, verify

pytestmark = pytest.mark.django_db

K1 = "k1:first-secret-0123456789abcdef0123456789"
K2 = "k2:second-secret-0123456789abcdef012345678"
seal_unkeyed_chains = importlib.import_module("audit.migrations.0002_keyed_chain").seal_unkeyed_chains


@pytest.fixture
def keyed(settings):
    settings.HITL_AUDIT_KEYS = [K1]
    return settings


@pytest.fixture
def trail(keyed, admin_user):
    """Five rows on the global chain, signed with k1."""
    return [audit_record(actor=admin_user, action="test.step", object_type="test", object_id=str(i),
                         before={"n": i}, after={"n": i + 1, "why": "ünïcode"}, reason=f"step {i}")
            for i in range(5)]


def legacy(row):
    return hashing.legacy_digest(row, row.chain.key)


# --- every column is signed ----------------------------------------------------------------------

def test_rows_are_signed_with_the_current_key(trail):
    assert {row.key_id for row in trail} == {"k1"}
    assert all(row.hash == hashing.signed_digest(row, "global", b"first-secret-0123456789abcdef0123456789")
               for row in trail)
    assert all(row.hash != legacy(row) for row in trail)
    assert verify() == (0, "OK: 5 audit rows in 1 chains verified.\n")


@pytest.mark.parametrize("column, value", [
    ("chain", "other"), ("seq", 99), ("created_at", "+1µs"), ("actor_id", 12345), ("actor_repr", "mallory#9"),
    ("action", "test.other"), ("project_id", "3f0c3c1e-8f7e-4f47-9a43-3a3a0b8f2f10"), ("object_type", "x"),
    ("object_id", "9"), ("before", {"n": 0.5}), ("after", None), ("reason", "covered up"),
    ("prev_hash", "1" * 64), ("key_id", "k9"),
])
def test_the_signature_covers_every_column(trail, column, value):
    row = trail[2]
    original = hashing.signed_digest(row, "global", b"s")
    chain_key = "global"
    if column == "chain":
        chain_key = value
    elif column == "created_at":
        row.created_at += timedelta(microseconds=1)
    else:
        setattr(row, column, value)
    assert hashing.signed_digest(row, chain_key, b"s") != original
    assert hashing.signed_digest(row, chain_key, b"s") == hashing.signed_digest(row, chain_key, b"s")


def test_the_signature_does_not_depend_on_how_json_reads_back(trail):
    row = trail[0]
    row.after = {"b": 1e20, "a": [2.0, "x"]}
    again = AuditEvent(**{f.attname: getattr(row, f.attname) for f in AuditEvent._meta.concrete_fields})
    again.after = {"a": [2, "x"], "b": 100000000000000000000}  # jsonb's answer
    assert hashing.signed_digest(row, "global", b"s") == hashing.signed_digest(again, "global", b"s")


def test_a_whole_float_past_2_53_is_signed_as_its_text_reads_back(keyed, admin_user):
    """Found by a reviewer's amendment ``{"replicas": 1e23}``: the row was hashed over int(1e23)
    (99999999999999991611392) while PostgreSQL's jsonb gives back 100000000000000000000000, so the
    honest row verified as "edited" on PostgreSQL and every chain with one stayed "tampered"."""
    row = audit_record(actor=admin_user, action="test.big", object_type="test", object_id="1",
                       after={"replicas": 1e23, "small": 3.0, "neg": -1e300})
    assert verify()[0] == 0
    stored = AuditEvent.objects.get(pk=row.pk)
    assert stored.after["replicas"] in (10 ** 23, 1e23)        # jsonb's integer, or SQLite's float
    again = AuditEvent(**{f.attname: getattr(row, f.attname) for f in AuditEvent._meta.concrete_fields})
    again.after = {"replicas": 10 ** 23, "small": 3, "neg": -(10 ** 300)}   # jsonb's answer
    assert hashing.signed_digest(row, "global", b"s") == hashing.signed_digest(again, "global", b"s")


def test_a_row_hashed_under_the_old_float_rule_still_verifies(keyed, admin_user):
    """Rows written before on SQLite (whose JSON reads back as the float) were hashed over int(1e23)
    and held: they keep holding."""
    row = audit_record(actor=admin_user, action="test.big", object_type="test", object_id="1",
                       after={"replicas": 1e23})
    old = hashing.signed_digest(row, row.chain.key, chain_keys()[row.key_id], exact_floats=False)
    assert old != row.hash
    AuditEvent.objects.filter(pk=row.pk).update(hash=old)
    AuditChain.objects.filter(pk=row.chain_id).update(last_hash=old)
    stored = AuditEvent.objects.get(pk=row.pk)
    if stored.after["replicas"] == 1e23 and isinstance(stored.after["replicas"], float):  # SQLite: holds
        assert verify()[0] == 0
    else:  # PostgreSQL gives back the text's integer: that row never verified, and still does not
        code, err = verify()
        assert code == 1 and "edited" in err


# --- the attack ----------------------------------------------------------------------------------

def test_rewrite_with_a_recomputed_plain_sha256_chain_and_head_is_reported(trail):
    """The attack that the unkeyed chain let through: change a row, recompute every later hash
    and the head with plain SHA-256. The chain is consistent by the old rules, but not signed."""
    victim = trail[2]
    rewrite_chain(victim, lambda r: setattr(r, "reason", "nothing to see"), legacy)
    rows = list(AuditEvent.objects.order_by("seq"))
    assert all(b.prev_hash == a.hash for a, b in zip(rows, rows[1:]))           # links hold
    assert all(r.hash == legacy(r) for r in rows[2:])                            # plain hashes hold
    assert AuditChain.objects.get(key="global").last_hash == rows[-1].hash       # head holds
    code, err = verify()
    assert code == 1
    assert f"row id={victim.pk} seq=3 " in err and "does not match its hash (edited)" in err


def test_rewrite_as_unkeyed_rows_is_reported(trail):
    """Claiming the rows predate keying (key_id "") and re-hashing them all without the key."""
    rewrite_chain(trail[0], lambda r: setattr(r, "reason", "nothing to see"), legacy, key_id="")
    code, err = verify()
    assert code == 1 and "all 5 rows are unkeyed" in err


def test_rewrite_of_the_tail_as_unkeyed_rows_is_reported(trail):
    rewrite_chain(trail[3], lambda r: setattr(r, "reason", "nothing to see"), legacy, key_id="")
    code, err = verify()
    assert code == 1 and f"row id={trail[3].pk} " in err and "unkeyed row after keyed rows" in err


def test_rewrite_signed_with_a_guessed_key_is_reported(trail):
    rewrite_chain(trail[1], lambda r: setattr(r, "after", {"n": 0}),
                  lambda r: hashing.signed_digest(r, "global", b"guess"))
    code, err = verify()
    assert code == 1 and f"row id={trail[1].pk} " in err and "edited" in err


def test_changed_actor_id_is_reported(trail, make_user):
    mallory = make_user("mallory")
    AuditEvent.objects.filter(pk=trail[1].pk).update(actor_id=mallory.pk)  # actor_repr left as it was
    code, err = verify()
    assert code == 1 and f"row id={trail[1].pk} " in err and "edited" in err


def test_cleared_actor_id_is_reported(trail):
    AuditEvent.objects.filter(pk=trail[4].pk).update(actor_id=None)
    code, err = verify()
    assert code == 1 and f"row id={trail[4].pk} " in err


def test_a_user_who_acted_cannot_be_deleted(trail, admin_user):
    """actor_id is signed, so it must not be nulled by a cascade: deactivate such users instead."""
    with pytest.raises(ProtectedError):
        admin_user.delete()


# --- key rotation --------------------------------------------------------------------------------

def test_rows_signed_under_an_old_key_verify_while_it_is_listed(trail, settings, admin_user):
    settings.HITL_AUDIT_KEYS = f"{K2},{K1}"  # the env form: the new key first
    newer = audit_record(actor=admin_user, action="test.after_rotation", object_type="test", object_id="r")
    assert newer.key_id == "k2" and newer.prev_hash == trail[-1].hash
    assert list(AuditEvent.objects.order_by("seq").values_list("key_id", flat=True)) == ["k1"] * 5 + ["k2"]
    assert verify() == (0, "OK: 6 audit rows in 1 chains verified.\n")


def test_row_with_an_unknown_key_id_is_reported(trail, settings, admin_user):
    settings.HITL_AUDIT_KEYS = [K2, K1]
    audit_record(actor=admin_user, action="test.after_rotation", object_type="test", object_id="r")
    settings.HITL_AUDIT_KEYS = [K2]  # k1 dropped too early
    code, err = verify()
    assert code == 1
    assert f"row id={trail[0].pk} seq=1 " in err and "unknown key id 'k1'" in err


def test_forged_key_id_is_reported(trail):
    AuditEvent.objects.filter(pk=trail[2].pk).update(key_id="k-forged")
    code, err = verify()
    assert code == 1 and f"row id={trail[2].pk} " in err and "unknown key id 'k-forged'" in err


def test_rows_of_the_development_key_keep_verifying_once_keys_are_set_with_it_listed(settings, admin_user):
    """An operator who started without HITL_AUDIT_KEYS sets them later: `audit_dev_key` prints the
    derived key, listed after the new one the old rows verify and new rows are signed with the new."""
    from io import StringIO

    from django.core.management import call_command

    settings.HITL_AUDIT_KEYS = []
    old = audit_record(actor=admin_user, action="test.dev", object_type="test", object_id="1")
    out = StringIO()
    call_command("audit_dev_key", stdout=out)
    dev = out.getvalue().strip()
    assert dev.startswith(f"{old.key_id}:") and dev.count(":") == 1
    settings.HITL_AUDIT_KEYS = [K1]
    assert "unknown key id" in audit_verify()[0]   # what the operator met: the history reads as forged
    assert "a process ran without HITL_AUDIT_KEYS; list `manage.py audit_dev_key`" in audit_verify()[0]
    settings.HITL_AUDIT_KEYS = f"{K1},{dev}"
    new = audit_record(actor=admin_user, action="test.keyed", object_type="test", object_id="2")
    assert new.key_id == "k1" and audit_verify() == []


def test_a_key_id_with_another_secret_does_not_verify(trail, settings):
    settings.HITL_AUDIT_KEYS = ["k1:another-secret-0123456789abcdef0123456"]
    code, err = verify()
    assert code == 1 and f"row id={trail[0].pk} seq=1 " in err and "edited" in err


def test_the_development_key_is_derived_from_the_secret_key(settings, admin_user):
    settings.HITL_AUDIT_KEYS = []
    key_id, secret = signing_key()
    assert key_id.startswith("dev-") and secret != settings.SECRET_KEY.encode()
    row = audit_record(actor=admin_user, action="test.dev", object_type="test", object_id="1")
    assert row.key_id == key_id and audit_verify() == []
    settings.SECRET_KEY = "another-secret-key"
    assert signing_key()[0] != key_id
    assert f"unknown key id {key_id!r} (a development key of another DJANGO_SECRET_KEY" in audit_verify()[0]


@pytest.mark.parametrize("raw", ["k1", "k1:", "bad id:secret", "k1:a,k1:b", f"{'x' * 33}:secret"])
def test_malformed_keys_are_refused(settings, raw):
    with pytest.raises(ImproperlyConfigured):
        parse_keys(raw)
    settings.HITL_AUDIT_KEYS = raw
    assert [m.id for m in run_checks() if m.id.startswith("audit.")] == ["audit.E001"]


def test_parse_keys_keeps_the_order():
    assert list(parse_keys(" k2:b , k1:a:with:colons ,")) == ["k2", "k1"]
    assert parse_keys(["k1:a:with:colons"]) == {"k1": b"a:with:colons"}


def test_deploy_check_warns_about_derived_and_weak_keys(settings):
    def ids():
        return sorted(m.id for m in run_checks(include_deployment_checks=True) if m.id.startswith("audit."))

    settings.HITL_AUDIT_KEYS, settings.HITL_AUDIT_CHECKPOINT_KEY = [], ""
    settings.DEBUG = True
    assert ids() == ["audit.W001", "audit.W002"]
    settings.DEBUG = False  # said at every start instead (audit.W005)
    assert ids() == ["audit.W002", "audit.W005"]
    settings.HITL_AUDIT_KEYS, settings.HITL_AUDIT_CHECKPOINT_KEY = ["k1:short"], "also-short"
    assert ids() == ["audit.W003"]
    settings.HITL_AUDIT_KEYS, settings.HITL_AUDIT_CHECKPOINT_KEY = [K1], K1.split(":", 1)[1]
    assert ids() == ["audit.W004"]
    settings.HITL_AUDIT_CHECKPOINT_KEY = "checkpoint-secret-0123456789abcdef01234"
    assert ids() == []
    assert [m.id for m in run_checks() if m.id.startswith("audit.")] == []  # nothing without --deploy


def test_a_production_process_without_audit_keys_says_so_when_it_starts(settings, caplog):
    """A Celery worker started without HITL_AUDIT_KEYS (DEBUG off) signed its rows with the
    development key and nothing said so unless someone ran `check --deploy`: the rows then read
    as signed with an unknown key in every other process's verify_audit."""
    from core.checks import refuse_to_start_on_errors

    settings.HITL_AUDIT_KEYS, settings.DEBUG = [], False
    with caplog.at_level("WARNING"):
        refuse_to_start_on_errors("Celery")  # warns, and the process starts
    assert "Celery: audit.W005: HITL_AUDIT_KEYS is not set while DJANGO_DEBUG is off" in caplog.text
    caplog.clear()
    settings.DEBUG = True  # make run's demo: the derived key is what it is for
    with caplog.at_level("WARNING"):
        refuse_to_start_on_errors("Celery")
    assert "audit.W005" not in caplog.text
    settings.HITL_AUDIT_KEYS, settings.DEBUG = [K1], False
    with caplog.at_level("WARNING"):
        refuse_to_start_on_errors("Celery")
    assert "audit.W005" not in caplog.text


# --- rows from before keying (migration 0002) ----------------------------------------------------

@pytest.fixture
def unkeyed_chain(keyed):
    """A chain as the code before 0002 wrote it: plain SHA-256, no key id, no actor in the hash."""
    chain = AuditChain.objects.create(key="global")
    prev, now = GENESIS_HASH, timezone.now()
    for seq in range(1, 4):
        row = AuditEvent(chain=chain, seq=seq, created_at=now, actor_repr="system", action="old.step",
                         object_type="test", object_id=str(seq), after={"n": seq}, prev_hash=prev)
        row.hash = prev = legacy(row)
        row.save()
    chain.last_seq, chain.last_hash = 3, prev
    chain.save()
    return chain


def test_an_unsealed_unkeyed_chain_is_reported(unkeyed_chain):
    assert audit_verify() == ["chain global: all 3 rows are unkeyed, with no keyed row after them "
                              "(re-hashed without the key, or migration audit 0002 did not run)"]


def test_the_migration_seals_unkeyed_chains_and_they_verify(unkeyed_chain, admin_user):
    old_head = unkeyed_chain.last_hash
    old_rows = list(AuditEvent.objects.order_by("seq").values_list("seq", "prev_hash", "hash", "key_id"))
    seal_unkeyed_chains(django_apps, None)
    seal = AuditEvent.objects.get(seq=4)
    assert (seal.action, seal.key_id, seal.prev_hash, seal.after) == (
        "audit.chain_keyed", "k1", old_head, {"unkeyed_rows": 3, "key_id": "k1"})
    assert list(AuditEvent.objects.filter(seq__lte=3).order_by("seq").values_list(
        "seq", "prev_hash", "hash", "key_id")) == old_rows  # the old rows are not touched
    seal_unkeyed_chains(django_apps, None)  # a second run changes nothing
    assert AuditEvent.objects.count() == 4
    audit_record(actor=admin_user, action="test.after_seal", object_type="test", object_id="1")
    assert verify() == (0, "OK: 5 audit rows in 1 chains verified.\n")


def test_a_rewrite_of_sealed_unkeyed_rows_is_reported(unkeyed_chain):
    seal_unkeyed_chains(django_apps, None)
    # Re-hash the unkeyed prefix consistently; the seal's signed prev_hash still names the old head.
    prev = GENESIS_HASH
    for row in AuditEvent.objects.filter(seq__lte=3).select_related("chain").order_by("seq"):
        row.reason = "rewritten" if row.seq == 2 else row.reason
        row.prev_hash = prev
        row.hash = prev = legacy(row)
        AuditEvent.objects.filter(pk=row.pk).update(reason=row.reason, prev_hash=row.prev_hash, hash=row.hash)
    code, err = verify()
    assert code == 1 and "seq=4 (audit.chain_keyed" in err and "previous-hash link broken" in err


def test_the_migration_leaves_keyed_and_empty_chains_alone(trail):
    AuditChain.objects.create(key="empty")
    seal_unkeyed_chains(django_apps, None)
    assert AuditEvent.objects.count() == 5 and audit_verify() == []


def test_chain_keys_lists_every_configured_key(settings):
    settings.HITL_AUDIT_KEYS = [K2, K1]
    assert list(chain_keys()) == ["k2", "k1"] and signing_key()[0] == "k2"
