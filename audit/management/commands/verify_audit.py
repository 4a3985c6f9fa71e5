from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.services import audit_verify_report


class Command(BaseCommand):
    help = ("Check the audit trail's keyed hash chains in one consistent snapshot. Reports the first row "
            "that was edited, inserted or deleted behind the application's back, and exits with 1 if any. "
            "With --checkpoints, also checks the chains against every signed checkpoint file.")

    def add_arguments(self, parser):
        parser.add_argument(
            "--checkpoints", metavar="DIR", nargs="?", const="", default=None,
            help="also compare with the checkpoint files in DIR (default: HITL_AUDIT_CHECKPOINT_DIR); "
                 "a file with a bad signature is a problem too",
        )

    def handle(self, *args, **options):
        checkpoint_dir = options["checkpoints"]
        if checkpoint_dir == "":
            checkpoint_dir = settings.HITL_AUDIT_CHECKPOINT_DIR
        try:
            report = audit_verify_report(checkpoint_dir=checkpoint_dir)
        except FileNotFoundError as exc:
            # exit 2, not 1 (1 says the trail was tampered with): on a fresh install no checkpoint
            # has been written yet
            raise CommandError(f"{exc}: no checkpoint has been written there yet (beat writes one every "
                               f"HITL_AUDIT_CHECKPOINT_MINUTES; `manage.py audit_checkpoint` writes one now), "
                               f"or the directory is wrong.", returncode=2) from None
        if report.problems:
            for problem in report.problems:
                self.stderr.write(f"TAMPERED: {problem}")
            raise SystemExit(1)
        plural = "" if report.checkpoints == 1 else "s"
        against = f" against {report.checkpoints} checkpoint{plural}" if checkpoint_dir is not None else ""
        self.stdout.write(f"OK: {report.rows} audit rows in {report.chains} chains verified{against}.")
