"""The benchmarks report a database they cannot reach as a JSON error at once (exit 2), not as
a traceback after the connection pool's 30 s timeout."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["throughput", "approvals", "events", "budgets", "emergency"])
def test_an_unreachable_database_is_a_json_error(name):
    env = {**os.environ, "DATABASE_URL": "postgres://postgres@127.0.0.1:1/nowhere", "REDIS_URL": "",
           "DJANGO_SETTINGS_MODULE": "botarmy_hitl.settings"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=25)
    assert done.returncode == 2, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["benchmark"] == name
    assert report["error"] == "database"
    assert "127.0.0.1" in report["detail"] and "port 1" in report["detail"]
    assert "Traceback" not in done.stderr
