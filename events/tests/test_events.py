import json
import random
import threading
import time

import pytest
from django.db import connections, transaction

from events.models import Event
from events.services import event_emit

pytestmark = pytest.mark.django_db


def emit(project, n=1, event_type="safety_alert", **data):
    return [event_emit(project_id=project.pk, event_type=event_type, data={"i": i, **data}) for i in range(n)]


def test_event_is_written_only_when_the_transaction_commits(project, django_capture_on_commit_callbacks):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with transaction.atomic():
            emit(project)
            raise Boom
    assert Event.objects.count() == 0
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with transaction.atomic():
            emit(project, note="kept")
    assert Event.objects.get().data == {"i": 0, "note": "kept"}
    assert len(callbacks) == 1  # the live push waits for the commit


def test_live_push_payload_is_plain_json(project, django_capture_on_commit_callbacks, settings):
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(f"events.project.{project.pk}", channel)
    with django_capture_on_commit_callbacks(execute=True):
        emit(project, amount="0.0125")
    message = async_to_sync(layer.receive)(channel)
    assert message["type"] == "hitl.event"
    assert json.loads(json.dumps(message["event"])) == message["event"]
    assert message["event"]["event_type"] == "safety_alert" and message["event"]["data"]["amount"] == "0.0125"


def test_unknown_event_type_is_refused(project):
    with pytest.raises(ValueError):
        event_emit(project_id=project.pk, event_type="made_up", data={})


def test_events_api_pages_with_after(project, other_project, agent, client_for):
    emit(project, n=5)
    client = client_for(agent)
    r = client.get("/api/v1/events", {"project_id": str(project.pk), "limit": 2})
    assert r.status_code == 200
    page = r.json()
    assert [e["data"]["i"] for e in page["results"]] == [0, 1] and page["has_more"] is True
    first = page["results"][0]
    assert set(first) == {"id", "event_type", "project_id", "task_id", "data", "created_at"}
    assert first["project_id"] == str(project.pk) and first["task_id"] is None
    r = client.get("/api/v1/events", {"project_id": str(project.pk), "after": page["last_event_id"]})
    rest = r.json()
    assert [e["data"]["i"] for e in rest["results"]] == [2, 3, 4] and rest["has_more"] is False
    assert all(a["id"] < b["id"] for a, b in zip(rest["results"], rest["results"][1:]))
    r = client.get("/api/v1/events", {"project_id": str(project.pk), "after": rest["last_event_id"]})
    assert r.json() == {"results": [], "last_event_id": rest["last_event_id"], "has_more": False}
    # a cursor past every event so far (corrupted, or a database restored from a backup) is
    # refused: answered "no news", its client would miss every event to come
    past = rest["last_event_id"] + 1
    r = client.get("/api/v1/events", {"project_id": str(project.pk), "after": past})
    assert r.status_code == 400 and r.json()["fields"]["after"][0].startswith(
        f"No event has had the id {past} yet: the last one you can see is {rest['last_event_id']}."), r.content
    emit(project, n=1)  # once an event has that id, the same cursor reads on
    r = client.get("/api/v1/events", {"project_id": str(project.pk), "after": past})
    assert r.status_code == 200 and r.json()["results"] == [] and r.json()["last_event_id"] == past
    theirs = emit(other_project, n=3)  # another project's newer events are not named (how busy it is is not
    # this user's), nor do they make a cursor up to them acceptable: a client could find them id by id
    for after in (past + 10, theirs[-1].id, theirs[0].id):
        r = client.get("/api/v1/events", {"project_id": str(project.pk), "after": after})
        assert r.status_code == 400 and f"the last one you can see is {past}." in r.json()["detail"], r.content


def test_events_are_per_project_and_hidden_from_outsiders(project, other_project, outsider, agent, client_for):
    emit(project, n=2)
    emit(other_project, n=3)
    assert len(client_for(agent).get("/api/v1/events", {"project_id": str(project.pk)}).json()["results"]) == 2
    r = client_for(outsider).get("/api/v1/events", {"project_id": str(project.pk)})
    assert r.status_code == 404
    assert len(client_for(outsider).get("/api/v1/events", {"project_id": str(other_project.pk)})
               .json()["results"]) == 3


@pytest.mark.parametrize("params,field", [({}, "project_id"), ({"project_id": "nope"}, "project_id"),
                                          ({"after": "-1"}, "after"), ({"after": "x"}, "after"),
                                          ({"limit": "0"}, "limit"), ({"limit": "100000"}, "limit")])
