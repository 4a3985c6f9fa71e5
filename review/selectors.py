"""Reads for the reviewers' pages: the inbox across projects, reviewer metrics, the precedent of
a call, the projects under an emergency stop. Permission-filtered here; writes go through the
domain services (review/views.py)."""
import difflib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import median
from urllib.parse import urlencode

from django.db.models import Count, Exists, OuterRef, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from approvals.models import RISK_RANK, AgentCallApproval, ResponseApproval, risk_rank_of
from audit.models import AuditEvent
from budgets.models import BudgetOverrideRequest
from core.request_cache import memo
from emergency.models import CANCELLED_BY_STOP, EmergencyStop, condition_words
from hitl.selectors import pending_for_reviewer
from projects import roles
from projects.models import Project
from projects.permissions import has_project_perm, project_perms, project_visible_to
from recovery.models import RecoverySession, RecoveryStep
from recovery.presentation import step_title

RISK_LEVELS = ("critical", "high", "medium", "low")
KINDS = {"call": ("Agent call", "Agent calls"), "response": ("Response", "Responses"),  # (one, many)
         "hitl": ("Question", "Questions"), "override": ("Budget override", "Budget overrides"),
         "recovery": ("Recovery step", "Recovery steps")}


def risk_rank(level: str | None) -> int:
    return RISK_RANK.get(level or "low", 0)


# --- who may decide where -------------------------------------------------------------------
def reviewable_project_ids(user) -> list:
    """Ids of the projects where the user may decide (reviewer or manager role; every project
    for a superuser)."""
    if not user.is_authenticated or not user.is_active:
        return []
    if user.is_superuser:
        return list(Project.objects.values_list("pk", flat=True))
    return [pk for pk, perms in project_perms(user).items() if roles.REVIEW in perms]


def may_review(user, project) -> bool:
    return has_project_perm(user, roles.REVIEW, project)


def may_manage(user, project) -> bool:
    return has_project_perm(user, roles.MANAGE, project)


# --- the inbox ------------------------------------------------------------------------------
@dataclass
class InboxItem:
    kind: str                      # call | response | hitl | override | recovery
    id: str
    url: str
    risk: str
    project: Project
    agent_type: str
    summary: str
    created_at: datetime
    expires_at: datetime | None = None
    blocked: bool = False
    blocked_reason: str = ""
    override_id: str | None = None
    override_url: str = ""
    obj: object = None
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.id}"

    @property
    def kind_label(self) -> str:
        return KINDS[self.kind][0]

    @property
    def time_left(self) -> str:
        return time_left_text(self.expires_at)

    @property
    def urgent(self) -> bool:
        return expiring_soon(self.obj, self.expires_at)


def time_left_text(expires_at, *, none: str = "no deadline") -> str:
    """A deadline counted down as the pages show it: ``4 min 5 s left``, ``expired``, or ``none``
    when there is no deadline."""
    if expires_at is None:
        return none
    left = int((expires_at - timezone.now()).total_seconds())
    return "expired" if left <= 0 else f"{duration_display(left)} left"


URGENT_SECONDS = 300  # under five minutes left is urgent, whatever the time-out


def expiring_soon(obj, expires_at=None, now=None) -> bool:
    """A deadline near enough to show in red: the moment its ``approval_timeout_warning`` goes out
    (``warn_at``, a fifth of its time left: core.sweeps) has come, or under five minutes are left.
    ``obj`` is a call, a response, a question (or anything with ``expires_at``)."""
    expires_at = expires_at if expires_at is not None else getattr(obj, "expires_at", None)
    if expires_at is None:
        return False
    now = now or timezone.now()
    warn_at = getattr(obj, "warn_at", None)
    return (expires_at - now).total_seconds() < URGENT_SECONDS or (warn_at is not None and now >= warn_at)


def one_line(text: str, limit: int = 140) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _response_risk(response: ResponseApproval) -> str:
    """Its analysis's level (every analysis writes one), as the database ranks the inbox by."""
    level = (response.analysis or {}).get("level")
    return level if level in RISK_RANK else "low"


