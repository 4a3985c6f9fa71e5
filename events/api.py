from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import error_responses
from core.fields import ChoiceField, QueryIntegerField, StrictUUIDField
from projects.permissions import project_for_user
from events.models import EventType
from events.selectors import event_page


class EventSerializer(serializers.Serializer):
    """Documents events.services.event_payload."""

    id = serializers.IntegerField()
    event_type = ChoiceField(choices=EventType.values)
    project_id = serializers.UUIDField()
    task_id = serializers.UUIDField(allow_null=True)
    data = serializers.DictField()
    created_at = serializers.DateTimeField()


class EventPageSerializer(serializers.Serializer):
    results = EventSerializer(many=True)
    last_event_id = serializers.IntegerField(
        help_text="id of the last event returned, or `after` when none: pass it as the next `after`")
    has_more = serializers.BooleanField()


class EventListApi(APIView):
    @extend_schema_serializer(component_name="EventFilter")
    class FilterSerializer(serializers.Serializer):
        project_id = StrictUUIDField()
        after = QueryIntegerField(required=False, default=0, min_value=0, max_value=2**63 - 1,
                                  help_text="return events with id > after")
        limit = QueryIntegerField(required=False, default=100, min_value=1, max_value=1000,
                                  help_text="at most this many")

    @extend_schema(
        operation_id="events_list",
        parameters=[FilterSerializer],
        responses={
            200: EventPageSerializer,
            **error_responses(400, 404),
        },
    )
    def get(self, request):
        """A project's events in id order, after a given id: the outbox over HTTP. Served to
        real clients by an async consumer (approvals.consumers.EventFeedConsumer) with the same
        answers; this view documents it and serves the test client."""
        s = self.FilterSerializer(data=request.query_params)
        s.is_valid(raise_exception=True)
        project = project_for_user(user=request.user, project_id=s.validated_data["project_id"])
        return Response(event_page(project=project, user=request.user, after=s.validated_data["after"],
                                   limit=s.validated_data["limit"]))
