from drf_spectacular.utils import (
    extend_schema,
    extend_schema_serializer,
)
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from projects import roles
from projects.permissions import has_project_perm, project_for_user
from core.api import IDEMPOTENCY_HEADER, error_responses, idempotent
from core.errors import Forbidden
from core.fields import ChoiceField, StrictCharField
from core.serializers import CopiedFieldsMixin
from emergency.models import Condition, Severity
from emergency.serializers import EmergencyStopOutputSerializer
from emergency.services import emergency_stop_trigger


class EmergencyStopApi(APIView):
    @extend_schema_serializer(component_name="EmergencyStopInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        reason = StrictCharField(max_length=5000)
        severity = ChoiceField(choices=Severity.choices, required=False, default=Severity.HIGH)

    @extend_schema(operation_id="emergency_stop", request=InputSerializer,
                   responses={201: EmergencyStopOutputSerializer,
                              **error_responses(400, 403, 404)}, parameters=[IDEMPOTENCY_HEADER])
    @idempotent
    def post(self, request, project_id):
        """Stop the project now (reviewers, managers and the project's own agents): halts its
        tasks, cancels its pending calls, and every agent call gets 423 until recovery lifts
        the stop. 201 with the stop; when the project is already stopped, the manual condition
        is added to the active stop, which is returned."""
        project = project_for_user(user=request.user, project_id=project_id)
        if not any(has_project_perm(request.user, perm, project) for perm in (roles.REVIEW, roles.ACT_AS_AGENT)):
            raise Forbidden("You may not stop this project.")
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        stop, _ = emergency_stop_trigger(project_id=project.pk, condition=Condition.MANUAL_STOP,
                                               actor=request.user, **s.validated_data)
        return Response(EmergencyStopOutputSerializer(stop).data, status=status.HTTP_201_CREATED)