def _inbox_querysets(user) -> dict:
    """{kind: queryset of that kind's pending items the user may decide}, each in the inbox's
    order (riskiest, then oldest) where the database can rank it. Items the user requested are
    left out (nobody decides their own request)."""
    project_ids = reviewable_project_ids(user)
    if not project_ids:
        return {}
    now = timezone.now()
    return {
        # past its deadline (beat late or down) nothing is left to decide: not listed, as questions
        "call": (AgentCallApproval.objects.filter(project_id__in=project_ids, status=AgentCallApproval.Status.PENDING,
                                                  expires_at__gt=now)
                 .exclude(requested_by=user).select_related("project", "task")
                 .defer("input_data", "amended_input_data", "context_summary")  # not shown: an input can be large
                 .annotate(rank=risk_rank_of("risk_assessment")).order_by("-rank", "created_at", "pk")),
        "response": (ResponseApproval.objects.filter(project_id__in=project_ids,
                                                     status=ResponseApproval.Status.PENDING, expires_at__gt=now)
                     .exclude(submitted_by=user).select_related("project").defer("agent_response")
                     .annotate(rank=risk_rank_of("analysis")).order_by("-rank", "created_at", "pk")),
        # only a manager may decide one above the reviewers' cap (a property: ``_decidable``)
        "override": (BudgetOverrideRequest.objects.filter(project_id__in=project_ids,
                                                          status=BudgetOverrideRequest.Status.PENDING)
                     .exclude(requested_by=user).select_related("project", "window").order_by("created_at", "pk")),
        # who started a recovery does not approve its steps; a session shows its next pending step
        "recovery": (RecoverySession.objects.filter(project_id__in=project_ids,
                                                    status__in=RecoverySession.OPEN_STATUSES)
                     .exclude(created_by=user)
                     .filter(Exists(RecoveryStep.objects.filter(session=OuterRef("pk"),
                                                                status=RecoveryStep.Status.PENDING)))
                     .select_related("project", "emergency_stop").order_by("created_at", "pk")),
        "hitl": pending_for_reviewer(user).order_by("created_at", "pk"),
    }


def _decidable_overrides(user) -> list[BudgetOverrideRequest]:
    """The pending overrides ``user`` may decide: one that needs a manager (a property of its
    amount and its window's approved overrides, not a column) only where the user is a manager.
    Read once per request (the counts and the list both need them)."""
    return memo(("inbox_overrides", user.pk), lambda: [
        o for o in _inbox_querysets(user).get("override", ())
        if not o.requires_manager_approval or may_manage(user, o.project_id)])


def inbox_query(kind: str | None = None, project_id=None) -> str:
    """The inbox's filters that are set, as its query string (``?kind=…&project=…``), or nothing."""
    query = urlencode({name: value for name, value in (("kind", kind), ("project", project_id)) if value})
    return f"?{query}" if query else ""


def override_inbox_url(override) -> str:
    """Where an override is decided: the inbox showing its project's overrides (the unfiltered list
    shows the first 50 items, which a queue of riskier calls fills)."""
    return f"{reverse('review:inbox')}{inbox_query('override', override.project_id)}#override-{override.pk}"


def _of_project(project_id, qs):
    return qs if project_id is None else qs.filter(project_id=project_id)


def inbox_counts(*, user, project_id=None) -> list[tuple[str, str, int]]:
    """[(kind, label, count)] of every pending item the user may decide (of one project, with
    ``project_id``), for every kind, zeros included ("1 Agent call", "2 Agent calls"): counted by
    the database, not read (budget overrides, few and each needing its window, are read)."""
    querysets = _inbox_querysets(user)
    counts = {kind: 0 for kind in KINDS}
    for kind, qs in querysets.items():
        counts[kind] = (sum(1 for o in _decidable_overrides(user) if project_id is None or o.project_id == project_id)
                        if kind == "override" else _of_project(project_id, qs).order_by().count())
    return [(kind, labels[0] if counts[kind] == 1 else labels[1], counts[kind]) for kind, labels in KINDS.items()]


def inbox_counts_by_project(*, user, project_ids) -> Counter:
    """Per project, how many of the items the inbox lists for ``user`` are of it (a recovery: its
    next step, one per open session with a step pending)."""
    counts: Counter = Counter()
    for kind, qs in _inbox_querysets(user).items():
        if kind == "override":
            counts.update(o.project_id for o in _decidable_overrides(user) if o.project_id in project_ids)
            continue
        counts.update(qs.filter(project_id__in=project_ids).order_by().values_list("project_id", flat=True))
    return counts


