import uuid

import pytest

from audit.models import AuditEvent
from projects.models import AgentState, Project, Task
from projects.services import task_create

pytestmark = pytest.mark.django_db

ROLES = ["admin", "agent", "reviewer", "manager", "outsider"]


@pytest.fixture
def clients(users, client_for):
    return {name: client_for(user) for name, user in users.items()}


@pytest.fixture
def task(project, agent):
    return task_create(actor=agent, project_id=project.pk, agent_type="coder", title="Write code")


# --- the permission matrix ----------------------------------------------------------
@pytest.mark.parametrize("role,expected", [("admin", 201), ("agent", 403), ("reviewer", 403),
                                           ("manager", 403), ("outsider", 403)])
def test_create_project_is_for_admins(clients, role, expected):
    r = clients[role].post("/api/v1/projects", {"name": "New", "slug": f"new-{role}"}, format="json")
    assert r.status_code == expected, r.content
    assert Project.objects.filter(slug=f"new-{role}").exists() == (expected == 201)
    if expected == 403:
        assert r.json()["error"] == "forbidden"


@pytest.mark.parametrize("role,expected", [("admin", 200), ("agent", 200), ("reviewer", 200),
                                           ("manager", 200), ("outsider", 404)])
def test_read_project(clients, project, role, expected):
    r = clients[role].get(f"/api/v1/projects/{project.pk}")
    assert r.status_code == expected
    if expected == 200:
        body = r.json()
        assert body["id"] == str(project.pk) and body["status"] == "active" and body["timezone"] == "UTC"
        assert {s["agent_type"] for s in body["agent_states"]} == {
            "orchestrator", "analyst", "architect", "coder", "tester", "deployer"}
    else:
        assert r.json() == {"error": "not_found", "detail": "Not found."}


@pytest.mark.parametrize("role,slugs", [("admin", ["demo", "other"]), ("agent", ["demo"]),
                                        ("outsider", ["other"])])
def test_project_list_shows_only_visible_projects(clients, role, slugs):
    r = clients[role].get("/api/v1/projects")
    assert r.status_code == 200
    assert [p["slug"] for p in r.json()["results"]] == slugs


@pytest.mark.parametrize("role,expected", [("admin", 201), ("agent", 201), ("reviewer", 403),
                                           ("manager", 403), ("outsider", 404)])
def test_create_task(clients, project, role, expected):
    r = clients[role].post("/api/v1/tasks", {"project_id": str(project.pk), "agent_type": "coder",
                                             "title": "Implement", "input_data": {"spec": "x"}}, format="json")
    assert r.status_code == expected, r.content
    assert Task.objects.filter(project=project).count() == (1 if expected == 201 else 0)
    if expected == 201:
        body = r.json()
        assert body["status"] == "pending" and body["project_id"] == str(project.pk)
        assert body["agent_type"] == "coder" and body["title"] == "Implement"
        assert Task.objects.get(pk=body["task_id"]).input_data == {"spec": "x"}


@pytest.mark.parametrize("role,expected", [("admin", 200), ("agent", 200), ("reviewer", 200),
                                           ("manager", 200), ("outsider", 404)])
def test_read_task(clients, task, role, expected):
    r = clients[role].get(f"/api/v1/tasks/{task.pk}")
    assert r.status_code == expected
    if expected == 200:
        assert r.json()["task_id"] == str(task.pk)


@pytest.mark.parametrize("role,expected", [("admin", 200), ("agent", 200), ("reviewer", 403),
                                           ("manager", 403), ("outsider", 404)])
def test_report_task_outcome(clients, task, role, expected):
    r = clients[role].post(f"/api/v1/tasks/{task.pk}/status", {"status": "completed"}, format="json")
    assert r.status_code == expected
    task.refresh_from_db()
    assert task.status == ("completed" if expected == 200 else "pending")


