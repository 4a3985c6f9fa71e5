"""Budget limits in the Django admin (issue 11): a manager sets the limits of their projects
(through budgets.services.budget_limits_update, audited), a reviewer only sees them, an outsider
sees nothing of other projects."""
from decimal import Decimal

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from budgets.models import ProjectBudget
from budgets.services import budget_for

pytestmark = pytest.mark.django_db
LIST = reverse("admin:budgets_projectbudget_changelist")
ADD = reverse("admin:budgets_projectbudget_add")


def change_url(budget):
    return reverse("admin:budgets_projectbudget_change", args=[budget.pk])


def form_data(page=None, **overrides):
    """The change form's fields; with ``page`` (the change page, loaded), the version of the row it
    was loaded from."""
    data = {"daily_token_limit": 5000, "monthly_token_limit": 50000, "daily_cost_limit": "2.0000",
            "monthly_cost_limit": "20.0000", "warning_percent": 70, "critical_percent": 90, "emergency_percent": 100}
    if page is not None:
        from projects.tests.test_admin_audit import form_data as fields_of

        data["loaded_version"] = fields_of(page)["loaded_version"]
    data.update(overrides)
    return data


def loaded(client, budget):
    return client.get(change_url(budget))


@pytest.fixture
def budget(project):
    return budget_for(project)


@pytest.fixture
def other_budget(other_project):
    return budget_for(other_project)


def test_a_manager_sees_and_edits_the_limits_of_their_project(client, manager, budget, other_budget):
    client.force_login(manager)
    assert client.get(reverse("admin:index")).status_code == 200
    r = client.get(LIST)
    assert r.status_code == 200
    html = r.content.decode()
    assert change_url(budget) in html and change_url(other_budget) not in html
    r = client.get(change_url(budget))
    assert r.status_code == 200 and b'name="daily_cost_limit"' in r.content and b'name="_save"' in r.content
    r = client.post(change_url(budget), form_data(loaded(client, budget)))
    assert r.status_code == 302, r.content[:2000]
    budget.refresh_from_db()
    assert budget.daily_cost_limit == Decimal("2.0000") and budget.warning_percent == 70
    event = AuditEvent.objects.get(action="budget.update")
    assert event.actor_id == manager.pk and event.project_id == budget.project_id
    r = client.post(change_url(budget), form_data(loaded(client, budget), daily_cost_limit="1e3", monthly_cost_limit="2e4"))
    assert r.status_code == 302, r.content[:2000]
    event = AuditEvent.objects.filter(action="budget.update").latest("seq")
    assert event.after["daily_cost_limit"] == "1000.0000", event.after  # money as the API writes it, not "1E+3"


def test_a_manager_cannot_touch_another_projects_budget(client, manager, other_budget):
    client.force_login(manager)
    assert client.get(change_url(other_budget)).status_code == 302  # not visible: the admin index
    client.post(change_url(other_budget), form_data())
    other_budget.refresh_from_db()
    assert other_budget.daily_cost_limit != Decimal("2.0000")
    assert not AuditEvent.objects.filter(action="budget.update").exists()


def test_percentages_out_of_order_are_a_form_error(client, manager, budget):
    client.force_login(manager)
    r = client.post(change_url(budget), form_data(loaded(client, budget), warning_percent=95, critical_percent=90))
    assert r.status_code == 200 and b"Alert percentages must increase" in r.content
    budget.refresh_from_db()
    assert budget.warning_percent == 80
    assert not AuditEvent.objects.filter(action="budget.update").exists()


def test_a_daily_limit_above_the_monthly_one_is_a_form_error(client, manager, budget):
    client.force_login(manager)
    r = client.post(change_url(budget), form_data(loaded(client, budget), daily_cost_limit="30.0000"))
    assert r.status_code == 200 and b"is above the monthly one" in r.content
    budget.refresh_from_db()
    assert budget.daily_cost_limit == Decimal("100.0000")
    assert not AuditEvent.objects.filter(action="budget.update").exists()


def test_a_manager_adds_the_budget_of_their_project_only(client, manager, project, other_project):
    client.force_login(manager)
    r = client.get(ADD)
    assert r.status_code == 200
    assert str(project.pk) in r.content.decode() and str(other_project.pk) not in r.content.decode()
    r = client.post(ADD, {"project": str(project.pk), **form_data()})
    assert r.status_code == 302, r.content[:2000]
    assert ProjectBudget.objects.get(project=project).monthly_cost_limit == Decimal("20.0000")
    assert AuditEvent.objects.filter(action="budget.update", project_id=project.pk).exists()
    r = client.post(ADD, {"project": str(other_project.pk), **form_data()})
    assert r.status_code == 200  # not a choice
    assert not ProjectBudget.objects.filter(project=other_project).exists()


