from django.core.management.base import BaseCommand

from audit.models import AuditChain, AuditEvent
from audit.services import audit_verify


class Command(BaseCommand):
    help = ("Check the audit trail's hash chains. Reports the first row that was edited, inserted or "
            "deleted behind the application's back, and exits with 1 if any.")

    def handle(self, *args, **options):
        problems = audit_verify()
        if problems:
            for problem in problems:
                self.stderr.write(f"TAMPERED: {problem}")
            raise SystemExit(1)
        self.stdout.write(
            f"OK: {AuditEvent.objects.count()} audit rows in {AuditChain.objects.count()} chains verified."
        )
