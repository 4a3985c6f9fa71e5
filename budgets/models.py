import uuid
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from core.models import BaseModel
from core.text import money, tokens

MONEY = {"max_digits": 14, "decimal_places": 4}
MONEY_LIMIT = Decimal("9999999999.9999")  # the most a MONEY column holds


def manager_threshold(violation_type: str) -> Decimal:
    """Overrides of this kind above this amount need a manager: a deployment setting
    (HITL_MANAGER_TOKEN_THRESHOLD in tokens for token limits, HITL_MANAGER_COST_THRESHOLD in USD
    for cost limits), never a project's."""
    if violation_type.endswith("token_limit"):
        return Decimal(settings.HITL_MANAGER_TOKEN_THRESHOLD)
    return Decimal(settings.HITL_MANAGER_COST_THRESHOLD)


class ProjectBudget(BaseModel):
    """A project's limits. Usage lives in its windows; this row holds only configuration."""

    project = models.OneToOneField("projects.Project", on_delete=models.CASCADE, related_name="budget")
    daily_token_limit = models.PositiveBigIntegerField(default=100_000)
    monthly_token_limit = models.PositiveBigIntegerField(default=2_000_000)
    daily_cost_limit = models.DecimalField(**MONEY, default=Decimal("100.0000"), validators=[MinValueValidator(0)])
    monthly_cost_limit = models.DecimalField(**MONEY, default=Decimal("2000.0000"), validators=[MinValueValidator(0)])
    # in (0, 100] and increasing (budgets.services.budget_limits_update checks the order)
    warning_percent = models.PositiveSmallIntegerField(default=80, validators=[MinValueValidator(1),
                                                                               MaxValueValidator(100)])
    critical_percent = models.PositiveSmallIntegerField(default=95, validators=[MinValueValidator(1),
                                                                                MaxValueValidator(100)])
    emergency_percent = models.PositiveSmallIntegerField(default=100, validators=[MinValueValidator(1),
                                                                                  MaxValueValidator(100)])

    def __str__(self):
        return f"budget of {self.project}"


class BudgetWindow(models.Model):
    """Usage of one local day or month of a project. Found from the clock on every use."""

    class Kind(models.TextChoices):
        DAY = "day"
        MONTH = "month"

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="budget_windows")
    kind = models.CharField(max_length=5, choices=Kind.choices)
    start = models.DateTimeField(help_text="local midnight (day) or local 1st 00:00 (month), stored in UTC")
    end = models.DateTimeField()
    spent_tokens = models.BigIntegerField(default=0)
    spent_cost = models.DecimalField(**MONEY, default=Decimal("0"))
    reserved_tokens = models.BigIntegerField(default=0)
    reserved_cost = models.DecimalField(**MONEY, default=Decimal("0"))
    allowance_tokens = models.BigIntegerField(default=0, help_text="raised by approved overrides")
    allowance_cost = models.DecimalField(**MONEY, default=Decimal("0"))
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["project", "kind", "-start"]
        constraints = [models.UniqueConstraint(fields=["project", "kind", "start"], name="budget_window_unique")]

    def __str__(self):
        return f"{self.project} {self.kind} from {self.start:%Y-%m-%d %H:%M}Z"


class UsageEntry(models.Model):
    """Append-only ledger. A call's reservation (reserve) is closed exactly once, by a settle
    (the real usage) or a release (the call never ran, or never reported). A usage report that
    arrives after a release still counts its spend, once (a settle with no reservation left).
    A later report above what a call's settle recorded lands the difference (adjust)."""

    class Kind(models.TextChoices):
        RESERVE = "reserve"
        SETTLE = "settle"
        RELEASE = "release"
        ADJUST = "adjust"

    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="usage_entries")
    approval = models.ForeignKey("approvals.AgentCallApproval", on_delete=models.PROTECT, related_name="usage_entries")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    day_window = models.ForeignKey(BudgetWindow, on_delete=models.PROTECT, related_name="+")
    month_window = models.ForeignKey(BudgetWindow, on_delete=models.PROTECT, related_name="+")
    # the change this entry made: reserve (+reserved), settle (-reserved, +spent), release (-reserved),
    # adjust (+spent)
    reserved_tokens = models.BigIntegerField(default=0)
    reserved_cost = models.DecimalField(**MONEY, default=Decimal("0"))
    spent_tokens = models.BigIntegerField(default=0)
    spent_cost = models.DecimalField(**MONEY, default=Decimal("0"))
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name_plural = "usage entries"
        constraints = [
            models.UniqueConstraint(fields=["approval"], condition=Q(kind="reserve"), name="usage_one_reserve"),
            models.UniqueConstraint(fields=["approval"], condition=Q(kind="settle"), name="usage_one_settle"),
            models.UniqueConstraint(fields=["approval"], condition=Q(kind="release"), name="usage_one_release"),
        ]

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ValueError("The usage ledger is append-only.")
        super().save(*args, **kwargs)


