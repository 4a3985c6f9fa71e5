import uuid

from django.apps import AppConfig


class ProjectsConfig(AppConfig):
    """Projects, their tasks and the state of each agent type in a project."""

    name = "projects"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.db.models.signals import pre_migrate

        from audit.hooks import expected_chains
        from core.api import idempotent_replay_visible

        idempotent_replay_visible.connect(replay_visible)
        expected_chains.connect(project_chains)
        pre_migrate.connect(refuse_slug_clashes_before_migrating, sender=self)


def project_chains():
    """The audit hook ``expected_chains``: every project has a chain (its project.create row)."""
    from audit.services import chain_key
    from projects.models import Project

    return [chain_key(pk) for pk in Project.objects.values_list("pk", flat=True)]


SLUG_MIGRATION = ("projects", "0008_project_slug_unique_without_case")


def refuse_slug_clashes_before_migrating(*, plan=None, using="default", **kwargs):
    """``migrate`` stops before it changes anything when projects 0008 (slugs unique without
    case) is in its plan and two projects' slugs differ only in case: the migration's own check
    ran after the migrations before it had changed the schema, leaving the database half
    migrated (and the old version's processes failing) while the operator renamed them."""
    from django.core.management.base import CommandError
    from django.db import connections

    if not any((m.app_label, m.name) == SLUG_MIGRATION and not backwards for m, backwards in plan or ()):
        return
    connection = connections[using]
    if "projects_project" not in connection.introspection.table_names():
        return  # a new database: nothing to clash
    with connection.cursor() as cursor:
        cursor.execute("SELECT lower(slug), slug FROM projects_project ORDER BY slug")
        seen: dict[str, list[str]] = {}
        for lowered, slug in cursor.fetchall():
            seen.setdefault(lowered, []).append(slug)
    clashes = "; ".join(", ".join(slugs) for slugs in seen.values() if len(slugs) > 1)
    if clashes:
        raise CommandError("Nothing was migrated: project slugs must now be unique without case; rename all but "
                           f"one of each of these (the admin's project page, or the shell), then migrate again: "
                           f"{clashes}")


def replay_visible(*, user, project_id) -> bool:
    """core.api's idempotent replay: the caller may still see the stored answer's project."""
    from projects.permissions import may_see

    try:
        return may_see(user, uuid.UUID(str(project_id)))
    except ValueError:
        return False
