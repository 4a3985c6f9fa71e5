import zoneinfo

from drf_spectacular.utils import (
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from access import roles
from access.permissions import (
    project_for_user,
    project_visible_to,
    require_project_perm,
)
from budgets.selectors import budget_summary
from budgets.serializers import BudgetOutputSerializer
from core.api import (
    IDEMPOTENCY_HEADER,
    error_responses,
    get_or_404,
    idempotent,
    paginated,
)
from core.fields import StrictCharField, StrictSlugField, StrictUUIDField
from emergency.conditions import conditions_check
from emergency.models import Condition
from projects import selectors, services
from projects.models import AgentType, Task
from projects.serializers import (
    AgentStateSerializer,
    ProjectOutputSerializer,
    TaskOutputSerializer,
)

MAX_INT = 2**31 - 1


class ProjectDetailOutputSerializer(ProjectOutputSerializer):
    agent_states = AgentStateSerializer(many=True, read_only=True)
    task_counts = serializers.SerializerMethodField()
    budget = serializers.SerializerMethodField(help_text="the budget summary, as GET /api/v1/budgets/{project_id}")

    class Meta(ProjectOutputSerializer.Meta):
        fields = ProjectOutputSerializer.Meta.fields + ["agent_states", "task_counts", "budget"]

    def get_task_counts(self, project) -> dict[str, int]:
        return selectors.project_task_counts(project=project)

    @extend_schema_field(BudgetOutputSerializer)
    def get_budget(self, project):
        return BudgetOutputSerializer(budget_summary(project=project)).data


class ProjectPagination(PageNumberPagination):
    page_size = 50


class ProjectListCreateApi(APIView):
    @extend_schema_serializer(component_name="ProjectCreateInput")
    class InputSerializer(serializers.Serializer):
        name = StrictCharField(max_length=200)
        slug = StrictSlugField(max_length=64)
        timezone = serializers.ChoiceField(choices=sorted(zoneinfo.available_timezones()), required=False,
                                           default="UTC")

    @extend_schema(operation_id="projects_list",
                   responses={200: paginated(ProjectOutputSerializer, "PaginatedProjectList"), **error_responses()})
    def get(self, request):
        """Projects the caller can see (paginated)."""
        paginator = ProjectPagination()
        page = paginator.paginate_queryset(project_visible_to(user=request.user).order_by("name", "id"),
                                           request, view=self)
        return paginator.get_paginated_response(ProjectOutputSerializer(page, many=True).data)

    @extend_schema(operation_id="projects_create", request=InputSerializer, parameters=[IDEMPOTENCY_HEADER],
                   responses={201: ProjectOutputSerializer, **error_responses(400, 403)})
    @idempotent
    def post(self, request):
        """Create a project (admins only)."""
        if not request.user.has_perm("projects.add_project"):
            raise PermissionDenied("Only an admin may create projects.")
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        project = services.project_create(actor=request.user, name=s.validated_data["name"],
                                          slug=s.validated_data["slug"],
                                          timezone_name=s.validated_data["timezone"])
        return Response(ProjectOutputSerializer(project).data, status=status.HTTP_201_CREATED)


class ProjectDetailApi(APIView):
    @extend_schema(operation_id="projects_retrieve",
                   responses={200: ProjectDetailOutputSerializer, **error_responses(404)})
    def get(self, request, project_id):
        """The project with its agents' states and task counts."""
        project = get_or_404(project_visible_to(user=request.user).prefetch_related("agent_states"), project_id)
        return Response(ProjectDetailOutputSerializer(project).data)


class TaskCreateApi(APIView):
    @extend_schema_serializer(component_name="TaskCreateInput")
    class InputSerializer(serializers.Serializer):
        project_id = StrictUUIDField()
        agent_type = serializers.ChoiceField(choices=AgentType.choices)
        title = StrictCharField(max_length=500)
        input_data = serializers.JSONField(required=False, default=dict)

        def validate_input_data(self, value):
            if not isinstance(value, dict):
                raise serializers.ValidationError("Must be a JSON object.")
            return value

    @extend_schema(operation_id="tasks_create", request=InputSerializer, parameters=[IDEMPOTENCY_HEADER],
                   responses={201: TaskOutputSerializer, **error_responses(400, 403, 404, 423)})
    @idempotent
    def post(self, request):
        """Create a task (agent role)."""
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        project = project_for_user(user=request.user, project_id=s.validated_data["project_id"])
        require_project_perm(request.user, roles.ACT_AS_AGENT, project, "create tasks")
        task = services.task_create(actor=request.user, project_id=project.pk,
                                    agent_type=s.validated_data["agent_type"], title=s.validated_data["title"],
                                    input_data=s.validated_data["input_data"])
        return Response(TaskOutputSerializer(task).data, status=status.HTTP_201_CREATED)


class TaskDetailApi(APIView):
    @extend_schema(operation_id="tasks_retrieve", responses={200: TaskOutputSerializer, **error_responses(404)})
    def get(self, request, task_id):
        return Response(TaskOutputSerializer(get_or_404(selectors.task_visible_to(user=request.user), task_id)).data)


class TaskStatusApi(APIView):
    @extend_schema_serializer(component_name="TaskStatusInput")
    class InputSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=[s.value for s in Task.OUTCOMES])
        error = StrictCharField(required=False, allow_blank=True, default="", max_length=20000)
        error_kind = serializers.ChoiceField(choices=Task.ErrorKind.choices, required=False, default="",
                                             allow_blank=True,
                                             help_text="rate_limit and quota failures count towards resource_exhaustion")

    @extend_schema(operation_id="tasks_report_status", request=InputSerializer,
                   responses={200: TaskOutputSerializer, **error_responses(400, 403, 404, 409)})
    def post(self, request, task_id):
        """Report a task's outcome (agent role): completed or failed. A repeated report of the
        same outcome is accepted and changes nothing; a different one is 409."""
        task = get_or_404(selectors.task_visible_to(user=request.user), task_id)
        require_project_perm(request.user, roles.ACT_AS_AGENT, task.project, "report task outcomes")
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        task = services.task_report_outcome(actor=request.user, task_id=task.pk, **s.validated_data)
        # The outcome is committed: now the conditions it feeds (each trips its own stop).
        conditions_check(project_id=task.project_id, names=[Condition.ERROR_RATE_HIGH, Condition.RESOURCE_EXHAUSTION])
        return Response(TaskOutputSerializer(task).data)


