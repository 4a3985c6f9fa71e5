"""The demo fleet against a real server: sdk_tests' daphne on a free port (``world``)."""
from sdk_tests.conftest import FAST_RETRY, World, world, world_server  # noqa: F401  (the fixtures, re-exported)

__all__ = ["FAST_RETRY", "World", "world"]
