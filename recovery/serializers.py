from rest_framework import serializers

from recovery.models import RecoverySession, RecoveryStep


class RecoveryStepOutputSerializer(serializers.ModelSerializer):
    step_id = serializers.UUIDField(source="id", read_only=True)
    approved_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = RecoveryStep
        fields = ["step_id", "order", "action", "description", "status", "approved_by", "reason", "result",
                  "decided_at", "started_at", "finished_at"]


class RecoverySessionOutputSerializer(serializers.ModelSerializer):
    project_id = serializers.UUIDField(read_only=True)
    emergency_stop_id = serializers.UUIDField(read_only=True)
    recovery_plan = serializers.SerializerMethodField()
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = RecoverySession
        fields = ["id", "project_id", "emergency_stop_id", "recovery_type", "status", "assessment", "recovery_plan",
                  "steps_completed", "total_steps", "created_by", "created_at", "completed_at"]

    def get_recovery_plan(self, session) -> dict:
        return {"steps": RecoveryStepOutputSerializer(session.steps.order_by("order"), many=True).data}
