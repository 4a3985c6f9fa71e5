import pytest

from projects.permissions import (
    has_project_perm,
    project_visible_to,
    require_not_requester,
)
from core.errors import Forbidden

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("who,perm,expected", [
    ("agent", "act_as_agent", True), ("agent", "review_project", False), ("agent", "manage_project", False),
    ("reviewer", "act_as_agent", False), ("reviewer", "review_project", True), ("reviewer", "manage_project", False),
    ("manager", "act_as_agent", False), ("manager", "review_project", True), ("manager", "manage_project", True),
    ("outsider", "view_project", False), ("admin", "manage_project", True),
])
def test_roles_are_object_permissions_on_the_project(users, project, who, perm, expected):
    assert has_project_perm(users[who], perm, project) is expected


def test_roles_do_not_leak_to_other_projects(users, project, other_project):
    assert list(project_visible_to(user=users["outsider"])) == [other_project]
    assert not has_project_perm(users["outsider"], "review_project", project)


def test_nobody_decides_their_own_request(users):
    for who in ["reviewer", "manager", "admin"]:
        with pytest.raises(Forbidden):
            require_not_requester(decider=users[who], requester_id=users[who].pk)
        require_not_requester(decider=users[who], requester_id=users["agent"].pk)  # someone else's: fine
