"""Typed results: dataclasses with the API's field names (API.md). Money is ``Decimal``, times
are aware ``datetime`` (UTC), ids are strings. Every object keeps the whole JSON it came from in
``raw``, so fields the server adds later are never lost."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Dict, Generic, List, Optional, Type, TypeVar, Union

from .errors import HitlError

T = TypeVar("T", bound="ApiObject")

AGENT_TYPES = ("orchestrator", "analyst", "architect", "coder", "tester", "deployer")


def _decimal(value: Any) -> Optional[Decimal]:
    return None if value is None else Decimal(str(value))


MAX_COST = Decimal("99999999.9999")  # the API's money: 4 places, at most 12 digits, never negative
MAX_TOKENS = 2**31 - 1


def money(value: Any, name: str = "actual_cost") -> Optional[Decimal]:
    """A money value an agent gives (a run's or a function's ``actual_cost``) as a ``Decimal``:
    a Decimal, a decimal string or an int the API accepts (not negative, at most 4 places and
    99999999.9999). A float or anything else raises, before anything is sent: the server would
    refuse the report, and the run's output with it."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, (str, int)) and not isinstance(value, bool):
        try:
            amount = Decimal(value.strip() if isinstance(value, str) else value)
        except InvalidOperation:
            raise ValueError(f"{name} must be a decimal number such as '0.0150', not {value!r}") from None
    else:
        raise TypeError(f"{name} must be a Decimal, a decimal string such as '0.0150' or an int, "
                        f"not {type(value).__name__} ({value!r})")
    if not amount.is_finite() or amount < 0 or amount > MAX_COST:
        raise ValueError(f"{name} must be a decimal number from 0 to {MAX_COST}, not {value!r}")
    if amount != amount.quantize(Decimal("0.0001")):
        raise ValueError(f"{name} has at most 4 decimal places (the API counts money in 0.0001), not {value!r}")
    return amount


