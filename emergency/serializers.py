from rest_framework import serializers

from emergency.models import EmergencyStop


class EmergencyStopOutputSerializer(serializers.ModelSerializer):
    project_id = serializers.UUIDField(read_only=True)

    class Meta:
        model = EmergencyStop
        fields = ["id", "project_id", "triggered_conditions", "condition_details", "stop_reason", "severity",
                  "triggered_by", "stopped_tasks", "cancelled_approvals", "recovery_session_id", "created_at",
                  "resolved_at"]
