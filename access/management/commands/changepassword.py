from django.contrib.auth.management.commands import changepassword

from access.management.commands._audited import users_saved
from access.services import user_password_changed


class Command(changepassword.Command):
    help = changepassword.Command.help + " The change is written to the audit trail (user.password_change)."

    def handle(self, *args, **options):
        with users_saved() as saved:
            result = super().handle(*args, **options)
        for user, _created in saved:
            user_password_changed(user=user, actor=None)
        return result