def test_only_the_agent_that_created_a_task_reports_its_outcome(clients, client_for, make_user, task, project):
    """Another agent of the same project may not end the task (and with it the calls its agent
    may still start): 403, and nothing changes, a retried report included."""
    other = client_for(make_user("other-agent", role="agent", project=project))
    for status in ("failed", "completed", "cancelled"):
        r = other.post(f"/api/v1/tasks/{task.pk}/status", {"status": status, "error": "x"}, format="json")
        assert r.status_code == 403 and r.json()["error"] == "forbidden", r.content
        assert "created this task, or the one that requested its first call" in r.json()["detail"]
    task.refresh_from_db()
    assert task.status == "pending" and not AuditEvent.objects.filter(action__startswith="task.failed").exists()
    assert clients["agent"].post(f"/api/v1/tasks/{task.pk}/status", {"status": "completed"},
                                 format="json").status_code == 200
    r = other.post(f"/api/v1/tasks/{task.pk}/status", {"status": "completed"}, format="json")
    assert r.status_code == 403  # not even the same outcome again


def test_an_agent_running_a_task_another_made_for_it_reports_its_outcome(clients, client_for, make_user, task,
                                                                         project):
    """An orchestrator creates the task, a coder key requests its call and runs it (the SDK's
    execute_task(task=...)): the coder may report the outcome, having worked on it."""
    from approvals.services import agent_approval_request

    coder = make_user("coder-agent", role="agent", project=project)
    agent_approval_request(requester=coder, project_id=project.pk, task_id=task.pk, agent_type="coder",
                           proposed_action="write code", input_data={}, estimated_tokens=1, estimated_cost="0.0001")
    r = client_for(coder).post(f"/api/v1/tasks/{task.pk}/status", {"status": "failed", "error": "x"}, format="json")
    assert r.status_code == 200 and r.json()["status"] == "failed", r.content


def test_another_agent_asking_a_call_on_a_task_does_not_take_over_its_outcome(clients, users, client_for, make_user,
                                                                             task, project):
    """Found by a security test: any call asked gave the right to report, so another agent of the
    project asked one on a task its owner was running, cancelled it, and reported the task completed
    (the owner's output then got 409) or failed (the owner's pending work cancelled)."""
    from approvals.services import agent_approval_decide, agent_approval_request, agent_approval_start

    call = dict(project_id=project.pk, task_id=task.pk, agent_type="coder", input_data={}, estimated_tokens=1,
                estimated_cost="0.0001")
    mine = agent_approval_request(requester=users["agent"], proposed_action="owner's call", **call)
    agent_approval_decide(approval_id=mine.pk, decider=users["reviewer"], decision="approve")
    agent_approval_start(approval_id=mine.pk, actor=users["agent"])   # the owner runs it
    intruder = make_user("intruder", role="agent", project=project)
    theirs = agent_approval_request(requester=intruder, proposed_action="intruder's call", **call)
    c = client_for(intruder)
    assert c.post(f"/api/v1/agent-approvals/{theirs.pk}/cancel", {}, format="json").status_code == 200
    for status in ("completed", "failed"):
        r = c.post(f"/api/v1/tasks/{task.pk}/status", {"status": status, "error": "x"}, format="json")
        assert r.status_code == 403 and r.json()["error"] == "forbidden", r.content
    task.refresh_from_db()
    assert task.status == "running", task.status
    assert clients["agent"].post(f"/api/v1/tasks/{task.pk}/status", {"status": "failed", "error": "x"},
                                 format="json").status_code == 200  # the owner still may


def test_unknown_ids_are_404(clients):
    for path in [f"/api/v1/projects/{uuid.uuid4()}", f"/api/v1/tasks/{uuid.uuid4()}", "/api/v1/tasks/not-a-uuid"]:
        r = clients["admin"].get(path)
        assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = clients["admin"].post("/api/v1/tasks", {"project_id": str(uuid.uuid4()), "agent_type": "coder",
                                                "title": "x"}, format="json")
    assert r.status_code == 404