def inbox_items(*, user, limit: int | None = None, kind: str | None = None, project_id=None) -> list[InboxItem]:
    """The pending items the user may decide, across their projects (the first ``limit`` of
    them, or all): newest risk first (critical, high, medium, low), then oldest first; with
    ``kind`` (a key of KINDS) only those, with ``project_id`` only that project's. Each kind reads
    at most ``limit`` rows, in that order, so a long queue costs the page no more than a short one."""
    querysets = _inbox_querysets(user)
    if not querysets:
        return []

    def rows(of_kind):
        if kind is not None and of_kind != kind:
            return []
        qs = _of_project(project_id, querysets[of_kind])
        return qs if limit is None else qs[:limit]

    items: list[InboxItem] = []
    for call in rows("call"):
        items.append(InboxItem(
            kind="call", id=str(call.pk), url=reverse("review:agent_approval", args=[call.pk]),
            risk=(call.risk_assessment or {}).get("level") or "low", project=call.project,
            agent_type=call.agent_type, summary=one_line(call.proposed_action), created_at=call.created_at,
            expires_at=call.expires_at, blocked=call.budget_state == AgentCallApproval.BudgetState.BLOCKED,
            blocked_reason=call.budget_blocked_reason,
            override_id=str(call.budget_override_id) if call.budget_override_id else None, obj=call,
            extra={"estimated_cost": call.estimated_cost, "estimated_tokens": call.estimated_tokens,
                   "flags": len((call.risk_assessment or {}).get("flags") or [])}))
    for response in rows("response"):
        items.append(InboxItem(
            kind="response", id=str(response.pk), url=reverse("review:response_approval", args=[response.pk]),
            risk=_response_risk(response), project=response.project, agent_type=response.agent_type,
            summary=one_line(response.response_summary or "(no summary)"), created_at=response.created_at,
            expires_at=response.expires_at, obj=response,
            extra={"safety_score": response.safety_score, "flags": len(response.risk_flags or [])}))
    overrides = [o for o in _decidable_overrides(user) if (kind is None or kind == "override")
                 and (project_id is None or o.project_id == project_id)]
    if limit is not None:  # the first of each risk they are listed by (1,000 pending, all built, took 0.3 s a read)
        overrides = ([o for o in overrides if o.requires_manager_approval][:limit]
                     + [o for o in overrides if not o.requires_manager_approval][:limit])
    for override in overrides:
        needs_manager = override.requires_manager_approval
        items.append(InboxItem(
            kind="override", id=str(override.pk), url=override_inbox_url(override),
            risk="high" if needs_manager else "medium", project=override.project, agent_type="",
            summary=one_line(f"{override.get_violation_type_display()}: {override.amount_text} — "
                             f"{override.justification}"),
            created_at=override.created_at, obj=override,
            extra={"needs_manager": needs_manager, "violation_type": override.violation_type,
                   "requested_amount": override.requested_amount,
                   # decided only once the stop is lifted (423 meanwhile)
                   "stopped": override.project.status == override.project.Status.EMERGENCY_STOPPED}))
    sessions = list(rows("recovery"))
    next_steps = {}
    for step in (RecoveryStep.objects.filter(session__in=sessions, status=RecoveryStep.Status.PENDING)
                 .order_by("-order")):
        next_steps[step.session_id] = step  # the lowest order wins
    for session in sessions:
        step = next_steps.get(session.pk)
        if step is None:
            continue
        items.append(InboxItem(
            kind="recovery", id=str(step.pk), url=f"/review/recovery/{session.pk}",
            risk=session.emergency_stop.severity or "high", project=session.project, agent_type="",
            summary=one_line(f"Step {step.order} of {session.total_steps}: {step_title(step.action)} — "
                             f"{step.description}"),
            created_at=step.created_at, obj=step, extra={"session_id": str(session.pk)}))
    for req in rows("hitl"):
        items.append(InboxItem(
            kind="hitl", id=str(req.pk), url=reverse("review:hitl_request", args=[req.pk]), risk="medium",
            project=req.project, agent_type=req.task.agent_type if req.task_id else "",
            summary=one_line(f"{req.get_request_type_display()}: {req.question}"), created_at=req.created_at,
            expires_at=req.expires_at, obj=req,
            extra={"options": req.options, "request_type": req.request_type}))
    overrides_by_id = {item.id: item for item in items if item.kind == "override"}
    for item in items:
        if item.kind == "call" and item.override_id:
            target = overrides_by_id.get(item.override_id)
            item.override_url = target.url if target else ""
    items.sort(key=lambda i: (-risk_rank(i.risk), i.created_at))
    return items if limit is None else items[:limit]


