from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.services import audit_checkpoint_write


class Command(BaseCommand):
    help = ("Write the audit chain heads (key, last seq, last hash, time) to a new checkpoint file, signed "
            "with HITL_AUDIT_CHECKPOINT_KEY. Keep the directory outside the database (and ideally off the host).")

    def add_arguments(self, parser):
        parser.add_argument("--dir", metavar="DIR", default=None,
                            help="where to write it (default: HITL_AUDIT_CHECKPOINT_DIR)")

    def handle(self, *args, **options):
        try:
            path = audit_checkpoint_write(options["dir"] or settings.HITL_AUDIT_CHECKPOINT_DIR)
        except OSError as exc:
            raise CommandError(f"The checkpoint could not be written: {exc}", returncode=2) from None
        self.stdout.write(f"Checkpoint written: {path}")
