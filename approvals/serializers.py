from rest_framework import serializers

from approvals.models import AgentCallApproval
from core.serializers import SharedFieldsMixin


class AgentCallApprovalOutputSerializer(SharedFieldsMixin, serializers.ModelSerializer):
    approval_id = serializers.UUIDField(source="id", read_only=True)
    project_id = serializers.UUIDField(read_only=True)
    task_id = serializers.UUIDField(read_only=True)
    approved_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True,
                                               help_text="who decided (approved or rejected); null while pending")
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    risk_assessment = serializers.JSONField(
        help_text="{level: low|medium|high|critical, score: 0..1, flags: [{code, severity, message, location}]}")

    class Meta:
        model = AgentCallApproval
        fields = ["approval_id", "project_id", "task_id", "agent_type", "proposed_action", "input_data",
                  "context_summary", "model", "estimated_tokens", "estimated_cost", "risk_assessment",
                  "timeout_minutes", "status", "requested_by", "approved_by", "rejection_reason",
                  "amended_input_data", "input_digest", "budget_override_id", "budget_state",
                  "budget_blocked_reason", "usage_flags", "created_at", "responded_at", "expires_at", "started_at"]
        extra_kwargs = {
            "budget_state": {"help_text": "reserved (its estimate is held), blocked (over a limit: it cannot be "
                                          "approved until budget_override_id is approved), settled, released"},
            "budget_blocked_reason": {"help_text": "why the call is blocked and what unblocks it"},
        }


class AgentCallApprovalStartOutputSerializer(AgentCallApprovalOutputSerializer):
    input_to_run = serializers.JSONField(read_only=True, help_text="the amended input if amended, else the original")

    class Meta(AgentCallApprovalOutputSerializer.Meta):
        fields = AgentCallApprovalOutputSerializer.Meta.fields + ["input_to_run"]
