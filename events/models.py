from django.db import models


class EventType(models.TextChoices):
    AGENT_APPROVAL_REQUESTED = "agent_approval_requested"
    AGENT_APPROVAL_DECIDED = "agent_approval_decided"
    RESPONSE_APPROVAL_REQUESTED = "response_approval_requested"
    RESPONSE_APPROVAL_DECIDED = "response_approval_decided"
    BUDGET_OVERRIDE_REQUESTED = "budget_override_requested"
    BUDGET_OVERRIDE_DECIDED = "budget_override_decided"
    BUDGET_ALERT = "budget_alert"
    BUDGET_OVERRUN = "budget_overrun"  # an addition to API.md: a call used more than its estimate
    EMERGENCY_STOP_TRIGGERED = "emergency_stop_triggered"
    RECOVERY_INITIATED = "recovery_initiated"
    RECOVERY_STEP_COMPLETED = "recovery_step_completed"
    EMERGENCY_RESOLVED = "emergency_resolved"
    APPROVAL_TIMEOUT_WARNING = "approval_timeout_warning"
    APPROVAL_TIMED_OUT = "approval_timed_out"
    SAFETY_ALERT = "safety_alert"
    HITL_REQUESTED = "hitl_requested", "Question asked"
    HITL_DECIDED = "hitl_decided", "Question answered"


class Event(models.Model):
    """Outbox row. ``id`` increases, and within a project ids become visible in order
    (see events.services.event_emit), so ``after=<last id seen>`` never skips one."""

    id = models.BigAutoField(primary_key=True)
    event_type = models.CharField(max_length=40, choices=EventType.choices)
    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="events")
    task = models.ForeignKey("projects.Task", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["project", "id"])]

    def __str__(self):
        return f"#{self.id} {self.event_type}"