def test_a_reviewer_sees_the_limits_but_cannot_edit_them(client, reviewer, budget):
    client.force_login(reviewer)
    assert client.get(LIST).status_code == 200
    r = client.get(change_url(budget))
    assert r.status_code == 200
    assert b'name="daily_cost_limit"' not in r.content and b'name="_save"' not in r.content
    assert client.post(change_url(budget), form_data()).status_code == 403
    assert client.get(ADD).status_code == 403
    budget.refresh_from_db()
    assert budget.daily_cost_limit == Decimal("100.0000")


def test_an_outsider_sees_nothing_of_other_projects(client, outsider, budget, project):
    client.force_login(outsider)
    for name in ["projectbudget", "budgetwindow", "usageentry", "budgetalert", "budgetoverriderequest"]:
        r = client.get(reverse(f"admin:budgets_{name}_changelist"))
        assert r.status_code == 200, name
        html = r.content.decode()
        assert project.slug not in html and str(project.pk) not in html, name
    assert client.get(change_url(budget)).status_code == 302


def test_nobody_deletes_a_budget_here(client, manager, admin_user, budget):
    for user in (manager, admin_user):
        client.force_login(user)
        assert client.post(reverse("admin:budgets_projectbudget_delete", args=[budget.pk]),
                           {"post": "yes"}).status_code == 403
    assert ProjectBudget.objects.filter(pk=budget.pk).exists()


def test_a_refusal_of_the_service_is_a_message_and_saves_nothing(client, manager, budget, monkeypatch):
    from django.contrib.admin.models import LogEntry

    from budgets import admin as budgets_admin
    from core.errors import InvalidInput

    def refuse(**kwargs):
        raise InvalidInput(fields={"daily_cost_limit": ["Changed meanwhile."]})

    monkeypatch.setattr(budgets_admin, "budget_limits_update", refuse)
    client.force_login(manager)
    r = client.post(change_url(budget), form_data(loaded(client, budget)), follow=True)
    assert r.status_code == 200
    assert any("Not saved" in str(m) and "Changed meanwhile" in str(m) for m in r.context["messages"])
    assert not any("was changed successfully" in str(m) for m in r.context["messages"])
    assert not LogEntry.objects.exists()
    budget.refresh_from_db()
    assert budget.daily_cost_limit == Decimal("100.0000")


def test_a_page_loaded_before_another_managers_save_does_not_put_their_limit_back(client, manager, budget, make_user):
    """Found by two managers on one budget: one raised the daily cost limit 1 -> 5 and saved; the
    other, on the page loaded before, changed only the monthly token limit and saved: the daily
    limit went back to 1 without a word, and the trail said the second manager changed it. (A
    limit lowered to stop spending could come back raised the same way.)"""
    from django.test import Client

    other = make_user("manager2", role="manager", project=budget.project)
    first, second = client, Client()
    first.force_login(manager)
    second.force_login(other)
    url = change_url(budget)
    assert first.post(url, form_data(loaded(first, budget), daily_cost_limit="1.0000")).status_code == 302
    page = form_data(loaded(second, budget), daily_cost_limit="1.0000")  # the second manager's page, loaded now
    assert first.post(url, form_data(loaded(first, budget), daily_cost_limit="5.0000")).status_code == 302
    r = second.post(url, {**page, "monthly_token_limit": 3000000})
    assert r.status_code == 200 and "Another manager changed these settings after this page was loaded" in \
        r.content.decode()
    budget.refresh_from_db()
    assert (budget.daily_cost_limit, budget.monthly_token_limit) == (Decimal("5.0000"), 50000)
    assert not AuditEvent.objects.filter(action="budget.update", actor_id=other.pk).exists()
    r = second.post(change_url(budget), form_data(loaded(second, budget), daily_cost_limit="5.0000",
                                                  monthly_token_limit=3000000))
    assert r.status_code == 302  # reloaded: their values, and the change goes through
    budget.refresh_from_db()
    assert (budget.daily_cost_limit, budget.monthly_token_limit) == (Decimal("5.0000"), 3000000)
