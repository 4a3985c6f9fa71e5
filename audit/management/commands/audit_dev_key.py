"""Print the development chain key that DJANGO_SECRET_KEY derives, as ``id:secret``.

Rows written before HITL_AUDIT_KEYS was set are signed with it; list it after your own keys
(``HITL_AUDIT_KEYS="k1:<new>,dev-1a2b3c4d:<secret>"``) and those rows keep verifying, while new
rows are signed with the first key. Run it with the DJANGO_SECRET_KEY those rows were written under."""
from django.core.management.base import BaseCommand

from audit.keys import dev_chain_key, dev_checkpoint_key


class Command(BaseCommand):
    help = ("Print the SECRET_KEY-derived development audit key as id:secret, to keep verifying older rows "
            "(--checkpoint: the derived checkpoint key, for HITL_AUDIT_CHECKPOINT_OLD_KEYS).")

    def add_arguments(self, parser):
        parser.add_argument("--checkpoint", action="store_true",
                            help="print the derived checkpoint key instead (older checkpoint files keep verifying "
                                 "with it in HITL_AUDIT_CHECKPOINT_OLD_KEYS)")

    def handle(self, *args, checkpoint=False, **options):
        if checkpoint:
            self.stdout.write(dev_checkpoint_key())
            return
        key_id, secret = dev_chain_key()
        self.stdout.write(f"{key_id}:{secret}")
