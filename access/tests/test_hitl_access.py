import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from access.models import ApiKey

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    out = io.StringIO()
    call_command("hitl_access", *args, stdout=out)
    return out.getvalue().splitlines()


def test_printed_key_works_against_the_api(project):
    lines = run("newagent", "--create-user", "--role", "agent", "--project", "demo", "--api-key")
    key = lines[-1]
    assert key.startswith("hitl_") and " " not in key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get(f"/api/v1/projects/{project.pk}").status_code == 200
    r = client.post("/api/v1/tasks", {"project_id": str(project.pk), "agent_type": "analyst", "title": "Analyse"},
                    format="json")
    assert r.status_code == 201
    # an agent may not decide or manage: creating a project stays admin-only
    assert client.post("/api/v1/projects", {"name": "x", "slug": "x"}, format="json").status_code == 403


def test_admin_key_creates_the_first_project(admin_user):
    key = run("admin", "--api-key")[-1]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    r = client.post("/api/v1/projects", {"name": "First", "slug": "first"}, format="json")
    assert r.status_code == 201 and r.json()["status"] == "active"


def test_role_without_key_prints_no_key(project):
    lines = run("rev", "--create-user", "--role", "reviewer", "--project", "demo")
    user = get_user_model().objects.get(username="rev")
    # the trail says who came in (an operator found keys and roles audited, the user's creation not)
    from audit.models import AuditEvent

    created = AuditEvent.objects.get(action="user.create", object_id=str(user.pk))
    assert created.actor_repr == "system" and created.after["username"] == "rev" and created.after["is_staff"] is False
    assert user.has_perm("projects.review_project", project)
    assert not user.has_perm("projects.act_as_agent", project)
    assert not ApiKey.objects.filter(user=user).exists()
    assert not any(line.startswith("hitl_") for line in lines)


@pytest.mark.parametrize("args", [
    ["ghost", "--api-key"],                                            # unknown user, no --create-user
    ["ghost", "--create-user", "--role", "agent", "--project", "nope"],  # unknown project
    ["ghost", "--create-user", "--role", "agent"],                      # role without project
])
def test_unknown_user_or_project_exits_2_and_creates_nothing(project, args):
    with pytest.raises(CommandError) as exc:
        run(*args)
    assert exc.value.returncode == 2
    assert not get_user_model().objects.filter(username="ghost").exists()
    assert not ApiKey.objects.exists()


def test_revoke_keys(agent, project):
    key = run("agent", "--api-key")[-1]
    run("agent", "--revoke-keys")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get(f"/api/v1/projects/{project.pk}").status_code == 401


def test_one_key_is_revoked_by_its_prefix_and_the_others_keep_working(agent, project):
    """Rotation: a new key first, then the old one revoked by its prefix (or the whole key)."""
    old, other = run("agent", "--api-key")[-1], run("agent", "--api-key")[-1]
    old_prefix = old.split("_")[1]
    lines = run("agent", "--revoke-key", old_prefix, "--list-keys")
    assert lines[0] == f"Revoked API key {old_prefix} of agent."
    listed = {line.split()[0]: line for line in lines[1:]}
    assert set(listed) == {old_prefix, other.split("_")[1]}
    assert "revoked" in listed[old_prefix] and listed[other.split("_")[1]].endswith("active")

    def status(key):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        return client.get(f"/api/v1/projects/{project.pk}").status_code

    assert (status(old), status(other)) == (401, 200)
    assert run("agent", "--revoke-key", f"hitl_{old_prefix}") == [f"API key {old_prefix} of agent was already revoked."]
    assert run("agent", "--revoke-key", other) == [f"Revoked API key {other.split('_')[1]} of agent."]  # whole key
    assert status(other) == 401
    assert run("agent", "--revoke-key", old_prefix) == [f"API key {old_prefix} of agent was already revoked."]


def test_an_unknown_prefix_exits_2_and_revokes_nothing(agent, make_user, project):
    mine = run("agent", "--api-key")[-1]
    theirs = run(make_user("someone").username, "--api-key")[-1]
    for wrong in ["000000000000", theirs.split("_")[1], theirs]:  # no such key, or another user's
        with pytest.raises(CommandError) as exc:
            run("agent", "--revoke-key", mine.split("_")[1], "--revoke-key", wrong)
        assert exc.value.returncode == 2 and "nothing was revoked" in str(exc.value)
    assert not ApiKey.objects.filter(revoked_at__isnull=False).exists()


def test_the_key_list_keeps_a_new_key_last_alone(agent):
    lines = run("agent", "--list-keys", "--api-key", "--key-name", "ci")
    key = lines[-1]
    assert key.startswith("hitl_") and " " not in key
    [row] = [line for line in lines if line.startswith(key.split("_")[1] + " ")]
    assert " ci " in row and "last used never" in row and row.endswith("active")


