"""The 423 gate reads Project.active_stop_id (projects cannot import emergency): fill it in
for projects stopped before the column existed."""
from django.db import migrations


def backfill(apps, schema_editor):
    Project = apps.get_model("projects", "Project")
    EmergencyStop = apps.get_model("emergency", "EmergencyStop")
    for stop in EmergencyStop.objects.filter(resolved_at__isnull=True):
        Project.objects.filter(pk=stop.project_id).update(active_stop_id=stop.pk)


class Migration(migrations.Migration):
    dependencies = [("emergency", "0001_initial"), ("projects", "0004_project_active_stop_id")]
    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
