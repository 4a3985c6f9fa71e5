"""The stop conditions that look at calls (registered with emergency.conditions.REGISTRY when
this module is imported, from ApprovalsConfig.ready)."""
from approvals.models import AgentCallApproval, ResponseApproval
from emergency.conditions import StopCondition, Trip
from emergency.models import Condition, Severity


class SecurityThreat(StopCondition):
    """A requested call or a submitted output with a critical flag (a live secret, a
    catastrophic command): tripped in the request's own unit of work; beat re-checks pending
    ones (for example after the setting is switched on)."""

    name = Condition.SECURITY_THREAT

    def check(self, project, settings, now):
        if not settings.stop_on_critical_risk:
            return None
        # past its deadline it is timed out (by the sweep, or the next read), not waiting on anyone
        flagged = list(AgentCallApproval.objects.filter(
            project=project, status=AgentCallApproval.Status.PENDING, expires_at__gt=now,
            risk_assessment__level="critical").values_list("pk", flat=True)[:20])
        outputs = list(ResponseApproval.objects.filter(
            project=project, status=ResponseApproval.Status.PENDING, expires_at__gt=now,
            analysis__level="critical").values_list("pk", flat=True)[:20])
        if flagged or outputs:
            return Trip(self.name, f"{len(flagged)} pending call(s) and {len(outputs)} pending output(s) with a "
                                   f"critical risk flag", Severity.CRITICAL,
                        {"approvals": [str(pk) for pk in flagged], "response_approvals": [str(pk) for pk in outputs]})
        return None


class PendingApprovalsExhaustion(StopCondition):
    """resource_exhaustion: more pending calls than the project allows. A call past its deadline
    is not one (the time-out sweep runs every 10 s on another queue, and not at all while that
    queue's worker is down): counted, it stopped a project for calls no one could still decide."""

    name = Condition.RESOURCE_EXHAUSTION

    def check(self, project, settings, now):
        pending = AgentCallApproval.objects.filter(project=project, status=AgentCallApproval.Status.PENDING,
                                                   expires_at__gt=now).count()
        if pending > settings.max_pending_approvals:
            return Trip(self.name, f"{pending} pending approvals (limit {settings.max_pending_approvals})",
                        Severity.HIGH, {"pending_approvals": pending})
        return None
