"""manage.py without the configuration it needs says so in a line and exits 2: a newcomer who
ran `manage.py hitl_access ...` as the README shows, without `make run`'s DJANGO_DEBUG=1, got a
40-line traceback ending in ImproperlyConfigured."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_secret_key_is_one_line_and_exit_code_2_not_a_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DJANGO_DEBUG", "DJANGO_SECRET_KEY", "DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL")}
    env["HITL_VAR_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "manage.py", "hitl_access", "nobody", "--api-key"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert "DJANGO_SECRET_KEY is required" in done.stderr
    assert "DJANGO_DEBUG=1 .venv/bin/python manage.py" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 2


def test_a_database_that_refuses_the_connection_is_one_line_at_once_not_a_pool_timeout(tmp_path):
    """An operator's `migrate` with a wrong database name waited the pool's 30 s, retrying, and
    ended in a PoolTimeout traceback that did not say why; each refusal is said at once now."""
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "REDIS_URL", "HITL_DB_POOL")}
    env.update(HITL_VAR_DIR=str(tmp_path), DJANGO_SECRET_KEY="x" * 50, HITL_AUDIT_KEYS="k1:" + "y" * 40,
               HITL_DB_POOL_TIMEOUT="600",  # were the pool used, the command would outlive the test's timeout
               DATABASE_URL="postgres://postgres@127.0.0.1:5432/hitl_no_such_database")
    done = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("manage.py: cannot connect to the database of DATABASE_URL: connection failed:")
    assert "hitl_no_such_database" in done.stderr  # the server's reason: a missing database, a refused port
    assert len(done.stderr.strip().splitlines()) == 1
    env["DATABASE_URL"] = "postgres://postgres@127.0.0.1:1/x"  # refused: libpq adds its hint on a line of its own
    done = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done
    assert "Connection refused" in done.stderr and "Is the server running" in done.stderr


def test_the_pool_is_for_servers_and_workers_not_for_commands(tmp_path):
    """Web and Celery processes pool their connections (many threads); manage.py's commands do not."""
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "HITL_DB_POOL")}
    env.update(HITL_VAR_DIR=str(tmp_path), DJANGO_SECRET_KEY="x" * 50, DATABASE_URL="postgres://u@db-host:5432/x")
    show = "from django.conf import settings; o = settings.DATABASES['default']['OPTIONS']; " \
           "print('pool' in o, o.get('connect_timeout'))"
    server = subprocess.run([sys.executable, "-c", f"import django; django.setup(); {show}"], cwd=ROOT,
                            env={**env, "DJANGO_SETTINGS_MODULE": "botarmy_hitl.settings"},
                            capture_output=True, text=True, timeout=120)
    assert server.stdout.split() == ["True", "None"], server
    command = subprocess.run([sys.executable, "manage.py", "shell", "-c", show], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert command.stdout.split()[-2:] == ["False", "10"], command


@pytest.mark.postgres
def test_a_table_held_locked_is_said_as_a_lock_not_as_a_connection_that_failed(tmp_path):
    """An operator's `migrate` while an old server still held a row lock waited HITL_DB_LOCK_TIMEOUT
    and then said "cannot connect to the database of DATABASE_URL: canceling statement due to lock
    timeout": it had connected; another transaction held the table."""
    import psycopg

    url = os.environ["DATABASE_URL"]
    holder = psycopg.connect(url.replace("postgres://", "postgresql://", 1))
    try:
        holder.execute("CREATE TABLE IF NOT EXISTS hitl_lock_probe (id int)")
        holder.commit()
        holder.execute("LOCK TABLE hitl_lock_probe IN ACCESS EXCLUSIVE MODE")  # held until the rollback below
        env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "HITL_DB_POOL")}
        env.update(HITL_VAR_DIR=str(tmp_path), DJANGO_SECRET_KEY="x" * 50, HITL_AUDIT_KEYS="k1:" + "y" * 40,
                   HITL_DB_LOCK_TIMEOUT="1")
        done = subprocess.run([sys.executable, "manage.py", "shell", "-c",
                               "from django.db import connection; connection.cursor().execute("
                               "'SELECT * FROM hitl_lock_probe')"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done
        assert "Traceback" not in done.stderr and "cannot connect" not in done.stderr, done.stderr
        assert done.stderr.startswith("manage.py: a table stayed locked by another transaction for "
                                      "HITL_DB_LOCK_TIMEOUT seconds (canceling statement due to lock timeout")
        assert len(done.stderr.strip().splitlines()) == 1
    finally:
        holder.rollback()
        holder.execute("DROP TABLE IF EXISTS hitl_lock_probe")
        holder.commit()
        holder.close()
