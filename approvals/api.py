from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_serializer,
)
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from projects import roles
from core.errors import Forbidden
from projects.permissions import (
    has_project_perm,
    in_visible_projects,
    project_for_user,
    require_not_requester,
    require_project_perm_by_id,
)
from approvals import selectors, services
from budgets.api import overrides_visible_to
from budgets.serializers import BudgetOverrideOutputSerializer
from approvals.models import AgentCallApproval, FlagSuppression, ResponseApproval
from approvals.serializers import (
    AgentCallApprovalOutputSerializer,
    AgentCallApprovalStartOutputSerializer,
    FlagSuppressionOutputSerializer,
    ResponseApprovalOutputSerializer,
)
from core.api import (
    IDEMPOTENCY_HEADER,
    error_responses,
    get_or_404,
    idempotent,
    paginated,
)
from core.fields import (ChoiceField, JsonObjectField, MoneyField, StrictCharField, StrictIntegerField, StrictUUIDField,
                         StringListField)
from core.pagination import PAGE_PARAMETERS, ListPagination
from core.serializers import CopiedFieldsMixin
from projects.models import AgentType

MAX_TEXT = 20_000


def _object(value):
    if not isinstance(value, dict):
        raise serializers.ValidationError("Must be a JSON object.")
    return value


class AgentApprovalCreateApi(APIView):
    @extend_schema_serializer(component_name="AgentApprovalCreateInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        project_id = StrictUUIDField()
        task_id = StrictUUIDField()
        agent_type = ChoiceField(choices=AgentType.choices)
        proposed_action = StrictCharField(max_length=MAX_TEXT)
        input_data = JsonObjectField(validators=[_object])
        context_summary = StrictCharField(required=False, allow_blank=True, default="", max_length=MAX_TEXT)
        estimated_tokens = StrictIntegerField(required=False, min_value=0, max_value=2**31 - 1)
        estimated_cost = MoneyField(required=False, max_digits=12)
        timeout_minutes = StrictIntegerField(required=False, min_value=1, max_value=24 * 60)
        model = StrictCharField(required=False, allow_blank=True, default="", max_length=100)

    @extend_schema(operation_id="agent_approvals_create", request=InputSerializer, parameters=[IDEMPOTENCY_HEADER],
                   responses={201: AgentCallApprovalOutputSerializer, **error_responses(400, 403, 404, 409, 423)})
    @idempotent
    def post(self, request):
        """Ask to run one agent call (agent role). The server estimates tokens and cost when not
        given (an unknown `model` is 400), assesses the risk and sets `expires_at`."""
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        data = s.validated_data
        project_id = require_project_perm_by_id(request.user, roles.ACT_AS_AGENT, data["project_id"],
                                                "request agent calls")
        approval = services.agent_approval_request(
            requester=request.user, project_id=project_id, task_id=data["task_id"], agent_type=data["agent_type"],
            proposed_action=data["proposed_action"], input_data=data["input_data"],
            context_summary=data["context_summary"], estimated_tokens=data.get("estimated_tokens"),
            estimated_cost=data.get("estimated_cost"), timeout_minutes=data.get("timeout_minutes"),
            model=data["model"])
        return Response(AgentCallApprovalOutputSerializer(approval).data, status=status.HTTP_201_CREATED)


class AgentApprovalDetailApi(APIView):
    @extend_schema(operation_id="agent_approvals_retrieve",
                   responses={200: AgentCallApprovalOutputSerializer, **error_responses(404)})
    def get(self, request, approval_id):
        approval = selectors.agent_approval_for(user=request.user, approval_id=approval_id)
        if services.agent_approval_settle_due(approval):  # beat late or down: not pending past its deadline
            approval = selectors.agent_approval_for(user=request.user, approval_id=approval_id)
        return Response(AgentCallApprovalOutputSerializer(approval).data)


class AgentApprovalRespondApi(APIView):
    @extend_schema_serializer(component_name="AgentApprovalRespondInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        decision = ChoiceField(choices=["approve", "reject"])
        reason = StrictCharField(required=False, allow_blank=True, default="", max_length=MAX_TEXT)
        amended_input_data = JsonObjectField(required=False, allow_null=True, default=None, validators=[_object])

    @extend_schema(operation_id="agent_approvals_respond", request=InputSerializer, parameters=[IDEMPOTENCY_HEADER],
                   responses={200: AgentCallApprovalOutputSerializer, **error_responses(400, 403, 404, 409, 410, 423)})
    @idempotent
    def post(self, request, approval_id):
        """Approve (optionally with `amended_input_data`) or reject (with a `reason`), as a
        reviewer who did not request the call. Exactly one decision wins; the rest get 409.
        At or after `expires_at` the approval times out and the decision gets 410."""
        route = selectors.agent_approval_route(user=request.user, approval_id=approval_id)
        if not has_project_perm(request.user, roles.REVIEW, route["project_id"]):
            raise Forbidden("You may not decide agent calls in this project.")
        require_not_requester(decider=request.user, requester_id=route["requested_by_id"])
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        approval = services.agent_approval_decide(approval_id=route["id"], decider=request.user, **s.validated_data)
        return Response(AgentCallApprovalOutputSerializer(approval).data)


class AgentApprovalCancelApi(APIView):
    @extend_schema_serializer(component_name="AgentApprovalCancelInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        reason = StrictCharField(required=False, allow_blank=True, default="", max_length=MAX_TEXT)

    @extend_schema(operation_id="agent_approvals_cancel", request=InputSerializer,
                   responses={200: AgentCallApprovalOutputSerializer, **error_responses(400, 403, 404, 409)})
    def post(self, request, approval_id):
        """The requesting agent withdraws a pending (or approved, not started) call."""
        route = selectors.agent_approval_route(user=request.user, approval_id=approval_id)
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        approval = services.agent_approval_cancel(approval_id=route["id"], actor=request.user, **s.validated_data)
        return Response(AgentCallApprovalOutputSerializer(approval).data)


class AgentApprovalStartApi(APIView):
    @extend_schema(operation_id="agent_approvals_start", request=None,
                   responses={200: AgentCallApprovalStartOutputSerializer,
                              **error_responses(403, 404, 409, 410, 423)})
    def post(self, request, approval_id):
        """The single-use execution grant: marks an approved call started, exactly once, and
        returns `input_to_run`. A second start gets 409; a start later than
        HITL_START_WITHIN_MINUTES after the approval gets 410 and cancels the grant."""
        route = selectors.agent_approval_route(user=request.user, approval_id=approval_id)
        approval = services.agent_approval_start(approval_id=route["id"], actor=request.user)
        return Response(AgentCallApprovalStartOutputSerializer(approval).data)


class AgentApprovalUsageApi(APIView):
    @extend_schema_serializer(component_name="AgentApprovalUsageInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        tokens_used = StrictIntegerField(min_value=0, max_value=2**31 - 1)
        actual_cost = MoneyField(required=False, max_digits=12)

    @extend_schema(operation_id="agent_approvals_usage", request=InputSerializer, parameters=[IDEMPOTENCY_HEADER],
                   responses={200: AgentCallApprovalOutputSerializer, **error_responses(400, 403, 404, 409, 423)})
    @idempotent
    def post(self, request, approval_id):
        """The requesting agent reports what a started call used (for a call whose output is not
        sent for response approval): settles the budget reservation exactly once. It writes the
        ledger, so it honours an ``Idempotency-Key`` as a create does: a retry with the key and body
        replays the first answer, the key with another body is 400. Under an emergency stop (or one
        this report trips) the usage is recorded and the answer is 423 (not kept for the key: a retry
        runs again, finds the same totals and records nothing more)."""
        route = selectors.agent_approval_route(user=request.user, approval_id=approval_id)
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        approval, _ = services.agent_approval_report_usage(approval_id=route["id"], actor=request.user,
                                                           tokens_used=s.validated_data["tokens_used"],
                                                           actual_cost=s.validated_data.get("actual_cost"))
        return Response(AgentCallApprovalOutputSerializer(approval).data)


class AgentApprovalProjectListApi(APIView):
    @extend_schema_serializer(component_name="AgentApprovalFilter")
    class FilterSerializer(serializers.Serializer):
        status = ChoiceField(choices=AgentCallApproval.Status.choices, required=False)
        agent_type = ChoiceField(choices=AgentType.choices, required=False)

    @extend_schema(operation_id="agent_approvals_project_list",
                   parameters=[OpenApiParameter("status", enum=AgentCallApproval.Status.values),
                               OpenApiParameter("agent_type", enum=AgentType.values),
                               *PAGE_PARAMETERS],
                   responses={200: paginated(AgentCallApprovalOutputSerializer, "PaginatedAgentApprovalList"),
                              **error_responses(400, 404)})
    def get(self, request, project_id):
        """A project's agent call approvals, newest first, paginated."""
        project = project_for_user(user=request.user, project_id=project_id)
        s = self.FilterSerializer(data=request.query_params)
        s.is_valid(raise_exception=True)
        services.agent_approval_expire_overdue(project_id=project.pk)  # none listed pending past its deadline
        paginator = ListPagination()
        page = paginator.paginate_queryset(selectors.agent_approval_list(project=project, **s.validated_data),
                                           request, view=self)
        return paginator.get_paginated_response(AgentCallApprovalOutputSerializer(page, many=True).data)


class BudgetOverrideRespondApi(APIView):
    """POST /api/v1/budget-overrides/{id}/respond. Served by approvals, the layer that combines
    overrides with the calls they block (approving one admits its calls again)."""

    @extend_schema_serializer(component_name="BudgetOverrideRespondInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        decision = ChoiceField(choices=["approve", "reject"])
        reason = StrictCharField(required=False, allow_blank=True, default="", max_length=5000)

    @extend_schema(operation_id="budget_overrides_respond", request=InputSerializer, parameters=[IDEMPOTENCY_HEADER],
                   responses={200: BudgetOverrideOutputSerializer, **error_responses(400, 403, 404, 409, 423)})
    @idempotent
    def post(self, request, override_id):
        """Approve or reject (`reason` optional). Above the manager threshold only a manager approves
        (403 for a reviewer); nobody decides an override they requested."""
        override = get_or_404(overrides_visible_to(request.user), override_id)
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        # API.md makes the reason optional here (the reviewers' pages ask for one)
        override = services.budget_override_respond(override_id=override.pk, actor=request.user,
                                                    reason_required=False, **s.validated_data)
        return Response(BudgetOverrideOutputSerializer(override).data)


# --- Response approvals -------------------------------------------------------------------------

def _string_list(value):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise serializers.ValidationError("Must be a list of strings.")
    if len(value) > 100:
        raise serializers.ValidationError("At most 100 steps.")
    return value


class ResponseApprovalCreateApi(APIView):
    @extend_schema_serializer(component_name="ResponseApprovalCreateInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        project_id = StrictUUIDField()
        task_id = StrictUUIDField()
        agent_type = ChoiceField(choices=AgentType.choices)
        original_call_approval_id = StrictUUIDField()
        agent_response = JsonObjectField(validators=[_object])
        response_summary = StrictCharField(allow_blank=True, max_length=MAX_TEXT)
        next_steps = StringListField(validators=[_string_list])
        tokens_used = StrictIntegerField(min_value=0, max_value=2**31 - 1)
        actual_cost = MoneyField(required=False, max_digits=12)
        timeout_minutes = StrictIntegerField(required=False, min_value=1, max_value=24 * 60)

    @extend_schema(operation_id="response_approvals_create", request=InputSerializer,
                   parameters=[IDEMPOTENCY_HEADER],
                   responses={201: ResponseApprovalOutputSerializer, **error_responses(400, 403, 404, 409, 423)})
    @idempotent
    def post(self, request):
        """The agent that ran a started call submits its output for review (agent role). Settles
        the call's budget reservation with `tokens_used` / `actual_cost` (priced from the call's
        model when omitted) exactly once, and runs the safety analyzer. 409 unless the call is
        approved and started and has no response yet; a critical flag stops the project (423)."""
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        data = s.validated_data
        project_id = require_project_perm_by_id(request.user, roles.ACT_AS_AGENT, data["project_id"],
                                                "submit agent responses")
        response = services.response_approval_submit(
            submitter=request.user, project_id=project_id, task_id=data["task_id"], agent_type=data["agent_type"],
            call_approval_id=data["original_call_approval_id"], agent_response=data["agent_response"],
            response_summary=data["response_summary"], next_steps=data["next_steps"],
            tokens_used=data["tokens_used"], actual_cost=data.get("actual_cost"),
            timeout_minutes=data.get("timeout_minutes"))
        return Response(ResponseApprovalOutputSerializer(response).data, status=status.HTTP_201_CREATED)


class ResponseApprovalDetailApi(APIView):
    @extend_schema(operation_id="response_approvals_retrieve",
                   responses={200: ResponseApprovalOutputSerializer, **error_responses(404)})
    def get(self, request, approval_id):
        response = selectors.response_approval_for(user=request.user, approval_id=approval_id)
        if services.response_approval_settle_due(response):  # beat late or down: not pending past its deadline
            response = selectors.response_approval_for(user=request.user, approval_id=approval_id)
        return Response(ResponseApprovalOutputSerializer(response).data)


class ResponseApprovalRespondApi(APIView):
    @extend_schema_serializer(component_name="ResponseApprovalRespondInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        decision = ChoiceField(choices=["approve", "reject", "requires_modification"])
        reason = StrictCharField(required=False, allow_blank=True, default="", max_length=MAX_TEXT)
        modifications_required = serializers.JSONField(required=False)

    @extend_schema(operation_id="response_approvals_respond", request=InputSerializer, parameters=[IDEMPOTENCY_HEADER],
                   responses={200: ResponseApprovalOutputSerializer, **error_responses(400, 403, 404, 409, 410, 423)})
    @idempotent
    def post(self, request, approval_id):
        """Approve, reject (`reason` optional, as API.md has it) or ask for modifications (`modifications_required`:
        text or JSON saying what must change; the agent redoes the work under a new call approval,
        at most HITL_RESPONSE_MAX_MODIFICATION_ROUNDS times per task), as a reviewer who did not
        submit it. Exactly one decision wins (409); after `expires_at` it times out (410)."""
        response = selectors.response_approval_for(user=request.user, approval_id=approval_id)
        if not has_project_perm(request.user, roles.REVIEW, response.project_id):
            raise Forbidden("You may not decide agent responses in this project.")
        require_not_requester(decider=request.user, requester_id=response.submitted_by_id)
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        response = services.response_approval_decide(approval_id=response.pk, decider=request.user,
                                                     reason_required=False, **s.validated_data)
        return Response(ResponseApprovalOutputSerializer(response).data)


class ResponseApprovalProjectListApi(APIView):
    @extend_schema_serializer(component_name="ResponseApprovalFilter")
    class FilterSerializer(serializers.Serializer):
        status = ChoiceField(choices=ResponseApproval.Status.choices, required=False)
        agent_type = ChoiceField(choices=AgentType.choices, required=False)

    @extend_schema(operation_id="response_approvals_project_list",
                   parameters=[OpenApiParameter("status", enum=ResponseApproval.Status.values),
                               OpenApiParameter("agent_type", enum=AgentType.values),
                               *PAGE_PARAMETERS],
                   responses={200: paginated(ResponseApprovalOutputSerializer, "PaginatedResponseApprovalList"),
                              **error_responses(400, 404)})
    def get(self, request, project_id):
        """A project's response approvals, newest first, paginated."""
        project = project_for_user(user=request.user, project_id=project_id)
        s = self.FilterSerializer(data=request.query_params)
        s.is_valid(raise_exception=True)
        services.response_approval_expire_overdue(project_id=project.pk)  # none listed pending past its deadline
        paginator = ListPagination()
        page = paginator.paginate_queryset(selectors.response_approval_list(project=project, **s.validated_data),
                                           request, view=self)
        return paginator.get_paginated_response(ResponseApprovalOutputSerializer(page, many=True).data)


# --- Reviewers' suppressions of analyzer findings -----------------------------------------------

class FlagSuppressionCreateApi(APIView):
    @extend_schema_serializer(component_name="FlagSuppressionCreateInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        project_id = StrictUUIDField()
        approval_id = StrictUUIDField(help_text="the call or response approval that carries the flag")
        code = StrictCharField(max_length=100)
        fingerprint = StrictCharField(max_length=64)
        reason = StrictCharField(max_length=5000)
        days = StrictIntegerField(required=False, default=30, min_value=1, max_value=365)

    @extend_schema(operation_id="flag_suppressions_create", request=InputSerializer, parameters=[IDEMPOTENCY_HEADER],
                   responses={201: FlagSuppressionOutputSerializer, **error_responses(400, 403, 404, 409)})
    @idempotent
    def post(self, request):
        """A reviewer marks one finding (its `code` and `fingerprint`, as on the approval) a false
        positive for the project for `days` (default 30): later analyses list it under
        `suppressed_flags` and do not score it. Audited. The same finding asked again later or for
        longer renews its suppression; with another reason or for a shorter time it is 409 with the
        `suppression_id` and `expires_at` that hold (revoke it first)."""
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        data = s.validated_data
        project = project_for_user(user=request.user, project_id=data["project_id"])
        if not has_project_perm(request.user, roles.REVIEW, project.pk):
            raise Forbidden("Only a reviewer of the project may suppress findings.")
        row = services.flag_suppression_create(actor=request.user, project_id=project.pk,
                                               approval_id=data["approval_id"], code=data["code"],
                                               fingerprint=data["fingerprint"], reason=data["reason"],
                                               days=data["days"])
        return Response(FlagSuppressionOutputSerializer(row).data, status=status.HTTP_201_CREATED)


class FlagSuppressionProjectListApi(APIView):
    @extend_schema(operation_id="flag_suppressions_project_list",
                   parameters=[*PAGE_PARAMETERS],
                   responses={200: paginated(FlagSuppressionOutputSerializer, "PaginatedFlagSuppressionList"),
                              **error_responses(400, 404)})
    def get(self, request, project_id):
        """A project's suppressions (active and past), newest first, paginated."""
        project = project_for_user(user=request.user, project_id=project_id)
        paginator = ListPagination()
        page = paginator.paginate_queryset(selectors.flag_suppression_list(project=project), request, view=self)
        return paginator.get_paginated_response(FlagSuppressionOutputSerializer(page, many=True).data)


class FlagSuppressionRevokeApi(APIView):
    @extend_schema(operation_id="flag_suppressions_revoke", request=None,
                   responses={200: FlagSuppressionOutputSerializer, **error_responses(403, 404)})
    def post(self, request, suppression_id):
        """End a suppression now (reviewer). Revoking again changes nothing."""
        row = get_or_404(FlagSuppression.objects.filter(in_visible_projects(request.user)), suppression_id)
        row = services.flag_suppression_revoke(actor=request.user, suppression_id=row.pk)
        return Response(FlagSuppressionOutputSerializer(row).data)
