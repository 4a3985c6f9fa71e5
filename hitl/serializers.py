from rest_framework import serializers

from core.serializers import SharedFieldsMixin
from hitl.models import HitlRequest


class HistoryEntrySerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=HitlRequest.Status.choices)
    by = serializers.CharField(help_text="username, or \"system\" (time-outs, emergency stops)")
    at = serializers.DateTimeField()
    note = serializers.CharField(allow_blank=True)


class HitlRequestOutputSerializer(SharedFieldsMixin, serializers.ModelSerializer):
    project_id = serializers.UUIDField(read_only=True)
    task_id = serializers.UUIDField(read_only=True, allow_null=True)
    options = serializers.ListField(child=serializers.CharField(), read_only=True)
    context = serializers.JSONField(read_only=True, allow_null=True)
    amended_content = serializers.JSONField(read_only=True, allow_null=True,
                                            help_text="what to do instead (amended): JSON or text; else null")
    asked_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    responded_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True,
                                                help_text="who answered; null while pending")
    history = HistoryEntrySerializer(many=True, read_only=True)

    class Meta:
        model = HitlRequest
        fields = ["id", "project_id", "task_id", "request_type", "question", "options", "context", "status",
                  "response", "amended_content", "asked_by", "responded_by", "timeout_minutes", "created_at",
                  "responded_at", "expires_at", "history"]
