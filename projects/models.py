import uuid
import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Lower
from guardian.models import UserObjectPermissionBase

from core.models import BaseModel


class AgentType(models.TextChoices):
    ORCHESTRATOR = "orchestrator"
    ANALYST = "analyst"
    ARCHITECT = "architect"
    CODER = "coder"
    TESTER = "tester"
    DEPLOYER = "deployer"


# The IANA names the host's zone database knows, less the host-specific entries: "localtime" is
# whatever the server's /etc/localtime is (moving hosts would move a project's budget days) and
# "Factory" / "posixrules" are not zones a person means.
TIME_ZONES = sorted(zoneinfo.available_timezones() - {"localtime", "Factory", "posixrules"})


def validate_timezone(value: str) -> None:
    if value not in TIME_ZONES:
        raise ValidationError(f"{value!r} is not an IANA time zone name (for example Europe/Berlin).")


class Project(BaseModel):
    class Status(models.TextChoices):
        ACTIVE = "active"
        EMERGENCY_STOPPED = "emergency_stopped", "Emergency stopped"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE, db_index=True)
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone],
                                help_text="IANA time zone; budget days start at its local midnight.")
    active_stop_id = models.UUIDField(null=True, blank=True, editable=False,
                                      help_text="the unresolved emergency stop (set and cleared by emergency)")
    allowed_link_hosts = models.JSONField(
        default=list, blank=True,
        help_text="hosts agents' output may link to without a flag (\"example.com\" allows its subdomains too)")

    class Meta:
        ordering = ["name"]
        # "Demo" beside "demo": two projects a person cannot tell apart on the command line
        constraints = [models.UniqueConstraint(
            Lower("slug"), name="project_slug_unique_without_case",
            violation_error_message="A project with this slug exists already (slugs are told apart without case).")]
        # Object permissions (django-guardian) that make up the roles; see projects/roles.py.
        permissions = [
            ("act_as_agent", "Act as an agent: create tasks, request approvals, report outcomes"),
            ("review_project", "Review: decide approvals and overrides up to the manager threshold"),
            ("manage_project", "Manage: set budgets, large overrides, start recovery"),
        ]

    def __str__(self):
        return self.slug


class ProjectUserObjectPermission(UserObjectPermissionBase):
    """Direct foreign key for guardian: fast lookups, deleted with the project."""

    content_object = models.ForeignKey(Project, on_delete=models.CASCADE)

    class Meta(UserObjectPermissionBase.Meta):
        pass


class Task(BaseModel):
    class Status(models.TextChoices):
        PENDING = "pending"
        WAITING_FOR_HITL = "waiting_for_hitl", "Waiting for a person"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        HALTED = "halted"
        CANCELLED = "cancelled"

    TRANSITIONS = {
        Status.PENDING: {Status.WAITING_FOR_HITL, Status.RUNNING, Status.COMPLETED, Status.FAILED,
                         Status.HALTED, Status.CANCELLED},
        Status.WAITING_FOR_HITL: {Status.PENDING, Status.RUNNING, Status.FAILED, Status.HALTED,
                                  Status.CANCELLED},
        Status.RUNNING: {Status.WAITING_FOR_HITL, Status.COMPLETED, Status.FAILED, Status.HALTED},
        Status.HALTED: {Status.PENDING, Status.CANCELLED},
        Status.COMPLETED: set(),
        Status.FAILED: set(),
        Status.CANCELLED: set(),
    }
    # Work not ended: what a stop halts.
    OPEN_STATUSES = (Status.PENDING, Status.WAITING_FOR_HITL, Status.RUNNING)
    # What an agent may report through POST /api/v1/tasks/{id}/status: completed or failed (the
    # outcomes the error-rate condition rates), or cancelled (work abandoned before it ran, after a
    # refusal say: neither a success nor a failure).
    OUTCOMES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)
    RATED_OUTCOMES = (Status.COMPLETED, Status.FAILED)

    class ErrorKind(models.TextChoices):
        RATE_LIMIT = "rate_limit"
        QUOTA = "quota"
        TIMEOUT = "timeout"
        OTHER = "other"

    # Failures that count towards the resource_exhaustion condition.
    RESOURCE_ERROR_KINDS = (ErrorKind.RATE_LIMIT, ErrorKind.QUOTA)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="tasks")
    agent_type = models.CharField(max_length=20, choices=AgentType.choices)
    title = models.CharField(max_length=500)
    input_data = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True, default="")
    error_kind = models.CharField(max_length=20, choices=ErrorKind.choices, blank=True, default="")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # Questions and checkpoints about the task still pending (hitl.HitlRequest): while there are
    # any the task waits for a person; where it goes when the last one is closed (running, or
    # pending) is kept in status_after_questions, set by the moves they held back (task_move).
    open_questions = models.PositiveIntegerField(default=0)
    status_after_questions = models.CharField(max_length=20, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["project", "status"]), models.Index(fields=["project", "finished_at"])]

    def __str__(self):
        return f"{self.title} ({self.status})"

    @property
    def ended(self) -> bool:
        """Completed, failed or cancelled: nothing moves it any more, nothing more is asked about it."""
        return not self.TRANSITIONS[self.status]


