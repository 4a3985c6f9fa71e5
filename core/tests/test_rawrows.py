"""core.rawrows: the hand-written statements of the hot paths give the same rows and instances
as the ORM they replace (defaults, auto_now stamps, converters, partial columns, errors)."""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from budgets.models import UsageEntry
from core import rawrows
from projects.models import Task

pytestmark = pytest.mark.django_db(transaction=True)


def test_insert_writes_what_save_would(project, agent):
    task = Task(project=project, agent_type="coder", title="raw", created_by=agent)
    rawrows.insert(task)
    stored = Task.objects.get(pk=task.pk)
    assert (stored.title, stored.status, stored.input_data, stored.created_by_id) == ("raw", "pending", {}, agent.pk)
    assert stored.created_at == task.created_at and stored.updated_at == task.updated_at
    assert timezone.now() - stored.created_at < timedelta(minutes=1)
    assert not task._state.adding  # a later save() updates, as after the ORM's insert


def test_insert_reads_back_an_auto_primary_key(project, agent):
    from approvals.services import agent_approval_request

    task = Task.objects.create(project=project, agent_type="coder", title="t", created_by=agent)
    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="run", input_data={}, estimated_tokens=10,
                                  estimated_cost=Decimal("0.0100"))
    reserve = UsageEntry.objects.get(approval=call, kind="reserve")
    settle = UsageEntry(project=project, approval=call, kind="settle", day_window_id=reserve.day_window_id,
                        month_window_id=reserve.month_window_id, spent_tokens=3, spent_cost=Decimal("0.2500"))
    rawrows.insert(settle)
    assert isinstance(settle.pk, int) and settle.pk > reserve.pk
    stored = UsageEntry.objects.get(pk=settle.pk)
    assert (stored.kind, stored.spent_tokens, stored.spent_cost, stored.reserved_cost) == \
        ("settle", 3, Decimal("0.2500"), Decimal("0"))
    assert stored.created_at == settle.created_at is not None


def test_insert_raises_integrity_error_on_a_duplicate(project, agent):
    task = Task(project=project, agent_type="coder", title="once", created_by=agent)
    rawrows.insert(task)
    with pytest.raises(IntegrityError), transaction.atomic():
        rawrows.insert(Task(pk=task.pk, project=project, agent_type="coder", title="twice", created_by=agent))
    assert Task.objects.get(pk=task.pk).title == "once"


def test_update_fields_changes_only_those_fields_and_stamps_updated_at(project, agent):
    task = Task.objects.create(project=project, agent_type="coder", title="before", created_by=agent)
    stamped = task.updated_at
    Task.objects.filter(pk=task.pk).update(title="changed elsewhere")
    task.status, task.title = "running", "not saved"
    rawrows.update_fields(task, ["status", "updated_at"])
    stored = Task.objects.get(pk=task.pk)
    assert (stored.status, stored.title) == ("running", "changed elsewhere")
    assert stored.updated_at > stamped and stored.updated_at == task.updated_at


def test_update_fields_of_a_deleted_row_raises(project, agent):
    task = Task.objects.create(project=project, agent_type="coder", title="gone", created_by=agent)
    Task.objects.filter(pk=task.pk).delete()
    task.status = "running"
    with pytest.raises(DatabaseError):
        rawrows.update_fields(task, ["status"])


def test_by_pk_filters_on_the_extra_fields_and_builds_partial_rows_in_field_order(project, other_project, agent):
    task = Task.objects.create(project=project, agent_type="coder", title="mine", created_by=agent)
    assert rawrows.by_pk(Task, task.pk, lock=True, project_id=project.pk).title == "mine"
    assert rawrows.by_pk(Task, task.pk, lock=True, project_id=other_project.pk) is None
    partial = rawrows.by_pk(Task, task.pk, ("title", "status", "id"))  # names in any order
    assert (partial.pk, partial.title, partial.status) == (task.pk, "mine", "pending")
    assert partial.get_deferred_fields() >= {"agent_type", "created_by_id"}


def test_by_pk_with_joins_the_related_rows_as_select_related_does(project, agent, reviewer, django_assert_num_queries):
    from approvals.models import AgentCallApproval
    from approvals.services import agent_approval_decide, agent_approval_request

    task = Task.objects.create(project=project, agent_type="coder", title="t", created_by=agent)
    call = agent_approval_request(requester=agent, project_id=project.pk, task_id=task.pk, agent_type="coder",
                                  proposed_action="run", input_data={"a": 1}, estimated_tokens=10,
                                  estimated_cost=Decimal("0.0100"))
    pending = rawrows.by_pk_with(AgentCallApproval, call.pk, ("approved_by", "requested_by"))
    with django_assert_num_queries(0):  # both relations are cached, the missing decider as None
        assert (pending.requested_by.username, pending.approved_by) == ("agent", None)
    assert pending.input_data == {"a": 1} and pending.estimated_cost == Decimal("0.0100")
    agent_approval_decide(approval_id=call.pk, decider=reviewer, decision="approve")
    decided = rawrows.by_pk_with(AgentCallApproval, call.pk, ("approved_by", "requested_by"))
    with django_assert_num_queries(0):
        assert (decided.approved_by.username, decided.status) == ("reviewer", "approved")
    assert rawrows.by_pk_with(AgentCallApproval, task.pk, ("approved_by",)) is None


