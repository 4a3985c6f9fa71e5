"""The embedded default's broker (kombu's filesystem transport) writes each message whole before a
worker can take it: a worker polling while a message was being written took the empty file
(JSONDecodeError: the worker exited, ``make run`` stopped, the message was lost)."""
from queue import Empty

import pytest
from kombu import Connection

import core.kombu_fs


@pytest.fixture
def channel(tmp_path):
    folders = {name: tmp_path / name for name in ("queue", "processed")}
    for folder in folders.values():
        folder.mkdir()
    with Connection("filesystem://", transport="core.kombu_fs:Transport", transport_options={
            "data_folder_in": str(folders["queue"]), "data_folder_out": str(folders["queue"]),
            "processed_folder": str(folders["processed"]), "store_processed": False}) as connection:
        yield connection.default_channel


def test_a_worker_polling_while_a_message_is_written_does_not_take_it_half_written(channel, monkeypatch):
    seen = []
    real_dumps = core.kombu_fs.dumps

    def dumps_while_a_worker_polls(payload):  # the message is being written: a worker polls now
        with pytest.raises(Empty):
            channel._get("celery")
        seen.append("polled")
        return real_dumps(payload)

    monkeypatch.setattr(core.kombu_fs, "dumps", dumps_while_a_worker_polls)
    channel._put("celery", {"body": "beat's task", "n": 1})
    assert seen == ["polled"]
    assert channel._get("celery") == {"body": "beat's task", "n": 1}   # then taken whole, once
    assert channel._size("celery") == 0
    with pytest.raises(Empty):
        channel._get("celery")


def test_the_embedded_default_uses_it_and_redis_its_own():
    from django.conf import settings

    from botarmy_hitl.celery import app
    with app.connection_for_write() as connection:
        if settings.CELERY_BROKER_URL.startswith("filesystem://"):
            assert type(connection.transport) is core.kombu_fs.Transport
        else:
            assert connection.transport.driver_type == "redis"
