import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from core.models import BaseModel

MAX_OPTIONS = 20
MAX_OPTION_LENGTH = 500


class HitlRequest(BaseModel):
    """The seed's HitlRequest: an agent asks a person a question, or pauses at a checkpoint
    ("the plan is ready, go on?"), until a reviewer approves, rejects or amends it. Every change
    of status is appended to ``history``; only hitl.services writes ``status``."""

    class RequestType(models.TextChoices):
        CHECKPOINT = "checkpoint"
        QUESTION = "question"

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"
        AMENDED = "amended"
        TIMED_OUT = "timed_out", "Timed out"
        CANCELLED = "cancelled"

    # What hitl.services.close_request allows (the only place that moves a request's status).
    TRANSITIONS = {
        Status.PENDING: {Status.APPROVED, Status.REJECTED, Status.AMENDED, Status.TIMED_OUT, Status.CANCELLED},
    }

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="hitl_requests")
    task = models.ForeignKey("projects.Task", null=True, blank=True, on_delete=models.PROTECT,
                             related_name="hitl_requests")
    request_type = models.CharField(max_length=12, choices=RequestType.choices)
    question = models.TextField()
    options = models.JSONField(default=list, blank=True,
                               help_text="the answers to choose from (a question with options is answered "
                                         "with one of them); empty: a free-text answer")
    context = models.JSONField(null=True, blank=True, help_text="what the person needs to know to answer")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    response = models.TextField(blank=True, default="",
                                help_text="the answer (approve), or the reason (reject), or a note (amend)")
    amended_content = models.JSONField(null=True, blank=True, help_text="what to do instead (amend): JSON or text")
    asked_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    responded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="+")
    responded_at = models.DateTimeField(null=True, blank=True)
    timeout_minutes = models.PositiveIntegerField(default=30, validators=[MinValueValidator(1),
                                                                          MaxValueValidator(24 * 60)])
    expires_at = models.DateTimeField()
    warn_at = models.DateTimeField(null=True, blank=True,
                                   help_text="When a fifth of the time is left: approval_timeout_warning")
    timeout_warning_sent_at = models.DateTimeField(null=True, blank=True)
    history = models.JSONField(default=list, blank=True,
                               help_text="every change: [{status, by, at, note}], oldest first")

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "question or checkpoint"
        verbose_name_plural = "questions and checkpoints"
        indexes = [
            models.Index(fields=["project", "status"], name="hitl_project_status"),
            models.Index(fields=["expires_at"], name="hitl_pending_expires", condition=Q(status="pending")),
            models.Index(fields=["created_at", "id"], name="hitl_inbox_order", condition=Q(status="pending")),
            models.Index(fields=["warn_at"], name="hitl_warning_due",
                         condition=Q(status="pending", timeout_warning_sent_at__isnull=True)),
        ]

    def __str__(self):
        text = self.question if len(self.question) <= 60 else self.question[:57] + "…"
        return f"{self.request_type}: {text} ({self.status})"
