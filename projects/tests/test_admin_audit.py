"""Admin changes to what every call's safety depends on leave an audit row: model prices (every
cost estimate follows them), where a project's alerts go (never the webhook's secret), and projects
are never deleted from the admin."""
import pytest
from django.urls import reverse

from approvals.models import ModelPrice
from audit.models import AuditEvent
from projects.models import ProjectNotifier

pytestmark = pytest.mark.django_db


def form_data(response) -> dict:
    """The POST a browser would send back from an admin change page, as rendered."""
    data = {}

    def put(bound):
        value = bound.value()
        if value is True:
            data[bound.html_name] = "on"
        elif value is not None and value is not False:
            data[bound.html_name] = value

    for bound in response.context["adminform"].form:
        put(bound)
    for inline in response.context["inline_admin_formsets"]:
        for bound in inline.formset.management_form:
            put(bound)
        for form in inline.formset.forms:
            for bound in form:
                put(bound)
    return data


def test_a_model_price_change_and_deletion_are_audited_with_exact_amounts(client, admin_user):
    price = ModelPrice.objects.create(model="test-model", input_per_million="2.5000", output_per_million="10.0000")
    client.force_login(admin_user)
    url = reverse("admin:approvals_modelprice_change", args=[price.pk])
    data = {**form_data(client.get(url)), "input_per_million": "0", "output_per_million": "1e3"}
    assert client.post(url, data).status_code == 302
    row = AuditEvent.objects.get(action="model_price.update")
    assert row.project_id is None and row.object_id == str(price.pk)
    assert row.before == {"input_per_million": "2.5000", "output_per_million": "10.0000"}
    assert row.after == {"model": "test-model", "input_per_million": "0.0000", "output_per_million": "1000.0000"}
    client.post(reverse("admin:approvals_modelprice_delete", args=[price.pk]), {"post": "yes"})
    assert not ModelPrice.objects.filter(pk=price.pk).exists()
    gone = AuditEvent.objects.get(action="model_price.delete")
    assert gone.before["model"] == "test-model" and gone.before["output_per_million"] == "1000.0000"


def test_a_projects_notifiers_are_audited_and_their_secret_is_never_shown_or_written(client, admin_user, project):
    client.force_login(admin_user)
    url = reverse("admin:projects_project_change", args=[project.pk])
    data = form_data(client.get(url))
    data.update({"notifiers-TOTAL_FORMS": "1", "notifiers-0-kind": "webhook",
                 "notifiers-0-target": "https://hooks.example.com/hitl", "notifiers-0-secret": "s3cr3t-value",
                 "notifiers-0-active": "on"})
    r = client.post(url, data)
    assert r.status_code == 302, r.context and r.context["inline_admin_formsets"][1].formset.errors
    notifier = ProjectNotifier.objects.get(project=project)
    assert notifier.secret == "s3cr3t-value"
    created = AuditEvent.objects.get(action="project_notifier.create")
    assert created.project_id == project.pk and created.after == {
        "kind": "webhook", "target": "https://hooks.example.com/hitl", "secret": True, "active": True}

    page = client.get(url)
    assert b"s3cr3t-value" not in page.content
    data = form_data(page)
    data["notifiers-0-target"] = "https://hooks.example.com/other"   # the secret left blank: kept
    assert client.post(url, data).status_code == 302
    notifier.refresh_from_db()
    assert notifier.secret == "s3cr3t-value" and notifier.target.endswith("/other")
    changed = AuditEvent.objects.get(action="project_notifier.update")
    assert changed.before == {"target": "https://hooks.example.com/hitl"}
    assert changed.after == {"target": "https://hooks.example.com/other"}

    data = {**form_data(client.get(url)), "notifiers-0-secret": "new", "notifiers-0-clear_secret": "on"}
    r = client.post(url, data)   # both a new secret and "clear": refused, nothing changed
    assert r.status_code == 200 and b"Either type a new secret or clear it" in r.content
    notifier.refresh_from_db()
    assert notifier.secret == "s3cr3t-value"
    data = {**form_data(client.get(url)), "notifiers-0-clear_secret": "on"}
    assert client.post(url, data).status_code == 302
    notifier.refresh_from_db()
    assert notifier.secret == "" and notifier.target.endswith("/other")   # unsigned from now on
    cleared = AuditEvent.objects.filter(action="project_notifier.update").order_by("-pk").first()
    assert cleared.before == {"secret": True} and cleared.after == {"secret": False}

    data = {**form_data(client.get(url)), "notifiers-0-DELETE": "on"}
    assert client.post(url, data).status_code == 302
    assert not ProjectNotifier.objects.filter(project=project).exists()
    assert AuditEvent.objects.get(action="project_notifier.delete").before["secret"] is False
    assert not AuditEvent.objects.filter(after__icontains="s3cr3t").exists()


