"""Destructive commands: shell, SQL, git and cloud CLI commands that destroy data or hosts
(flag codes ``destructive.*``)."""
from __future__ import annotations

import posixpath
import re

from .base import Analyzer
from .context import RiskContext, Segment
from .text import has_hint, redact

_I = re.IGNORECASE

_CRITICAL_PATHS = {"/", "/*", "~", "~/", "~/*", "$HOME", "${HOME}", "$HOME/", "${HOME}/", "$HOME/*", "/home", "/root",
                   "/etc", "/usr", "/var", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/opt", "/srv", "/dev", "/sys",
                   "/proc", "/mnt", "/data", "/var/lib", "/usr/local", "c:\\", "c:/"}
_BROAD_PATHS = {".", "./", "*", "./*", "..", "../", "../*", ".*"}
# Below a system or home tree, a recursive delete is high (the reviewer looks at what it removes:
# `rm -rf /home/app/data` was unflagged); a database's or a container runtime's data is critical.
_SYSTEM_TREES = re.compile(r"^(?:/(?:home|root|etc|usr|var|bin|sbin|lib|lib32|lib64|libx32|boot|opt|srv|dev|sys|proc|"
                           r"mnt|media|data|snap)|~|\$HOME|\$\{HOME\})/", re.I)
_DATA_TREES = re.compile(r"^/var/lib/(?:postgresql|pgsql|mysql|mariadb|mongodb|redis|docker|containerd|etcd|"
                         r"cassandra|elasticsearch|opensearch|kafka|zookeeper|rabbitmq|influxdb|clickhouse|neo4j|"
                         r"couchdb|kubelet|minio)(?:/|$)", re.I)
# Scratch and caches, wherever they are: deleting them loses nothing (`rm -rf /var/lib/apt/lists/*`).
_SCRATCH = re.compile(r"^(?:/tmp|/var/tmp|/dev/shm|/var/cache|/var/lib/apt/lists|/run/user/\d+)(?:/|$)|"
                      r"(?:^|/)(?:\.?cache|__pycache__|node_modules|\.npm|\.pytest_cache|\.mypy_cache|"
                      r"\.ruff_cache|\.gradle)(?:/|$)", re.I)
