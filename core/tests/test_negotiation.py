"""core.api.JsonFirstNegotiation: what agents send (no Accept, */*, application/json) is answered
in JSON without DRF's header parsing; every other Accept still gets DRF's negotiation."""
import json

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def get(client_for, agent, project):
    api = client_for(agent)

    def get(accept=None):
        headers = {"HTTP_ACCEPT": accept} if accept is not None else {}
        return api.get(f"/api/v1/projects/{project.pk}", **headers)
    return get


@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_what_agents_send_is_answered_in_json(get, accept):
    r = get(accept)
    assert r.status_code == 200 and r["Content-Type"] == "application/json"
    assert json.loads(r.content)["slug"] == "demo"


def test_other_accept_headers_still_negotiate(get):
    indented = get("application/json; indent=4")  # a media type parameter: DRF's own negotiation
    assert indented.status_code == 200 and b'\n    "' in indented.content
    assert get("text/html").status_code == 200 and get("text/html")["Content-Type"].startswith("text/html")
    refused = get("application/xml")
    assert refused.status_code == 406 and json.loads(refused.content)["error"]
