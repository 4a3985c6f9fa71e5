"""`make run` (bin/run) stops web, worker and beat on Ctrl-C within seconds, and returns only
once they are gone (issue 11: the Celery worker was left hanging in warm shutdown after the
script had exited). Runs the real script on the embedded default (SQLite, filesystem broker)
in a fresh HITL_VAR_DIR: about 20-30 s."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from core.tests.daphne import free_port

ROOT = Path(__file__).resolve().parents[2]
STOP_WITHIN = 12  # seconds: HITL_STOP_GRACE (6) + 4 before SIGKILL, and some slack


def session_pids(sid: int) -> set[int]:
    """Every live process of session ``sid`` (bin/run and all it started), from /proc."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == sid and "Z" not in _state(entry):
                pids.add(int(entry.name))
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
    return pids


def _state(entry: Path) -> str:
    try:
        return (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def run_env() -> dict:
    """This environment without the settings module and services: `make run`'s embedded default."""
    return {k: v for k, v in os.environ.items()
            if k not in {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}


def start_run(env: dict, log_path: Path) -> subprocess.Popen:
    """bin/run in a session of its own (its pid is the session's id), its output in ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen([str(ROOT / "bin" / "run")], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_log(proc: subprocess.Popen, log_path: Path, *marks: str, timeout: float = 60) -> None:
    """Until ``bin/run``'s log holds every one of ``marks`` (it fails if bin/run ends first)."""
    deadline = time.monotonic() + timeout
    while not all(mark in log_path.read_text(errors="replace") for mark in marks):
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
        time.sleep(0.2)


def end_session(proc: subprocess.Popen) -> None:
    """Whatever of bin/run's session is left (a failed test), killed."""
    if session_pids(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not Path("/proc").is_dir() or not (ROOT / ".venv" / "bin" / "celery").exists(),
                    reason="needs Linux /proc and the project's .venv")
def test_ctrl_c_stops_web_worker_and_beat_and_the_script_waits_for_them(tmp_path):
    port = free_port()
    env = run_env()
    # listening on every interface: a Host name of the machine's (not a loopback one) is served too
    env.update(HITL_VAR_DIR=str(tmp_path / "var"), HITL_PORT=str(port), HITL_HOST="0.0.0.0", DJANGO_DEBUG="1")
    log_path = tmp_path / "run.log"
    proc = start_run(env, log_path)
    sid = proc.pid
    try:
        wait_for_log(proc, log_path, "ready.", "beat: Starting", "daphne worker(s) on")
        started = session_pids(sid)
        assert len(started) >= 5, started  # bin/run, worker (+ its pool), beat, bin/serve, daphne
        from http.client import HTTPConnection

        conn = HTTPConnection("127.0.0.1", port, timeout=20)
        conn.request("GET", "/api/v1/health", headers={"Host": f"hitl-box.lan:{port}"})
        assert conn.getresponse().status == 200
        conn.close()

        began = time.monotonic()
        os.killpg(sid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
        proc.wait(timeout=STOP_WITHIN + 5)
        took = time.monotonic() - began
        left = session_pids(sid)
        assert not left, f"still running after bin/run returned: {left}\n" + log_path.read_text()[-3000:]
        assert took < STOP_WITHIN, f"stopping took {took:.1f}s\n" + log_path.read_text()[-3000:]
        # it names the fleet it stops only when one runs (HITL_DEMO_FLEET=0 said it all the same)
        fleet = "the demo fleet works on the demo project" in log_path.read_text(errors="replace")
        stopping = "run: stopping web, worker, beat and the demo fleet (" if fleet else "run: stopping web, worker, beat ("
        assert stopping in log_path.read_text(errors="replace")
    finally:
        end_session(proc)


@pytest.mark.parametrize("service", ["DATABASE_URL", "REDIS_URL"])
def test_the_demo_refuses_services_that_may_hold_real_data(tmp_path, service):
    """`make run` seeds users with published passwords under DJANGO_DEBUG=1: with a service's URL
    set (the production variables exported in the shell) it starts nothing and says what to do."""
    env = run_env()
    env.update(HITL_VAR_DIR=str(tmp_path / "var"), **{service: "postgres://nowhere.invalid/x"
                                                      if service == "DATABASE_URL" else "redis://nowhere.invalid"})
    done = subprocess.run([str(ROOT / "bin" / "run")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "HITL_DEMO_ON_SERVICES=1" in done.stderr, done.stderr
    assert not (tmp_path / "var").exists()  # nothing migrated, seeded or started


def test_a_port_in_use_stops_make_run_before_it_changes_anything(tmp_path):
    """A second make run on a busy port seeded the demo again (revoking the running one's keys,
    which stopped its fleet) and then failed with a traceback. Now it stops first and says why."""
    import socket

    env = run_env()
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    try:
        env.update(HITL_VAR_DIR=str(tmp_path / "var"), HITL_PORT=str(held.getsockname()[1]))
        done = subprocess.run([str(ROOT / "bin" / "run")], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
    finally:
        held.close()
    assert done.returncode == 2, done.stderr
    assert "cannot listen on 127.0.0.1:" in done.stderr and "Nothing was changed" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "var" / "db.sqlite3").exists() and "API key" not in done.stdout  # nothing seeded


@pytest.mark.parametrize("port", [" 8671", "abc", "99999", "0"])
def test_a_port_that_is_no_port_number_stops_make_run_saying_so(tmp_path, port):
    """" 8671" passed the port check and seeded a second demo (revoking the running one's keys)
    with a space in its URL; "abc" and "99999" were "another server holds it"."""
    env = run_env()
    env.update(HITL_VAR_DIR=str(tmp_path / "var"), HITL_PORT=port)
    done = subprocess.run([str(ROOT / "bin" / "run")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"HITL_PORT must be a port number from 1 to 65535, not {port!r}" in done.stderr, done.stderr
    assert not (tmp_path / "var" / "db.sqlite3").exists() and "API key" not in done.stdout  # nothing seeded


@pytest.mark.skipif(not Path("/proc").is_dir() or not (ROOT / ".venv" / "bin" / "celery").exists(),
                    reason="needs Linux /proc and the project's .venv")
def test_a_process_that_ends_by_itself_is_named_when_make_run_stops_the_others(tmp_path):
    """Found by a newcomer: beat stopped by hand (status 0) took web, worker and fleet down without a
    word of which one ended (only a non-zero status was said)."""
    port = free_port()
    env = run_env()
    env.update(HITL_VAR_DIR=str(tmp_path / "var"), HITL_PORT=str(port), DJANGO_DEBUG="1", HITL_DEMO_FLEET="0")
    log_path = tmp_path / "run.log"
    proc = start_run(env, log_path)
    sid = proc.pid
    try:
        wait_for_log(proc, log_path, "beat: Starting")
        beat = [pid for pid in session_pids(sid)
                if b" beat " in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")]
        assert len(beat) == 1, beat
        os.kill(beat[0], signal.SIGTERM)
        proc.wait(timeout=STOP_WITHIN + 5)
        assert "run: Celery beat exited with status 0: stopping the others" in log_path.read_text(errors="replace"), \
            log_path.read_text(errors="replace")[-3000:]
        assert not session_pids(sid)
    finally:
        end_session(proc)
