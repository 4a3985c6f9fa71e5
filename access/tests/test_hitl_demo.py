"""``manage.py hitl_demo`` (what ``make run`` prints first): the demo users, their keys and the
URLs a newcomer opens, the reviewer pages among them."""
import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

pytestmark = pytest.mark.django_db


def run_demo(**kwargs) -> str:
    out = StringIO()
    call_command("hitl_demo", url="http://127.0.0.1:8123", stdout=out, **kwargs)
    return out.getvalue()


def test_it_prints_working_keys_and_every_page_a_newcomer_opens(settings):
    settings.DEBUG = True
    text = run_demo()
    for url in ("/review/", "/admin/", "/api/docs/", "/api/schema/", "/api/v1/health"):
        assert f"http://127.0.0.1:8123{url}" in text, url
    keys = dict(re.findall(r"^  (\w+) .*\n\s+API key: (\S+)$", text, re.M))
    assert set(keys) == {"admin", "reviewer", "manager", "agent"}
    r = Client().get("/api/v1/projects", HTTP_AUTHORIZATION=f"Bearer {keys['agent']}")
    assert r.status_code == 200 and [p["slug"] for p in r.json()["results"]] == ["demo"]
    again = dict(re.findall(r"^  (\w+) .*\n\s+API key: (\S+)$", run_demo(), re.M))
    assert Client().get("/api/v1/projects", HTTP_AUTHORIZATION=f"Bearer {keys['agent']}").status_code == 401
    assert Client().get("/api/v1/projects", HTTP_AUTHORIZATION=f"Bearer {again['agent']}").status_code == 200


def test_it_refuses_to_set_known_passwords_without_debug(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DJANGO_DEBUG"):
        run_demo()


def test_a_restart_keeps_the_reviewers_signed_in_and_puts_a_changed_password_back(settings):
    """Every ``make run`` set the demo passwords again: a new hash of the same password ended every
    open session, so a reviewer page left open across a restart said "Signed out" for good."""
    from django.contrib.auth import get_user_model

    settings.DEBUG = True
    run_demo()
    client = Client()
    assert client.login(username="reviewer", password="reviewer-demo-pw")
    assert client.get("/review/").status_code == 200
    run_demo()                                     # the next make run
    assert client.get("/review/").status_code == 200, "signed out by the restart"
    user = get_user_model().objects.get(username="reviewer")
    user.set_password("changed")
    user.save()
    run_demo()                                     # a changed demo password is put back
    assert Client().login(username="reviewer", password="reviewer-demo-pw")