# --- reviewer metrics -----------------------------------------------------------------------
def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in (0, 100])."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class ReviewerMetrics:
    decided: int
    timed_out: int
    median_seconds: float | None
    p90_seconds: float | None

    @property
    def closed(self) -> int:
        return self.decided + self.timed_out

    @property
    def timeout_rate(self) -> float | None:
        return self.timed_out / self.closed if self.closed else None

    @property
    def median_display(self) -> str:
        return duration_display(self.median_seconds)

    @property
    def p90_display(self) -> str:
        return duration_display(self.p90_seconds)

    @property
    def timeout_rate_display(self) -> str:
        rate = self.timeout_rate
        return "—" if rate is None else f"{rate * 100:.1f} %"


def duration_display(seconds: float | None) -> str:
    """42 s, 3 min 5 s, 2 h 10 min; an em dash when there is nothing to measure."""
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def reviewer_metrics(*, user, now=None, hours: int = 24) -> ReviewerMetrics:
    """Over the last ``hours``, for the projects the user may review, calls and responses:
    time to decision (responded_at − created_at of those a person decided: approved, rejected,
    sent back) as median and p90, and the timeout rate (timed out / decided + timed out;
    cancelled ones were withdrawn, not missed). A time-out counts at its deadline."""
    now = now or timezone.now()
    since = now - timedelta(hours=hours)
    project_ids = reviewable_project_ids(user)
    durations: list[float] = []
    timed_out = 0
    for model in (AgentCallApproval, ResponseApproval):
        base = model.objects.filter(project_id__in=project_ids)
        # decided by a person (approved_by: whatever came after, a call approved and then cancelled
        # by a stop or its task's end was decided); cancelled while pending has no decider
        rows = base.filter(approved_by__isnull=False, responded_at__gt=since,
                           responded_at__lte=now).values_list("created_at", "responded_at")
        durations += [max((responded - created).total_seconds(), 0.0) for created, responded in rows]
        timed_out += base.filter(status="timed_out", expires_at__gt=since, expires_at__lte=now).count()
    return ReviewerMetrics(decided=len(durations), timed_out=timed_out,
                           median_seconds=median(durations) if durations else None,
                           p90_seconds=_percentile(durations, 90))


# --- the precedent of a call ----------------------------------------------------------------
def pretty_json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


@dataclass
class Precedent:
    counts: dict
    last: list
    last_approved: AgentCallApproval | None
    diff: list  # [(kind, text)] kind in {"same", "add", "del", "hunk"}

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def precedent_for(approval: AgentCallApproval, *, limit: int = 5) -> Precedent:
    """How this project decided the same agent type and action before: counts of approved /
    rejected / timed out, the last ``limit`` decisions with reasons and deciders, and a line diff
    of this input against the input that ran in the last approved one."""
    same = (AgentCallApproval.objects.filter(project_id=approval.project_id, agent_type=approval.agent_type,
                                             proposed_action=approval.proposed_action)
            .exclude(pk=approval.pk))
    closed = ["approved", "rejected", "timed_out"]
    found = dict(same.filter(status__in=closed).order_by().values_list("status").annotate(n=Count("pk")))
    counts = {status: found.get(status, 0) for status in closed}
    last = list(same.filter(status__in=closed).select_related("approved_by")
                .order_by("-updated_at", "-created_at")[:limit])
    last_approved = (same.filter(status="approved").order_by("-responded_at", "-created_at").first())
    diff = []
    if last_approved is not None:
        diff = line_diff(pretty_json(last_approved.input_to_run), pretty_json(approval.input_data))
    return Precedent(counts=counts, last=last, last_approved=last_approved, diff=diff)


DIFF_MAX_LINES = 2000  # per side: difflib's time grows with the product of the two (0.26 s at 2,500 lines each)


def line_diff(old: str, new: str, context: int = 3) -> list[tuple[str, str]]:
    """A unified line diff as [(kind, line)]: ``hunk`` headers, ``del`` / ``add`` / ``same``.
    Past DIFF_MAX_LINES on either side, only where the two first differ, with its context (found in
    one pass): two calls of 800 KB inputs kept a web thread busy for minutes, and any agent may
    send them."""
    a, b = old.splitlines(), new.splitlines()
    if len(a) > DIFF_MAX_LINES or len(b) > DIFF_MAX_LINES:
        if a == b:
            return []
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        out = [("hunk", f"@@ too long to compare line by line here ({len(a):,} lines against {len(b):,}; "
                        f"at most {DIFF_MAX_LINES:,}): the first difference is at line {first + 1:,} @@")]
        out += [("same", " " + line) for line in a[max(0, first - context):first]]
        out += [("del", "-" + line) for line in a[first:first + 1]]
        out += [("add", "+" + line) for line in b[first:first + 1]]
        return out
    out = []
    for line in difflib.unified_diff(a, b, fromfile="last approved",
                                     tofile="this call", lineterm="", n=context):
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("@@"):
            out.append(("hunk", line))
        elif line.startswith("-"):
            out.append(("del", line))
        elif line.startswith("+"):
            out.append(("add", line))
        else:
            out.append(("same", line))
    return out


