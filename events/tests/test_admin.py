import pytest
from django.urls import reverse

from events.services import event_emit
from projects.services import task_create

pytestmark = pytest.mark.django_db


def test_the_outbox_list_reads_its_rows_tasks_with_them(client, reviewer, project, agent, django_assert_max_num_queries):
    """A page of events read each row's task in a statement of its own (88 of a page's 110)."""
    client.force_login(reviewer)
    url = reverse("admin:events_event_changelist")
    for n in range(3):
        task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"t{n}")
        event_emit(project_id=project.pk, task_id=task.pk, event_type="safety_alert", data={})
    client.get(url)
    with django_assert_max_num_queries(40) as few:
        assert client.get(url).status_code == 200
    for n in range(30):
        task = task_create(actor=agent, project_id=project.pk, agent_type="coder", title=f"u{n}")
        event_emit(project_id=project.pk, task_id=task.pk, event_type="safety_alert", data={})
    with django_assert_max_num_queries(len(few.captured_queries)):
        page = client.get(url)
    assert page.status_code == 200 and "u29" in page.content.decode()
