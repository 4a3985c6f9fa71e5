"""Code safety (flag codes ``code.*``) and the ``code_quality`` metric.

Code is pulled out of ``files`` entries (language from the extension), ``code`` / ``script`` /
``command`` fields and Markdown fenced blocks in any string. Python is parsed (``ast``) and scanned
with Bandit, with ``# nosec`` ignored and the noisy tests left out; every text, code or not, is checked
with a small rule set of our own: downloads piped into a shell, ``shutil.rmtree`` of a root path,
``eval`` / ``exec`` of input, deserialisation of request data.
"""
from __future__ import annotations

import ast
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass

from .base import Analyzer
from .destructive import _CRITICAL_PATHS
from .text import has_hint, redact

logger = logging.getLogger(__name__)

MAX_PYTHON_CHARS = 100_000      # per block given to ast / Bandit
MAX_PYTHON_TOTAL = 200_000      # per scan

_EXT = {".py": "python", ".pyw": "python", ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".ps1": "powershell",
        ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".ts": "javascript", ".tsx": "javascript",
        ".jsx": "javascript", ".rb": "ruby", ".go": "go", ".java": "java", ".sql": "sql", ".yml": "yaml",
        ".yaml": "yaml", ".dockerfile": "shell", ".md": "markdown", ".txt": "text", ".json": "json"}
_FENCE_LANG = {"python": "python", "py": "python", "python3": "python", "sh": "shell", "bash": "shell",
               "shell": "shell", "zsh": "shell", "console": "shell", "shell-session": "shell", "powershell": "powershell",
               "ps1": "powershell", "js": "javascript", "javascript": "javascript", "ts": "javascript",
               "typescript": "javascript", "sql": "sql", "dockerfile": "shell"}
_FENCE = re.compile(r"(?:^|\n)[ \t]*(```+|~~~+)[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*\1[ \t]*(?=\n|$)|\Z)", re.S)
_CODE_KEYS = {"code", "source", "source_code", "script", "snippet", "patch_content"}
_SHELL_KEYS = {"command", "cmd", "commands", "shell", "run"}
_BLOCK_KEYS = {"content", "text", "body"} | _CODE_KEYS | _SHELL_KEYS
_PY_HINT = re.compile(r"^(?:\s*(?:def |class |import |from \w[\w.]* import |async def |@\w|if __name__))", re.M)


@dataclass(frozen=True)
class CodeBlock:
    location: str
    language: str
    text: str


def _guess(text: str) -> str:
    if text.startswith("#!"):
        first = text.split("\n", 1)[0]
        return "python" if "python" in first else "shell" if re.search(r"\b(?:ba|z|da|k)?sh\b", first) else "text"
    return "python" if _PY_HINT.search(text) else "text"


MAX_CODE_BLOCKS = 200   # code blocks checked per call or response (the rules on plain text still see all of it)


def extract_code_blocks(ctx) -> tuple[CodeBlock, ...]:
    """Code blocks of the original segments and of the source JSON (files entries, code fields), at most
    MAX_CODE_BLOCKS (``ctx.code_blocks_cut`` says when there were more: the analyzer flags it)."""
    blocks = _blocks(ctx)
    try:
        ctx.code_blocks_cut = len(blocks) > MAX_CODE_BLOCKS
    except AttributeError:  # a context that takes no attributes: the cut is not flagged
        pass
    return tuple(blocks[:MAX_CODE_BLOCKS])


def _blocks(ctx) -> list[CodeBlock]:
    blocks: list[CodeBlock] = []
    by_location = {seg.location: seg for seg in ctx.original_segments}
    # files entries: {path|filename|name, content|code}
    for seg in ctx.original_segments:
        if not seg.is_key and seg.key in _BLOCK_KEYS:
            parent = seg.location.rsplit(".", 1)[0]
            language = None
            for name in ("path", "filename", "name", "file"):
                sib = by_location.get(f"{parent}.{name}")
                if sib is not None:
                    ext = os.path.splitext(sib.text.strip().lower())[1] or (
                        ".dockerfile" if sib.text.lower().endswith("dockerfile") else "")
                    language = _EXT.get(ext, "text")
                    break
            sib = by_location.get(f"{parent}.language") or by_location.get(f"{parent}.lang")
            if sib is not None:
                language = _FENCE_LANG.get(sib.text.strip().lower(), language or "text")
            if language is None:
                if seg.key in _SHELL_KEYS:
                    language = "shell"
                elif seg.key in _CODE_KEYS:
                    language = _guess(seg.text)
            # a code field that is itself a Markdown fence is unwrapped below, like fences in prose
            if language and language != "markdown" and "```" not in seg.text and "~~~" not in seg.text:
                blocks.append(CodeBlock(seg.location, language, seg.text))
                continue
        if "```" in seg.text or "~~~" in seg.text:
            for m in _FENCE.finditer(seg.text):
                lang = _FENCE_LANG.get(m.group(2).lower()) or _guess(m.group(3))
                blocks.append(CodeBlock(seg.location, lang, m.group(3)))
                if len(blocks) > MAX_CODE_BLOCKS:
                    return blocks
        if len(blocks) > MAX_CODE_BLOCKS:
            return blocks
    return blocks


