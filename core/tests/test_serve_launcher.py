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



def test_a_launcher_setting_that_is_no_number_is_a_usage_error_not_a_traceback():
    """HITL_WEB_WORKERS=abc and HITL_PORT=abc were a ValueError traceback; HITL_SERVE_GRACE=abc
    started the workers and crashed the launcher at SIGTERM."""
    for name in ("HITL_WEB_WORKERS", "HITL_PORT", "HITL_SERVE_GRACE"):
        answer = subprocess.run([sys.executable, str(SERVE), "--port", "1"], capture_output=True, text=True,
                                timeout=30, env={**os.environ, name: "abc"})
        assert answer.returncode == 2, (name, answer.stderr)
        assert f"{name} must be a" in answer.stderr and "Traceback" not in answer.stderr, answer.stderr
        assert "worker(s) on" not in answer.stderr  # nothing started


def test_a_web_process_whose_system_checks_fail_does_not_start(tmp_path):
    """A server with an analyzer that cannot be loaded (or malformed audit keys) started, answered
    its health check ok and then answered 500 to every request the setting was needed for. It
    now stops at start-up, naming the setting, and the launcher exits non-zero."""
    env = {**os.environ, "DATABASE_URL": "", "REDIS_URL": "", "HITL_VAR_DIR": str(tmp_path), "DJANGO_DEBUG": "1",
           "DJANGO_SETTINGS_MODULE": "botarmy_hitl.settings", "HITL_RISK_ANALYZERS": "no.such.Analyzer",
           "HITL_SERVE_GRACE": "5"}
    answer = subprocess.run([sys.executable, str(SERVE), "--port", "0"], capture_output=True, text=True,
                            timeout=60, env=env)
    assert answer.returncode != 0
    assert "approvals.E001: HITL_RISK_ANALYZERS: 'no.such.Analyzer' cannot be loaded" in answer.stderr, \
        answer.stderr[-3000:]


def test_a_setting_out_of_its_range_stops_every_process_at_start_naming_it(tmp_path):
    """A negative approval timeout (500 on every request), a beat period of 0 (thousands of tasks a
    second), a word for a true/false setting (counted as off: no Secure cookies behind HTTPS), a
    word for an amount (500 on the budget page): refused when the settings load, in manage.py,
    the web processes and Celery alike."""
    base = {**os.environ, "DATABASE_URL": "", "REDIS_URL": "", "HITL_VAR_DIR": str(tmp_path),
            "DJANGO_DEBUG": "1", "DJANGO_SETTINGS_MODULE": "botarmy_hitl.settings"}
    manage = Path(__file__).resolve().parents[2] / "manage.py"
    cases = {
        "HITL_APPROVAL_TIMEOUT_MINUTES": ("-5", "must be 1 or more (it is -5)"),
        "HITL_HEARTBEAT_SECONDS": ("0", "must be 1 or more (it is 0)"),
        "HITL_QUEUE_TIMEOUT_SECONDS": ("-1", "must be more than 0 (it is -1)"),
        "HITL_WEB_THREADS": ("0", "must be 1 or more (it is 0)"),
        "HITL_BEHIND_HTTPS_PROXY": ("enabled", "must be true or false"),
        "HITL_MANAGER_COST_THRESHOLD": ("abc", "must be a decimal amount"),
        "HITL_WS_HEARTBEAT_SECONDS": ("nan", "must be a finite number"),
        "HITL_MAX_BODY_BYTES": ("0", "must be 1024 or more (it is 0)"),
        # a date computed from now overflowed on every beat run (nothing was timed out any more)
        "HITL_START_WITHIN_MINUTES": ("99999999999", "must be at most 527040 (it is 99999999999)"),
        "HITL_BUDGET_STALE_RESERVATION_HOURS": ("99999999", "must be at most 8784"),
        "HITL_IDEMPOTENCY_TTL_HOURS": ("99999999999", "must be at most 8784"),
    }
    for name, (value, says) in cases.items():
        answer = subprocess.run([sys.executable, str(manage), "check"], capture_output=True, text=True, timeout=60,
                                env={**base, name: value})
        assert answer.returncode != 0 and f"{name} {says}" in answer.stderr, (name, answer.stderr[-2000:])
    # malformed service URLs (found by an operator): REDIS_URL started every process, then the health
    # check was a 500 and the worker died on its transport; `postgres//host/db` was KeyError: 'ENGINE'
    for name, value, says in (("REDIS_URL", "http://x", "REDIS_URL is not a Redis URL"),
                              ("REDIS_URL", "redis://127.0.0.1:86200/0", "REDIS_URL is not a Redis URL"),
                              ("DATABASE_URL", "postgres//db-host/botarmy", "DATABASE_URL must be a PostgreSQL URL"),
                              ("DATABASE_URL", "postgres://db-host:99999/botarmy", "DATABASE_URL is not a database URL")):
        answer = subprocess.run([sys.executable, str(manage), "check"], capture_output=True, text=True, timeout=60,
                                env={**base, name: value})
        assert answer.returncode != 0 and says in answer.stderr and "Traceback" not in answer.stderr, \
            (name, value, answer.stderr[-2000:])
    fine = subprocess.run([sys.executable, str(manage), "check"], capture_output=True, text=True, timeout=60,
                          env={**base, "HITL_BEHIND_HTTPS_PROXY": "yes", "HITL_WEB_THREADS": ""})
    assert fine.returncode == 0, fine.stderr
    # 0 turns the audit checkpoints off, as the README says (it was refused: "must be 1 or more")
    off = subprocess.run([sys.executable, str(manage), "shell", "-c",
                          "from django.conf import settings; print('audit-checkpoint' in settings.CELERY_BEAT_SCHEDULE)"],
                         capture_output=True, text=True, timeout=60, env={**base, "HITL_AUDIT_CHECKPOINT_MINUTES": "0"})
    assert off.returncode == 0 and off.stdout.strip().endswith("False"), off.stderr[-2000:]


def test_the_workers_stop_when_the_launcher_is_killed(tmp_path):
    """Found by an operator: `kill -9` of the launcher left its workers serving the port, re-parented
    to init, and the supervisor's restarted launcher exited 2 (the port was held)."""
    import signal
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DATABASE_URL": "", "REDIS_URL": "", "HITL_VAR_DIR": str(tmp_path), "DJANGO_DEBUG": "1",
           "DJANGO_SETTINGS_MODULE": "botarmy_hitl.settings"}
    launcher = subprocess.Popen([sys.executable, str(SERVE), "--workers", "2", "--port", str(port)], env=env,
                                stderr=subprocess.PIPE, text=True)
    try:
        line = launcher.stderr.readline()
        assert "worker(s) on" in line, line
        pids = [int(pid) for pid in line.rsplit("(pids ", 1)[1].rstrip(")\n").split()]
        launcher.kill()
        launcher.wait(timeout=10)
        deadline = time.monotonic() + 30
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}") and
                     open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] != "Z"]
            time.sleep(0.2)
        assert not alive, f"workers {alive} outlived their launcher"
    finally:
        for pid in pids if "pids" in locals() else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
