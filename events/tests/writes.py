"""Writes for the tests of event ordering across projects (ids are drawn before commit)."""
import threading

from django.db import connections, transaction

from events.services import event_emit


def slow_write(project_id, *, commit=True):
    """In a thread of its own: an event written in a transaction that stays open until ``release``
    is set (then committed, or rolled back). Returns (thread, release, the event's id): set
    ``release`` and join the thread in a ``finally``."""
    written, release, slow = threading.Event(), threading.Event(), {}

    def run():
        try:
            with transaction.atomic():
                slow["id"] = event_emit(project_id=project_id, event_type="budget_alert", data={"slow": True}).id
                written.set()
                release.wait(30)
                if not commit:
                    transaction.set_rollback(True)
        finally:
            written.set()
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    assert written.wait(10) and "id" in slow
    return thread, release, slow["id"]
