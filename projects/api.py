from drf_spectacular.utils import (
    extend_schema,
    extend_schema_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from projects import roles
from projects.permissions import (
    project_for_user,
    project_visible_to,
    require_project_perm,
    visible_or_404,
)
from core.api import (
    IDEMPOTENCY_HEADER,
    error_responses,
    get_or_404,
    idempotent,
    paginated,
)
from core.fields import ChoiceField, JsonObjectField, StrictCharField, StrictSlugField, StrictUUIDField
from core.pagination import PAGE_PARAMETERS, ListPagination
from core.serializers import CopiedFieldsMixin
from projects import selectors, services
from projects.models import TIME_ZONES, AgentType, Task
from projects.serializers import (
    AgentStateSerializer,
    ProjectOutputSerializer,
    TaskOutputSerializer,
)

MAX_INT = 2**31 - 1


class ProjectDetailOutputSerializer(ProjectOutputSerializer):
    agent_states = AgentStateSerializer(many=True, read_only=True)
    task_counts = serializers.SerializerMethodField()

    class Meta(ProjectOutputSerializer.Meta):
        fields = ProjectOutputSerializer.Meta.fields + ["allowed_link_hosts", "agent_states", "task_counts"]

    def get_task_counts(self, project) -> dict[str, int]:
        return selectors.project_task_counts(project=project)


class ProjectListCreateApi(APIView):
    @extend_schema_serializer(component_name="ProjectCreateInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        name = StrictCharField(max_length=200)
        slug = StrictSlugField(max_length=64)
        timezone = ChoiceField(choices=TIME_ZONES, required=False, default="UTC")

    @extend_schema(operation_id="projects_list", parameters=PAGE_PARAMETERS,
                   responses={200: paginated(ProjectOutputSerializer, "PaginatedProjectList"),
                              **error_responses(400, 404)})
    def get(self, request):
        """Projects the caller can see (paginated)."""
        paginator = ListPagination()
        page = paginator.paginate_queryset(project_visible_to(user=request.user).order_by("name", "id"),
                                           request, view=self)
        return paginator.get_paginated_response(ProjectOutputSerializer(page, many=True).data)

    @extend_schema(operation_id="projects_create", request=InputSerializer, parameters=[IDEMPOTENCY_HEADER],
                   responses={201: ProjectOutputSerializer, **error_responses(400, 403)})
    @idempotent(replay_allowed=lambda user, answer: user.has_perm("projects.add_project"))
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
    """GET and PATCH of a project. The layers above extend the answer (budgets adds the budget
    summary: budgets.api.ProjectDetailWithBudgetApi is what the URL serves)."""

    output_serializer = ProjectDetailOutputSerializer

    @extend_schema_serializer(component_name="ProjectUpdateInput")
    class UpdateSerializer(serializers.Serializer):
        name = StrictCharField(max_length=200, required=False)
        timezone = ChoiceField(choices=TIME_ZONES, required=False,
                               help_text="IANA time zone name")
        allowed_link_hosts = serializers.ListField(
            child=StrictCharField(max_length=253), required=False, max_length=200,
            help_text="hosts agents' output may link to without a flag; a host allows its subdomains (addition)")

    def _project(self, request, project_id):
        return get_or_404(project_visible_to(user=request.user).prefetch_related("agent_states"), project_id)

    @extend_schema(operation_id="projects_retrieve",
                   responses={200: ProjectDetailOutputSerializer, **error_responses(404)})
    def get(self, request, project_id):
        """The project with its agents' states and task counts."""
        return Response(self.output_serializer(self._project(request, project_id)).data)

    @extend_schema(operation_id="projects_update", request=UpdateSerializer,
                   responses={200: ProjectDetailOutputSerializer, **error_responses(400, 403, 404)})
    def patch(self, request, project_id):
        """Rename the project or change its time zone (manager). A new time zone never resets or
        loses what was spent or reserved: the current day and month windows run to their end."""
        project = self._project(request, project_id)
        require_project_perm(request.user, roles.MANAGE, project, "change the project")
        s = self.UpdateSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        if not s.validated_data:
            raise serializers.ValidationError({"non_field_errors": ["Give name, timezone or allowed_link_hosts."]})
        services.project_update(actor=request.user, project_id=project.pk, name=s.validated_data.get("name"),
                                timezone_name=s.validated_data.get("timezone"),
                                allowed_link_hosts=s.validated_data.get("allowed_link_hosts"))
        return Response(self.output_serializer(self._project(request, project_id)).data)


class TaskCreateApi(APIView):
    @extend_schema_serializer(component_name="TaskCreateInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        project_id = StrictUUIDField()
        agent_type = ChoiceField(choices=AgentType.choices)
        title = StrictCharField(max_length=500)
        input_data = JsonObjectField(required=False, default=dict)

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
        return Response(TaskOutputSerializer(visible_or_404(request.user, Task, task_id)).data)


class TaskStatusApi(APIView):
    @extend_schema_serializer(component_name="TaskStatusInput")
    class InputSerializer(CopiedFieldsMixin, serializers.Serializer):
        status = ChoiceField(choices=[s.value for s in Task.OUTCOMES])
        error = StrictCharField(required=False, allow_blank=True, default="", max_length=20000)
        error_kind = ChoiceField(choices=Task.ErrorKind.choices, required=False, default="", allow_blank=True,
                                 help_text="rate_limit and quota failures count towards resource_exhaustion")

    @extend_schema(operation_id="tasks_report_status", request=InputSerializer,
                   responses={200: TaskOutputSerializer, **error_responses(400, 403, 404, 409)})
    def post(self, request, task_id):
        """Report a task's outcome (agent role): completed or failed, or cancelled for work
        abandoned before it ran (after a refusal, say; not counted by the error-rate condition; 409
        for a running task). A repeated report of the same outcome is accepted and changes
        nothing; a different one is 409."""
        task = get_or_404(selectors.task_visible_to(user=request.user).select_related("project"), task_id)
        require_project_perm(request.user, roles.ACT_AS_AGENT, task.project, "report task outcomes")
        s = self.InputSerializer(data=request.data)
        s.is_valid(raise_exception=True)
        # the outcome is committed, then the conditions it feeds run (projects.task_outcome_reported)
        task = services.task_report_outcome(actor=request.user, task_id=task.pk, **s.validated_data)
        return Response(TaskOutputSerializer(task).data)


