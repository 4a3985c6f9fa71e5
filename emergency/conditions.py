"""The automatic stop conditions: each a small class in a registry. Beat checks every active
project every HITL_CONDITION_CHECK_SECONDS; the places where a signal arrives (task outcomes,
risk assessments, the budget service) check or trip inline. The clock is a parameter."""
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from emergency.models import Condition, EmergencySettings, Severity
from emergency.services import emergency_settings_for, emergency_stop_trigger
from projects.models import Project, Task


@dataclass
class Trip:
    condition: str
    reason: str
    severity: str
    data: dict = field(default_factory=dict)


logger = logging.getLogger(__name__)
REGISTRY: list[type["StopCondition"]] = []


class StopCondition:
    """Subclass it to add a check (in this app or an app above, which imports this module from
    its AppConfig.ready): ``name`` is one of the Condition values; several classes may share one."""

    name: str = ""
    periodic = True  # checked by beat; False: only tripped where its signal arrives

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        REGISTRY.append(cls)

    def check(self, project: Project, settings: EmergencySettings, now) -> Trip | None:
        return None


def _failure_rate(outcomes: list[str]) -> Decimal:
    return Decimal(sum(1 for s in outcomes if s == Task.Status.FAILED)) / Decimal(len(outcomes))


class ErrorRateHigh(StopCondition):
    """Failed / (completed + failed) above the threshold in BOTH windows (the last N outcomes
    and the last S seconds), each holding at least ``error_min_outcomes`` outcomes."""

    name = Condition.ERROR_RATE_HIGH

    def check(self, project, settings, now):
        outcomes = Task.objects.filter(project=project, status__in=Task.RATED_OUTCOMES, finished_at__lte=now)
        if settings.error_window_reset_at:
            outcomes = outcomes.filter(finished_at__gt=settings.error_window_reset_at)
        by_count = list(outcomes.order_by("-finished_at").values_list("status", flat=True)[:settings.error_window_count])
        by_time = list(outcomes.filter(finished_at__gt=now - timedelta(seconds=settings.error_window_seconds))
                       .values_list("status", flat=True))
        if min(len(by_count), len(by_time)) < max(settings.error_min_outcomes, 1):
            return None
        count_rate, time_rate = _failure_rate(by_count), _failure_rate(by_time)
        if count_rate > settings.error_rate_threshold and time_rate > settings.error_rate_threshold:
            return Trip(self.name, f"Error rate {time_rate:.0%} over {settings.error_window_seconds}s and "
                                   f"{count_rate:.0%} over the last {len(by_count)} outcomes "
                                   f"(threshold {settings.error_rate_threshold:.0%})", Severity.HIGH,
                        {"rate_by_count": str(round(count_rate, 3)), "rate_by_time": str(round(time_rate, 3)),
                         "outcomes_by_count": len(by_count), "outcomes_by_time": len(by_time)})
        return None


class ResourceExhaustion(StopCondition):
    """Too many open tasks, or a burst of rate-limit / quota failures (approvals adds the
    pending-approvals check of the same condition)."""

    name = Condition.RESOURCE_EXHAUSTION

    def check(self, project, settings, now):
        open_tasks = Task.objects.filter(project=project, status__in=Task.OPEN_STATUSES).count()
        if open_tasks > settings.max_open_tasks:
            return Trip(self.name, f"{open_tasks} open tasks (limit {settings.max_open_tasks})", Severity.HIGH,
                        {"open_tasks": open_tasks})
        since = now - timedelta(seconds=settings.rate_limit_window_seconds)
        if settings.error_window_reset_at:
            since = max(since, settings.error_window_reset_at)
        throttled = Task.objects.filter(project=project, status=Task.Status.FAILED,
                                        error_kind__in=Task.RESOURCE_ERROR_KINDS, finished_at__gt=since,
                                        finished_at__lte=now).count()
        if throttled >= settings.rate_limit_errors_threshold:
            return Trip(self.name, f"{throttled} rate-limit or quota failures in "
                                   f"{settings.rate_limit_window_seconds}s", Severity.MEDIUM,
                        {"rate_limit_failures": throttled})
        return None


class ManualStop(StopCondition):
    """A person (or a project's agent) pressed stop."""

    name = Condition.MANUAL_STOP
    periodic = False


def conditions_evaluate(project: Project, settings: EmergencySettings, now, names=None) -> list[Trip]:
    """The trips of the named conditions (every periodic one when ``names`` is None), read only."""
    trips = []
    for cls in REGISTRY:
        if (names is None and not cls.periodic) or (names is not None and cls.name not in names):
            continue
        trip = cls().check(project, settings, now)
        if trip is not None:
            trips.append(trip)
    return trips


def conditions_check(*, project_id, names=None, now=None) -> list[Trip]:
    """Evaluate conditions for one active project and trip a stop for each that fires."""
    now = now or timezone.now()
    project = Project.objects.get(pk=project_id)
    if project.status != Project.Status.ACTIVE:
        return []
    trips = conditions_evaluate(project, emergency_settings_for(project.pk), now, names)
    for trip in trips:
        emergency_stop_trigger(project_id=project.pk, condition=trip.condition, reason=trip.reason,
                               severity=trip.severity, data=trip.data)
    return trips


def task_outcome_check(*, task: Task) -> None:
    """projects.task_outcome_reported: an outcome may trip the error-rate or resource stop."""
    conditions_check(project_id=task.project_id, names=[Condition.ERROR_RATE_HIGH, Condition.RESOURCE_EXHAUSTION])


def _lost_connection_closed() -> bool:
    """After a failed check: a connection the database ended (pg_terminate_backend, a restart, a
    failover) is closed, so that the next query opens another; True when it was. It failed every
    later project's check of the pass too (nothing could trip for one beat, a traceback each)."""
    if connection.in_atomic_block or connection.connection is None or connection.is_usable():
        return False
    connection.close()
    return True


def conditions_check_all(*, now=None) -> int:
    """Beat: every active project (one whose check failed on a lost connection, once more on a new one)."""
    tripped = 0
    for project_id in Project.objects.filter(status=Project.Status.ACTIVE).values_list("pk", flat=True):
        for attempt in range(2):
            try:
                tripped += len(conditions_check(project_id=project_id, now=now))
                break
            except Exception:  # noqa: BLE001 - one project's failure must not stop the others' checks
                if attempt == 0 and _lost_connection_closed():
                    logger.warning("emergency conditions check of project %s lost its database connection: "
                                   "again on a new one", project_id)
                    continue
                logger.exception("emergency conditions check failed for project %s", project_id)
                break
    return tripped
