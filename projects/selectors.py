from django.db.models import Count

from projects.permissions import project_visible_to
from projects.models import Task


def task_visible_to(*, user):
    return Task.objects.filter(project__in=project_visible_to(user=user)).select_related("project")


def project_task_counts(*, project) -> dict:
    rows = Task.objects.filter(project=project).values("status").annotate(n=Count("id"))
    counts = {status: 0 for status in Task.Status.values}
    counts.update({row["status"]: row["n"] for row in rows})
    return counts
