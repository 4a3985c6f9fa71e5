"""Existing calls get the budget state their ledger entries say (new column, default reserved)."""
from django.db import migrations


def backfill(apps, schema_editor):
    Approval = apps.get_model("approvals", "AgentCallApproval")
    UsageEntry = apps.get_model("budgets", "UsageEntry")
    kinds = {}
    for approval_id, kind in UsageEntry.objects.values_list("approval_id", "kind"):
        kinds.setdefault(approval_id, set()).add(kind)
    for approval in Approval.objects.only("pk", "status", "budget_state").iterator():
        entries = kinds.get(approval.pk, set())
        if "settle" in entries:
            state = "settled"
        elif "release" in entries or approval.status in ("rejected", "cancelled", "timed_out"):
            state = "released"
        elif "reserve" in entries:
            state = "reserved"
        else:
            state = "blocked" if approval.status == "pending" else "released"
        if state != approval.budget_state:
            Approval.objects.filter(pk=approval.pk).update(budget_state=state)


class Migration(migrations.Migration):
    dependencies = [
        ("approvals", "0003_alter_agentcallapproval_options_and_more"),
        ("budgets", "0002_remove_budgetoverriderequest_requires_manager_approval_and_more"),
    ]
    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
