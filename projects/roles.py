"""Roles are sets of per-project object permissions (django-guardian) on projects.Project.

API.md: an agent creates tasks, requests approvals, submits responses, reports outcomes and
reads its project; a reviewer reads and decides; a manager also sets budgets, approves large
overrides and starts recovery. Superusers (admins) may do everything.
"""
VIEW = "view_project"
ACT_AS_AGENT = "act_as_agent"
REVIEW = "review_project"
MANAGE = "manage_project"

ROLES: dict[str, list[str]] = {
    "agent": [VIEW, ACT_AS_AGENT],
    "reviewer": [VIEW, REVIEW],
    "manager": [VIEW, REVIEW, MANAGE],
}
ALL_PERMS = sorted({perm for perms in ROLES.values() for perm in perms})
# Roles that work in the Django admin (approval queue): granting one makes the user staff.
STAFF_ROLES = {"reviewer", "manager"}
# What the staff roles grant beyond viewing: one ladder (granting reviewer to a manager takes MANAGE away).
STAFF_PERMS = {REVIEW, MANAGE}