# --- behaviour -----------------------------------------------------------------------
def test_outcomes_move_task_and_agent_state_and_are_audited(clients, task, project,
                                                            django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):  # the agent state is refreshed after the commit
        r = clients["agent"].post(f"/api/v1/tasks/{task.pk}/status", {"status": "failed", "error": "boom"},
                                  format="json")
    assert r.status_code == 200
    assert r.json()["status"] == "failed" and r.json()["error"] == "boom" and r.json()["finished_at"]
    assert AgentState.objects.get(project=project, agent_type="coder").status == "error"
    row = AuditEvent.objects.get(action="task.failed")
    assert row.object_id == str(task.pk) and row.before["status"] == "pending" and row.after["status"] == "failed"
    assert row.actor_repr.startswith("agent#")


def test_repeated_outcome_is_accepted_once_and_a_different_one_is_409(clients, task):
    agent = clients["agent"]
    assert agent.post(f"/api/v1/tasks/{task.pk}/status", {"status": "completed"}, format="json").status_code == 200
    again = agent.post(f"/api/v1/tasks/{task.pk}/status", {"status": "completed"}, format="json")
    assert again.status_code == 200
    assert AuditEvent.objects.filter(action="task.completed").count() == 1
    r = agent.post(f"/api/v1/tasks/{task.pk}/status", {"status": "failed", "error": "late"}, format="json")
    assert r.status_code == 409
    assert r.json()["error"] == "conflict" and r.json()["status"] == "completed"
    task.refresh_from_db()
    assert task.status == "completed" and task.error == ""


def test_work_abandoned_before_it_ran_is_reported_cancelled(clients, task, project):
    agent = clients["agent"]
    r = agent.post(f"/api/v1/tasks/{task.pk}/status", {"status": "cancelled"}, format="json")
    assert r.status_code == 200, r.content
    assert r.json()["status"] == "cancelled" and r.json()["error"] == "" and r.json()["finished_at"]
    assert AuditEvent.objects.filter(action="task.cancelled", object_id=str(task.pk)).count() == 1
    assert agent.post(f"/api/v1/tasks/{task.pk}/status", {"status": "cancelled"}, format="json").status_code == 200
    r = agent.post(f"/api/v1/tasks/{task.pk}/status", {"status": "completed"}, format="json")
    assert r.status_code == 409 and r.json()["status"] == "cancelled"
    assert agent.post(f"/api/v1/tasks/{task.pk}/status", {"status": "halted"}, format="json").status_code == 400


def test_a_running_task_cannot_be_reported_cancelled(clients, task):
    Task.objects.filter(pk=task.pk).update(status="running")
    r = clients["agent"].post(f"/api/v1/tasks/{task.pk}/status", {"status": "cancelled"}, format="json")
    assert r.status_code == 409 and r.json()["status"] == "running"
    assert "report it completed or failed" in r.json()["detail"]
    task.refresh_from_db()
    assert task.status == "running" and task.finished_at is None


def test_task_creation_is_refused_with_423_while_the_project_is_stopped(clients, project):
    # The emergency-stop service arrives with its own issue; set the status the way it will.
    Project.objects.filter(pk=project.pk).update(status=Project.Status.EMERGENCY_STOPPED)
    r = clients["agent"].post("/api/v1/tasks", {"project_id": str(project.pk), "agent_type": "coder",
                                                "title": "x"}, format="json")
    assert r.status_code == 423 and r.json()["error"] == "emergency_stop" and "emergency_stop_id" in r.json()
    assert not Task.objects.exists()
    assert clients["agent"].get(f"/api/v1/projects/{project.pk}").status_code == 200  # reading stays allowed


def test_project_detail_counts_tasks_and_shows_the_budget(clients, project, task):
    body = clients["reviewer"].get(f"/api/v1/projects/{project.pk}").json()
    assert body["task_counts"]["pending"] == 1 and body["task_counts"]["completed"] == 0
    assert body["budget"]["daily_cost_limit"] == "100.0000" and body["budget"]["cost_incurred_today"] == "0.0000"


