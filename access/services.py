import secrets

from django.db import transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from projects import roles
from projects.permissions import project_perms_changed
from access.models import ApiKey, hash_key
from audit.services import audit_record


@transaction.atomic
def api_key_create(*, user, name: str = "", actor=None) -> tuple[ApiKey, str]:
    """A new key for ``user``. Returns the row and the raw key, which is never stored."""
    prefix = secrets.token_hex(6)
    raw = f"hitl_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(user=user, name=name, prefix=prefix, key_hash=hash_key(raw))
    audit_record(actor=actor, action="api_key.create", obj=key,
                 after={"user": user.get_username(), "prefix": prefix, "name": name})
    return key, raw


@transaction.atomic
def api_key_revoke(*, key_id: int, actor=None) -> ApiKey:
    key = ApiKey.objects.select_for_update().get(pk=key_id)
    if key.revoked_at is None:  # revoking twice changes nothing
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit_record(actor=actor, action="api_key.revoke", obj=key,
                     before={"revoked_at": None}, after={"revoked_at": key.revoked_at})
    return key


@transaction.atomic
def role_grant(*, user, project, role: str, actor=None) -> list[str]:
    if role not in roles.ROLES:
        raise ValueError(f"unknown role {role!r}")
    for perm in roles.ROLES[role]:
        assign_perm(f"projects.{perm}", user, project)
    project_perms_changed(user)
    if role in roles.STAFF_ROLES and not user.is_staff:
        user.is_staff = True  # reviewers and managers work in the admin's approval queue
        user.save(update_fields=["is_staff"])
    audit_record(actor=actor, action="role.grant", obj=project, object_type="projects.project",
                 after={"user": user.get_username(), "role": role, "perms": roles.ROLES[role]})
    return roles.ROLES[role]


@transaction.atomic
def role_revoke_all(*, user, project, actor=None) -> None:
    for perm in roles.ALL_PERMS:
        remove_perm(f"projects.{perm}", user, project)
    project_perms_changed(user)
    audit_record(actor=actor, action="role.revoke_all", obj=project, after={"user": user.get_username()})
