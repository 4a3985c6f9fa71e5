"""bin/serve's own checks: a server name it does not know is refused (never a silent daphne)."""
import os
import subprocess
import sys
from pathlib import Path

SERVE = Path(__file__).resolve().parents[2] / "bin" / "serve"


def test_an_unknown_server_from_the_environment_is_refused():
    answer = subprocess.run([sys.executable, str(SERVE), "--port", "1"], capture_output=True, text=True,
                            timeout=30, env={**os.environ, "HITL_WEB_SERVER": "Uvicorn"})
    assert answer.returncode == 2
    assert "must be one of daphne, uvicorn, not 'Uvicorn'" in answer.stderr
    assert "worker(s) on" not in answer.stderr  # nothing started

