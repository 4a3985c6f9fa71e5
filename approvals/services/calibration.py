"""Calibration of the analyzer from people's decisions, per project.

- Every flag on a decided request is labelled by what the person did (``label_flags``):
  approved with the flag present is a likely false alarm for its rule; rejected (or sent back for
  modification) confirms it. ``rule_precision`` turns the labels into each rule's precision.
- A project's manager can raise a noisy rule's threshold or turn it to ``observe``
  (``rule_setting_save``); a reviewer can mark one finding (rule + fingerprint) a false positive
  for the project until an expiry (``flag_suppression_create``). Both are audited and read back by
  ``project_rules`` for every analysis. Nothing an agent writes (``# nosec``, allowlist pragmas,
  "this is a false positive") suppresses a flag: only these rows do, made by people with the role.
"""
from datetime import timedelta
from decimal import Decimal

from django.db import connection
from django.db.models import Count, Q
from django.utils import timezone

from approvals.analyzers import ProjectRules, rule_code_reported, rule_families, rule_names
from approvals.models import AgentCallApproval, FlagLabel, FlagSuppression, ResponseApproval, RuleSetting
from audit.services import audit_record
from core.errors import InvalidInput, NotFoundError, TransitionError
from core.rawrows import kept_cursor
from core.request_cache import memo
from core.times import iso_utc
from core.uow import retry_transient
from projects import roles
from projects.permissions import require_project_perm
from projects.uow import project_uow

MAX_SUPPRESSION_DAYS = 365
PRECISION_DAYS = 30


def project_rules(project_id) -> ProjectRules:
    """The project's rule settings and active suppressions, as the analyzer takes them: one
    query (it runs in every request that creates a call), kept for the rest of the request."""
    def load():
        quote = connection.ops.quote_name
        rules, sups = RuleSetting._meta, FlagSuppression._meta
        sql = (f"SELECT {quote('code')}, {quote('mode')}, {quote('threshold')}, NULL "
               f"FROM {quote(rules.db_table)} WHERE {quote('project_id')} = %s "
               f"UNION ALL SELECT {quote('code')}, NULL, NULL, {quote('fingerprint')} "
               f"FROM {quote(sups.db_table)} WHERE {quote('project_id')} = %s "
               f"AND {quote('revoked_at')} IS NULL AND {quote('expires_at')} > %s")
        pk = rules.get_field("project").target_field.get_db_prep_value(project_id, connection)
        now = sups.get_field("expires_at").get_db_prep_value(timezone.now(), connection)
        with kept_cursor() as cursor:
            cursor.execute(sql, [pk, pk, now])
            rows = cursor.fetchall()
        settings_ = {code: {"mode": mode, "threshold": float(threshold)}
                     for code, mode, threshold, fingerprint in rows if mode is not None}
        suppressions = frozenset((code, fingerprint) for code, mode, _, fingerprint in rows if mode is None)
        return ProjectRules(settings=settings_, suppressions=suppressions)
    return memo(("project_rules", str(project_id)), load)


def label_flags(*, project_id, source: str, object_id, flags, outcome: str, now) -> int:
    """One label per flag of a decided request (in the decision's unit of work)."""
    labels = [FlagLabel(project_id=project_id, code=str(f.get("code", ""))[:100],
                        severity=str(f.get("severity", ""))[:10], fingerprint=str(f.get("fingerprint") or "")[:64],
                        source=source, object_id=object_id, outcome=outcome, decided_at=now)
              for f in flags or () if f.get("code")]
    if labels:
        FlagLabel.objects.bulk_create(labels)
    return len(labels)


