import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Case, F, IntegerField, Q, Value, When

from core.models import BaseModel
from emergency.models import CANCELLED_BY_STOP  # noqa: F401  (a call's or response's rejection_reason)
from projects.models import AgentType

RISK_RANK = {"critical": 3, "high": 2, "medium": 1, "low": 0}


def risk_rank_of(field: str) -> Case:
    """The rank of ``<field>.level`` (critical 3 … low 0; missing or unknown 0) for the database to
    order by: the reviewer inbox's order (riskiest, then oldest), served by the indexes below."""
    return Case(*(When(**{f"{field}__level": level}, then=Value(rank)) for level, rank in RISK_RANK.items() if rank),
                default=Value(0), output_field=IntegerField())


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
        TIMED_OUT = "timed_out", "Timed out"
        CANCELLED = "cancelled"

    # What approvals.services.common.close_call allows (the only place that moves a call's status,
    # besides the bulk cancel of pending / approved-not-started calls by an emergency stop or by
    # the end of their task: approvals.services.halting).
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
            # the inbox's first rows without sorting every pending call (0.1 s at 20,000 of them, per re-fetch)
            models.Index(risk_rank_of("risk_assessment").desc(), F("created_at"), F("id"), name="aca_inbox_order",
                         condition=Q(status="pending")),
            # the beat sweeps' own (every 10 s): without them each walked the whole table's history
            models.Index(fields=["warn_at"], name="aca_warning_due",
                         condition=Q(status="pending", timeout_warning_sent_at__isnull=True)),
            models.Index(fields=["responded_at"], name="aca_grant_not_started",
                         condition=Q(status="approved", started_at__isnull=True)),
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


class ResponseApproval(BaseModel):
    """An agent's output, held until a person approves it (the seed's ``response_approvals``).
    It answers one started call approval; the analyzer's findings are attached before review."""

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"
        REQUIRES_MODIFICATION = "requires_modification", "Requires modification"
        TIMED_OUT = "timed_out", "Timed out"
        CANCELLED = "cancelled"   # an addition to API.md: a stop, or the end of its task, cancels a pending review

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="response_approvals")
    task = models.ForeignKey("projects.Task", on_delete=models.PROTECT, related_name="response_approvals")
    agent_call_approval = models.ForeignKey(AgentCallApproval, on_delete=models.PROTECT,
                                            related_name="response_approvals")
    agent_type = models.CharField(max_length=20, choices=AgentType.choices)
    agent_response = models.JSONField()
    response_summary = models.TextField(blank=True, default="")
    next_steps = models.JSONField(default=list, blank=True)
    risk_flags = models.JSONField(default=list, blank=True)
    confidence_score = models.DecimalField(max_digits=3, decimal_places=2, default=0)
    safety_score = models.DecimalField(max_digits=3, decimal_places=2, default=0)
    quality_metrics = models.JSONField(default=dict, blank=True)
    analysis = models.JSONField(default=dict, blank=True,
                                help_text="the analyzer's full result: observed and suppressed flags, analyzers "
                                          "and tool versions, recommendations")
    tokens_used = models.PositiveIntegerField(default=0)
    actual_cost = models.DecimalField(max_digits=12, decimal_places=4, default=0)
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.PENDING)
    submitted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                    related_name="+", help_text="Who decided")
    rejection_reason = models.TextField(blank=True, default="")
    modifications_required = models.JSONField(null=True, blank=True)
    modification_round = models.PositiveIntegerField(
        default=0, help_text="how many earlier responses of this task were sent back for modification")
    timeout_minutes = models.PositiveIntegerField(default=30)
    responded_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()
    warn_at = models.DateTimeField(null=True, blank=True,
                                   help_text="When a fifth of the time is left: approval_timeout_warning")
    timeout_warning_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["project", "status"], name="ra_project_status"),
            models.Index(fields=["task", "status"], name="ra_task_status"),
            models.Index(fields=["expires_at"], name="ra_pending_expires", condition=Q(status="pending")),
            models.Index(risk_rank_of("analysis").desc(), F("created_at"), F("id"), name="ra_inbox_order",
                         condition=Q(status="pending")),
            models.Index(fields=["warn_at"], name="ra_warning_due",
                         condition=Q(status="pending", timeout_warning_sent_at__isnull=True)),
        ]
        constraints = [
            models.UniqueConstraint(fields=["agent_call_approval"], condition=Q(status="pending"),
                                    name="ra_one_pending_per_call"),
        ]

    def __str__(self):
        return f"{self.agent_type} response: {self.response_summary[:60]} ({self.status})"


class RuleSetting(BaseModel):
    """A project manager's setting for one analyzer rule (a flag code, or a prefix such as
    ``secret``): ``observe`` shows its flags without scoring them; ``threshold`` drops findings
    whose confidence is below it into the observed list."""

    class Mode(models.TextChoices):
        ENFORCE = "enforce"
        OBSERVE = "observe"

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="rule_settings")
    code = models.CharField(max_length=100, help_text="flag code (secret.github_token) or prefix (secret)")
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.ENFORCE)
    threshold = models.DecimalField(max_digits=3, decimal_places=2, default=0,
                                    validators=[MinValueValidator(0), MaxValueValidator(1)],
                                    help_text="findings with a confidence below this are only observed")
    note = models.TextField(blank=True, default="")
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")

    class Meta:
        ordering = ["project", "code"]
        constraints = [models.UniqueConstraint(fields=["project", "code"], name="rule_setting_unique")]

    def __str__(self):
        return f"{self.code}: {self.mode} (threshold {self.threshold})"


class FlagSuppression(BaseModel):
    """A reviewer marked one finding (rule code + fingerprint) a false positive for a project,
    until ``expires_at``. Only a person with the reviewer role creates one, through the API or the
    admin; nothing an agent writes suppresses anything."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="flag_suppressions")
    code = models.CharField(max_length=100)
    fingerprint = models.CharField(max_length=64)
    reason = models.TextField()
    expires_at = models.DateTimeField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["project", "expires_at"], name="flag_suppression_active")]

    def __str__(self):
        return f"{self.code} {self.fingerprint} (until {self.expires_at:%Y-%m-%d})"


class FlagLabel(models.Model):
    """What a person's decision says about one flag: approved with the flag present is a likely
    false alarm for its rule; rejected (or sent back for modification) confirms it. The admin's
    rule precision over the last 30 days is computed from these."""

    class Outcome(models.TextChoices):
        CONFIRMED = "confirmed"
        FALSE_ALARM = "false_alarm", "False alarm"

    class Source(models.TextChoices):
        CALL = "call"
        RESPONSE = "response"

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="flag_labels")
    code = models.CharField(max_length=100)
    severity = models.CharField(max_length=10)
    fingerprint = models.CharField(max_length=64, blank=True, default="")
    source = models.CharField(max_length=10, choices=Source.choices)
    object_id = models.UUIDField()
    outcome = models.CharField(max_length=12, choices=Outcome.choices)
    decided_at = models.DateTimeField()

    class Meta:
        ordering = ["-decided_at"]
        indexes = [models.Index(fields=["project", "code", "decided_at"], name="flag_label_rule")]

    def __str__(self):
        return f"{self.code}: {self.outcome}"
