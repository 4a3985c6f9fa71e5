"""manage.py without the configuration it needs says so in a line and exits 2: a newcomer who
ran `manage.py hitl_access ...` as the README shows, without `make run`'s DJANGO_DEBUG=1, got a
40-line traceback ending in ImproperlyConfigured."""
import os
import subprocess
import sys
from pathlib import Path

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