def test_events_api_refuses_bad_queries(project, agent, client_for, params, field):
    query = {"project_id": str(project.pk), **params} if "project_id" not in params and field != "project_id" \
        else params
    r = client_for(agent).get("/api/v1/events", query)
    assert r.status_code == 400 and field in r.json()["fields"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_poller_never_skips_an_event_under_concurrent_writers(project):
    """Writers hold their transaction open for a random moment after inserting, so later ids
    could commit first; a reader following ``after`` must still see every event, in order."""
    writers, per_writer = 8, 15
    done = threading.Event()
    seen = []

    def write(w):
        try:
            for i in range(per_writer):
                with transaction.atomic():
                    event_emit(project_id=project.pk, event_type="safety_alert", data={"w": w, "i": i})
                    time.sleep(random.uniform(0, 0.004))
        finally:
            connections.close_all()

    def read():
        after = 0
        try:
            while True:
                finished = done.is_set()
                batch = list(Event.objects.filter(project=project, id__gt=after).order_by("id"))
                for event in batch:
                    seen.append(event.id)
                    after = event.id
                if finished and not batch:
                    return
        finally:
            connections.close_all()

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join()
    all_ids = list(Event.objects.filter(project=project).order_by("id").values_list("id", flat=True))
    assert len(all_ids) == writers * per_writer
    assert seen == all_ids


def test_the_newest_visible_event_is_of_the_users_projects_only(project, other_project, agent, outsider, admin_user,
                                                               make_user, django_assert_max_num_queries):
    """Where a reviewer page's live feed resumes: one index lookup per project (it
    scanned every event of the user's projects on every page load: 120-150 ms at 257k events)."""
    from events.selectors import newest_visible_event_id

    mine = [event_emit(project_id=project.pk, event_type="safety_alert", data={"n": n}) for n in range(3)]
    theirs = event_emit(project_id=other_project.pk, event_type="safety_alert", data={})
    with django_assert_max_num_queries(2):  # the user's roles, then the newest event
        assert newest_visible_event_id(agent) == max(e.pk for e in mine) < theirs.pk
    assert newest_visible_event_id(admin_user) == theirs.pk
    assert newest_visible_event_id(outsider) == theirs.pk
    assert newest_visible_event_id(make_user("nobody")) == 0


def test_the_settled_point_stops_before_a_fresh_gap_and_passes_an_old_one(project, other_project, settings,
                                                                           monkeypatch):
    """A stream of every project sends an event only once every lower id is settled: a gap in the
    ids (an event of another project not committed yet, or rolled back) holds it until the event
    after the gap is HITL_EVENT_SETTLE_SECONDS old (on PostgreSQL, or until no transaction older
    than that event is running: not told here)."""
    from datetime import timedelta

    from django.utils import timezone

    from events import selectors
    from events.selectors import settled_start, settled_through

    monkeypatch.setattr(selectors, "_oldest_writer_start", lambda: selectors._UNKNOWN)

    settings.HITL_EVENT_SETTLE_SECONDS = 5
    ids = [event_emit(project_id=(project if n % 2 else other_project).pk, event_type="safety_alert",
                      data={"n": n}).id for n in range(6)]
    start = settled_start()
    assert start == ids[0] - 1                      # nothing older than 5 s: from the first event on
    assert settled_through(start) == (ids[-1], False)
    Event.objects.filter(pk=ids[2]).delete()        # a gap: ids[2] was drawn, never visible
    assert settled_through(start) == (ids[1], True)
    Event.objects.filter(pk=ids[3]).update(created_at=timezone.now() - timedelta(seconds=6))
    assert settled_through(start) == (ids[-1], False)   # the gap is older than 5 s: rolled back
    Event.objects.filter(pk__lte=ids[3]).update(created_at=timezone.now() - timedelta(seconds=6))
    assert settled_start() == ids[3]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_page_resumes_before_an_event_that_may_still_commit(project, other_project, reviewer, settings):
    """A reviewer page's stream resumes after the settled point, not after the newest event: an
    event of another project with a lower id, committed after the page was rendered, still comes."""
    from access.services import role_grant
    from events.selectors import newest_visible_event_id, resume_point
    from events.tests.writes import slow_write

    settings.HITL_EVENT_SETTLE_SECONDS = 60
    role_grant(user=reviewer, project=other_project, role="reviewer")
    before = event_emit(project_id=project.pk, event_type="safety_alert", data={}).id
    thread, release, slow = slow_write(other_project.pk)
    try:
        after = event_emit(project_id=project.pk, event_type="safety_alert", data={}).id
        assert before < slow < after
        assert newest_visible_event_id(reviewer) == after
        assert resume_point(reviewer) == before
    finally:
        release.set()
        thread.join(30)
    assert resume_point(reviewer) == after


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_event_that_waited_for_its_projects_lock_is_not_taken_for_an_old_one(project, other_project, settings):
    """``created_at`` was stamped before the project's stream lock was waited for: an event that
    waited longer than the settle time drew its id just now but looked old, and a lower id of
    another project, drawn meanwhile and not committed, was passed as settled (and could be lost by
    a stream resuming after the later one). It is stamped by the database once the lock is held."""
    from events.selectors import settled_start, settled_through

    settings.HITL_EVENT_SETTLE_SECONDS = 1
    event_emit(project_id=project.pk, event_type="budget_alert", data={})
    hold, lower_written, release_lower = threading.Event(), threading.Event(), threading.Event()
    ids = {}

    def in_thread(work):
        def run():
            try:
                work()
            finally:
                connections.close_all()
        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def holder():      # a transaction of the other project holds its stream lock
        with transaction.atomic():
            ids["held"] = event_emit(project_id=other_project.pk, event_type="budget_alert", data={}).id
            hold.wait(30)

    def waiter():      # that project's next event waits for the lock, then draws its id
        ids["waited"] = event_emit(project_id=other_project.pk, event_type="budget_alert", data={}).id

    def lower():       # this project's event draws its id and stays uncommitted a while
        with transaction.atomic():
            ids["lower"] = event_emit(project_id=project.pk, event_type="budget_alert", data={}).id
            lower_written.set()
            release_lower.wait(30)

    threads = [in_thread(holder)]
    time.sleep(0.3)
    threads.append(in_thread(waiter))
    time.sleep(1.5)                    # longer than the settle time, shorter than the lock timeout
    threads.append(in_thread(lower))
    try:
        assert lower_written.wait(10)
        hold.set()
        threads[0].join(10)
        threads[1].join(10)
        assert ids["held"] < ids["lower"] < ids["waited"]
        through, waiting = settled_through(settled_start())
        assert (through, waiting) == (ids["lower"] - 1, True)
    finally:
        hold.set()
        release_lower.set()
        for thread in threads:
            thread.join(10)
    assert settled_through(settled_start()) == (ids["waited"], False)