_RM = re.compile(r"(?<![\w.-])(?:sudo\s+)?rm\s+([^\n;&|)`]{1,300})")
_UNGUARDED_VAR = re.compile(r"\$\{?[A-Za-z_]\w*\}?/?\*?")
_TEMP_VAR = re.compile(r"^\$\{?(?:tmp|temp|tmpdir|tempdir|tmp_dir|temp_dir|TMPDIR|TMP|TEMP|scratch)\}?$", re.I)
_DESTRUCTIVE = [   # (name, severity, hints, label, regex)
    ("disk_format", "critical", ("mkfs",), "Filesystem format", re.compile(r"(?<![\w.-])mkfs(?:\.\w+)?\s+\S")),
    ("disk_overwrite", "critical", ("/dev/",), "Raw disk overwrite", re.compile(
        r"\bdd\s+[^\n;&|]*\bof=/dev/(?:sd[a-z]|nvme\d|hd[a-z]|xvd[a-z]|vd[a-z]|disk\d|mmcblk\d|md\d|dm-\d|mapper/)|"
        r">\s*/dev/(?:sd[a-z]|nvme\d+n\d+|hd[a-z]|xvd[a-z]|vd[a-z]|disk\d)\b|"
        r"\b(?:shred|wipefs)\s+[^\n;&|]*/dev/(?:sd|nvme|hd|xvd|vd|disk)")),
    ("fork_bomb", "critical", ("&",), "Fork bomb", re.compile(
        r":\s*\(\s*\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;\s*:|\b(\w+)\s*\(\s*\)\s*\{\s*\1\s*\|\s*\1\s*&\s*\}")),
    ("permissions_root", "critical", ("chmod", "chown", "chgrp"), "Recursive permission change on a system path",
     re.compile(r"\bch(?:mod|own|grp)\s+(?:-[a-zA-Z]*R[a-zA-Z]*|--recursive)\s+(?:\S+\s+)?"
                r"(?:/|/etc|/usr|/var|/bin|/home|~)(?=[\s;&|'\"]|$)")),
    ("permissions_world", "high", ("chmod",), "Recursive world-writable permissions", re.compile(
        r"\bchmod\s+(?:-[a-zA-Z]*R[a-zA-Z]*|--recursive)\s+(?:0?777|a\+rwx|ugo\+rwx|o\+w)\b")),
    ("find_delete_root", "critical", ("find",), "find -delete from a root path", re.compile(
        r"\bfind\s+(?:/|~|\$HOME)(?=\s)[^\n;&|]*(?:-delete\b|-exec\s+rm\b)")),
    ("shutdown", "high", ("shutdown", "reboot", "halt", "poweroff", "init"), "Host shutdown/reboot", re.compile(
        r"(?:^|[;&|(`]\s*|\bsudo\s+|\bssh\s+\S+\s+['\"]?)(?:shutdown|reboot|halt|poweroff)\b(?!\s*[(.=])|"
        r"\bshutdown\s+(?:-[hrPH]\b|now\b|\+\d)|\bsystemctl\s+(?:poweroff|reboot|halt|kexec)\b|"
        r"(?:^|[;&|]\s*|\bsudo\s+)init\s+[06]\b", re.M)),
    ("kill_all", "high", ("kill",), "Kill every process", re.compile(r"\bkill\s+-(?:9|KILL|SIGKILL)\s+-1\b")),
    ("sql_drop_database", "critical", ("drop",), "DROP DATABASE/SCHEMA", re.compile(
        r"\bDROP\s+(?:DATABASE|SCHEMA)\b", _I)),
    ("sql_drop_table", "high", ("drop",), "DROP TABLE", re.compile(r"\bDROP\s+TABLE\b", _I)),
    ("sql_drop_column", "high", ("drop",), "ALTER TABLE ... DROP COLUMN", re.compile(
        r"\bALTER\s+TABLE\s+[^;\n'\"]{1,200}?\bDROP\s+(?:COLUMN\s+)?"
        r"(?!CONSTRAINT\b|INDEX\b|DEFAULT\b|NOT\b|IDENTITY\b|EXPRESSION\b)[\w\"`]+", _I)),
    ("sql_truncate", "high", ("truncate",), "TRUNCATE", re.compile(
        r"(?<![.\w])TRUNCATE\s+(?:TABLE\s+(?:ONLY\s+)?[\w.\"`]+|[\w.\"`]+\s*(?:;|$|\bCASCADE\b|\bRESTART\b))", _I)),
    ("sql_delete_without_where", "high", ("delete",), "DELETE without WHERE", re.compile(
        r"\bDELETE\s+FROM\s+[\w.\"`\[\]]+(?:\s+(?:AS\s+)?(?!WHERE\b|USING\b)\w+)?\s*"
        r"(?:;|$|\)|\bRETURNING\b|['\"`])", _I)),
    ("sql_update_without_where", "high", ("update",), "UPDATE without WHERE", re.compile(
        r"\bUPDATE\s+[\w.\"`]+\s+SET\s+[\w.\"`]+\s*=(?:(?!\bWHERE\b)[^;]){0,400}?(?:;|$|['\"`]\s*\))", _I)),
    ("datastore_flush", "critical", ("flushall", "dropdatabase"), "Wipe of a whole datastore", re.compile(
        r"\bFLUSHALL\b|\bdropDatabase\s*\(", _I)),
    ("datastore_flush_db", "high", ("flushdb", ".drop("), "Wipe of a datastore", re.compile(
        r"\bFLUSHDB\b|\bdb\.\w+\.drop\s*\(\s*\)", _I)),
    ("orm_delete_all", "high", (".delete()",), "Delete every row (ORM)", re.compile(r"\.objects\.all\(\)\.delete\(\)")),
    ("git_reset_hard", "high", ("git",), "git reset --hard", re.compile(r"\bgit\s+reset\s+(?:\S+\s+)?--hard\b")),
    ("git_clean", "high", ("git",), "git clean -f (deletes untracked files)", re.compile(
        r"\bgit\s+clean\s+(?:-[a-zA-Z]*f[a-zA-Z]*[dx]|-[a-zA-Z]*[dx][a-zA-Z]*f|-f\s+-[dx]|-[dx]\s+-f)")),
    ("git_branch_force_delete", "high", ("git",), "git branch -D", re.compile(
        r"\bgit\s+branch\s+(?:-D|--delete\s+--force|--force\s+--delete|-d\s+-f|-f\s+-d)\b")),
    ("git_delete_protected", "high", ("git",), "Deleting a protected remote branch", re.compile(
        r"\bgit\s+push\s+[^\n;&|]*(?:--delete\s+|\s:)(?:refs/heads/)?(?:main|master|production|release|trunk)\b")),
    ("git_history_rewrite", "high", ("git",), "History rewrite", re.compile(
        r"\bgit\s+(?:filter-branch|filter-repo)\b")),
    ("aws_s3_recursive_delete", "high", ("aws",), "Recursive S3 delete", re.compile(
        r"\baws\s+s3\s+(?:rm\s+[^\n;&|]*--recursive|rb\s+[^\n;&|]*--force)\b")),
    ("aws_database_delete", "critical", ("aws",), "Database deletion", re.compile(
        r"\baws\s+(?:rds|docdb|neptune)\s+delete-db-(?:instance|cluster)\b|\baws\s+dynamodb\s+delete-table\b")),
    ("aws_delete", "high", ("aws",), "AWS resource deletion", re.compile(
        r"\baws\s+[\w-]+\s+(?:terminate-instances|delete-[\w-]+)\b")),
    ("gcloud_project_delete", "critical", ("gcloud",), "GCP project/database deletion", re.compile(
        r"\bgcloud\s+(?:projects|sql\s+instances)\s+delete\b")),
    ("gcloud_delete", "high", ("gcloud",), "GCP resource deletion", re.compile(
        r"\bgcloud\s+(?:[\w-]+\s+){1,4}delete\b")),
    ("kubectl_delete", "high", ("kubectl",), "Kubernetes bulk deletion", re.compile(
        r"\bkubectl\s+delete\s+(?:[^\n;&|]*\s)?(?:ns|namespaces?)\b|\bkubectl\s+delete\b[^\n;&|]*\s--all\b")),
    ("infra_destroy", "critical", ("destroy",), "Infrastructure destroy", re.compile(
        r"\bterraform\s+(?:destroy\b|apply\s+[^\n;&|]*-destroy\b)|\b(?:pulumi|cdk)\s+destroy\b")),
    ("terraform_state_rm", "high", ("terraform",), "terraform state rm", re.compile(r"\bterraform\s+state\s+rm\b")),
    ("azure_delete", "high", ("az",), "Azure resource deletion", re.compile(r"\baz\s+(?:[\w-]+\s+){1,3}delete\b")),
    ("helm_uninstall", "high", ("helm",), "helm uninstall", re.compile(r"\bhelm\s+(?:uninstall|delete)\b")),
    ("docker_prune", "high", ("docker",), "Docker prune of volumes/all", re.compile(
        r"\bdocker\s+(?:system\s+prune\b[^\n;&|]*(?:-a\b|--all\b|--volumes\b)|volume\s+(?:rm|prune)\b)")),
]
_GIT_PUSH = re.compile(r"\bgit\s+push\b([^\n;&|]{0,200})")
_FORCE = re.compile(r"(?:^|\s)(?:--force(?:-with-lease)?(?:=\S*)?|-f|-\w*f\w*)(?=\s|$)|\s\+\S")
_PROTECTED = re.compile(r"(?:^|[\s:+])(?:refs/heads/)?(?:main|master|production|prod|release|trunk)(?=\s|$)")


