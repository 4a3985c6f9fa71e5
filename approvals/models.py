import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from core.models import BaseModel
from projects.models import AgentType


class ModelPrice(BaseModel):
    """Price of an LLM, in USD per million tokens. Seeded from approvals/data/model_prices.json,
    editable in the admin. Used to estimate a call's cost when the agent gives none."""

    model = models.CharField(max_length=100, unique=True)
    input_per_million = models.DecimalField(max_digits=12, decimal_places=4, validators=[MinValueValidator(0)])
    output_per_million = models.DecimalField(max_digits=12, decimal_places=4, validators=[MinValueValidator(0)])
    default_output_tokens = models.PositiveIntegerField(
        default=1000, help_text="Output tokens assumed when the call gives no max_tokens")

    class Meta:
        ordering = ["model"]

    def __str__(self):
        return f"{self.model} (${self.input_per_million}/${self.output_per_million} per 1M)"


class AgentCallApproval(BaseModel):
    """A request to run one agent call; nothing runs until a person approves it."""

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"
        TIMED_OUT = "timed_out"
        CANCELLED = "cancelled"

    # What approvals.services.common.close_call allows (the only place that moves a call's status,
    # besides the emergency stop's bulk cancel of pending / approved-not-started calls).
    TRANSITIONS = {
        Status.PENDING: {Status.APPROVED, Status.REJECTED, Status.TIMED_OUT, Status.CANCELLED},
        Status.APPROVED: {Status.CANCELLED},  # only while not started
    }

    class BudgetState(models.TextChoices):
        RESERVED = "reserved"   # its estimate is held in today's and this month's windows
        BLOCKED = "blocked"     # over a limit: nothing held; cannot be approved until unblocked
        SETTLED = "settled"     # it ran and its usage is in the ledger
        RELEASED = "released"   # it ended without running (or never reported): nothing held

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="agent_call_approvals")
    task = models.ForeignKey("projects.Task", on_delete=models.PROTECT, related_name="agent_call_approvals")
    agent_type = models.CharField(max_length=20, choices=AgentType.choices)
    proposed_action = models.TextField()
    input_data = models.JSONField()
    context_summary = models.TextField(blank=True, default="")
    model = models.CharField(max_length=100, blank=True, default="")
    estimated_tokens = models.PositiveIntegerField(default=0)
    estimated_cost = models.DecimalField(max_digits=12, decimal_places=4, default=0)
    risk_assessment = models.JSONField(default=dict)
    timeout_minutes = models.PositiveIntegerField(default=30, validators=[MinValueValidator(1),
                                                                          MaxValueValidator(24 * 60)])
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                    related_name="+", help_text="Who decided (approved or rejected)")
    rejection_reason = models.TextField(blank=True, default="")
    amended_input_data = models.JSONField(null=True, blank=True)
    input_digest = models.CharField(max_length=64, blank=True, default="",
                                    help_text="sha256 of the input approved to run (amended or original)")
    budget_override_id = models.UUIDField(null=True, blank=True,
                                          help_text="The budget override this call waits for (or waited for)")
    budget_state = models.CharField(max_length=10, choices=BudgetState.choices, default=BudgetState.RESERVED)
    budget_blocked_reason = models.TextField(blank=True, default="",
                                             help_text="why the call is blocked and what unblocks it")
    usage_flags = models.JSONField(default=list, blank=True,
                                   help_text="flags raised by the reported usage (far above the estimate)")
    responded_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()
    warn_at = models.DateTimeField(help_text="When a fifth of the time is left: approval_timeout_warning")
    timeout_warning_sent_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["project", "status"], name="aca_project_status"),
            models.Index(fields=["task", "status"], name="aca_task_status"),
            models.Index(fields=["expires_at"], name="aca_pending_expires", condition=Q(status="pending")),
        ]
        constraints = [
            models.UniqueConstraint(fields=["task"], condition=Q(status="pending"), name="aca_one_pending_per_task"),
            # approved => reserved (or already settled / released): a blocked call is never approved
            models.CheckConstraint(condition=~(Q(status="approved") & Q(budget_state="blocked")),
                                   name="aca_approved_never_blocked"),
        ]

    def __str__(self):
        return f"{self.agent_type}: {self.proposed_action[:60]} ({self.status})"

    @property
    def input_to_run(self):
        return self.amended_input_data if self.amended_input_data is not None else self.input_data
