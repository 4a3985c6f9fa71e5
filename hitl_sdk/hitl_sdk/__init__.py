"""hitl_sdk: put any Python agent or tool call behind BotArmy HITL's human approvals.

    from hitl_sdk import HitlClient, AsyncHitlClient, SafetyEnhancedBaseAgent, require_approval

Depends only on httpx and websockets (no Django). See README.md for the whole API.
"""
from ._async_client import AsyncHitlClient
from ._common import RetryPolicy
from ._sync_client import HitlClient
from .agent import ExecutionResult, RunContext, SafetyEnhancedBaseAgent, WithUsage, as_async, as_sync, require_approval
from .errors import (ApprovalCancelled, ApprovalError, ApprovalRejected, ApprovalTimedOut, BadRequest,
                     BudgetOverrideRequired, Conflict, EmergencyStopped, Expired, Forbidden, HitlConnectionError,
                     HitlError, ModificationRequired, NotFound, ServerError, Throttled, Unauthenticated, WaitTimeout)
from .models import (AgentApproval, Budget, BudgetAlert, BudgetOverride, EmergencyStatus, EmergencyStop, Event,
                     EventPage, HistoryEntry, HitlRequest, Page, Project, RecoverySession, ResponseApproval, RiskFlag,
                     RunResult, Task)

__version__ = "0.1.0"

__all__ = [
    "AsyncHitlClient", "HitlClient", "RetryPolicy",
    "SafetyEnhancedBaseAgent", "RunContext", "RunResult", "ExecutionResult", "require_approval", "WithUsage",
    "as_async", "as_sync",
    "HitlError", "BadRequest", "Unauthenticated", "Forbidden", "NotFound", "Conflict", "Expired", "Throttled",
    "ServerError", "HitlConnectionError", "EmergencyStopped", "ApprovalError", "ApprovalRejected",
    "ApprovalTimedOut", "ApprovalCancelled", "ModificationRequired", "BudgetOverrideRequired", "WaitTimeout",
    "AgentApproval", "Budget", "BudgetAlert", "BudgetOverride", "EmergencyStatus", "EmergencyStop", "Event",
    "EventPage", "HistoryEntry", "HitlRequest", "Page", "Project", "RecoverySession", "ResponseApproval",
    "RiskFlag", "Task",
]