class AgentState(BaseModel):
    class Status(models.TextChoices):
        IDLE = "idle"
        WORKING = "working"
        WAITING_FOR_HITL = "waiting_for_hitl", "Waiting for a person"
        ERROR = "error"
        EMERGENCY_STOPPED = "emergency_stopped", "Emergency stopped"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="agent_states")
    agent_type = models.CharField(max_length=20, choices=AgentType.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.IDLE)
    current_task = models.ForeignKey(Task, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["project", "agent_type"]
        constraints = [models.UniqueConstraint(fields=["project", "agent_type"], name="agent_state_unique")]

    def __str__(self):
        return f"{self.project}:{self.agent_type} {self.status}"


class ProjectNotifier(BaseModel):
    """Where a project's alerts go (emergency stops and budget alerts): an e-mail
    address (Django's mail backend) or a webhook URL receiving a signed JSON POST."""

    class Kind(models.TextChoices):
        EMAIL = "email"
        WEBHOOK = "webhook"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="notifiers")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    target = models.CharField(max_length=500, help_text="E-mail address or https:// URL")
    secret = models.CharField(max_length=200, blank=True, default="",
                              help_text="Webhooks: HMAC-SHA256 key for the X-HITL-Signature header")
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["project", "kind", "target"]

    def __str__(self):
        return f"{self.kind}: {self.target}"


class QueuedNotification(models.Model):
    """An alert for one notifier, written in the transaction that raised it and deleted once its
    delivery is over (sent, skipped, refused or failed for good), not when its task is in the
    broker: a broker that is down when the change commits, or that loses the task (a Redis
    restarted without persistence), delays the alert (beat queues it again,
    projects.requeue_notifications), never loses it."""

    notifier = models.ForeignKey(ProjectNotifier, on_delete=models.CASCADE, related_name="+")
    event_type = models.CharField(max_length=64)
    subject = models.CharField(max_length=500)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    handed_over_at = models.DateTimeField(null=True, blank=True, editable=False,
                                          help_text="When its delivery task was last given to the broker")
    alert_id = models.UUIDField(null=True, editable=False,
                                help_text="One per alert (the same for each of its notifiers): with the notifier's "
                                          "id, the X-HITL-Delivery a receiver deduplicates on")

    def __str__(self):
        return f"{self.event_type} -> notifier {self.notifier_id}"

    @property
    def delivery_id(self) -> str:
        """The same on every attempt of this alert to this notifier, and unique across installations."""
        return f"{self.alert_id}.{self.notifier_id}" if self.alert_id else f"queued-{self.pk}"

