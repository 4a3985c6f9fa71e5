from django.contrib.auth.management.commands import createsuperuser

from access.management.commands._audited import users_saved
from access.services import user_changed


class Command(createsuperuser.Command):
    help = createsuperuser.Command.help + " The new user is written to the audit trail (user.create)."

    def handle(self, *args, **options):
        with users_saved() as saved:
            result = super().handle(*args, **options)
        for user, created in saved:
            if created:
                user_changed(user=user, actor=None, before=None)
        return result
