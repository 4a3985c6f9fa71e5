import json
from pathlib import Path

from django.db import migrations

DATA = Path(__file__).resolve().parent.parent / "data" / "model_prices.json"


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("approvals", "ModelPrice")
    for row in json.loads(DATA.read_text()):
        ModelPrice.objects.get_or_create(model=row["model"], defaults=row)


class Migration(migrations.Migration):
    dependencies = [("approvals", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
