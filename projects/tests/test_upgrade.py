"""Upgrading a database made by an older version: ``migrate`` refuses slug clashes before it changes
anything (the migration's own check ran after the schema had changed, leaving it half migrated)."""
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.core.management.base import CommandError
from django.db import connection
from django.db.models.signals import pre_migrate

from projects.apps import SLUG_MIGRATION, refuse_slug_clashes_before_migrating
from projects.models import Project

pytestmark = pytest.mark.django_db


def plan_with(app_label, name):
    return [(SimpleNamespace(app_label=app_label, name=name), False)]


def test_migrate_stops_before_anything_when_slugs_differ_only_in_case(project):
    with connection.cursor() as cursor:  # as an older version left it: no case-blind unique index yet
        cursor.execute("DROP INDEX project_slug_unique_without_case")
    Project.objects.bulk_create([Project(name="Alpha", slug="alpha"), Project(name="Alpha 2", slug="Alpha")])
    config = apps.get_app_config("projects")
    with pytest.raises(CommandError, match=r"^Nothing was migrated: .*migrate again: Alpha, alpha$"):
        pre_migrate.send(sender=config, app_config=config, verbosity=0, interactive=False, using="default",
                         apps=apps, plan=plan_with(*SLUG_MIGRATION))  # as migrate sends it, before any change
    refuse_slug_clashes_before_migrating(plan=plan_with("projects", "0012_queued_notification_handed_over"))
    refuse_slug_clashes_before_migrating(plan=[(SimpleNamespace(app_label=SLUG_MIGRATION[0], name=SLUG_MIGRATION[1]),
                                                True)])  # backwards: nothing to check


def test_migrate_goes_on_without_clashes(project, other_project):
    refuse_slug_clashes_before_migrating(plan=plan_with(*SLUG_MIGRATION))
