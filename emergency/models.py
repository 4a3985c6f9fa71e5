import uuid
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from core.models import BaseModel
from core.text import plural


# The reason (a call's, a response's rejection_reason; a question's history note) on what a stop cancels.
CANCELLED_BY_STOP = "emergency stop"


def condition_words(condition: str) -> str:
    """A condition as a person reads it: ``security_threat`` is "security threat"."""
    return condition.replace("_", " ")


def actor_words(value) -> str:
    """Who did it, as a person reads it: the audit's ``rita#2`` is ``rita``, an automatic
    condition's ``system:security_threat`` is ``the system (security threat)``."""
    text = "" if value is None else str(value)
    if text.startswith("system:"):
        return f"the system ({condition_words(text.removeprefix('system:'))})"
    name, _, number = text.rpartition("#")
    return name if name and number.isdigit() else text


class Condition(models.TextChoices):
    BUDGET_CRITICAL = "budget_critical"
    ERROR_RATE_HIGH = "error_rate_high"
    SECURITY_THREAT = "security_threat"
    MANUAL_STOP = "manual_stop"
    RESOURCE_EXHAUSTION = "resource_exhaustion"


class Severity(models.TextChoices):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


# What each severity of a stop means, for the people choosing one (admin and reviewer pages).
SEVERITY_MEANINGS = {
    Severity.LOW: "a precaution: nothing is known to be wrong.",
    Severity.MEDIUM: "something looks wrong and needs a look.",
    Severity.HIGH: "agents are doing harm or are about to (the default).",
    Severity.CRITICAL: "an incident: secrets, data loss or production at risk.",
}


SEVERITY_ORDER = [Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL]


class EmergencyStop(models.Model):
    """One stop of a project, from trigger to resolution. At most one is active (unresolved)
    per project; a second trigger while stopped adds its conditions to it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="emergency_stops")
    triggered_conditions = models.JSONField(default=list, help_text="condition names, in the order they tripped")
    condition_details = models.JSONField(default=list, help_text="[{condition, reason, severity, at, by, data}]")
    stop_reason = models.TextField()
    severity = models.CharField(max_length=10, choices=Severity.choices)
    triggered_by = models.CharField(max_length=255, help_text="username#id, or system:<condition>")
    triggered_by_user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                          on_delete=models.PROTECT, related_name="+")
    stopped_tasks = models.JSONField(default=list)
    cancelled_approvals = models.JSONField(default=list)
    recovery_session_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                    related_name="+")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["project", "created_at"], name="emergency_stop_project_created")]
        constraints = [models.UniqueConstraint(fields=["project"], condition=Q(resolved_at__isnull=True),
                                               name="one_active_stop_per_project")]

    def __str__(self):
        return f"{self.project} stop {','.join(self.triggered_conditions)} ({'resolved' if self.resolved_at else 'active'})"

    @property
    def condition_labels(self) -> list[str]:
        """Its conditions as a person reads them ("manual stop", "error rate high")."""
        return [condition_words(c) for c in self.triggered_conditions]

    @property
    def halted_summary(self) -> str:
        """What the stop halted and cancelled, as the pages and the admin say it."""
        return (f"{plural(len(self.stopped_tasks), 'task')} halted, {plural(len(self.cancelled_approvals), 'open request')}"
                f" cancelled (agent calls, responses awaiting review, questions)")


class EmergencySettings(BaseModel):
    """Per-project thresholds of the automatic conditions (created with defaults on first use)."""

    project = models.OneToOneField("projects.Project", on_delete=models.CASCADE, related_name="emergency_settings")
    # error_rate_high: both windows must exceed the rate, each with at least min_outcomes outcomes.
    error_rate_threshold = models.DecimalField(max_digits=4, decimal_places=3, default="0.500",
                                               validators=[MinValueValidator(Decimal("0.001")),
                                                           MaxValueValidator(Decimal("0.999"))],
                                               help_text="failed / (completed + failed), above 0 and below 1 "
                                                         "(the condition trips above it)")
    error_window_count = models.PositiveIntegerField(default=20, validators=[MinValueValidator(1)],
                                                     help_text="the last N outcomes")
    error_window_seconds = models.PositiveIntegerField(default=300, validators=[MinValueValidator(1)],
                                                       help_text="outcomes of the last S seconds")
    error_min_outcomes = models.PositiveIntegerField(default=10, validators=[MinValueValidator(1)])
    error_window_reset_at = models.DateTimeField(null=True, blank=True,
                                                 help_text="outcomes before this are ignored (set by recovery)")
    # resource_exhaustion
    max_pending_approvals = models.PositiveIntegerField(default=1000, validators=[MinValueValidator(1)])
    max_open_tasks = models.PositiveIntegerField(default=5000, validators=[MinValueValidator(1)])
    rate_limit_errors_threshold = models.PositiveIntegerField(default=20, validators=[MinValueValidator(1)])
    rate_limit_window_seconds = models.PositiveIntegerField(default=60, validators=[MinValueValidator(1)])
    # security_threat
    stop_on_critical_risk = models.BooleanField(default=True,
                                                help_text="a critical risk flag on a requested call stops the project")

    class Meta:
        verbose_name_plural = "emergency settings"   # not "settingss" in the admin

    def __str__(self):
        return f"emergency settings of {self.project}"

    def clean(self):
        """Settings that would stop a healthy project or never trip are refused (a threshold of -0.5
        stopped a project on one completed task): at least as many outcomes in the window as the
        condition needs."""
        if self.error_min_outcomes and self.error_window_count and self.error_min_outcomes > self.error_window_count:
            raise ValidationError({"error_min_outcomes": "At most the window's count of outcomes "
                                                         f"({self.error_window_count}): the condition could never trip."})