class BudgetAlert(models.Model):
    class AlertType(models.TextChoices):
        WARNING = "warning"
        CRITICAL = "critical"
        EMERGENCY = "emergency"
        OVERRUN = "overrun"

    class ThresholdType(models.TextChoices):
        TOKEN_DAILY = "token_daily", "Tokens today"
        TOKEN_MONTHLY = "token_monthly", "Tokens this month"
        COST_DAILY = "cost_daily", "Cost today"
        COST_MONTHLY = "cost_monthly", "Cost this month"

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="budget_alerts")
    window = models.ForeignKey(BudgetWindow, on_delete=models.CASCADE, related_name="alerts")
    alert_type = models.CharField(max_length=10, choices=AlertType.choices)
    threshold_type = models.CharField(max_length=14, choices=ThresholdType.choices)
    threshold_value = models.DecimalField(**MONEY)
    current_value = models.DecimalField(**MONEY)
    detail = models.JSONField(default=dict, blank=True)
    triggered_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-triggered_at"]
        constraints = [models.UniqueConstraint(fields=["window", "threshold_type", "alert_type"],
                                               condition=~Q(alert_type="overrun"), name="budget_alert_once")]


class BudgetOverrideRequest(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"

    class Violation(models.TextChoices):
        DAILY_TOKEN = "daily_token_limit", "Daily token limit"
        MONTHLY_TOKEN = "monthly_token_limit", "Monthly token limit"
        DAILY_COST = "daily_cost_limit", "Daily cost limit"
        MONTHLY_COST = "monthly_cost_limit", "Monthly cost limit"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="budget_overrides")
    window = models.ForeignKey(BudgetWindow, on_delete=models.PROTECT, related_name="overrides")
    violation_type = models.CharField(max_length=20, choices=Violation.choices)
    requested_amount = models.DecimalField(**MONEY, validators=[MinValueValidator(0)],
                                           help_text="tokens for token limits, USD for cost limits")
    justification = models.TextField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                    related_name="+")
    rejection_reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    responded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status"], name="budget_override_status")]

    def __str__(self):
        return f"override of {self.get_violation_type_display().lower()} ({self.amount_text}) in {self.project}"

    @property
    def amount_text(self) -> str:
        """What it asks for, in its limit's unit: ``+928 tokens`` for a token limit, ``+$1.2500`` for a
        cost limit (the bare decimal read as money for both)."""
        amount = self.requested_amount
        return f"+{tokens(amount) if self.violation_type.endswith('token_limit') else money(amount)}"

    @property
    def requires_manager_approval(self) -> bool:
        """Whether only a manager may approve it, from the deployment's current thresholds
        (HITL_MANAGER_COST_THRESHOLD / HITL_MANAGER_TOKEN_THRESHOLD), never frozen at creation:
        above the threshold alone, or, while pending, with what its window's approved overrides
        of that kind (tokens or cost) already add (a reviewer does not grant 3 x 60 where one 180
        needs a manager). Reads ``window`` (select it with the override in lists)."""
        threshold = manager_threshold(self.violation_type)
        if self.requested_amount > threshold:
            return True
        if self.status != self.Status.PENDING or self.window_id is None:
            return False
        return self.window_granted() + self.requested_amount > threshold

    def window_granted(self) -> Decimal:
        """What approved overrides of this kind already added to its window."""
        tokens = self.violation_type.endswith("token_limit")
        return Decimal(self.window.allowance_tokens) if tokens else self.window.allowance_cost