def test_command_line_exit_codes_and_last_line(tmp_path):
    """The real command line, on a throwaway SQLite database."""
    env = {**os.environ, "DJANGO_DEBUG": "1", "DATABASE_URL": "", "REDIS_URL": "",
           "HITL_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "botarmy_hitl.settings"}
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=ROOT)
    missing = subprocess.run([*manage, "hitl_access", "nobody", "--api-key"], env=env, cwd=ROOT,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "nobody" in missing.stderr
    made = subprocess.run([*manage, "hitl_access", "bot", "--create-user", "--api-key"], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=True)
    assert made.stdout.splitlines()[-1].startswith("hitl_")


def test_the_admin_says_how_many_keys_it_revoked_and_which_were_revoked_already(client, admin_user, agent):
    from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
    from django.urls import reverse

    from access.services import api_key_create, api_key_revoke

    first, second = api_key_create(user=agent, name="a")[0], api_key_create(user=agent, name="b")[0]
    api_key_revoke(key_id=first.pk)
    client.force_login(admin_user)
    r = client.post(reverse("admin:access_apikey_changelist"),
                    {"action": "revoke", "index": 0, ACTION_CHECKBOX_NAME: [first.pk, second.pk]}, follow=True)
    assert [str(m) for m in r.context["messages"]] == ["Revoked 1 key; 1 was already revoked."]


@pytest.mark.parametrize("username", ["a\x01b", "bad user!", "u" * 151, ""])
def test_a_user_name_the_admin_would_refuse_is_not_created(username):
    """--create-user stored control characters, spaces and 300-character names (SQLite does not
    enforce the length): they then appear in every requested_by / approved_by."""
    with pytest.raises(CommandError) as exc:
        run(username, "--create-user", "--api-key")
    assert exc.value.returncode == 2 and "Not a valid user name" in str(exc.value)
    assert not get_user_model().objects.exists() and not ApiKey.objects.exists()


def test_a_valid_new_user_name_is_created():
    run("agent.bot-1@fleet", "--create-user")
    assert get_user_model().objects.filter(username="agent.bot-1@fleet").exists()


def test_revoke_key_takes_several_prefixes_after_one_flag_and_no_action_is_an_error(agent):
    """README's usage reads ``[--revoke-key PREFIX ...]``, but ``--revoke-key A B`` was "unrecognized
    arguments: B"; and ``hitl_access bob`` with no action did nothing, said nothing, exited 0."""
    first, second = (run("agent", "--api-key")[-1] for _ in range(2))
    prefixes = [key.split("_")[1] for key in (first, second)]
    assert run("agent", "--revoke-key", *prefixes) == [f"Revoked API key {p} of agent." for p in prefixes]
    assert ApiKey.objects.filter(user=agent, revoked_at__isnull=True).count() == 0
    with pytest.raises(CommandError, match="Nothing to do") as caught:
        run("agent")
    assert caught.value.returncode == 2


def test_granting_reviewer_to_a_manager_makes_them_a_reviewer_and_the_trail_says_what_went(make_user, project):
    """``--role reviewer`` on a manager only added to what they held: they kept managing (a budget
    PATCH 200) while the trail read "role.grant reviewer"."""
    from audit.models import AuditEvent

    boss = make_user("boss", role="manager", project=project)
    key = run("boss", "--api-key")[-1]
    assert run("boss", "--role", "reviewer", "--project", "DEMO")[0] == (
        "Granted reviewer on project demo to boss (view_project, review_project); removed manage_project.")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.patch(f"/api/v1/budgets/{project.pk}", {"daily_token_limit": 5}, format="json").status_code == 403
    assert client.get(f"/api/v1/projects/{project.pk}").status_code == 200           # still a reviewer
    row = AuditEvent.objects.filter(action="role.grant").latest("id")
    assert row.after["role"] == "reviewer" and row.after["removed"] == ["manage_project"]
    # the agent role is held beside a staff role: neither takes the other away
    run("boss", "--role", "agent", "--project", "demo")
    run("boss", "--role", "manager", "--project", "demo")
    assert client.post("/api/v1/tasks", {"project_id": str(project.pk), "agent_type": "coder", "title": "t"},
                       format="json").status_code == 201
    assert client.patch(f"/api/v1/budgets/{project.pk}", {"daily_token_limit": 5}, format="json").status_code == 200


def test_a_staff_role_given_to_someone_not_staff_says_it_makes_them_staff(make_user, project):
    """An admin had taken staff status away; a role grant gave it back without a word in the trail."""
    from audit.models import AuditEvent

    rev = make_user("rev2", role="reviewer", project=project)
    rev.is_staff = False
    rev.save(update_fields=["is_staff"])
    assert run("rev2", "--role", "reviewer", "--project", "demo")[0] == (
        "Granted reviewer on project demo to rev2 (view_project, review_project); made staff (they may sign in to "
        "the pages).")
    assert AuditEvent.objects.filter(action="role.grant").latest("id").after["made_staff"] is True
    assert "made staff" not in run("rev2", "--role", "reviewer", "--project", "demo")[0]   # staff already


def test_djangos_user_commands_write_their_audit_rows(db, monkeypatch):
    """The README's first admin comes from `createsuperuser`, and `changepassword` sets passwords
    from a shell: neither left an audit row, where the admin's user pages and `hitl_access
    --create-user` write theirs."""
    from audit.models import AuditEvent
    from audit.services import audit_verify

    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "first-admin-pw-0123")
    call_command("createsuperuser", "--noinput", "--username", "root1", "--email", "r@example.com",
                 stdout=io.StringIO())
    user = get_user_model().objects.get(username="root1")
    created = AuditEvent.objects.get(action="user.create", object_id=str(user.pk))
    assert created.actor_repr == "system" and created.after["username"] == "root1"
    assert created.after["is_superuser"] is True

    monkeypatch.setattr("getpass.getpass", lambda prompt="": "second-pw-0123456789")
    call_command("changepassword", "root1", stdout=io.StringIO())
    changed = AuditEvent.objects.get(action="user.password_change", object_id=str(user.pk))
    assert changed.actor_repr == "system" and changed.after == {"user": "root1"}
    user.refresh_from_db()
    assert user.check_password("second-pw-0123456789")
    assert AuditEvent.objects.filter(object_id=str(user.pk)).count() == 2 and audit_verify() == []