def token_count(value: Any, name: str = "tokens_used") -> int:
    """A token count an agent reports: a whole number from 0 to 2**31 - 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number (int), not {type(value).__name__} ({value!r})")
    if not 0 <= value <= MAX_TOKENS:
        raise ValueError(f"{name} must be from 0 to {MAX_TOKENS}, not {value}")
    return value


def _time(value: Any) -> Optional[datetime]:
    if value is None or isinstance(value, datetime):
        return value
    text = str(value)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


@dataclass
class ApiObject:
    _money: ClassVar[frozenset] = frozenset()
    _times: ClassVar[frozenset] = frozenset({"created_at", "responded_at", "expires_at", "started_at", "updated_at",
                                             "triggered_at", "resolved_at", "at", "escalated_at"})
    _nested: ClassVar[Dict[str, Any]] = {}

    @classmethod
    def from_api(cls: Type[T], data: Dict[str, Any]) -> T:
        if not isinstance(data, dict) or not data:  # an empty object or a list: never one with every field blank
            shown = "an empty object" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
            raise HitlError(f"The server answered {shown} where the API gives a {cls.__name__}: not the API's JSON "
                            f"object.", code="bad_response")
        kwargs: Dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "raw" or f.name not in data:
                continue
            value = data[f.name]
            if f.name in cls._money:
                value = _decimal(value)
            elif f.name in cls._times:
                value = _time(value)
            elif f.name in cls._nested and value is not None:
                nested = cls._nested[f.name]
                value = [nested.from_api(v) for v in value] if isinstance(value, list) else nested.from_api(value)
            kwargs[f.name] = value
        obj = cls(**kwargs)
        obj.raw = dict(data)
        return obj


@dataclass
class Project(ApiObject):
    id: str = ""
    slug: str = ""
    name: str = ""
    status: str = ""
    timezone: str = "UTC"
    created_at: Optional[datetime] = None
    budget: Optional[Dict[str, Any]] = None
    agent_states: Optional[List[Dict[str, Any]]] = None
    task_counts: Optional[Dict[str, Any]] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Task(ApiObject):
    task_id: str = ""
    project_id: str = ""
    agent_type: str = ""
    title: str = ""
    status: str = ""
    input_data: Optional[Dict[str, Any]] = None
    error: Optional[str] = None
    error_kind: Optional[str] = None
    open_questions: int = 0  # pending questions and checkpoints about it (they keep it waiting_for_hitl)
    created_at: Optional[datetime] = None
    updated_at: Optional[datetime] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class RiskFlag(ApiObject):
    code: str = ""
    severity: str = "low"
    message: str = ""
    location: Optional[str] = None
    fingerprint: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class AgentApproval(ApiObject):
    """An agent call approval. ``input_to_run`` is set by :meth:`start` only."""
    _money: ClassVar[frozenset] = frozenset({"estimated_cost"})
    approval_id: str = ""
    project_id: str = ""
    task_id: str = ""
    agent_type: str = ""
    proposed_action: str = ""
    input_data: Any = None
    context_summary: str = ""
    model: Optional[str] = None
    estimated_tokens: int = 0
    estimated_cost: Optional[Decimal] = None
    risk_assessment: Optional[Dict[str, Any]] = None
    timeout_minutes: Optional[int] = None
    status: str = ""
    requested_by: Optional[str] = None
    approved_by: Optional[str] = None
    rejection_reason: Optional[str] = None
    amended_input_data: Any = None
    budget_override_id: Optional[str] = None
    budget_state: Optional[str] = None
    budget_blocked_reason: Optional[str] = None
    usage_flags: Optional[List[Any]] = None
    policy_decision: Optional[Dict[str, Any]] = None
    required_approvals: Optional[int] = None
    approvals_received: Optional[List[Dict[str, Any]]] = None
    decision_source: Optional[str] = None
    created_at: Optional[datetime] = None
    responded_at: Optional[datetime] = None
    expires_at: Optional[datetime] = None
    started_at: Optional[datetime] = None
    input_to_run: Any = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_blocked_by_budget(self) -> bool:
        return self.status == "pending" and self.budget_state == "blocked"

    @property
    def approved_input(self) -> Any:
        """What an approved call runs with: the amended input if amended, else the original."""
        return self.amended_input_data if self.amended_input_data is not None else self.input_data


@dataclass
class ResponseApproval(ApiObject):
    _money: ClassVar[frozenset] = frozenset({"actual_cost"})
    _nested: ClassVar[Dict[str, Any]] = {"risk_flags": RiskFlag}
    approval_id: str = ""
    project_id: str = ""
    task_id: str = ""
    agent_type: str = ""
    original_call_approval_id: str = ""
    agent_response: Any = None
    response_summary: str = ""
    next_steps: List[str] = field(default_factory=list)
    risk_flags: List[RiskFlag] = field(default_factory=list)
    confidence_score: float = 0.0
    safety_score: float = 0.0
    quality_metrics: Optional[Dict[str, Any]] = None
    analysis: Optional[Dict[str, Any]] = None
    tokens_used: int = 0
    actual_cost: Optional[Decimal] = None
    status: str = ""
    submitted_by: Optional[str] = None
    approved_by: Optional[str] = None
    rejection_reason: Optional[str] = None
    modifications_required: Any = None
    modification_round: int = 0
    timeout_minutes: Optional[int] = None
    created_at: Optional[datetime] = None
    responded_at: Optional[datetime] = None
    expires_at: Optional[datetime] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class BudgetAlert(ApiObject):
    _money: ClassVar[frozenset] = frozenset({"threshold_value", "current_value"})
    alert_type: str = ""
    threshold_type: str = ""
    threshold_value: Optional[Decimal] = None
    current_value: Optional[Decimal] = None
    triggered_at: Optional[datetime] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Budget(ApiObject):
    _money: ClassVar[frozenset] = frozenset({"daily_cost_limit", "monthly_cost_limit", "cost_incurred_today",
                                             "cost_incurred_month", "cost_reserved"})
    _nested: ClassVar[Dict[str, Any]] = {"budget_alerts": BudgetAlert}
    project_id: str = ""
    daily_token_limit: int = 0
    monthly_token_limit: int = 0
    daily_cost_limit: Optional[Decimal] = None
    monthly_cost_limit: Optional[Decimal] = None
    tokens_used_today: int = 0
    tokens_used_month: int = 0
    cost_incurred_today: Optional[Decimal] = None
    cost_incurred_month: Optional[Decimal] = None
    tokens_reserved: int = 0
    cost_reserved: Optional[Decimal] = None
    budget_alerts: List[BudgetAlert] = field(default_factory=list)
    emergency_stop_triggered: bool = False
    last_reset_date: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class BudgetOverride(ApiObject):
    _money: ClassVar[frozenset] = frozenset({"requested_amount"})
    id: str = ""
    project_id: str = ""
    violation_type: str = ""
    requested_amount: Optional[Decimal] = None
    justification: str = ""
    requires_manager_approval: bool = False
    status: str = ""
    created_at: Optional[datetime] = None
    responded_at: Optional[datetime] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class EmergencyStop(ApiObject):
    id: str = ""
    project_id: str = ""
    triggered_conditions: List[str] = field(default_factory=list)
    stop_reason: str = ""
    severity: str = ""
    triggered_by: Any = None
    stopped_tasks: List[str] = field(default_factory=list)
    cancelled_approvals: List[str] = field(default_factory=list)
    created_at: Optional[datetime] = None
    resolved_at: Optional[datetime] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class RecoverySession(ApiObject):
    id: str = ""
    project_id: str = ""
    emergency_stop_id: str = ""
    recovery_type: str = ""
    status: str = ""
    assessment: Any = None
    recovery_plan: Optional[Dict[str, Any]] = None
    steps_completed: int = 0
    total_steps: int = 0
    current_step: Optional[Dict[str, Any]] = None  # the next step to decide (step_id, order, action, ...); None when over
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class EmergencyStatus(ApiObject):
    _nested: ClassVar[Dict[str, Any]] = {"active_stop": EmergencyStop, "recovery_session": RecoverySession}
    project_id: str = ""
    stopped: bool = False
    active_stop: Optional[EmergencyStop] = None
    recovery_session: Optional[RecoverySession] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Event(ApiObject):
    id: int = 0
    event_type: str = ""
    project_id: str = ""
    task_id: Optional[str] = None
    data: Dict[str, Any] = field(default_factory=dict)
    created_at: Optional[datetime] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class EventPage(ApiObject):
    _nested: ClassVar[Dict[str, Any]] = {"results": Event}
    results: List[Event] = field(default_factory=list)
    last_event_id: Optional[int] = None
    has_more: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class HistoryEntry(ApiObject):
    status: str = ""
    by: Optional[str] = None
    at: Optional[datetime] = None
    note: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class HitlRequest(ApiObject):
    """A question or checkpoint for a person (``/api/v1/hitl``)."""
    _nested: ClassVar[Dict[str, Any]] = {"history": HistoryEntry}
    id: str = ""
    project_id: str = ""
    task_id: Optional[str] = None
    request_type: str = ""
    question: str = ""
    options: Optional[List[str]] = None
    context: Any = None
    status: str = ""
    response: Optional[str] = None
    amended_content: Any = None
    responded_by: Optional[str] = None
    created_at: Optional[datetime] = None
    responded_at: Optional[datetime] = None
    expires_at: Optional[datetime] = None
    history: List[HistoryEntry] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def answer(self) -> Any:
        """The person's answer: the amended content when amended, else the response."""
        return self.amended_content if self.status == "amended" and self.amended_content is not None \
            else self.response


@dataclass
class Page(Generic[T]):
    """A page of a paginated list: ``{count, next, previous, results}``."""
    count: int
    next: Optional[str]
    previous: Optional[str]
    results: List[T]

    @classmethod
    def of(cls, item: Type[T], data: Dict[str, Any]) -> "Page[T]":
        return cls(count=data.get("count", len(data.get("results", []))), next=data.get("next"),
                   previous=data.get("previous"), results=[item.from_api(r) for r in data.get("results", [])])


@dataclass
class RunResult:
    """What a ``SafetyEnhancedBaseAgent.run`` returns: the output (a JSON object), what it used,
    a summary and next steps for the reviewer."""
    output: Dict[str, Any]
    tokens_used: int = 0
    actual_cost: Union[Decimal, str, int, None] = None  # a Decimal, a decimal string ("0.0006") or an int
    summary: str = ""
    next_steps: List[str] = field(default_factory=list)

    def checked(self) -> "RunResult":
        """This result with its usage as the API takes it (``actual_cost`` a ``Decimal``);
        TypeError or ValueError naming the field otherwise."""
        return dataclasses.replace(self, tokens_used=token_count(self.tokens_used),
                                   actual_cost=money(self.actual_cost))
