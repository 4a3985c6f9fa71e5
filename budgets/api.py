from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
    extend_schema_view,
)
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from projects import roles
from projects.permissions import (
    project_for_user,
    project_visible_to,
    require_project_perm,
)
from budgets.models import BudgetOverrideRequest
from budgets.selectors import budget_summary
from budgets.serializers import BudgetOutputSerializer, BudgetOverrideOutputSerializer
from budgets.services import budget_limits_update, budget_override_create
from core.api import (
    IDEMPOTENCY_HEADER,
    error_responses,
    idempotent,
    paginated,
)
from core.fields import ChoiceField, MoneyField, StrictCharField, StrictIntegerField, StrictUUIDField
from core.pagination import PAGE_PARAMETERS, ListPagination
from core.serializers import CopiedFieldsMixin
from projects.api import ProjectDetailApi, ProjectDetailOutputSerializer


class BudgetApi(APIView):
    @extend_schema_serializer(component_name="BudgetLimitsInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        daily_token_limit = StrictIntegerField(required=False, min_value=0, max_value=10**15)
        monthly_token_limit = StrictIntegerField(required=False, min_value=0, max_value=10**15)
        daily_cost_limit = MoneyField(required=False)
        monthly_cost_limit = MoneyField(required=False)
        warning_percent = StrictIntegerField(required=False, min_value=1, max_value=100)
        critical_percent = StrictIntegerField(required=False, min_value=1, max_value=100)
        emergency_percent = StrictIntegerField(required=False, min_value=1, max_value=100)

        def validate(self, attrs):
            if "manager_threshold" in self.initial_data:
                raise serializers.ValidationError({"manager_threshold": [
                    "A deployment setting (HITL_MANAGER_COST_THRESHOLD / HITL_MANAGER_TOKEN_THRESHOLD), not a "
                    "project's: it cannot be changed through the API."]})
            return attrs

    @extend_schema(operation_id="budgets_retrieve", responses={200: BudgetOutputSerializer, **error_responses(404)})
    def get(self, request, project_id):
        """Limits, today's and this month's usage (spent and reserved), alerts of the current windows."""
        project = project_for_user(user=request.user, project_id=project_id)
        return Response(BudgetOutputSerializer(budget_summary(project=project)).data)

    @extend_schema(operation_id="budgets_update", request=InputSerializer,
                   responses={200: BudgetOutputSerializer, **error_responses(400, 403, 404)})
    def patch(self, request, project_id):
        """Set limits and thresholds (managers)."""
        project = project_for_user(user=request.user, project_id=project_id)
        require_project_perm(request.user, roles.MANAGE, project, "set budget limits")
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        if not s.validated_data:  # {} or only fields that are not settings (tokens_used_today): nothing to change
            raise serializers.ValidationError({"non_field_errors": [
                f"Give at least one of {', '.join(self.InputSerializer().fields)}."]})
        budget_limits_update(project=project, actor=request.user, values=s.validated_data)
        return Response(BudgetOutputSerializer(budget_summary(project=project)).data)


class BudgetOverrideCreateApi(APIView):
    @extend_schema_serializer(component_name="BudgetOverrideCreateInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        project_id = StrictUUIDField()
        violation_type = ChoiceField(choices=BudgetOverrideRequest.Violation.choices)
        requested_amount = MoneyField()
        justification = StrictCharField(max_length=5000)

        def validate_requested_amount(self, value):
            if value <= 0:
                raise serializers.ValidationError("Ask for more than 0: an override of nothing changes nothing.")
            return value

        def validate(self, attrs):
            amount, violation = attrs.get("requested_amount"), attrs.get("violation_type", "")
            if amount is not None and violation.endswith("token_limit") and amount != amount.to_integral_value():
                raise serializers.ValidationError(  # it was granted rounded up: more than was asked for
                    {"requested_amount": ["A token limit takes a whole number of tokens."]})
            return attrs

    @extend_schema(operation_id="budget_overrides_create", request=InputSerializer, parameters=[IDEMPOTENCY_HEADER],
                   responses={201: BudgetOverrideOutputSerializer, **error_responses(400, 404, 423)})
    @idempotent
    def post(self, request):
        """Ask for more room in the current day or month window (anyone with a role)."""
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        data = s.validated_data
        project = project_for_user(user=request.user, project_id=data.pop("project_id"))
        override = budget_override_create(project_id=project.pk, actor=request.user, **data)
        return Response(BudgetOverrideOutputSerializer(override).data, status=status.HTTP_201_CREATED)


def overrides_visible_to(user):
    return BudgetOverrideRequest.objects.filter(project__in=project_visible_to(user=user)).select_related(
        "window", "requested_by", "approved_by")


class BudgetOverrideProjectListApi(APIView):
    @extend_schema_serializer(component_name="BudgetOverrideFilter")
    class FilterSerializer(serializers.Serializer):
        status = ChoiceField(choices=BudgetOverrideRequest.Status.choices, required=False)

    @extend_schema(operation_id="budget_overrides_project_list",
                   parameters=[OpenApiParameter("status", enum=BudgetOverrideRequest.Status.values),
                               *PAGE_PARAMETERS],
                   responses={200: paginated(BudgetOverrideOutputSerializer, "PaginatedBudgetOverrideList"),
                              **error_responses(400, 404)})
    def get(self, request, project_id):
        project = project_for_user(user=request.user, project_id=project_id)
        s = self.FilterSerializer(data=request.query_params)
        s.is_valid(raise_exception=True)
        qs = overrides_visible_to(request.user).filter(project=project)
        if s.validated_data.get("status"):
            qs = qs.filter(status=s.validated_data["status"])
        paginator = ListPagination()
        page = paginator.paginate_queryset(qs.order_by("-created_at"), request, view=self)
        return paginator.get_paginated_response(BudgetOverrideOutputSerializer(page, many=True).data)


class ProjectDetailWithBudgetOutputSerializer(ProjectDetailOutputSerializer):
    budget = serializers.SerializerMethodField(help_text="the budget summary, as GET /api/v1/budgets/{project_id}")

    class Meta(ProjectDetailOutputSerializer.Meta):
        fields = ProjectDetailOutputSerializer.Meta.fields + ["budget"]

    @extend_schema_field(BudgetOutputSerializer)
    def get_budget(self, project):
        return BudgetOutputSerializer(budget_summary(project=project)).data


@extend_schema_view(get=extend_schema(operation_id="projects_retrieve", responses={
                        200: ProjectDetailWithBudgetOutputSerializer, **error_responses(404)}),
                    patch=extend_schema(operation_id="projects_update", request=ProjectDetailApi.UpdateSerializer,
                                        responses={200: ProjectDetailWithBudgetOutputSerializer,
                                                   **error_responses(400, 403, 404)}))
class ProjectDetailWithBudgetApi(ProjectDetailApi):
    """GET /api/v1/projects/{project_id}: the project (projects) with its budget summary."""

    output_serializer = ProjectDetailWithBudgetOutputSerializer