class DestructiveCommandAnalyzer(Analyzer):
    """Shell, SQL, git and cloud CLI commands that destroy data or hosts (critical/high)."""
    code = "destructive"
    names = frozenset(("git_force_push", "rm_root", "rm_system", "rm_broad", *(rule[0] for rule in _DESTRUCTIVE)))

    def analyze(self, ctx: RiskContext) -> list[dict]:
        return self.for_each_segment(ctx, self._segment)

    def _segment(self, seg: Segment) -> list[dict]:
        flags, text, loc = [], seg.text, seg.location
        for m in _RM.finditer(text) if "rm" in text else ():
            flag = self._rm(m.group(1), loc)
            if flag:
                flags.append(flag)
        for m in _GIT_PUSH.finditer(text) if "push" in text else ():
            args = m.group(1)
            if _FORCE.search(args):
                protected = _PROTECTED.search(args)
                severity, what = ("high", "a protected branch") if protected else ("low", "a non-protected branch")
                flags.append(self.flag("git_force_push", severity,
                                       f"Force push to {what}: \"{redact(m.group(0))}\"", loc))
        lower = text.lower()
        for name, severity, hints, label, rx in _DESTRUCTIVE:
            m = has_hint(lower, hints) and rx.search(text)
            if m:
                flags.append(self.flag(name, severity, f"{label}: \"{redact(m.group(0))}\"", loc))
        return flags

    def _rm(self, argstring: str, loc: str) -> dict | None:
        args = [a.replace("'", "").replace('"', "") for a in argstring.split()]
        opts = [a for a in args if a.startswith("-")]
        targets = [a for a in args if not a.startswith("-")]
        recursive = any(o in ("--recursive", "-R") or (not o.startswith("--") and "r" in o.lower()) for o in opts)
        if not recursive:
            return None
        shown = redact("rm " + argstring)
        paths = [_path(t) for t in targets]
        if "--no-preserve-root" in opts or any(p in _CRITICAL_PATHS or p.lower() in _CRITICAL_PATHS for p in paths):
            return self.flag("rm_root", "critical", f"Recursive delete of a root/home/system path: \"{shown}\"", loc)
        if any(_DATA_TREES.match(p) for p in paths):
            return self.flag("rm_root", "critical", f"Recursive delete of a database's or container runtime's "
                                                    f"data: \"{shown}\"", loc)
        if any(_SYSTEM_TREES.match(p) and not _SCRATCH.search(p) for p in paths):
            return self.flag("rm_system", "high", f"Recursive delete under a system or home directory: \"{shown}\"",
                             loc)
        if any(t in _BROAD_PATHS or (_UNGUARDED_VAR.fullmatch(t) and ":?" not in t and not _TEMP_VAR.search(t))
               for t in targets):
            return self.flag("rm_broad", "high", f"Recursive delete of the working directory or an "
                                                 f"unchecked variable path: \"{shown}\"", loc)
        return None


def _path(target: str) -> str:
    """A delete's target as the path it names: `/tmp/../etc` is `/etc`, `//etc/` and `/etc/*` are `/etc`."""
    if target.startswith("/"):
        target = "/" + posixpath.normpath(target).lstrip("/")
    return target.rstrip("*").rstrip("/") or target[:1]