# --- JSON with its paths, for flags that point into it --------------------------------------
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def child_path(path: str, key: str) -> str:
    """The analyzers' JSON path notation (approvals/analyzers/context.py)."""
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{key!r}]" if '"' in key else f'{path}["{key}"]'


def flag_path(location: str | None) -> str:
    """A flag's location without the decoding note (``input_data.x (base64)`` → ``input_data.x``)."""
    return (location or "").split(" (", 1)[0].strip()


def json_lines(value, root: str) -> list[dict]:
    """The value pretty-printed like json.dumps(indent=2), one dict per line: {text, path}."""
    lines: list[dict] = []

    def dump(v) -> str:
        return json.dumps(v, ensure_ascii=False, default=str)

    def walk(v, path: str, indent: int, prefix: str, trailing: str) -> None:
        pad = "  " * indent
        if isinstance(v, dict) and v:
            lines.append({"text": f"{pad}{prefix}{{", "path": path})
            items = list(v.items())
            for i, (k, child) in enumerate(items):
                walk(child, child_path(path, str(k)), indent + 1, f"{dump(str(k))}: ", "," if i < len(items) - 1 else "")
            lines.append({"text": f"{pad}}}{trailing}", "path": path})
        elif isinstance(v, list) and v:
            lines.append({"text": f"{pad}{prefix}[", "path": path})
            for i, child in enumerate(v):
                walk(child, f"{path}[{i}]", indent + 1, "", "," if i < len(v) - 1 else "")
            lines.append({"text": f"{pad}]{trailing}", "path": path})
        else:
            lines.append({"text": f"{pad}{prefix}{dump(v)}{trailing}", "path": path})

    walk(value, root, 0, "", "")
    return lines


def annotate_json(value, root: str, flags: list[dict]) -> list[dict]:
    """json_lines with each line marked by the flags located exactly at its path (the opening
    line of an object or list carries the flags of its whole path)."""
    by_path: dict[str, list[dict]] = {}
    for flag in flags or []:
        path = flag_path(flag.get("location"))
        if path:
            by_path.setdefault(path, []).append(flag)
    out, seen = [], set()
    for line in json_lines(value, root):
        path = line["path"]
        line_flags = by_path.get(path, []) if path not in seen else []
        seen.add(path)
        severity = max((f.get("severity", "low") for f in line_flags), key=risk_rank, default="")
        out.append({**line, "flags": line_flags, "severity": severity})
    return out


def unplaced_flags(flags: list[dict], lines: list[dict], extra_paths=()) -> list[dict]:
    """Flags whose location matches no line (the proposed action, a derived text, none)."""
    paths = {line["path"] for line in lines} | set(extra_paths)
    return [f for f in flags or [] if flag_path(f.get("location")) not in paths]


def code_blocks(agent_response) -> list[dict]:
    """Code the agent produced: ``files[].content`` (with its path), ``files`` as a mapping of
    paths to contents, and ``code`` strings."""
    blocks = []
    if not isinstance(agent_response, dict):
        return blocks
    files = agent_response.get("files")
    if isinstance(files, dict):
        for path, content in files.items():
            if isinstance(content, str):
                blocks.append({"name": str(path), "location": child_path("agent_response.files", str(path)),
                               "content": content})
    if isinstance(files, list):
        for i, entry in enumerate(files):
            if isinstance(entry, dict) and isinstance(entry.get("content"), str):
                name = entry.get("path") or entry.get("name") or entry.get("filename") or f"files[{i}]"
                blocks.append({"name": str(name), "location": f"agent_response.files[{i}].content",
                               "content": entry["content"]})
    if isinstance(agent_response.get("code"), str):
        blocks.append({"name": "code", "location": "agent_response.code", "content": agent_response["code"]})
    return blocks


# --- the emergency banners ------------------------------------------------------------------
def stopped_projects(*, user) -> list[dict]:
    """Projects the user can see that are under an emergency stop, with the active stop."""
    if not user.is_authenticated:
        return []
    projects = list(project_visible_to(user=user).filter(status=Project.Status.EMERGENCY_STOPPED).order_by("name"))
    stops = {s.project_id: s for s in EmergencyStop.objects.filter(project__in=projects, resolved_at__isnull=True)}
    return [{"project": p, "stop": stops.get(p.pk)} for p in projects]