# --- rules on every text ---------------------------------------------------------------------------------

_NET_FETCH = r"(?:curl|wget|fetch|http|aria2c|iwr|Invoke-WebRequest|irm|Invoke-RestMethod)\b"
_SHELLS = r"(?:sudo\s+(?:-\w+\s+)*)?(?:/usr)?(?:/bin/)?(?:ba|z|da|k|fi|c|tc)?sh\b|python[\d.]*\b|perl\b|ruby\b|node\b"
# what a download is piped into: a shell, or an interpreter reading it as its program (`| python3`); an
# interpreter given a module or inline code (`| python -m json.tool`) reads the download as data
_PIPE_TARGETS = (r"(?:sudo\s+(?:-\w+\s+)*)?(?:/usr)?(?:/bin/)?(?:ba|z|da|k|fi|c|tc)?sh\b|"
                 r"(?:python[\d.]*|perl|ruby|node)\b(?!\s+-[mcepnE]\b)")
_PIPE_TO_SHELL = re.compile(
    rf"\b{_NET_FETCH}[^\n|;&]{{0,300}}\|\s*(?:{_PIPE_TARGETS})|"
    rf"\b(?:{_SHELLS})\s+(?:-\w+\s+)*<\(\s*{_NET_FETCH}|"
    rf"\b(?:{_SHELLS})\s+-c\s+[\"']?\$\(\s*{_NET_FETCH}|"
    r"\b(?:iex|Invoke-Expression)\b[^\n]{0,40}(?:DownloadString|iwr|irm|Invoke-WebRequest|Invoke-RestMethod)|"
    r"(?:DownloadString|iwr|irm|Invoke-WebRequest)[^\n|]{0,200}\|\s*(?:iex|Invoke-Expression)\b", re.I)
# downloaded to a file, then run (curl -o x.sh URL && sh x.sh; wget URL; chmod +x f && ./f)
_FETCH_THEN_RUN = re.compile(
    r"\b(?:curl|wget)\b[^\n;&|]{0,300}?(?:-o\s*|-O\s*|--output[= ]|--output-document[= ])['\"]?(?P<file>[\w./~-]+)"
    r"[^\n]{0,300}?(?:&&|;|\n)\s*(?:sudo\s+)?(?:(?:ba|z|da)?sh|bash|python[\d.]*|perl|ruby|node|source|\.)\s+['\"]?(?P=file)\b|"
    r"\b(?:curl|wget)\b[^\n;&|]{0,300}?(?:-o\s*|-O\s*|--output[= ])['\"]?(?P<file2>[\w./~-]+)"
    r"[^\n]{0,300}?(?:&&|;|\n)\s*chmod\s+\+?[0-7]*x?\s+['\"]?(?P=file2)['\"]?\s*(?:&&|;|\n)\s*(?:sudo\s+)?['\"]?(?:\./)?(?P=file2)\b",
    re.I)
_EXEC_DOWNLOAD = re.compile(
    r"\b(?:exec|eval)\s*\(\s*(?:urllib\.request\.)?(?:urlopen|requests\.get|httpx\.get|urllib\.request\.urlopen)\s*\(", re.I)
_PLAIN_HTTP_OR_IP = re.compile(r"\bhttp://|://\d{1,3}(?:\.\d{1,3}){3}\b")
_RMTREE = re.compile(r"\b(?:shutil\.rmtree|rmtree|os\.removedirs|os\.rmdir|fs\.rmSync|fs\.rmdirSync|"
                     r"fs\.promises\.rm|rimraf(?:\.sync)?)\s*\(\s*([^,)\n]{1,120})")
