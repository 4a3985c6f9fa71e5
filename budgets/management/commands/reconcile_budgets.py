from django.core.management.base import BaseCommand

from budgets.models import BudgetWindow
from budgets.services import budget_reconcile


class Command(BaseCommand):
    help = "Recompute every budget window from the usage ledger and report any difference (exit code 1)."

    def handle(self, *args, **options):
        problems = budget_reconcile()
        for problem in problems:
            self.stderr.write(f"MISMATCH: {problem}")
        if problems:
            raise SystemExit(1)
        self.stdout.write(f"OK: {BudgetWindow.objects.count()} budget windows match the ledger.")
