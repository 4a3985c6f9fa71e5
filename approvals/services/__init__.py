"""Agent call approvals: one module per part of a call's life; the names other code uses are
re-exported here. Every write runs in the call's unit of work (common.call_uow)."""
from approvals.services.common import (
    approval_event_data,
    approval_group,
    close_call,
    input_digest,
    input_digest_holds,
    project_stop_group,
)
from approvals.services.decisions import (
    agent_approval_cancel,
    agent_approval_decide,
    agent_approval_expire_grant,
    agent_approval_expire_overdue,
    agent_approval_settle_due,
    agent_approval_start,
    agent_approval_time_out,
    agent_approval_warn,
    agent_approval_warn_due,
)
from approvals.services.halting import (cancel_calls_of_ended_task, cancel_open_calls, has_output_under_review,
                                        requested_the_first_call_on)
from approvals.services.overrides import budget_override_respond, readmit_after_limits_change, readmit_after_windows_ended
from approvals.services.requests import agent_approval_request
from approvals.services.usage import agent_approval_report_usage, budget_release_stale
from approvals.services.calibration import (
    flag_suppression_create,
    flag_suppression_revoke,
    project_rules,
    rule_precision,
    rule_code_clean,
    rule_setting_save,
)
from approvals.services.responses import (
    cancel_open_responses,
    cancel_responses_of_ended_task,
    response_approval_decide,
    response_approval_expire_overdue,
    response_approval_settle_due,
    response_approval_submit,
    response_approval_time_out,
    response_approval_warn,
    response_approval_warn_due,
    response_event_data,
    response_group,
)

__all__ = [
    "agent_approval_cancel", "agent_approval_decide", "agent_approval_expire_grant", "agent_approval_expire_overdue",
    "agent_approval_report_usage", "agent_approval_request", "agent_approval_settle_due", "agent_approval_start",
    "agent_approval_time_out",
    "agent_approval_warn", "agent_approval_warn_due", "approval_event_data", "approval_group",
    "budget_override_respond", "budget_release_stale", "cancel_calls_of_ended_task", "cancel_open_calls",
    "readmit_after_limits_change", "readmit_after_windows_ended", "requested_the_first_call_on", "has_output_under_review", "close_call", "input_digest", "input_digest_holds", "project_stop_group",
    "cancel_open_responses",
    "cancel_responses_of_ended_task", "response_approval_decide", "response_approval_expire_overdue",
    "response_approval_settle_due", "response_approval_submit", "response_approval_time_out",
    "response_approval_warn",
    "response_approval_warn_due", "response_event_data", "response_group",
    "flag_suppression_create", "flag_suppression_revoke", "project_rules", "rule_code_clean", "rule_precision", "rule_setting_save",
]
