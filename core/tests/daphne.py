"""Starting and stopping a real daphne in tests (core/tests/test_errors_are_json.py,
core/tests/test_asgi_handler.py)."""
import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_listening(proc: subprocess.Popen, port: int, log, timeout: float = 30) -> None:
    """Until ``port`` accepts connections; RuntimeError with ``log()`` if daphne exits or is late."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daphne did not start: {log()}") from None
            time.sleep(0.1)


def stop(proc: subprocess.Popen, grace: float = 10) -> None:
    """Terminate, then kill after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until_healthy(proc: subprocess.Popen, port: int, log, timeout: float = 30) -> None:
    """Until ``GET /api/v1/health`` answers 200 (bin/serve listens before its worker has loaded
    the application); RuntimeError with ``log()`` if the server exits or is late."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"bin/serve did not start: {log()}")
        time.sleep(0.1)
