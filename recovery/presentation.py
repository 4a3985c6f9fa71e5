"""How a recovery reads to a person: the assessment as titled sections of labelled rows (never a
JSON blob), each step's title and what it did. Pure functions of the stored JSON, no queries, so
every page that shows a recovery (the admin here; the reviewer pages above may use them too)
says the same thing the same way."""
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from core.text import first_shown, money_text
from emergency.models import actor_words, condition_words

STEP_TITLES = {
    "review_flagged": "Review the flagged calls and outputs",
    "confirm_budget": "Confirm the budget",
    "reset_error_window": "Reset the error-rate window",
    "re_enable_agents": "Re-enable the agents",
    "settle_halted_tasks": "Settle the halted tasks",
    "lift_stop": "Lift the emergency stop",
}


# Keys whose plain reading says too little.
KEY_LABELS = {
    "allowance_today": "Override allowance today",  # what approved budget overrides added to the day's limits
    "spent_month": "Spent this month",
    "now": "Their status now",  # the settle step: what the halted tasks became
}


def label(key) -> str:
    """``error_rate_high`` → ``Error rate high``."""
    return KEY_LABELS.get(key) or str(key).replace("_", " ").capitalize()


def step_title(action: str) -> str:
    return STEP_TITLES.get(action, label(action))


def readable(value) -> str:
    """A JSON value as one line of text: nested objects as ``key: value`` pairs, lists comma
    separated, ISO times as local times, booleans as yes/no, nothing as a dash."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and len(value) >= 19 and value[4:5] == "-" and value[10:11] == "T":
        moment = parse_datetime(value)
        if moment is not None:
            if timezone.is_naive(moment):
                moment = timezone.make_aware(moment)
            return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z")
    if isinstance(value, dict):
        return "; ".join(f"{label(k).lower()}: {readable(v)}" for k, v in value.items()) or "—"
    if isinstance(value, list):  # a stop's 9,000 halted tasks made its recovery's pages 1 MB: the first few
        return first_shown(value, readable) or "none"
    return str(value)


def person(value) -> str:
    """Who did it, as the pages name people: the audit's ``reviewer#2`` is ``reviewer``, an
    automatic condition's ``system:error_rate_high`` is ``the system (error rate high)``."""
    return actor_words(readable(value))


def rows(data) -> list[tuple[str, str]]:
    """An object as (label, text) rows; anything else as one unlabelled row."""
    if isinstance(data, dict):
        return [(label(k), readable(v)) for k, v in data.items()] or [("", "—")]
    return [("", readable(data))]


def _reason(condition: dict) -> str:
    """A trigger's reason: a person's as they wrote it, the system's (budget_critical: "The day's
    cost 5.0130 passes ...") with its money as money, as the rows beside it."""
    text = readable(condition.get("reason"))
    return money_text(text) if str(condition.get("by") or "").startswith("system:") else text


def assessment_sections(assessment: dict) -> list[dict]:
    """The assessment recovery_start recorded, as ``[{title, rows: [(label, text)], items:
    [{heading, rows}]}]``: the stop, what tripped (each condition with its reason and data), the
    impact of the stop, tasks by status, error rate, resource use, the day's budget, then any key
    a newer service adds (so nothing recorded is ever hidden)."""
    a = dict(assessment or {})
    sections = []
    stop = a.pop("stop", None) or {}
    if stop:
        sections.append({"title": "The stop", "rows": [
            ("Conditions", ", ".join(label(c) for c in stop.get("triggered_conditions") or []) or "—"),
            ("Reason", readable(stop.get("stop_reason"))),
            ("Severity", readable(stop.get("severity"))),
            ("Triggered by", person(stop.get("triggered_by"))),
            ("Started", readable(stop.get("created_at"))),
        ], "items": []})
    conditions = a.pop("conditions", None) or []
    if conditions:
        sections.append({"title": "What tripped", "rows": [], "items": [
            {"heading": f"{label(c.get('condition', '?'))} ({c.get('severity', '?')})",
             "rows": [("Reason", _reason(c)), ("By", person(c.get("by"))),
                      ("At", readable(c.get("at"))),
                      *[(label(k), readable(v)) for k, v in (c.get("data") or {}).items()]]}
            for c in conditions if isinstance(c, dict)]})
    impact = [("Halted tasks", readable(a.pop("halted_tasks", 0))),
              ("Cancelled open requests (calls, responses, questions)", readable(a.pop("cancelled_approvals", 0)))]
    flags = a.pop("open_flags", None)
    if flags is not None:
        impact.append(("Cancelled calls and outputs with high or critical flags", str(len(flags))))
    sections.append({"title": "Impact of the stop", "rows": impact, "items": []})
    counts = a.pop("task_counts", None)
    if counts is not None:
        sections.append({"title": "Tasks by status", "items": [],
                         "rows": [(label(k), str(v)) for k, v in sorted(counts.items())] or [("", "no tasks")]})
    for key, title in (("error_rate", "Error rate"), ("resources", "Resource use"), ("budget", "Budget today")):
        if key in a:
            sections.append({"title": title, "rows": rows(a.pop(key)), "items": []})
    for key, value in a.items():  # anything newer the service records
        sections.append({"title": label(key), "rows": rows(value), "items": []})
    return sections


def step_result_rows(result) -> list[tuple[str, str]]:
    """What a finished step did (its ``result``), as labelled rows; none before it ran."""
    if result is None or result == {}:
        return []
    result = dict(result) if isinstance(result, dict) else result
    titles = result.pop("titles", None) if isinstance(result, dict) else None
    if isinstance(titles, list) and isinstance(result.get("tasks"), list) and len(titles) == len(result["tasks"]):
        # the settled tasks by their titles, each with the start of its id to tell them apart
        result["tasks"] = [f"“{title}” ({str(pk)[:8]})" for title, pk in zip(titles, result["tasks"])]
    reviewed = result.get("reviewed") if isinstance(result, dict) else None
    if isinstance(reviewed, list) and reviewed and all(isinstance(item, dict) for item in reviewed):
        # the flagged calls and outputs reviewed: one row each, not one run of text
        del result["reviewed"]
        return [(f"Reviewed {item.get('kind', 'call')} {str(item.get('approval_id', ''))[:8]}", flagged_text(item))
                for item in reviewed] + (rows(result) if result else [])
    return rows(result)


def flagged_text(item: dict) -> str:
    """``high risk: Deploy to production — flags: secret.aws_access_key, code.bandit.B602``."""
    flags = ", ".join(map(str, item.get("flags") or [])) or "none"
    return f"{readable(item.get('risk_level'))} risk: {readable(item.get('proposed_action'))} — flags: {flags}"


def conditions_since(condition_details, since) -> list[dict]:
    """The triggers a stop gained at or after ``since`` (a failed recovery's start: what failed
    it), as the pages say them: ``{"condition": "Manual stop", "by": "agent", "at": ..., "reason"}``."""
    found = []
    for detail in condition_details or []:
        if not isinstance(detail, dict):
            continue
        at = parse_datetime(str(detail.get("at") or ""))
        if at is None or since is None or at < since:
            continue
        condition = str(detail.get("condition") or "?")
        found.append({"condition": label(condition), "by": person(detail.get("by") or f"system:{condition}"),
                      "at": at, "reason": str(detail.get("reason") or "")})
    return found
