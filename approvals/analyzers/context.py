"""What a risk assessment looks at: the proposed call (``RiskContext``) and its text, cut into
``Segment``s with a JSON path each. Extraction is iterative and capped (characters, nodes, depth)."""
from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

MAX_SCAN_CHARS = 200_000   # total characters of text scanned per call
MAX_NODES = 20_000         # JSON nodes visited in input_data
MAX_DEPTH = 64             # JSON nesting followed


@dataclass(frozen=True)
class Segment:
    location: str          # "proposed_action" or a path such as "input_data.files[2].content"
    text: str
    key: str | None = None  # the dict key this value sits under (None for list items and keys)
    is_key: bool = False    # True when the text is the dict key itself


@dataclass(frozen=True)
class RiskContext:
    agent_type: str
    proposed_action: str
    input_data: Any = None
    estimated_cost: Decimal | None = None
    budget_remaining: Decimal | None = None   # None: unknown, or no budget yet

    @functools.cached_property
    def segments(self) -> tuple[Segment, ...]:
        return self._scan[0]

    @functools.cached_property
    def truncated(self) -> bool:
        """True when part of the text was not scanned (size, node or depth cap)."""
        return self._scan[1]

    @functools.cached_property
    def _scan(self) -> tuple[tuple[Segment, ...], bool]:
        return _extract(self.proposed_action, self.input_data)


@dataclass(frozen=True)
class ResponseContext:
    """An agent's response to an approved call (see INTERFACE.md)."""
    agent_type: str
    agent_response: Any
    response_summary: str = ""
    next_steps: tuple[str, ...] = ()
    tokens_used: int | None = None
    call_agent_type: str | None = None
    task_agent_type: str | None = None
    proposed_action: str = ""
    approved_input: Any = None
    estimated_tokens: int | None = None
    workflow_continues: bool = False
    allowed_hosts: tuple[str, ...] = ()

    @functools.cached_property
    def segments(self) -> tuple[Segment, ...]:
        return self._scan[0]

    @functools.cached_property
    def truncated(self) -> bool:
        return self._scan[1]

    @functools.cached_property
    def _scan(self) -> tuple[tuple[Segment, ...], bool]:
        return extract_roots([("agent_response", self.agent_response),
                              ("response_summary", self.response_summary or ""),
                              ("next_steps", list(self.next_steps or ()))])


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _child_path(path: str, key: str) -> str:
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{key!r}]" if '"' in key else f'{path}["{key}"]'


# A command given in pieces: an argv list under a command key ({"argv": ["rm", "-rf", "/"]}), or a command with
# its arguments in sibling fields ({"command": "rm", "args": ["-rf", "/"]}, {"command": "rm -rf", "path": "/"}).
# The joined command line is one more segment, located `<command key> (joined)`.
_COMMAND_KEYS = frozenset(("command", "cmd", "argv", "program", "executable", "exec", "shell", "run", "script",
                           "binary", "tool_command", "command_line", "commandline"))
_ARG_KEYS = ("subcommand", "args", "arguments", "argv", "params", "options", "flags")
# joined only to a program without operands (`{"command": "rm -rf", "path": "/"}`): beside a whole command line they are
# its working directory or its input (`{"command": "rm -rf node_modules", "directory": "/srv"}` was "rm -rf
# node_modules /srv", critical)
_TARGET_KEYS = ("path", "paths", "target", "targets", "file", "files")
_MAX_ARGS = 200


def _argv(value: Any) -> str:
    """The command line of a list of strings (an element with spaces quoted), or ''. A list of command
    lines (a CI job's `script:`, several elements with spaces) is not one command: ''."""
    if isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)) or not value or len(value) > _MAX_ARGS \
            or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        return ""
    parts = [str(v) for v in value]
    if " " in parts[0].strip() or sum(" " in p.strip() for p in parts) > 1:
        return ""  # ["rm -rf build", "cmake --install build --prefix /usr/local"]: read line by line already
    return " ".join(f"'{p}'" if (" " in p or not p) and "'" not in p else p for p in parts)


def _command_line(path: str, value: dict) -> tuple[str, str, str] | None:
    """(location, command line, key) of a dict holding a command and its arguments in sibling fields."""
    key = next((k for k in value if k in _COMMAND_KEYS and isinstance(value[k], str)), None)
    if key is None:
        return None
    bare = all(t.startswith("-") for t in value[key].split()[1:])  # a program and its options, no operand
    keys = _ARG_KEYS + (_TARGET_KEYS if bare else ())
    args = [_argv(value[k]) for k in keys if k != key and k in value]
    args = [a for a in args if a]
    if not args:
        return None
    return f"{_child_path(path, key)} (joined)", " ".join([value[key], *args])[:MAX_SCAN_CHARS], key


def _extract(proposed_action: Any, input_data: Any) -> tuple[tuple[Segment, ...], bool]:
    return extract_roots([("proposed_action", "" if proposed_action is None else str(proposed_action)),
                          ("input_data", input_data)])


def extract_roots(roots: list[tuple[str, Any]]) -> tuple[tuple[Segment, ...], bool]:
    """Segments of each (path, JSON value), in document order, capped in characters, nodes and depth."""
    segments: list[Segment] = []
    budget, truncated, nodes = MAX_SCAN_CHARS, False, 0

    def add(location: str, text: str, key: str | None = None, is_key: bool = False) -> None:
        nonlocal budget, truncated
        if not text:
            return
        if len(text) > budget:
            text, truncated = text[:budget], True
        if text:
            budget -= len(text)
            segments.append(Segment(location, text, key, is_key))

    stack: list[tuple[str, Any, str | None, int]] = [(path, value, None, 0) for path, value in reversed(roots)]
    while stack:
        path, value, key, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            truncated = True
            break
        if isinstance(value, str):
            add(path, value, key)
        elif isinstance(value, int) and not isinstance(value, bool):
            add(path, str(value), key)            # long integers can be card numbers
        elif isinstance(value, (dict, list, tuple)):
            if depth >= MAX_DEPTH:
                truncated = True
                continue
            children = []
            room = MAX_NODES - nodes - len(stack)
            if len(value) > room:
                truncated = True
            if isinstance(value, dict):
                command = _command_line(path, value)
                if command:
                    add(*command)
                for k, v in itertools.islice(value.items(), max(room, 0)):
                    k = str(k)
                    child = _child_path(path, k)
                    add(child, k, is_key=True)
                    children.append((child, v, k, depth + 1))
            else:
                children = [(f"{path}[{i}]", v, None, depth + 1) for i, v in enumerate(value[:max(room, 0)])]
                joined = _argv(value) if key in _COMMAND_KEYS else ""
                if joined:
                    add(f"{path} (joined)", joined, key)      # {"argv": ["rm", "-rf", "/"]}
            stack.extend(reversed(children))       # visit in document order
    return tuple(segments), truncated
