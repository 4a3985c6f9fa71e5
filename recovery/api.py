from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from access.permissions import project_visible_to
from core.api import error_responses, get_or_404, parse_uuid
from core.fields import StrictCharField
from recovery.models import RecoverySession
from recovery.serializers import RecoverySessionOutputSerializer
from recovery.services import recovery_step_respond


def _sessions(user):
    return RecoverySession.objects.filter(project__in=project_visible_to(user=user))


class RecoveryDetailApi(APIView):
    @extend_schema(operation_id="recovery_retrieve", responses={200: RecoverySessionOutputSerializer,
                                                                **error_responses(404)})
    def get(self, request, session_id):
        return Response(RecoverySessionOutputSerializer(get_or_404(_sessions(request.user), session_id)).data)


class RecoveryStepRespondApi(APIView):
    @extend_schema_serializer(component_name="RecoveryStepRespondInput")
    class InputSerializer(serializers.Serializer):
        decision = serializers.ChoiceField(choices=["approve", "reject"])
        reason = StrictCharField(required=False, allow_blank=True, default="", max_length=5000)
        option = StrictCharField(required=False, allow_blank=True, default="", max_length=50,
                                 help_text="for steps that offer options, e.g. settle_halted_tasks: resume|cancel")

    @extend_schema(operation_id="recovery_step_respond", request=InputSerializer,
                   responses={200: RecoverySessionOutputSerializer, **error_responses(400, 403, 404, 409)})
    def post(self, request, session_id, step_id):
        """Approve (which runs it) or reject (with a reason) the next step of a recovery.
        Steps run in order; a rejected or failed step fails the session and the stop stays."""
        session = get_or_404(_sessions(request.user), session_id)
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        session = recovery_step_respond(session_id=session.pk, step_id=parse_uuid(step_id), actor=request.user,
                                        **s.validated_data)
        return Response(RecoverySessionOutputSerializer(session).data)
