"""Hooks of the audit trail (core/hooks.py): how the layers above it take part in its checks."""
from typing import Iterable, Protocol

from core.hooks import Hook


class ChainOwners(Protocol):
    def __call__(self) -> Iterable[str]: ...


# The chain keys that must exist (``chain_key(pk)`` of every project, whose project.create row
# begins its chain), read in the verification's own snapshot: a chain deleted whole, its head
# with it, left nothing behind for the walk to find, and `verify_audit` said OK.
expected_chains: Hook[ChainOwners] = Hook("audit.expected_chains")
