"""Kombu's filesystem transport (the embedded default's Celery broker), each message written whole
before a worker can see it.

kombu's ``_put`` creates the message file under its final name and then writes it (its lock is
advisory: the reader does not take it). A worker polling the folder in between moved the empty
file away and read nothing: ``JSONDecodeError``, which Celery takes as unrecoverable, so the
worker exited and ``make run`` stopped everything, and the message was lost. Here the message is
written under a name no reader takes (``.part``) and renamed into place, which is atomic on one
file system. Used only with ``filesystem://`` (settings: ``CELERY_BROKER_TRANSPORT``)."""
import contextlib
import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        final = os.path.join(self.data_folder_out, f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg")
        part = f"{final}.part"  # "<n>_<uuid>.<queue>.msg.part": not a message of any queue to a reader
        try:
            with open(part, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(part, final)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(part)  # nothing half written is left behind
            if isinstance(exc, OSError):
                raise ChannelError(f"Cannot add file {final!r} to directory") from exc
            raise


class Transport(filesystem.Transport):
    Channel = Channel