_HOME_EXPR = re.compile(r"os\.path\.expanduser\(\s*['\"]~/?['\"]\s*\)|Path\.home\(\)|os\.environ\[?\.?(?:get\()?"
                        r"\s*['\"]HOME['\"]|os\.getenv\(\s*['\"]HOME['\"]|os\.homedir\(\)|Path\(\s*['\"]/['\"]\s*\)|"
                        r"os\.sep\b|os\.path\.abspath\(\s*os\.sep\s*\)|['\"]C:[\\/]{1,2}['\"]", re.I)
_EVAL_INPUT = re.compile(
    r"\b(?:eval|exec)\s*\(\s*(?:input\s*\(|raw_input\s*\(|sys\.argv|(?:flask\.)?request\.|req\.(?:body|query|params)|"
    r"self\.request\.|os\.environ|[\w.]*(?:recv|read)\s*\(|[\w.]*(?:user_input|payload|untrusted|body|data)\b)|"
    r"\bnew\s+Function\s*\([^)\n]{0,80}\breq(?:uest)?\.(?:body|query|params)|\beval\s*\(\s*req\.", re.I)
_PICKLE_UNTRUSTED = re.compile(
    r"\b(?:pickle|cPickle|dill|marshal|shelve|jsonpickle)\.loads?\s*\(\s*(?:[\w.]+\(\s*)*(?:[\w.]*(?:request|recv|read|body|payload|"
    r"data|message|msg|upload|untrusted|input|content|blob|b64decode|cookies?)\b)|\byaml\.unsafe_load(?:_all)?\s*\(|"
    r"\byaml\.(?:unsafe_)?load\s*\([^)\n]*"
    r"(?:Loader\s*=\s*yaml\.(?:Unsafe)?Loader|request|recv|body|payload)", re.I)
_SHELL_TRUE_VAR = re.compile(
    r"\b(?:subprocess\.(?:run|call|Popen|check_call|check_output)|os\.system|os\.popen)\s*\(\s*"
    r"(?:f[\"']|[\"'][^\"'\n]*[\"']\s*(?:%|\+|\.format)|[a-z_][\w.]*\s*[,)+%]|[\"'][^\"'\n]*\{)[^\n]*", re.I)
_CMD_INJECTION = re.compile(
    r"\bexec(?:Sync)?\s*\(\s*`[^`]{0,200}\$\{\s*req(?:uest)?\.(?:body|query|params)|"
    r"\bexec(?:Sync)?\s*\(\s*['\"][^'\"\n]*['\"]\s*\+\s*req(?:uest)?\.(?:body|query|params)|"
    r"\bexec\.Command(?:Context)?\(\s*(?:ctx\s*,\s*)?\"(?:/bin/)?(?:ba)?sh\"\s*,\s*\"-c\"\s*,\s*(?!\")|"
    r"\bRuntime\.getRuntime\(\)\.exec\(\s*(?:request|req)\.")
# Request data reaching a shell or an evaluator in other languages (Ruby, PHP, Rust, Go, Java).
_REQUEST_TO_EXEC = re.compile(
    r"\b(?:eval|instance_eval|class_eval|system|exec|spawn|`)\s*\(?\s*[^\n)]{0,80}?\bparams\[|"            # Ruby
    r"%x[({\[][^\n]{0,80}#\{\s*params\[|"
    r"\b(?:shell_exec|system|exec|passthru|popen|proc_open|eval|assert)\s*\([^\n;]{0,120}?\$_(?:GET|POST|REQUEST|COOKIE)\b|"  # PHP
    r"`[^`\n]{0,120}\$_(?:GET|POST|REQUEST)\b|"
    r"Command::new\(\s*\"(?:/bin/)?(?:ba|z)?sh\"\s*\)\s*\.arg\(\s*\"-c\"\s*\)\s*\.arg\(\s*(?!\")|"   # Rust
    r"\bProcessBuilder\(\s*\"(?:/bin/)?(?:ba)?sh\"\s*,\s*\"-c\"\s*,\s*(?!\")")          # Java
_SHELL_TRUE = re.compile(r"shell\s*=\s*True")
_CHMOD_777 = re.compile(r"\bos\.chmod\(\s*['\"]?/['\"]?\s*,\s*0o?777")