def rule_precision(*, project_ids=None, days: int = PRECISION_DAYS, now=None) -> list[dict]:
    """Per project and rule over the last ``days``: confirmed, false alarms and precision
    (confirmed / labelled), noisiest first."""
    since = (now or timezone.now()) - timedelta(days=days)
    qs = FlagLabel.objects.filter(decided_at__gte=since)
    if project_ids is not None:
        qs = qs.filter(project_id__in=project_ids)
    rows = (qs.values("project_id", "project__slug", "code")
            .annotate(confirmed=Count("id", filter=Q(outcome=FlagLabel.Outcome.CONFIRMED)),
                      false_alarms=Count("id", filter=Q(outcome=FlagLabel.Outcome.FALSE_ALARM))))
    out = []
    for row in rows:
        total = row["confirmed"] + row["false_alarms"]
        out.append({**row, "labelled": total, "precision": round(row["confirmed"] / total, 3) if total else None})
    return sorted(out, key=lambda r: (r["precision"] if r["precision"] is not None else 1, -r["labelled"]))


def rule_code_clean(code: str) -> str:
    """A rule setting's code, stripped: a flag code or a prefix of one that a configured analyzer
    can report (a typo such as ``secert`` would otherwise be saved and never match anything)."""
    code = (code or "").strip()
    if not code or len(code) > 100 or any(c.isspace() for c in code):
        raise InvalidInput(fields={"code": ["A flag code (secret.github_token) or prefix (secret)."]})
    family, families = code.split(".", 1)[0], rule_families()
    if family in families:
        if rule_code_reported(code):
            return code
        raise InvalidInput(fields={"code": [f"No analyzer reports {code!r}: {family} alone covers every {family} "
                                            f"flag, or name one of {', '.join(rule_names(family))}."]})
    if family in ("analyzer", "risk"):
        raise InvalidInput(fields={"code": ["The pipeline's own fail-closed flags (analyzer.failed, analyzer.timeout, "
                                            "risk.scan_truncated) are never observed or suppressed."]})
    raise InvalidInput(fields={"code": [f"No analyzer reports {family!r} flags: a code starts with "
                                        f"one of {', '.join(families)} (secret.github_token, or secret alone)."]})


@retry_transient
def rule_setting_save(*, actor, project_id, code: str, mode: str, threshold, note: str = "") -> RuleSetting:
    """A manager sets one rule's mode and threshold for the project (audited)."""
    code = rule_code_clean(code)
    if mode not in RuleSetting.Mode.values:
        raise InvalidInput(fields={"mode": ["Must be enforce or observe."]})
    try:
        threshold = Decimal(str(threshold)).quantize(Decimal("0.01"))
    except Exception:  # noqa: BLE001 - any unparsable value is a 400
        raise InvalidInput(fields={"threshold": ["A number between 0 and 1."]}) from None
    if not Decimal(0) <= threshold <= Decimal(1):
        raise InvalidInput(fields={"threshold": ["A number between 0 and 1."]})
    with project_uow(project_id) as uow:
        require_project_perm(actor, roles.MANAGE, uow.project, "change analyzer rules")
        uow.enter_stage("project_state")
        row = RuleSetting.objects.filter(project=uow.project, code=code).first()
        before = {"mode": row.mode, "threshold": row.threshold, "note": row.note} if row else None
        row = row or RuleSetting(project=uow.project, code=code)
        row.mode, row.threshold, row.note, row.updated_by = mode, threshold, note, actor
        row.save()
        audit_record(actor=actor, action="analyzer_rule.update", obj=row, project_id=uow.project.pk, before=before,
                     after={"code": code, "mode": mode, "threshold": threshold, "note": note})
    return row


def _flag_on_record(project_id, approval_id, code: str, fingerprint: str) -> bool:
    """The finding must be one the analyzer reported on a request of this project."""
    response = ResponseApproval.objects.filter(pk=approval_id, project_id=project_id).values(
        "risk_flags", "analysis").first()
    if response is not None:
        flags = [*response["risk_flags"], *(response["analysis"] or {}).get("observed_flags", [])]
    else:
        call = AgentCallApproval.objects.filter(pk=approval_id, project_id=project_id).values(
            "risk_assessment").first()
        if call is None:
            raise NotFoundError("No such approval in this project.")
        flags = (call["risk_assessment"] or {}).get("flags", [])
    return any(f.get("code") == code and f.get("fingerprint") == fingerprint for f in flags)


