import threading

import pytest
from django.db import connection, connections

from audit.models import AuditChain, AuditEvent
from audit.services import audit_record, audit_verify
from audit.tests.utils import verify
from projects.services import task_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def trail(project, agent):
    """A project chain with several rows written by real services."""
    for i in range(4):
        task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"t{i}")
    return list(AuditEvent.objects.filter(project_id=project.pk).order_by("seq"))


def sql(statement, params=()):
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def test_services_write_a_valid_chain(trail, project):
    assert [row.seq for row in trail] == list(range(1, len(trail) + 1))
    assert trail[0].action == "project.create" and trail[-1].action == "task.create"
    assert all(b.prev_hash == a.hash for a, b in zip(trail, trail[1:]))
    code, out = verify()
    assert code == 0 and "OK" in out


def test_edited_row_is_reported(trail):
    victim = trail[2]
    sql("UPDATE audit_auditevent SET reason = %s WHERE id = %s", ["covered up", victim.pk])
    code, err = verify()
    assert code == 1
    assert f"row id={victim.pk} " in err and "edited" in err


def test_a_bad_row_does_not_hide_a_forgery_after_it(trail):
    """The walk stopped at a chain's first bad row: one honest row that did not verify (a hashing
    bug, say) hid every edit made after it."""
    first, later = trail[1], trail[3]
    sql("UPDATE audit_auditevent SET reason = %s WHERE id = %s", ["first edit", first.pk])
    sql("UPDATE audit_auditevent SET actor_repr = %s WHERE id = %s", ["forged#9", later.pk])
    code, err = verify()
    assert code == 1
    assert f"row id={first.pk} " in err and f"row id={later.pk} " in err
    assert err.count("edited") == 2


def test_edited_json_is_reported(trail):
    victim = trail[1]
    sql("UPDATE audit_auditevent SET actor_repr = %s WHERE id = %s", ["someone-else#1", victim.pk])
    code, err = verify()
    assert code == 1 and f"row id={victim.pk} " in err


def test_deleted_middle_row_is_reported(trail):
    sql("DELETE FROM audit_auditevent WHERE id = %s", [trail[1].pk])
    code, err = verify()
    assert code == 1
    assert f"row id={trail[2].pk} " in err and "missing" in err


def test_deleted_last_row_is_reported(trail):
    sql("DELETE FROM audit_auditevent WHERE id = %s", [trail[-1].pk])
    code, err = verify()
    assert code == 1 and "head says" in err


def test_inserted_row_is_reported(trail, project):
    last = trail[-1]
    # A forged row appended behind the application's back, even with the right links and a valid
    # signature (an attacker holding the key): the head still gives it away.
    forged = AuditEvent(chain=last.chain, seq=last.seq + 1, created_at=last.created_at, actor_repr="x",
                        action="task.create", project_id=project.pk, object_type="projects.task",
                        object_id="forged", reason="", prev_hash=last.hash, key_id=last.key_id)
    forged.hash = forged.compute_hash()
    sql("INSERT INTO audit_auditevent (chain_id, seq, created_at, actor_repr, action, project_id, object_type, "
        "object_id, reason, prev_hash, hash, key_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [last.chain_id, forged.seq, last.created_at, "x", "task.create",
         project.pk.hex if connection.vendor == "sqlite" else project.pk, "projects.task", "forged", "",
         forged.prev_hash, forged.hash, forged.key_id])
    code, err = verify()
    assert code == 1 and "head says" in err


def test_inserted_row_in_the_middle_is_reported(trail, project):
    sql("UPDATE audit_auditevent SET seq = seq + 100 WHERE chain_id = %s AND seq >= 3", [trail[0].chain_id])
    sql("INSERT INTO audit_auditevent (chain_id, seq, created_at, actor_repr, action, object_type, object_id, "
        "reason, prev_hash, hash, key_id) VALUES (%s, 3, %s, 'x', 'forged', 't', '1', '', %s, %s, %s)",
        [trail[0].chain_id, trail[0].created_at, trail[1].hash, "f" * 64, trail[1].key_id])
    code, err = verify()
    assert code == 1 and "seq=3 " in err


def test_application_cannot_edit_or_delete(trail):
    row = trail[0]
    row.reason = "x"
    with pytest.raises(ValueError):
        row.save()
    with pytest.raises(ValueError):
        row.delete()


def test_rows_without_a_project_go_to_the_global_chain(admin_user):
    audit_record(actor=admin_user, action="system.test", object_type="x", object_id="1")
    assert AuditEvent.objects.get(action="system.test").chain.key == "global"
    assert verify()[0] == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_keep_one_unbroken_chain(project, agent):
    """20 threads writing to one project's chain at once: contiguous seqs, valid links."""
    start = threading.Barrier(20)
    errors = []

    def worker(i):
        try:
            start.wait()
            for j in range(5):
                task_create(actor=agent, project_id=project.pk, agent_type="tester", title=f"{i}-{j}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    chain = AuditChain.objects.get(key=str(project.pk))
    seqs = list(AuditEvent.objects.filter(chain=chain).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 1 + 1 + 1 + 100))  # project.create, the agent's role grant, 100 tasks
    assert audit_verify() == []


def test_inside_a_unit_of_work_the_row_is_written_at_its_end(admin_user):
    from core.uow import UnitOfWork, activate, deactivate

    uow, after = UnitOfWork("test"), {"n": 1}
    token = activate(uow)
    try:
        assert audit_record(actor=admin_user, action="test.deferred", object_type="x", object_id="1",
                            after=after) is None
        after["n"] = 2  # what the row records is fixed at the call
        assert not AuditEvent.objects.filter(action="test.deferred").exists()
        uow.flush()
    finally:
        deactivate(token)
    row = AuditEvent.objects.get(action="test.deferred")
    assert row.after == {"n": 1} and row.actor_id == admin_user.pk and audit_verify() == []
