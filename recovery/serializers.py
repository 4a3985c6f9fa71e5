from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from recovery.models import RecoverySession, RecoveryStep


class RecoveryStepOutputSerializer(serializers.ModelSerializer):
    step_id = serializers.UUIDField(source="id", read_only=True)
    approved_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True,
                                               help_text="who decided the step; null until it is decided or when it "
                                                         "ran by itself (automated recovery)")

    class Meta:
        model = RecoveryStep
        fields = ["step_id", "order", "action", "description", "status", "approved_by", "reason", "result",
                  "decided_at", "started_at", "finished_at"]


class RecoverySessionOutputSerializer(serializers.ModelSerializer):
    project_id = serializers.UUIDField(read_only=True)
    emergency_stop_id = serializers.UUIDField(read_only=True)
    recovery_plan = serializers.SerializerMethodField()
    current_step = serializers.SerializerMethodField(
        help_text="the step a person decides next (the first pending one) while the session is open, else null")
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = RecoverySession
        fields = ["id", "project_id", "emergency_stop_id", "recovery_type", "status", "assessment", "recovery_plan",
                  "steps_completed", "total_steps", "current_step", "created_by", "created_at", "completed_at"]

    def get_recovery_plan(self, session) -> dict:
        return {"steps": RecoveryStepOutputSerializer(self._steps(session), many=True).data}

    @extend_schema_field(RecoveryStepOutputSerializer(allow_null=True))
    def get_current_step(self, session) -> dict | None:
        step = session.current_step(self._steps(session))
        return RecoveryStepOutputSerializer(step).data if step else None

    @staticmethod
    def _steps(session) -> list[RecoveryStep]:
        """The session's steps in order, read once for the plan and the current step."""
        steps = getattr(session, "_ordered_steps", None)
        if steps is None:
            steps = session._ordered_steps = list(session.steps.order_by("order"))
        return steps
