from django.db import migrations
from django.db.models import Count


def count_open_questions(apps, schema_editor):
    """Questions already pending when a task starts counting them (projects 0007) keep it waiting:
    each open task gets its count, and one pending or running goes to waiting_for_hitl, back to
    where it was when its last question is closed."""
    request_model, task_model = apps.get_model("hitl", "HitlRequest"), apps.get_model("projects", "Task")
    pending = (request_model.objects.filter(status="pending", task__isnull=False).values("task_id")
               .annotate(n=Count("pk")).values_list("task_id", "n"))
    for task_id, n in pending:
        task = task_model.objects.filter(pk=task_id).only("pk", "status").first()
        if task is None or task.status not in ("pending", "waiting_for_hitl", "running"):
            continue
        changes = {"open_questions": n}
        if task.status in ("pending", "running"):
            changes.update(status="waiting_for_hitl", status_after_questions=task.status)
        task_model.objects.filter(pk=task_id).update(**changes)


def uncount_open_questions(apps, schema_editor):
    """Back (a rollback to code that does not count questions): a task waiting only for its
    questions goes back to the status they held back. The older code knew no other way out of
    waiting_for_hitl, so such a task stayed there for good (its completion refused: 409)."""
    task_model = apps.get_model("projects", "Task")
    for status in ("pending", "running"):
        task_model.objects.filter(status="waiting_for_hitl", open_questions__gt=0,
                                  status_after_questions=status).update(status=status)


class Migration(migrations.Migration):

    dependencies = [
        ("hitl", "0003_timeout_warnings"),
        ("projects", "0007_task_open_questions"),
    ]

    operations = [
        migrations.RunPython(count_open_questions, uncount_open_questions),
    ]