_RULE_HINTS = ("|", "<(", "$(", "curl", "wget", "iex", "invoke-expression", "rmtree", "rmdir", "rmsync", "rimraf", "eval", "exec",
               "function", "pickle", "marshal", "dill", "shelve", "yaml", "shell", "system", "popen",
               "params[", "$_get", "$_post", "$_request", "$_cookie", "command::new", "processbuilder")


def _root_arg(arg: str) -> bool:
    arg = arg.strip()
    if _HOME_EXPR.search(arg):
        return True
    lit = re.fullmatch(r"[rbuf]?[\"']([^\"']*)[\"']", arg)
    if not lit:
        return False
    path = lit.group(1)
    return path in _CRITICAL_PATHS or path.rstrip("/") in _CRITICAL_PATHS or path.lower() in _CRITICAL_PATHS


# --- Bandit ----------------------------------------------------------------------------------------------

# Noisy for agent code, or covered better elsewhere: assert (B101), import/subprocess without a shell
# (B404, B603, B607), hardcoded passwords (B105-B107: the secrets analyzer), random (B311),
# try/except/pass (B110, B112), requests without timeout (B113), temp dirs (B108).
BANDIT_SKIPS = ["B101", "B105", "B106", "B107", "B108", "B110", "B112", "B113", "B311", "B403", "B404", "B603",
                "B607"]
_BANDIT_CONF = {"HIGH": 0.9, "MEDIUM": 0.6, "LOW": 0.3, "UNDEFINED": 0.3}


class _Bandit:
    """One BanditManager per process (built once; loading the plugins is the slow part), used under a lock."""
    _lock = threading.Lock()
    _manager = None
    _build_lock = threading.Lock()

    @classmethod
    def build(cls):
        with cls._build_lock:
            if cls._manager is None:
                cls._manager = cls._new()
        return cls._manager

    @staticmethod
    def _new():
        quiet = logging.getLogger("stevedore.extension")
        level, quiet.level = quiet.level, logging.CRITICAL     # optional formatters (sarif) are not installed
        try:
            from bandit.core import config as b_config
            from bandit.core import manager as b_manager
        finally:
            quiet.setLevel(level)
        logging.getLogger("bandit").setLevel(logging.CRITICAL)
        conf = b_config.BanditConfig()
        return b_manager.BanditManager(conf, "file", quiet=True, ignore_nosec=True,
                                       profile={"include": set(), "exclude": set(BANDIT_SKIPS)})

    @classmethod
    def scan(cls, code: str) -> tuple[list, bool]:
        """(Bandit's issues, whether it skipped the code): Bandit catches its own failures (a
        RecursionError on a deeply nested or a 1,000-term expression) and lists the file as skipped,
        with no issue, which read as clean code."""
        from bandit.core import metrics as b_metrics
        manager = cls.build()
        acquired = cls._lock.acquire(timeout=0.5)
        if not acquired:            # a stuck run holds the shared one: use a private manager
            manager = cls._new()
        try:
            fd, path = tempfile.mkstemp(suffix=".py", prefix="hitl-bandit-")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(code)
                manager.files_list, manager.excluded_files, manager.skipped = [path], [], []
                manager.results, manager.scores, manager.metrics = [], [], b_metrics.Metrics()
                manager.run_tests()
                return list(manager.get_issue_list()), bool(manager.skipped)
            finally:
                os.unlink(path)
        finally:
            if acquired:
                cls._lock.release()


MAX_PARSE_TRIES = 40  # ast.parse calls for the parseable parts of one block that does not parse


def parseable_parts(text: str) -> tuple[list[tuple[int, str]], Exception | None, bool]:
    """([(line offset, code)], the first syntax error or None, whether lines were left unread):
    the whole text when it parses; otherwise the runs of lines around each line Python refuses
    that do parse, split again and again (a stray ``}``, a Python 2 ``print`` or an ``if`` left
    without a body must not hide the code around them from Bandit), within MAX_PARSE_TRIES
    parses. Lines still unread then make the caller fail closed."""
    try:
        ast.parse(text)
        return [(0, text)], None, False
    except (SyntaxError, ValueError) as exc:
        first = exc
    lines = text.splitlines(keepends=True)
    parts: list[tuple[int, str]] = []
    tries, unread = 1, False
    pending = [(0, len(lines))]  # runs of lines [lo, hi) to read, first run first
    while pending:
        lo, hi = pending.pop()
        chunk = "".join(lines[lo:hi])
        if not chunk.strip():
            continue
        if tries >= MAX_PARSE_TRIES:
            unread = True
            break
        tries += 1
        try:
            ast.parse(chunk)
            parts.append((lo, chunk))
            continue
        except (SyntaxError, ValueError) as exc:
            bad = lo + max(1, min(getattr(exc, "lineno", None) or 1, hi - lo)) - 1
        pending.append((bad + 1, hi))  # read after the run before it (a stack: pushed first, popped last)
        pending.append((lo, bad))
    return sorted(parts), first, unread


