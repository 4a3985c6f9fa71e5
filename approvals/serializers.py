from rest_framework import serializers

from approvals.models import AgentCallApproval, FlagSuppression, ResponseApproval
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


class RiskFlagSerializer(serializers.Serializer):
    code = serializers.CharField()
    severity = serializers.ChoiceField(choices=["low", "medium", "high", "critical"])
    message = serializers.CharField()
    location = serializers.CharField(required=False, allow_blank=True)
    fingerprint = serializers.CharField(required=False, help_text="stable id of the finding (for suppressions)")
    confidence = serializers.FloatField(required=False)
    analyzer = serializers.CharField(required=False)


class ResponseApprovalOutputSerializer(SharedFieldsMixin, serializers.ModelSerializer):
    approval_id = serializers.UUIDField(source="id", read_only=True)
    project_id = serializers.UUIDField(read_only=True)
    task_id = serializers.UUIDField(read_only=True)
    original_call_approval_id = serializers.UUIDField(source="agent_call_approval_id", read_only=True)
    risk_flags = RiskFlagSerializer(many=True, read_only=True)
    confidence_score = serializers.FloatField(read_only=True, help_text="0..1: how much of the analysis ran")
    safety_score = serializers.FloatField(read_only=True, help_text="0..1: 1 - the combined risk of the flags")
    quality_metrics = serializers.JSONField(read_only=True,
                                            help_text="{completeness, consistency, code_quality (coder)}: 0..1")
    analysis = serializers.JSONField(read_only=True, help_text="level, observed_flags, suppressed_flags, "
                                                               "recommendations, analyzers and tool versions")
    submitted_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    approved_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True,
                                               help_text="who decided; null while pending")

    class Meta:
        model = ResponseApproval
        fields = ["approval_id", "project_id", "task_id", "agent_type", "original_call_approval_id",
                  "agent_response", "response_summary", "next_steps", "risk_flags", "confidence_score",
                  "safety_score", "quality_metrics", "analysis", "tokens_used", "actual_cost", "status",
                  "submitted_by", "approved_by", "rejection_reason", "modifications_required", "modification_round",
                  "timeout_minutes", "created_at", "responded_at", "expires_at"]


class FlagSuppressionOutputSerializer(SharedFieldsMixin, serializers.ModelSerializer):
    project_id = serializers.UUIDField(read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = FlagSuppression
        fields = ["id", "project_id", "code", "fingerprint", "reason", "expires_at", "created_by", "created_at",
                  "revoked_at"]
