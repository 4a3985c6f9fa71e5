"""Write hitl_sdk/_sync_client.py from hitl_sdk/_async_client.py (run from anywhere):

    python hitl_sdk/tools/unasync.py          # rewrite
    python hitl_sdk/tools/unasync.py --check  # exit 1 if the sync client is stale
"""
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent / "hitl_sdk"
RULES = [
    (r"\bAsyncHitlClient\b", "HitlClient"),
    (r"\b_AsyncWS\b", "_SyncWS"),
    (r"\b_AsyncStreams\b", "_SyncStreams"),
    (r"\b_asleep\b", "_sleep"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bhttpx\.AsyncClient\b", "httpx.Client"),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\(async\)", "(sync)"),
]
HEADER = '"""GENERATED from _async_client.py by tools/unasync.py: do not edit.\n\n'


def render() -> str:
    text = (HERE / "_async_client.py").read_text()
    for pattern, replacement in RULES:
        text = re.sub(pattern, replacement, text)
    assert text.startswith('"""')
    return HEADER + text[3:]


if __name__ == "__main__":
    target = HERE / "_sync_client.py"
    if "--check" in sys.argv:
        sys.exit(0 if target.read_text() == render() else 1)
    target.write_text(render())