def call_cancellation(approval: AgentCallApproval) -> dict | None:
    """Who cancelled a cancelled call, when and why: {"by", "at", "why", "stop"}. (The call's
    approved_by / responded_at are those of its approval, if any, and stay as they were.)"""
    if approval.status != AgentCallApproval.Status.CANCELLED:
        return None
    if approval.rejection_reason == CANCELLED_BY_STOP:
        return _stop_cancellation(approval.project_id, approval.created_at, fallback_at=approval.updated_at)
    event = (AuditEvent.objects.filter(object_type=approval._meta.label_lower, object_id=str(approval.pk),
                                       action__in=("agent_approval.cancel", "agent_approval.grant_expired",
                                                   "agent_approval.task_ended"))
             .select_related("actor").order_by("-seq").first())
    if event is None:
        return {"by": "", "at": approval.updated_at, "stop": None, "why": ""}
    if event.action == "agent_approval.grant_expired":
        return {"by": "the system", "at": event.created_at, "stop": None,
                "why": "it was approved but not started in time"}
    return {"by": _canceller(event, approval.requested_by_id), "at": event.created_at, "stop": None,
            "why": event.reason or ""}


def _canceller(event: AuditEvent, agent_id) -> str:
    """Who an audit row says cancelled something of ``agent_id``: its agent, someone else (an
    administrator), or the system."""
    if not event.actor_id:
        return "the system"
    name = event.actor.get_username()
    return its_agent(name) if event.actor_id == agent_id else name


def its_agent(name: str) -> str:
    """The requesting agent, named: "its agent (coder-1)" (an agent called ``agent`` does not
    read as "its agent agent")."""
    return f"its agent ({name})"


def hitl_cancellation(req) -> dict | None:
    """Who cancelled a cancelled question or checkpoint, when and why, as call_cancellation says it."""
    if req.status != req.Status.CANCELLED or not req.history:
        return None
    last = req.history[-1]
    at = parse_datetime(str(last.get("at") or "")) or req.updated_at
    if last.get("note") == CANCELLED_BY_STOP and last.get("by") == "system":
        return _stop_cancellation(req.project_id, req.created_at, fallback_at=at)
    by = last.get("by") or ""
    return {"by": its_agent(by) if by and by == req.asked_by.get_username() else by, "at": at, "stop": None,
            "why": last.get("note") or ""}


def response_cancellation(response) -> dict | None:
    """Who cancelled a cancelled response approval, when and why, as call_cancellation says it:
    an emergency stop, or the report that ended its task."""
    if response.status != response.Status.CANCELLED:
        return None
    if response.rejection_reason == CANCELLED_BY_STOP:
        return _stop_cancellation(response.project_id, response.created_at,
                                  fallback_at=response.responded_at or response.updated_at)
    event = (AuditEvent.objects.filter(object_type=response._meta.label_lower, object_id=str(response.pk),
                                       action="response_approval.task_ended")
             .select_related("actor").order_by("-seq").first())
    if event is None:
        return {"by": "", "at": response.responded_at or response.updated_at, "stop": None,
                "why": response.rejection_reason}
    return {"by": _canceller(event, response.submitted_by_id), "at": event.created_at, "stop": None,
            "why": response.rejection_reason}


def _stop_cancellation(project_id, created_at, *, fallback_at) -> dict:
    """Nothing is admitted while a project is stopped, so the stop that cancelled something is the
    first one created after it (its lists of ids are not read)."""
    stop = (EmergencyStop.objects.filter(project_id=project_id, created_at__gte=created_at)
            .defer("cancelled_approvals", "stopped_tasks", "condition_details")
            .select_related("triggered_by_user").order_by("created_at").first())
    if stop is None:
        return {"by": "an emergency stop", "at": fallback_at, "stop": None, "why": ""}
    who = stop.triggered_by_user.get_username() if stop.triggered_by_user_id else \
        f"{condition_words(stop.triggered_by.removeprefix('system:'))}, automatic"
    return {"by": f"an emergency stop ({who})", "at": stop.created_at, "stop": stop, "why": ""}


def visible_override(*, user, override_id) -> BudgetOverrideRequest | None:
    return (BudgetOverrideRequest.objects.filter(Q(project__in=project_visible_to(user=user)), pk=override_id)
            .select_related("project", "window").first())
