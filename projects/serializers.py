from rest_framework import serializers

from core.serializers import SharedFieldsMixin
from projects.models import AgentState, Project, Task


class AgentStateSerializer(serializers.ModelSerializer):
    current_task_id = serializers.UUIDField(allow_null=True, read_only=True)

    class Meta:
        model = AgentState
        fields = ["agent_type", "status", "current_task_id", "updated_at"]


class ProjectOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["id", "slug", "name", "status", "timezone", "created_at"]


class TaskOutputSerializer(SharedFieldsMixin, serializers.ModelSerializer):
    task_id = serializers.UUIDField(source="id", read_only=True)
    project_id = serializers.UUIDField(read_only=True)

    class Meta:
        model = Task
        fields = ["task_id", "project_id", "agent_type", "title", "input_data", "status", "error", "error_kind",
                  "open_questions", "created_at", "updated_at", "started_at", "finished_at"]
