from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from projects import roles
from access.models import ApiKey
from access.services import api_key_create, api_key_revoke, role_grant, role_revoke_all, user_changed
from projects.models import Project


class Command(BaseCommand):
    help = (
        "Create users, grant per-project roles and issue API keys. With --api-key the new key is "
        "printed alone on the last line. An unknown user or project exits with 2."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", choices=sorted(roles.ROLES), help="role to grant on --project")
        parser.add_argument("--project", metavar="SLUG", help="project slug for --role / --revoke-roles")
        parser.add_argument("--create-user", action="store_true", help="create the user if it does not exist")
        parser.add_argument("--api-key", action="store_true", help="issue a new API key and print it last")
        parser.add_argument("--key-name", default="", help="a label for the new key")
        parser.add_argument("--revoke-keys", action="store_true", help="revoke every active key of the user")
        parser.add_argument("--revoke-key", action="extend", nargs="+", default=[], metavar="PREFIX",
                            help="revoke keys of the user, each named by its prefix (or the whole key): "
                                 "--revoke-key A B, or the flag repeated")
        parser.add_argument("--list-keys", action="store_true",
                            help="list the user's keys: prefix, name, created, last used, active or revoked")
        parser.add_argument("--revoke-roles", action="store_true", help="remove every role on --project")

    def handle(self, *args, username, role, project, create_user, api_key, key_name, revoke_keys,
               revoke_roles, revoke_key=(), list_keys=False, **options):
        User = get_user_model()
        if not (role or revoke_roles or create_user or api_key or revoke_keys or revoke_key or list_keys):
            raise CommandError("Nothing to do: give --create-user, --role/--revoke-roles with --project, --api-key, "
                               "--revoke-keys, --revoke-key or --list-keys.", returncode=2)
        if (role or revoke_roles) and not project:
            raise CommandError("--role and --revoke-roles need --project SLUG.", returncode=2)
        if project and not (role or revoke_roles):
            raise CommandError("--project needs --role or --revoke-roles.", returncode=2)
        target_project = None
        if project:
            target_project = Project.objects.filter(slug__iexact=project).first()  # unique whatever its case
            if target_project is None:
                raise CommandError(f"No project with slug {project!r}.", returncode=2)

        user = User.objects.filter(username=username).first()
        if user is None:
            if not create_user:
                raise CommandError(f"No user {username!r} (add --create-user to create it).", returncode=2)
            if revoke_key:
                raise CommandError(f"User {username!r} has no keys to revoke.", returncode=2)
            field = User._meta.get_field(User.USERNAME_FIELD)
            try:  # the rules the admin and createsuperuser apply (characters, length)
                username = field.clean(username, None)
            except ValidationError as exc:
                raise CommandError(f"Not a valid user name {username!r}: {' '.join(exc.messages)}", returncode=2) from None
            with transaction.atomic():  # the user and its audit row (user.create, by "system") together
                user = User.objects.create_user(username=username)  # no password: API keys or set one later
                user_changed(user=user, actor=None, before=None)
            self.stdout.write(f"Created user {username} (no password; set one with changepassword).")
        elif create_user:
            self.stdout.write(f"User {username} already exists.")
        # every named key is checked before anything changes: one unknown prefix revokes nothing
        named = [self._key_of(user, text) for text in revoke_key]

        if revoke_roles:
            role_revoke_all(user=user, project=target_project)
            self.stdout.write(f"Removed every role of {username} on project {target_project.slug}.")
        if role:
            was_staff = user.is_staff
            perms, removed = role_grant(user=user, project=target_project, role=role)
            self.stdout.write(f"Granted {role} on project {target_project.slug} to {username} "
                              f"({', '.join(perms)})" + (f"; removed {', '.join(removed)}" if removed else "")
                              + ("; made staff (they may sign in to the pages)" if user.is_staff and not was_staff
                                 else "") + ".")
        if revoke_keys:
            active = list(ApiKey.objects.filter(user=user, revoked_at__isnull=True).values_list("pk", flat=True))
            for key_id in active:
                api_key_revoke(key_id=key_id)
            self.stdout.write(f"Revoked {len(active)} API key(s) of {username}.")
        for key in named:
            was_active = key.revoked_at is None
            api_key_revoke(key_id=key.pk)
            self.stdout.write(f"Revoked API key {key.prefix} of {username}." if was_active
                              else f"API key {key.prefix} of {username} was already revoked.")
        key = raw = None
        if api_key:
            key, raw = api_key_create(user=user, name=key_name or "hitl_access")
        if list_keys:
            self._list_keys(user)
        if api_key:  # the new key is the last line, alone
            self.stdout.write(f"API key for {username} (prefix {key.prefix}); it is shown only once:")
            self.stdout.write(raw)

    @staticmethod
    def _key_of(user, text: str) -> ApiKey:
        """The user's key named by its prefix, ``hitl_<prefix>``, or the whole key (hitl_<prefix>_<secret>)."""
        prefix = text.strip().removeprefix("hitl_").split("_")[0]
        key = ApiKey.objects.filter(user=user, prefix=prefix).first() if prefix else None
        if key is None:
            raise CommandError(f"{user.get_username()} has no API key with prefix {prefix!r} "
                               f"(--list-keys shows them); nothing was revoked.", returncode=2)
        return key

    def _list_keys(self, user) -> None:
        keys = list(ApiKey.objects.filter(user=user).order_by("created_at"))
        if not keys:
            self.stdout.write(f"{user.get_username()} has no API keys.")
        for key in keys:
            state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            used = f"{key.last_used_at:%Y-%m-%d %H:%M}" if key.last_used_at else "never"
            self.stdout.write(f"{key.prefix}  {key.name or '-'}  created {key.created_at:%Y-%m-%d %H:%M}  "
                              f"last used {used}  {state}")
