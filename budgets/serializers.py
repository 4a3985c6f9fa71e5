from rest_framework import serializers

from budgets.models import BudgetAlert, BudgetOverrideRequest


class BudgetAlertSerializer(serializers.ModelSerializer):
    window_start = serializers.DateTimeField(source="window.start", read_only=True)

    class Meta:
        model = BudgetAlert
        fields = ["alert_type", "threshold_type", "threshold_value", "current_value", "triggered_at", "window_start",
                  "detail"]


class BudgetOverrideOutputSerializer(serializers.ModelSerializer):
    project_id = serializers.UUIDField(read_only=True)
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    approved_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    requires_manager_approval = serializers.BooleanField(
        read_only=True, help_text="from the deployment's current manager thresholds, at every read and decision")
    window_start = serializers.DateTimeField(source="window.start", read_only=True)
    window_kind = serializers.CharField(source="window.kind", read_only=True)

    class Meta:
        model = BudgetOverrideRequest
        fields = ["id", "project_id", "violation_type", "requested_amount", "justification",
                  "requires_manager_approval", "status", "requested_by", "approved_by", "rejection_reason",
                  "window_kind", "window_start", "created_at", "responded_at"]


class BudgetOutputSerializer(serializers.Serializer):
    """GET /api/v1/budgets/{project_id}: money as strings with 4 places, never floats."""

    project_id = serializers.UUIDField()
    daily_token_limit = serializers.IntegerField()
    monthly_token_limit = serializers.IntegerField()
    daily_cost_limit = serializers.DecimalField(max_digits=14, decimal_places=4)
    monthly_cost_limit = serializers.DecimalField(max_digits=14, decimal_places=4)
    tokens_used_today = serializers.IntegerField()
    tokens_used_month = serializers.IntegerField()
    cost_incurred_today = serializers.DecimalField(max_digits=14, decimal_places=4)
    cost_incurred_month = serializers.DecimalField(max_digits=14, decimal_places=4)
    tokens_reserved = serializers.IntegerField(help_text="reserved in the current day window")
    cost_reserved = serializers.DecimalField(max_digits=14, decimal_places=4)
    tokens_reserved_month = serializers.IntegerField()
    cost_reserved_month = serializers.DecimalField(max_digits=14, decimal_places=4)
    override_allowance_today = serializers.DictField(help_text="{tokens, cost} raised by approved overrides")
    override_allowance_month = serializers.DictField()
    budget_alerts = BudgetAlertSerializer(many=True)
    emergency_stop_triggered = serializers.BooleanField(help_text="a budget_critical stop is active")
    last_reset_date = serializers.DateTimeField(help_text="start of the current day window (local midnight)")
    month_start = serializers.DateTimeField()
    timezone = serializers.CharField()
    warning_percent = serializers.IntegerField()
    critical_percent = serializers.IntegerField()
    emergency_percent = serializers.IntegerField()
    manager_threshold = serializers.DecimalField(
        max_digits=14, decimal_places=4,
        help_text="cost overrides above this (USD) need a manager: HITL_MANAGER_COST_THRESHOLD, a deployment setting")
    manager_token_threshold = serializers.IntegerField(
        help_text="token overrides above this many tokens need a manager: HITL_MANAGER_TOKEN_THRESHOLD")