SUPPRESSION_RENEW_AFTER = timedelta(hours=1)   # a repeat asking an end this much later renews it


@retry_transient
def flag_suppression_create(*, actor, project_id, approval_id, code: str, fingerprint: str, reason: str,
                            days: int = 30) -> FlagSuppression:
    """A reviewer marks one finding of a request (rule code + fingerprint) a false positive for
    the project, for ``days`` (at most a year). Audited."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput(fields={"reason": ["Say why this finding is a false positive."]})
    if not 1 <= int(days) <= MAX_SUPPRESSION_DAYS:
        raise InvalidInput(fields={"days": [f"Between 1 and {MAX_SUPPRESSION_DAYS}."]})
    if not _flag_on_record(project_id, approval_id, code, fingerprint):
        raise InvalidInput(fields={"fingerprint": ["No flag with this code and fingerprint on that approval."]})
    with project_uow(project_id) as uow:
        require_project_perm(actor, roles.REVIEW, uow.project, "suppress analyzer findings")
        uow.enter_stage("project_state")
        active = FlagSuppression.objects.filter(project=uow.project, code=code, fingerprint=fingerprint,
                                                revoked_at__isnull=True, expires_at__gt=timezone.now()).first()
        expires_at = timezone.now() + timedelta(days=int(days))
        if active is not None:   # already suppressed: the same row, never a second one
            later = expires_at - active.expires_at
            if active.reason == reason and later > SUPPRESSION_RENEW_AFTER:
                # asked again later in its life ("30 days" on its 29th day) or for longer: it ends when asked
                active = uow.lock("project_state", FlagSuppression.objects, pk=active.pk)
                before = active.expires_at
                active.expires_at = expires_at
                active.save(update_fields=["expires_at", "updated_at"])
                audit_record(actor=actor, action="analyzer_flag.suppress", obj=active, project_id=uow.project.pk,
                             reason=reason, before={"expires_at": before},
                             after={"code": code, "fingerprint": fingerprint, "expires_at": expires_at,
                                    "approval_id": str(approval_id)})
                return active
            if active.reason == reason and later >= -SUPPRESSION_RENEW_AFTER:
                return active    # asked again as it was (a retry, or a reviewer who forgot): on record
            # another reason, or a shorter time, would be silently dropped: say what holds instead
            raise TransitionError(
                f"This finding is already suppressed until {iso_utc(active.expires_at)} (suppression {active.pk}, "
                f"reason: {active.reason[:200]!r}): revoke it first to suppress it again with another reason or "
                f"for a shorter time.", current_status="active", suppression_id=str(active.pk),
                expires_at=iso_utc(active.expires_at))
        row = FlagSuppression.objects.create(project=uow.project, code=code, fingerprint=fingerprint, reason=reason,
                                             expires_at=expires_at, created_by=actor)
        audit_record(actor=actor, action="analyzer_flag.suppress", obj=row, project_id=uow.project.pk, reason=reason,
                     after={"code": code, "fingerprint": fingerprint, "expires_at": row.expires_at,
                            "approval_id": str(approval_id)})
    return row


@retry_transient
def flag_suppression_revoke(*, actor, suppression_id) -> FlagSuppression:
    row = FlagSuppression.objects.filter(pk=suppression_id).first()
    if row is None:
        raise NotFoundError("No such suppression.")
    with project_uow(row.project_id) as uow:
        require_project_perm(actor, roles.REVIEW, uow.project, "revoke suppressions")
        row = uow.lock("project_state", FlagSuppression.objects, pk=suppression_id)
        if row.revoked_at is None:
            row.revoked_at = timezone.now()
            row.save(update_fields=["revoked_at", "updated_at"])
            audit_record(actor=actor, action="analyzer_flag.unsuppress", obj=row, project_id=uow.project.pk,
                         after={"code": row.code, "fingerprint": row.fingerprint})
    return row
