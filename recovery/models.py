import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from core.models import BaseModel


class RecoverySession(BaseModel):
    class Type(models.TextChoices):
        AUTOMATED = "automated"
        MANUAL = "manual"

    class Status(models.TextChoices):
        WAITING_APPROVAL = "waiting_approval", "Waiting for approval"
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed"
        FAILED = "failed"

    OPEN_STATUSES = (Status.WAITING_APPROVAL, Status.IN_PROGRESS)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="recovery_sessions")
    emergency_stop = models.ForeignKey("emergency.EmergencyStop", on_delete=models.PROTECT,
                                       related_name="recovery_sessions")
    recovery_type = models.CharField(max_length=10, choices=Type.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.WAITING_APPROVAL)
    assessment = models.JSONField(default=dict)
    steps_completed = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["project", "status"], name="recovery_project_status")]
        constraints = [models.UniqueConstraint(
            fields=["emergency_stop"], condition=Q(status__in=["waiting_approval", "in_progress"]),
            name="one_open_recovery_per_stop")]

    def __str__(self):
        return f"recovery of {self.project} ({self.status})"

    def current_step(self, steps=None) -> "RecoveryStep | None":
        """The step a person decides next: the first pending one while the session is open, else
        None. ``steps``: the session's steps in order, when the caller has read them already."""
        if self.status not in self.OPEN_STATUSES:
            return None
        steps = self.steps.order_by("order") if steps is None else steps
        return next((s for s in steps if s.status == RecoveryStep.Status.PENDING), None)


class RecoveryStep(BaseModel):
    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        REJECTED = "rejected"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(RecoverySession, on_delete=models.CASCADE, related_name="steps")
    order = models.PositiveIntegerField()
    action = models.CharField(max_length=50)
    description = models.TextField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                    related_name="+")
    reason = models.TextField(blank=True, default="")
    result = models.JSONField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["session", "order"]
        constraints = [models.UniqueConstraint(fields=["session", "order"], name="recovery_step_order_unique")]

    def __str__(self):
        return f"{self.order}. {self.action} ({self.status})"