def test_insert_skipping_a_duplicate_reports_it_and_keeps_the_transaction_usable(project, agent):
    from approvals.models import AgentCallApproval

    task = Task.objects.create(project=project, agent_type="coder", title="t", created_by=agent)
    now = timezone.now()

    def call(title):
        return AgentCallApproval(project=project, task=task, agent_type="coder", proposed_action=title, input_data={},
                                 estimated_tokens=1, estimated_cost=Decimal("0.0001"), risk_assessment={},
                                 timeout_minutes=30, requested_by=agent, expires_at=now, warn_at=now)
    with transaction.atomic():
        assert rawrows.insert(call("first"), skip_if_duplicate=True) is True
        assert rawrows.insert(call("second"), skip_if_duplicate=True) is False  # one pending call per task
        assert Task.objects.filter(pk=task.pk).exists()  # no savepoint needed: the transaction goes on
    assert list(AgentCallApproval.objects.filter(task=task).values_list("proposed_action", flat=True)) == ["first"]


def test_by_pk_with_caches_a_reverse_one_to_one_and_takes_a_share_lock(project, other_project,
                                                                       django_assert_num_queries):
    from budgets.models import ProjectBudget
    from projects.models import Project

    ProjectBudget.objects.get_or_create(project=project)
    ProjectBudget.objects.filter(project=other_project).delete()
    with transaction.atomic():
        row = rawrows.by_pk_with(Project, project.pk, ("budget",), share_lock=True)
        bare = rawrows.by_pk_with(Project, other_project.pk, ("budget",), share_lock=True)
    with django_assert_num_queries(0):
        assert row.slug == "demo" and row.budget.project_id == project.pk
        with pytest.raises(ProjectBudget.DoesNotExist):  # cached as missing, as select_related does
            bare.budget  # noqa: B018


def test_kept_cursor_statements_are_counted_and_their_errors_are_djangos(project, agent):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    task = Task.objects.create(project=project, agent_type="coder", title="kept", created_by=agent)
    wrapper = rawrows.db()
    with CaptureQueriesContext(connection) as captured:  # tests count them while queries are logged
        assert rawrows.by_pk(Task, task.pk).title == "kept"
    assert len(captured.captured_queries) == 1
    with pytest.raises(IntegrityError), transaction.atomic():
        with rawrows.kept_cursor(wrapper) as cursor:
            cursor.execute(f"INSERT INTO {Task._meta.db_table} (id) VALUES (%s)", [task.pk.hex])
    assert rawrows.by_pk(Task, task.pk).title == "kept"  # and the next statement goes on working
    wrapper.close()  # a new connection (or another pooled one)
    assert rawrows.by_pk(Task, task.pk).title == "kept"


@pytest.mark.postgres
def test_kept_cursor_is_one_driver_cursor_per_connection(project, agent):
    from django.db.backends.utils import CursorDebugWrapper
    from django.test.utils import CaptureQueriesContext

    wrapper = rawrows.db()
    wrapper.close()  # no connection: the kept cursor's first statement opens one
    with rawrows.kept_cursor(wrapper) as first:
        first.execute("SELECT 1")
    with rawrows.kept_cursor(wrapper) as second:
        assert second.cursor is first.cursor and not first.cursor.closed
        second.execute("SELECT 2")
        assert second.fetchone()[0] == 2
    with CaptureQueriesContext(wrapper):
        with rawrows.kept_cursor(wrapper) as logged:
            assert isinstance(logged, CursorDebugWrapper) and logged.cursor is first.cursor
    raw = wrapper.connection
    wrapper.close()
    with rawrows.kept_cursor(wrapper) as renewed:
        # the connection checked out now brings its own cursor (the same one if the pool handed
        # the same connection back)
        assert wrapper.connection is not None and (renewed.cursor is first.cursor) == (wrapper.connection is raw)
        renewed.execute("SELECT 3")
        assert renewed.fetchone()[0] == 3


@pytest.mark.parametrize("signal", ["pre_save", "post_save"])
def test_a_model_with_save_receivers_is_refused_not_written_behind_their_back(project, agent, signal):
    from django.core.exceptions import ImproperlyConfigured
    from django.db.models import signals

    task = Task.objects.create(project=project, agent_type="coder", title="before", created_by=agent)
    rawrows.update_fields(task, ["title"])  # no receiver: written
    heard = []

    def receiver(sender, instance, **kwargs):
        heard.append(instance.pk)

    getattr(signals, signal).connect(receiver, sender=Task)
    try:
        task.title = "behind its back"
        with pytest.raises(ImproperlyConfigured, match="projects.Task has pre_save/post_save receivers"):
            rawrows.update_fields(task, ["title"])
        with pytest.raises(ImproperlyConfigured):
            rawrows.insert(Task(project=project, agent_type="coder", title="new", created_by=agent))
    finally:
        getattr(signals, signal).disconnect(receiver, sender=Task)
    assert heard == []
    assert Task.objects.get(pk=task.pk).title == "before"
    assert not Task.objects.filter(title="new").exists()
