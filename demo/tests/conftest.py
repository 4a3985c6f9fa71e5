"""The demo fleet against a real server: sdk_tests' daphne on a free port (``world``)."""
from sdk_tests.conftest import FAST_RETRY, World, world  # noqa: F401  (the fixture, re-exported)

__all__ = ["FAST_RETRY", "World", "world"]