def test_create_project_validates_timezone_and_slug(clients):
    admin = clients["admin"]
    for zone in ("Mars/Olympus", "localtime", "Factory"):  # localtime: the server's own zone, host-specific
        r = admin.post("/api/v1/projects", {"name": "X", "slug": "x", "timezone": zone}, format="json")
        assert r.status_code == 400 and "timezone" in r.json()["fields"], zone
        r = clients["admin"].patch(f"/api/v1/projects/{Project.objects.get(slug='demo').pk}", {"timezone": zone},
                                   format="json")
        assert r.status_code == 400 and "timezone" in r.json()["fields"], zone
    assert not Project.objects.filter(slug="x").exists()
    for taken in ("demo", "DEMO", "Demo"):  # compared without case
        r = admin.post("/api/v1/projects", {"name": "X", "slug": taken}, format="json")
        assert r.status_code == 400 and "slug" in r.json()["fields"], taken
    assert not Project.objects.filter(name="X").exists()
    from django.db import IntegrityError, transaction
    with pytest.raises(IntegrityError), transaction.atomic():  # the database holds it too (two creates at once)
        Project.objects.create(name="Y", slug="DeMo")
    r = admin.post("/api/v1/projects", {"name": "NY", "slug": "ny", "timezone": "America/New_York"}, format="json")
    assert r.status_code == 201 and r.json()["timezone"] == "America/New_York"


# --- Idempotency-Key -----------------------------------------------------------------
def test_idempotency_key_replays_the_first_result(clients, project):
    body = {"project_id": str(project.pk), "agent_type": "tester", "title": "Run tests"}
    first = clients["agent"].post("/api/v1/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    second = clients["agent"].post("/api/v1/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == second.status_code == 201
    assert second.content == first.content and second.headers["Idempotent-Replayed"] == "true"
    assert second.headers["Content-Type"] == "application/json"
    assert Task.objects.count() == 1
    other = clients["agent"].post("/api/v1/tasks", {**body, "title": "Other"}, format="json",
                                  HTTP_IDEMPOTENCY_KEY="k-1")
    assert other.status_code == 400 and "Idempotency-Key" in other.json()["fields"]
    fresh = clients["agent"].post("/api/v1/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    assert fresh.status_code == 201 and Task.objects.count() == 2


def test_idempotency_key_does_not_store_errors(clients, project):
    body = {"project_id": str(project.pk), "agent_type": "tester", "title": "Run tests"}
    Project.objects.filter(pk=project.pk).update(status=Project.Status.EMERGENCY_STOPPED)
    assert clients["agent"].post("/api/v1/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="k").status_code == 423
    Project.objects.filter(pk=project.pk).update(status=Project.Status.ACTIVE)
    assert clients["agent"].post("/api/v1/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="k").status_code == 201


def test_the_slug_migration_names_the_projects_to_rename_instead_of_failing_bare():
    import importlib
    from types import SimpleNamespace

    migration = importlib.import_module("projects.migrations.0008_project_slug_unique_without_case")

    def apps_with(*slugs):
        rows = SimpleNamespace(values_list=lambda *a, **k: list(slugs))
        return SimpleNamespace(get_model=lambda *a: SimpleNamespace(objects=rows))

    migration.refuse_slugs_that_differ_only_in_case(apps_with("demo", "ops", "web"), None)  # nothing to rename
    with pytest.raises(RuntimeError, match="rename all but one of each of these.*: Demo, demo; FUZZ-B, fuzz-b$"):
        migration.refuse_slugs_that_differ_only_in_case(apps_with("fuzz-b", "demo", "FUZZ-B", "Demo", "ops"), None)


def test_a_malformed_uuid_is_said_the_same_way_everywhere(project, agent, client_for):
    """"Must be a valid UUID string." from a create, "Must be a valid UUID." from the events feed."""
    client = client_for(agent)
    created = client.post("/api/v1/tasks", {"project_id": "nope", "agent_type": "coder", "title": "t"}, format="json")
    feed = client.get("/api/v1/events", {"project_id": "nope"})
    assert created.status_code == feed.status_code == 400, (created.content, feed.content)
    assert created.json()["fields"]["project_id"] == feed.json()["fields"]["project_id"] == [
        "Must be a valid UUID string."]
