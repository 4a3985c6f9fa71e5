"""/api/v1/hitl (API.md "Questions and checkpoints"). The long poll GET /api/v1/hitl/{id}/wait
is a Channels consumer (approvals/consumers.py, kind HITL)."""
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import IDEMPOTENCY_HEADER, error_responses, idempotent, paginated
from core.errors import Forbidden
from core.fields import ChoiceField, StrictCharField, StrictIntegerField, StrictUUIDField
from core.pagination import PAGE_PARAMETERS, ListPagination
from core.serializers import CopiedFieldsMixin
from hitl import selectors, services
from hitl.models import MAX_OPTIONS, HitlRequest
from hitl.serializers import HitlRequestOutputSerializer
from projects import roles
from projects.permissions import (
    has_project_perm,
    project_for_user,
    require_not_requester,
    require_project_perm_by_id,
)

MAX_TEXT = 20_000


class HitlRequestCreateApi(APIView):
    @extend_schema_serializer(component_name="HitlRequestCreateInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        project_id = StrictUUIDField()
        task_id = StrictUUIDField(required=False, allow_null=True, default=None)
        request_type = ChoiceField(choices=HitlRequest.RequestType.choices)
        question = StrictCharField(max_length=MAX_TEXT)
        options = serializers.ListField(child=StrictCharField(max_length=500, allow_blank=True), required=False,
                                        allow_null=True, default=None, max_length=MAX_OPTIONS,
                                        help_text=f"at most {MAX_OPTIONS} unique non-empty answers to choose from")
        context = serializers.JSONField(required=False, allow_null=True, default=None)
        timeout_minutes = StrictIntegerField(required=False, min_value=1, max_value=24 * 60)

    @extend_schema(operation_id="hitl_create", request=InputSerializer, parameters=[IDEMPOTENCY_HEADER],
                   responses={201: HitlRequestOutputSerializer, **error_responses(400, 403, 404, 409, 423)})
    @idempotent
    def post(self, request):
        """Ask a person a question, or pause at a checkpoint (agent role). It is pending until a
        reviewer approves, rejects or amends it, or until `expires_at` (`timeout_minutes`, default
        HITL_APPROVAL_TIMEOUT_MINUTES). 423 while the project is under an emergency stop."""
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        data = s.validated_data
        project_id = require_project_perm_by_id(request.user, roles.ACT_AS_AGENT, data["project_id"],
                                                "ask people questions", field="project_id")
        req = services.hitl_request_create(
            asker=request.user, project_id=project_id, task_id=data["task_id"], request_type=data["request_type"],
            question=data["question"], options=data["options"], context=data["context"],
            timeout_minutes=data.get("timeout_minutes"))
        return Response(HitlRequestOutputSerializer(req).data, status=status.HTTP_201_CREATED)


class HitlRequestDetailApi(APIView):
    @extend_schema(operation_id="hitl_retrieve", responses={200: HitlRequestOutputSerializer, **error_responses(404)})
    def get(self, request, request_id):
        req = selectors.hitl_request_for(user=request.user, request_id=request_id)
        if services.hitl_request_settle_due(req):  # beat late or down: not pending past its deadline
            req = selectors.hitl_request_for(user=request.user, request_id=request_id)
        return Response(HitlRequestOutputSerializer(req).data)


class HitlRequestRespondApi(APIView):
    @extend_schema_serializer(component_name="HitlRequestRespondInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        action = ChoiceField(choices=["approve", "reject", "amend"])
        response = StrictCharField(required=False, allow_blank=True, default="", max_length=MAX_TEXT,
                                   help_text="the answer (approve; one of `options` when it has any), the "
                                             "reason (reject) or a note (amend)")
        amended_content = serializers.JSONField(required=False, allow_null=True, default=None,
                                                help_text="amend only: what to do instead (JSON or text)")

    @extend_schema(operation_id="hitl_respond", request=InputSerializer, parameters=[IDEMPOTENCY_HEADER],
                   responses={200: HitlRequestOutputSerializer, **error_responses(400, 403, 404, 409, 410, 423)})
    @idempotent
    def post(self, request, request_id):
        """Approve, reject or amend, as a reviewer who did not ask. Exactly one answer wins (409
        for the rest); at or after `expires_at` the request times out and the answer gets 410."""
        req = selectors.hitl_request_for(user=request.user, request_id=request_id)
        if not has_project_perm(request.user, roles.REVIEW, req.project_id):
            raise Forbidden("You may not answer questions and checkpoints in this project.")
        require_not_requester(decider=request.user, requester_id=req.asked_by_id)
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        req = services.hitl_request_respond(request_id=req.pk, responder=request.user, **s.validated_data)
        return Response(HitlRequestOutputSerializer(req).data)


class HitlRequestCancelApi(APIView):
    @extend_schema_serializer(component_name="HitlRequestCancelInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        reason = StrictCharField(required=False, allow_blank=True, default="", max_length=MAX_TEXT)

    @extend_schema(operation_id="hitl_cancel", request=InputSerializer,
                   responses={200: HitlRequestOutputSerializer, **error_responses(400, 403, 404, 409)})
    def post(self, request, request_id):
        """The agent that asked withdraws a pending request (an addition to API.md). Cancelling
        again changes nothing; a request already answered is 409."""
        req = selectors.hitl_request_for(user=request.user, request_id=request_id)
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        req = services.hitl_request_cancel(request_id=req.pk, actor=request.user, **s.validated_data)
        return Response(HitlRequestOutputSerializer(req).data)


class HitlRequestProjectListApi(APIView):
    @extend_schema_serializer(component_name="HitlRequestFilter")
    class FilterSerializer(serializers.Serializer):
        status = ChoiceField(choices=HitlRequest.Status.choices, required=False)

    @extend_schema(operation_id="hitl_project_list",
                   parameters=[OpenApiParameter("status", enum=HitlRequest.Status.values),
                               *PAGE_PARAMETERS],
                   responses={200: paginated(HitlRequestOutputSerializer, "PaginatedHitlRequestList"),
                              **error_responses(400, 404)})
    def get(self, request, project_id):
        """A project's questions and checkpoints, newest first, paginated."""
        project = project_for_user(user=request.user, project_id=project_id)
        s = self.FilterSerializer(data=request.query_params)
        s.is_valid(raise_exception=True)
        services.hitl_request_expire_overdue(project_id=project.pk)  # none listed pending past its deadline
        paginator = ListPagination()
        page = paginator.paginate_queryset(selectors.hitl_request_list(project=project, **s.validated_data),
                                           request, view=self)
        return paginator.get_paginated_response(HitlRequestOutputSerializer(page, many=True).data)
