"""bin/serve's own checks: a server name it does not know is refused (never a silent daphne), and
uvicorn's workers drop request headers whose names hold an underscore, as daphne does."""
import asyncio
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

SERVE = Path(__file__).resolve().parents[2] / "bin" / "serve"


def _serve_module():
    loader = importlib.machinery.SourceFileLoader("hitl_bin_serve", str(SERVE))
    spec = importlib.util.spec_from_loader("hitl_bin_serve", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_an_unknown_server_from_the_environment_is_refused():
    answer = subprocess.run([sys.executable, str(SERVE), "--port", "1"], capture_output=True, text=True,
                            timeout=30, env={**os.environ, "HITL_WEB_SERVER": "Uvicorn"})
    assert answer.returncode == 2
    assert "must be one of daphne, uvicorn, not 'Uvicorn'" in answer.stderr
    assert "worker(s) on" not in answer.stderr  # nothing started


def test_uvicorn_workers_drop_headers_with_an_underscore():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope)

    wrapped = _serve_module().without_underscored_headers(app)
    headers = [(b"authorization", b"Bearer k"), (b"idempotency_key", b"spoofed"), (b"idempotency-key", b"real")]
    asyncio.run(wrapped({"type": "http", "headers": headers}, None, None))
    asyncio.run(wrapped({"type": "http", "headers": headers[:1]}, None, None))
    assert seen[0]["headers"] == [(b"authorization", b"Bearer k"), (b"idempotency-key", b"real")]
    assert seen[1]["headers"] == [(b"authorization", b"Bearer k")]
    assert headers[1] == (b"idempotency_key", b"spoofed")  # the server's own scope is not changed