def test_a_project_is_never_deleted_from_the_admin(client, admin_user, project):
    client.force_login(admin_user)
    r = client.post(reverse("admin:projects_project_delete", args=[project.pk]), {"post": "yes"})
    assert r.status_code == 403
    assert type(project).objects.filter(pk=project.pk).exists()


def test_roles_are_shown_on_a_project_and_changed_only_through_the_audited_command(client, admin_user, project,
                                                                                    agent, reviewer, manager):
    """django-guardian's per-permission page wrote no audit row and could grant half a role: it is
    gone (404, not a 500 for a malformed id either); the project's page names who holds what."""
    client.force_login(admin_user)
    for pk in (project.pk, "zzz"):
        assert client.get(f"/admin/projects/project/{pk}/permissions/").status_code in (302, 404)
    page = client.get(reverse("admin:projects_project_change", args=[project.pk])).content.decode()
    assert "agent (agent)" in page and "manager (manager)" in page and "reviewer (reviewer)" in page
    assert "/permissions/" not in page


def test_a_slug_taken_in_another_case_is_refused_in_words(client, admin_user, project):
    client.force_login(admin_user)
    url = reverse("admin:projects_project_add")
    data = {**form_data(client.get(url)), "name": "Shouting", "slug": project.slug.upper(), "timezone": "UTC"}
    r = client.post(url, data)
    assert r.status_code == 200 and "slugs are told apart without case" in r.content.decode()
    assert "project_slug_unique_without_case" not in r.content.decode()


@pytest.mark.parametrize("hosts", ['{"a": 1}', "[1, 2]", '["http://x y"]', '["' + "a" * 300 + '.com"]'])
def test_link_hosts_the_api_would_refuse_are_a_form_error_not_a_500(client, admin_user, project, hosts):
    client.force_login(admin_user)
    url = reverse("admin:projects_project_change", args=[project.pk])
    r = client.post(url, {**form_data(client.get(url)), "allowed_link_hosts": hosts})
    assert r.status_code == 200 and r.context["adminform"].form.errors.get("allowed_link_hosts"), r.status_code
    project.refresh_from_db()
    assert project.allowed_link_hosts == []


def test_a_project_added_in_the_admin_keeps_its_link_hosts(client, admin_user):
    from projects.models import Project

    client.force_login(admin_user)
    url = reverse("admin:projects_project_add")
    data = {**form_data(client.get(url)), "name": "Zeta", "slug": "zeta1", "timezone": "UTC",
            "allowed_link_hosts": '["Example.com", "docs.example.org"]'}
    assert client.post(url, data).status_code == 302
    assert Project.objects.get(slug="zeta1").allowed_link_hosts == ["docs.example.org", "example.com"]
    r = client.post(url, {**data, "slug": "zeta2", "allowed_link_hosts": "[1]"})
    assert r.status_code == 200 and not Project.objects.filter(slug="zeta2").exists()


@pytest.mark.parametrize("kind, target", [("webhook", "hooks.example.com/no-scheme"), ("webhook", "ftp://example.com/x"),
                                          ("webhook", "javascript:alert(1)"), ("email", "not-an-email"),
                                          ("email", "a@b.c\nBcc: x@y.z")])
def test_a_notifier_target_delivery_would_refuse_is_refused_when_saved(client, admin_user, project, kind, target):
    """It was saved, and the first alert (a stop) was then dropped by the worker."""
    client.force_login(admin_user)
    url = reverse("admin:projects_project_change", args=[project.pk])
    data = {**form_data(client.get(url)), "notifiers-TOTAL_FORMS": "1", "notifiers-0-kind": kind,
            "notifiers-0-target": target, "notifiers-0-active": "on"}
    r = client.post(url, data)
    assert r.status_code == 200 and "target" in r.context["inline_admin_formsets"][1].formset.errors[0]
    assert not ProjectNotifier.objects.filter(project=project).exists()
    ok = "alerts@example.com" if kind == "email" else "http://alerts:9000/hook"  # a service name without a dot
    assert client.post(url, {**data, "notifiers-0-target": f" {ok} "}).status_code == 302
    assert ProjectNotifier.objects.get(project=project).target == ok


def test_a_notifier_saved_before_the_check_does_not_block_the_projects_other_changes(client, admin_user, project):
    ProjectNotifier.objects.create(project=project, kind="webhook", target="hooks.example.com/legacy")
    client.force_login(admin_user)
    url = reverse("admin:projects_project_change", args=[project.pk])
    assert client.post(url, {**form_data(client.get(url)), "name": "Renamed"}).status_code == 302
    project.refresh_from_db()
    assert project.name == "Renamed"
    assert ProjectNotifier.objects.get(project=project).target == "hooks.example.com/legacy"
