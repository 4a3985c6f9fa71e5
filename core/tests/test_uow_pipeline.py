"""The unit of work's flush on PostgreSQL sends its statements in psycopg's pipeline mode: a
statement that fails before any answer is read still fails the whole write, as Django's error
(which the API maps and retry_transient retries), and nothing of the write is kept."""
import pytest
from django.db import DataError

from audit.models import AuditEvent
from audit.services import audit_record
from core.rawrows import kept_cursor
from core.uow import defer_or_run
from events.models import Event
from events.services import event_emit
from projects.uow import project_uow

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def failing_statement():
    with kept_cursor() as cursor:
        cursor.execute("SELECT 1 / 0")  # its answer is never read: the error comes up later


@pytest.mark.parametrize("stage", ["agent_state", "audit_chain"])  # comes up at a later read / at the end
def test_a_flushed_statement_that_fails_unread_fails_the_write_and_keeps_nothing(project, admin_user, stage):
    events, audits = Event.objects.count(), AuditEvent.objects.count()
    with pytest.raises(DataError), project_uow(project.pk):
        audit_record(actor=admin_user, action="test.pipelined", obj=project)
        event_emit(project_id=project.pk, task_id=None, event_type="agent_approval_requested", data={"n": 1})
        defer_or_run(stage, failing_statement)
    assert (Event.objects.count(), AuditEvent.objects.count()) == (events, audits)
    with project_uow(project.pk):  # the connection is usable again and the next write lands
        audit_record(actor=admin_user, action="test.pipelined", obj=project)
        event_emit(project_id=project.pk, task_id=None, event_type="agent_approval_requested", data={"n": 2})
    assert Event.objects.count() == events + 1 and AuditEvent.objects.filter(action="test.pipelined").count() == 1
