"""Django's own user commands, each change they make written to the audit trail (by "system"),
as the admin's user pages and ``hitl_access --create-user`` write theirs: a superuser made with
``createsuperuser`` (the README's first admin) or a password set with ``changepassword`` left no
row. The ``access`` app stands before ``django.contrib.auth`` in INSTALLED_APPS so that these
commands are the ones ``manage.py`` runs."""
from contextlib import contextmanager

from django.contrib.auth import get_user_model
from django.db.models.signals import post_save


@contextmanager
def users_saved():
    """The users saved while the block runs, with whether each was created."""
    saved: list[tuple[object, bool]] = []

    def collect(sender, instance, created, **kwargs):
        saved.append((instance, created))

    model = get_user_model()
    post_save.connect(collect, sender=model, weak=False, dispatch_uid="access.users_saved")
    try:
        yield saved
    finally:
        post_save.disconnect(sender=model, dispatch_uid="access.users_saved")
