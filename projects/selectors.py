from django.db.models import Count

from projects.models import Task
from projects.permissions import in_visible_projects


def task_visible_to(*, user):
    return Task.objects.filter(in_visible_projects(user))


def project_task_counts(*, project) -> dict:
    rows = Task.objects.filter(project=project).values("status").annotate(n=Count("id"))
    counts = {status: 0 for status in Task.Status.values}
    counts.update({row["status"]: row["n"] for row in rows})
    return counts