def _bandit_severity(issue) -> str:
    sev, conf = str(issue.severity).upper(), str(issue.confidence).upper()
    if sev == "HIGH":
        return "high" if conf in ("HIGH", "MEDIUM") else "medium"
    if sev == "MEDIUM":
        return "medium" if conf in ("HIGH", "MEDIUM") else "low"
    return "low"


class CodeSafetyAnalyzer(Analyzer):
    """Downloads piped into a shell and root deletes (critical), eval/deserialisation of input (high),
    Bandit findings on Python code, syntax errors; ``code_quality`` for the code found."""
    code = "code"
    version = "1"
    names = frozenset(("syntax_error", "scan_incomplete", "pipe_to_shell", "fetch_then_run", "delete_root", "eval_input",
                       "unsafe_deserialization", "shell_injection", "bandit"))
    name_patterns = {r"bandit\.B\d{3}": "bandit.B<nnn>"}

    def prepare(self) -> None:
        _Bandit.build()

    def run(self, ctx) -> tuple[list[dict], dict]:
        flags = self.for_each_segment(ctx, self._segment)
        blocks = getattr(ctx, "code_blocks", ())
        budget = MAX_PYTHON_TOTAL
        scores = []

        def unread_part(location: str, why: str) -> None:
            # fail closed, as for an analyzer out of time or an input past the scan's cap (high): what
            # Bandit did not read may hide anything, and filler in front of it is what an evasion looks like
            flags.append(self.flag("scan_incomplete", "high", f"{why}; review it manually", location,
                                   match="scan_incomplete"))

        if getattr(ctx, "code_blocks_cut", False):
            unread_part("input_data" if getattr(ctx, "kind", "") == "call" else "agent_response",
                        f"More than {MAX_CODE_BLOCKS} code blocks: Bandit read the first {MAX_CODE_BLOCKS} only")
        for block in blocks:
            if block.language == "python" and budget <= 0 and block.text.strip():
                unread_part(block.location, f"Past the {MAX_PYTHON_TOTAL:,} characters of Python read per "
                                            "check: Bandit did not read this block")
            if block.language != "python" or budget <= 0:
                scores.append(1.0 if block.text.strip() else 0.0)
                continue
            text = block.text[:MAX_PYTHON_CHARS]
            if len(block.text) > MAX_PYTHON_CHARS:
                unread_part(block.location, f"Python longer than {MAX_PYTHON_CHARS:,} characters: Bandit read the "
                                            "first only")
            budget -= len(text)
            parts, error, unread = parseable_parts(text)
            if error is not None:
                line = getattr(error, "lineno", None)
                flags.append(self.flag("syntax_error", "low", f"Python does not parse: {getattr(error, 'msg', error)}"
                                       + (f" (line {line})" if line else ""), block.location, match=str(error)))
            if unread:  # fail closed, as the pipeline does for what it could not read
                flags.append(self.flag("scan_incomplete", "medium", "Python that does not parse in many places: "
                                       "Bandit could not read all of it; review it manually", block.location,
                                       match="scan_incomplete"))
            penalty = 0.0
            for offset, part in parts:  # Bandit still reads what parses: a stray line hides nothing
                issues, skipped = _Bandit.scan(part)
                if skipped:
                    unread_part(block.location, "Bandit could not read this Python (nested or chained too deeply)")
                for issue in issues:
                    severity = _bandit_severity(issue)
                    penalty += {"low": 0.05, "medium": 0.15, "high": 0.3, "critical": 0.5}[severity]
                    flags.append(self.flag(
                        f"bandit.{issue.test_id}", severity,
                        f"Bandit {issue.test_id} ({issue.test}): {redact(issue.text, 120)} "
                        f"(line {issue.lineno + offset})",
                        block.location, confidence=_BANDIT_CONF.get(str(issue.confidence).upper(), 0.5),
                        match=f"{issue.test_id}:{redact(issue.get_code(max_lines=1, tabbed=False) or '', 200)}"))
            if error is not None:
                scores.append(0.0)
                continue
            size = len(block.text)
            sanity = 1.0 if size <= MAX_PYTHON_CHARS else 0.5
            scores.append(max(0.0, 1.0 - penalty) * sanity)
        metrics = {}
        if blocks:
            metrics["code_quality"] = sum(scores) / len(scores)
        elif getattr(ctx, "kind", "") == "response":
            metrics["code_quality"] = 0.0
        return flags, metrics

    def analyze(self, ctx) -> list[dict]:
        return self.run(ctx)[0]

    def _segment(self, seg) -> list[dict]:
        text, loc, flags = seg.text, seg.location, []
        lower = text.lower()
        if not has_hint(lower, _RULE_HINTS):
            return flags
        m = ("|" in text or "<(" in text or "$(" in text or "iex" in lower or "invoke-expression" in lower) \
            and _PIPE_TO_SHELL.search(text)
        if m:
            severity = "critical" if _PLAIN_HTTP_OR_IP.search(m.group(0)) else "high"
            flags.append(self.flag("pipe_to_shell", severity, f"Runs a downloaded script: \"{redact(m.group(0))}\"",
                                   loc, match=m.group(0)))
        m = ("curl" in lower or "wget" in lower) and _FETCH_THEN_RUN.search(text)
        if not m and ("exec" in lower or "eval" in lower):
            m = _EXEC_DOWNLOAD.search(text)
        if m:
            severity = "critical" if _PLAIN_HTTP_OR_IP.search(m.group(0)) else "high"
            flags.append(self.flag("fetch_then_run", severity, f"Downloads a script and runs it: "
                                                              f"\"{redact(m.group(0))}\"", loc, match=m.group(0)))
        if "rm" in lower:
            for m in _RMTREE.finditer(text):
                if _root_arg(m.group(1)):
                    flags.append(self.flag("delete_root", "critical", f"Deletes a root/home/system path: "
                                                                      f"\"{redact(m.group(0))}\"", loc, match=m.group(0)))
                    break
        if "eval" in lower or "exec" in lower or "function" in lower:
            m = _EVAL_INPUT.search(text)
            if m:
                flags.append(self.flag("eval_input", "high", f"Evaluates untrusted input as code: "
                                                             f"\"{redact(m.group(0))}\"", loc, match=m.group(0)))
        m = _PICKLE_UNTRUSTED.search(text) if any(h in lower for h in ("pickle", "marshal", "dill", "shelve",
                                                                        "yaml")) else None
        if m:
            flags.append(self.flag("unsafe_deserialization", "high", f"Deserialises untrusted data: "
                                                                     f"\"{redact(m.group(0))}\"", loc, match=m.group(0)))
        if "shell" in lower:
            for m in _SHELL_TRUE_VAR.finditer(text):
                if _SHELL_TRUE.search(m.group(0)):
                    flags.append(self.flag("shell_injection", "high", f"Shell command built from variables with "
                                                                      f"shell=True: \"{redact(m.group(0))}\"", loc,
                                           match=m.group(0)))
                    break
        m = ("exec" in lower or "command" in lower) and _CMD_INJECTION.search(text)
        if not m and any(h in lower for h in ("params[", "$_get", "$_post", "$_request", "$_cookie", "command::new",
                                              "processbuilder")):
            m = _REQUEST_TO_EXEC.search(text)
        if m:
            flags.append(self.flag("shell_injection", "high", f"Shell command built from request data: "
                                                              f"\"{redact(m.group(0))}\"", loc, match=m.group(0)))
        if "system" in lower or "popen" in lower:
            m = re.search(r"(?:\bos|__import__\(\s*['\"]os['\"]\s*\))\.(?:system|popen)\s*\(\s*(?:f[\"']|[\"'][^\"'\n]*[\"']\s*(?:%|\+|\.format)|"
                          r"[a-z_][\w.]*\s*[)+%])", text)
            if m:
                flags.append(self.flag("shell_injection", "high", f"Shell command built from variables: "
                                                                  f"\"{redact(m.group(0))}\"", loc, match=m.group(0)))
        return flags
