"""Settings for the test suite: the real settings (same DATABASE_URL / REDIS_URL rules),
plus a throwaway secret and audit key, eager Celery and a fast password hasher."""
import os

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-not-for-production")
# DEBUG is off here, as in production: without keys every process the tests start would warn
# (audit.W005). The tests of the derived development key set HITL_AUDIT_KEYS = [] themselves.
os.environ.setdefault("HITL_AUDIT_KEYS", "test-1:test-only-audit-key-not-for-production-0123")

from botarmy_hitl.settings import *  # noqa: E402,F403

CELERY_TASK_ALWAYS_EAGER = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
ALLOWED_HOSTS = ["testserver", "localhost"]
# Tests give their calls exact estimates; the output allowance of the server's floor is tested
# on its own (approvals/tests/test_hardening.py sets it back).
HITL_OUTPUT_TOKEN_ALLOWANCE = 0
# The checkpoints of a `make run` in ./var (another database's chains) are not the test database's:
# tests that want checkpoints point this at their own directory.
HITL_AUDIT_CHECKPOINT_DIR = VAR_DIR / "no-audit-checkpoints-in-tests"  # noqa: F405  (never created)
# PostgreSQL: the same backend with a flush that DELETEs instead of TRUNCATE (core/postgresql/testing)
if DATABASES["default"]["ENGINE"] == "core.postgresql":  # noqa: F405
    DATABASES["default"]["ENGINE"] = "core.postgresql.testing"  # noqa: F405
# a rolled-back write holds streams of every project this long (15 s by default): shorter in tests
HITL_EVENT_SETTLE_SECONDS = 5.0
