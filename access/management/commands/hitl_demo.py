from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from access.models import ApiKey
from access.services import api_key_create, api_key_revoke, role_grant
from projects.models import Project
from projects.services import project_create

DEMO_USERS = [  # username, role on the demo project (None: superuser), password
    ("admin", None, "admin-demo-pw"),
    ("reviewer", "reviewer", "reviewer-demo-pw"),
    ("manager", "manager", "manager-demo-pw"),
    ("agent", "agent", "agent-demo-pw"),
]
KEY_NAME = "demo"


class Command(BaseCommand):
    help = ("Local demo only (DJANGO_DEBUG on): an admin, a reviewer, a manager and an agent with known "
            "passwords, a demo project, and a fresh API key for each (older demo keys are revoked).")

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument("--force", action="store_true", help="run even with DJANGO_DEBUG off")

    def handle(self, *args, url, force, **options):
        if not settings.DEBUG and not force:
            raise CommandError("hitl_demo sets well-known passwords: it runs only with DJANGO_DEBUG=1 (or --force).")
        User = get_user_model()
        rows = []
        with transaction.atomic():
            admin = User.objects.filter(username="admin").first() or User.objects.create_superuser(
                username="admin", email="admin@example.com", password=DEMO_USERS[0][2])
            project = Project.objects.filter(slug="demo").first() or project_create(
                actor=admin, name="Demo project", slug="demo", timezone_name="UTC")
            for username, role, password in DEMO_USERS:
                user = admin if username == "admin" else User.objects.filter(username=username).first()
                if user is None:
                    user = User.objects.create_user(username=username, password=password)
                    role_grant(user=user, project=project, role=role, actor=admin)
                if not user.check_password(password):  # put back if changed; a new hash of the same
                    user.set_password(password)         # password signed every open page out at each start
                    user.save(update_fields=["password"])
                for old in ApiKey.objects.filter(user=user, name=KEY_NAME, revoked_at__isnull=True):
                    api_key_revoke(key_id=old.pk, actor=admin)
                _, raw = api_key_create(user=user, name=KEY_NAME, actor=admin)
                rows.append((username, role or "admin (superuser)", password, raw))

        out = self.stdout.write
        out("")
        out("=" * 78)
        out(f"BotArmy HITL demo: project 'demo' (id {project.pk})")
        for username, role, password, raw in rows:
            out(f"  {username:<9} {role:<18} password: {password}")
            out(f"  {'':<9} API key: {raw}")
        out("")
        out(f"  Reviewer pages (live):    {url}/review/   (inbox, projects and their stop button, audit)")
        out(f"  Admin and approval queue: {url}/admin/   (log in as admin or reviewer)")
        out(f"  API docs (Swagger UI):    {url}/api/docs/")
        out(f"  OpenAPI schema:           {url}/api/schema/")
        out(f"  Health (beat heartbeat):  {url}/api/v1/health")
        out(f"  Try: curl -H 'Authorization: Bearer {rows[-1][3]}' {url}/api/v1/projects/{project.pk}")
        out("=" * 78)
