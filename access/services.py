import secrets

from django.db import transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from projects import roles
from projects.permissions import project_perms_changed
from access.models import ApiKey, hash_key
from projects.models import Project, ProjectUserObjectPermission
from audit.services import audit_record
from core.wakeup import wakeup_on_commit

# Every open event stream of every process checks its access again when this group gets a message
# (approvals/event_stream.py): a revoked key's or a removed role's stream is closed at once, not at
# its next heartbeat (up to HITL_WS_HEARTBEAT_SECONDS of events later).
ACCESS_CHANGED_GROUP = "hitl.access-changed"


def access_changed_on_commit() -> None:
    wakeup_on_commit(ACCESS_CHANGED_GROUP)


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
        access_changed_on_commit()
    return key


def _held_perms(user, project) -> set[str]:
    return set(ProjectUserObjectPermission.objects.filter(user=user, content_object=project)
               .values_list("permission__codename", flat=True))


@transaction.atomic
def role_grant(*, user, project, role: str, actor=None) -> tuple[list[str], list[str]]:
    """Give ``user`` the role on ``project``: (its permissions, those taken away). The staff roles
    are one ladder: granting reviewer to a manager makes them a reviewer (``manage_project``
    removed; it only added to what they held, and the trail said reviewer). The agent role is
    held beside a staff role, neither taking the other away."""
    if role not in roles.ROLES:
        raise ValueError(f"unknown role {role!r}")
    removed = []
    if role in roles.STAFF_ROLES:
        removed = sorted((_held_perms(user, project) & roles.STAFF_PERMS) - set(roles.ROLES[role]))
        for perm in removed:
            remove_perm(f"projects.{perm}", user, project)
    for perm in roles.ROLES[role]:
        assign_perm(f"projects.{perm}", user, project)
    project_perms_changed(user)
    after = {"user": user.get_username(), "role": role, "perms": roles.ROLES[role]}
    if removed:
        after["removed"] = removed
    if role in roles.STAFF_ROLES and not user.is_staff:
        user.is_staff = True  # reviewers and managers work in the admin's approval queue
        user.save(update_fields=["is_staff"])
        after["made_staff"] = True  # the trail says so (one an admin had de-staffed signs in again)
    audit_record(actor=actor, action="role.grant", obj=project, object_type="projects.project", after=after)
    access_changed_on_commit()  # a project newly visible is followed at once too; a role lowered ends one
    return roles.ROLES[role], removed


def project_creator_role(*, project, actor) -> None:
    """The ``projects.project_created`` hook: a creator who is not an admin (given Django's "add
    project" permission, in the admin or the API) manages what they made, through ``role_grant``
    (audited; one not staff is made staff, as every manager is). Admins see every project already."""
    if actor is None or not actor.is_authenticated or actor.is_superuser:
        return
    role_grant(user=actor, project=project, role="manager", actor=actor)


@transaction.atomic
def role_revoke_all(*, user, project, actor=None) -> None:
    for perm in roles.ALL_PERMS:
        remove_perm(f"projects.{perm}", user, project)
    project_perms_changed(user)
    audit_record(actor=actor, action="role.revoke_all", obj=project, after={"user": user.get_username()})
    access_changed_on_commit()


USER_AUDITED = ("username", "is_active", "is_staff", "is_superuser")


def user_state(user) -> dict:
    """What of a user the trail keeps when the admin changes it: sign-in, staff and superuser
    status, and Django's groups and model permissions (what the project roles do not cover)."""
    return {**{name: getattr(user, name) for name in USER_AUDITED},
            "groups": sorted(user.groups.values_list("name", flat=True)),
            "user_permissions": sorted(f"{app}.{code}" for app, code in user.user_permissions.values_list(
                "content_type__app_label", "codename"))}


def user_changed(*, user, actor, before: dict | None) -> None:
    """Audit an admin's change to a user (``before`` None: added): the fields that differ."""
    after = user_state(user)
    if before is None:
        audit_record(actor=actor, action="user.create", obj=user, after=after)
        return
    changed = [name for name in after if after[name] != before.get(name)]
    if changed:
        audit_record(actor=actor, action="user.change", obj=user, before={k: before.get(k) for k in changed},
                     after={k: after[k] for k in changed})
    if {"is_active", "is_superuser", "groups", "user_permissions"} & set(changed):
        access_changed_on_commit()


def user_password_changed(*, user, actor) -> None:
    audit_record(actor=actor, action="user.password_change", obj=user, after={"user": user.get_username()})
    access_changed_on_commit()  # the user's other browser sessions are signed out: their streams end


@transaction.atomic
def user_delete(*, user, actor) -> None:
    """Delete a user (the admin's delete, which Django refuses while keys, decisions or audit rows
    point at them), each of their project roles revoked first through ``role_revoke_all`` (the
    permission rows went with the user unrecorded: the trail's last word was their grant)."""
    for project in Project.objects.filter(projectuserobjectpermission__user=user).distinct():
        role_revoke_all(user=user, project=project, actor=actor)
    audit_record(actor=actor, action="user.delete", obj=user, before=user_state(user))
    user.delete()
    access_changed_on_commit()
