from drf_spectacular.utils import extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import IDEMPOTENCY_HEADER, error_responses, get_or_404, idempotent, parse_uuid
from core.fields import ChoiceField, StrictCharField
from core.serializers import CopiedFieldsMixin
from emergency.models import EmergencyStop
from emergency.serializers import EmergencyStopOutputSerializer
from projects.permissions import project_for_user, project_visible_to
from recovery.models import RecoverySession
from recovery.serializers import RecoverySessionOutputSerializer
from recovery.services import recovery_start, recovery_step_respond


def _sessions(user):
    return RecoverySession.objects.filter(project__in=project_visible_to(user=user))


class RecoveryDetailApi(APIView):
    @extend_schema(operation_id="recovery_retrieve", responses={200: RecoverySessionOutputSerializer,
                                                                **error_responses(404)})
    def get(self, request, session_id):
        return Response(RecoverySessionOutputSerializer(get_or_404(_sessions(request.user), session_id)).data)


class RecoveryStepRespondApi(APIView):
    @extend_schema_serializer(component_name="RecoveryStepRespondInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        decision = ChoiceField(choices=["approve", "reject"])
        reason = StrictCharField(required=False, allow_blank=True, default="", max_length=5000)
        option = StrictCharField(required=False, allow_blank=True, default="", max_length=50,
                                 help_text="for steps that offer options, e.g. settle_halted_tasks: resume|cancel")

    @extend_schema(operation_id="recovery_step_respond", request=InputSerializer, parameters=[IDEMPOTENCY_HEADER],
                   responses={200: RecoverySessionOutputSerializer, **error_responses(400, 403, 404, 409)})
    @idempotent
    def post(self, request, session_id, step_id):
        """Approve (which runs it) or reject (`reason` optional) the next step of a recovery.
        Steps run in order; a rejected or failed step fails the session and the stop stays."""
        session = get_or_404(_sessions(request.user), session_id)
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        session = recovery_step_respond(session_id=session.pk, step_id=parse_uuid(step_id), actor=request.user,
                                        reason_required=False, **s.validated_data)
        return Response(RecoverySessionOutputSerializer(session).data)


class EmergencyStatusApi(APIView):
    @extend_schema(operation_id="emergency_status", responses={
        200: inline_serializer("EmergencyStatus", {
            "project_id": serializers.UUIDField(), "stopped": serializers.BooleanField(),
            "active_stop": EmergencyStopOutputSerializer(allow_null=True),
            "recovery_session": RecoverySessionOutputSerializer(allow_null=True)}),
        **error_responses(404)})
    def get(self, request, project_id):
        project = project_for_user(user=request.user, project_id=project_id)
        stop = EmergencyStop.objects.filter(project=project, resolved_at__isnull=True).first()
        session = None
        if stop is not None:
            session = RecoverySession.objects.filter(emergency_stop=stop).order_by("-created_at").first()
        return Response({
            "project_id": str(project.pk),
            "stopped": project.status == project.Status.EMERGENCY_STOPPED,
            "active_stop": EmergencyStopOutputSerializer(stop).data if stop else None,
            "recovery_session": RecoverySessionOutputSerializer(session).data if session else None,
        })


class RecoveryStartApi(APIView):
    @extend_schema_serializer(component_name="RecoveryStartInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        recovery_type = ChoiceField(choices=RecoverySession.Type.choices, required=False,
                                                default=RecoverySession.Type.MANUAL)

    @extend_schema(operation_id="emergency_recovery_start", request=InputSerializer,
                   responses={201: RecoverySessionOutputSerializer, **error_responses(400, 403, 404, 409)},
                   parameters=[IDEMPOTENCY_HEADER])
    @idempotent
    def post(self, request, project_id):
        """Open a recovery session on the active stop (managers): an assessment and a plan of
        steps, each to be approved in order."""
        project = project_for_user(user=request.user, project_id=project_id)
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        session = recovery_start(project_id=project.pk, actor=request.user, **s.validated_data)
        return Response(RecoverySessionOutputSerializer(session).data, status=status.HTTP_201_CREATED)
