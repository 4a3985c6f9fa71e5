"""Destructive commands: shell, SQL, git and cloud CLI commands that destroy data or hosts
(flag codes ``destructive.*``)."""
from __future__ import annotations

import posixpath
import re

from .base import SEVERITY_RANK, Analyzer
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
# Global options between a CLI and its subcommand (`aws --profile prod rds …`, `terraform -chdir=x destroy`,
# `kubectl -n prod delete`, `git -C repo push -f`): an option, with or without a value, at most six of them.
_O = r"(?:\s+-{1,2}[A-Za-z][\w.-]*(?:[= ](?!-)[^\s;&|]+)?){0,6}\s+"
# Under a database's data tree, its logs, caches and scratch (`pg_log/*.log`, `.cache`, `docker/tmp`):
# high, not critical (`pg_wal`, `base`, `global` are the database itself).
_DATA_SCRATCH = re.compile(r"(?:^|/)(?:pg_log|log|logs|\.?cache|tmp)(?:/|$)|\.log(?:\.\d+|\.gz)?$", re.I)
_RM = re.compile(r"(?<![\w.-])(?:sudo\s+)?rm\s+([^\n;&|)`]{1,300})")
_UNGUARDED_VAR = re.compile(r"\$\{?[A-Za-z_]\w*\}?/?\*?")
_TEMP_VAR = re.compile(r"^\$\{?(?:tmp|temp|tmpdir|tempdir|tmp_dir|temp_dir|TMPDIR|TMP|TEMP|scratch)\}?$", re.I)
_TEST_DB = re.compile(r"(?:^|[_-])(?:test|tests|testing|e2e|ci|tmp|temp|scratch)(?:[_-]|\d*$)", re.I)


def _drop_database_level(m: re.Match) -> str:
    """A database named as a test one (`test_app`, `shop_ci_42`): low with IF EXISTS, else high; another
    one: high with IF EXISTS (a rollback migration), else critical."""
    if m.group("name"):
        name = m.group("name").strip().strip("\"`'[]")
    else:
        name = next((w for w in reversed((m.group("args") or "").split()) if not w.startswith("-")), "")
    guarded = bool(m.group("if") or m.group("if2"))
    if _TEST_DB.search(name):
        return "low" if guarded else "high"
    return "high" if guarded else "critical"


_DESTRUCTIVE = [   # (name, severity, hints, label, regex)
    # on a device (or a variable naming one); on an image file (`mkfs.ext4 -F /tmp/loop.img`): medium
    ("disk_format", lambda m: "critical" if re.search(r"/dev/|\$", m.group(0)) else "medium", ("mkfs",),
     "Filesystem format", re.compile(r"(?<![\w.-])mkfs(?:\.\w+)?\s+[^\n;&|]*")),
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
    ("shutdown", "high", ("shutdown", "reboot", "halt", "poweroff", "init"), "Host shutdown/reboot", re.compile(
        r"(?:^|[;&|(`]\s*|\bsudo\s+|\bssh\s+\S+\s+['\"]?)(?:shutdown|reboot|halt|poweroff)\b(?!\s*[(.=])|"
        r"\bshutdown\s+(?:-[hrPH]\b|now\b|\+\d)|\bsystemctl\s+(?:poweroff|reboot|halt|kexec)\b|"
        r"(?:^|[;&|]\s*|\bsudo\s+)init\s+[06]\b", re.M)),
    ("kill_all", "high", ("kill",), "Kill every process", re.compile(r"\bkill\s+-(?:9|KILL|SIGKILL)\s+-1\b")),
    # IF EXISTS / --if-exists: rollback migrations, test databases: high, not a project stop (low for a
    # database named as a test one: `dropdb --if-exists shop_e2e`)
    ("sql_drop_database", _drop_database_level, ("drop",), "DROP DATABASE/SCHEMA", re.compile(
        r"\bDROP\s+(?:DATABASE|SCHEMA)\b(?P<if>\s+IF\s+EXISTS\b)?(?P<name>\s+[\"`'\[]?[\w.-]+)?|"
        r"(?<![\w.-])dropdb\s(?P<if2>[^\n;&|]*--if-exists\b)?(?P<args>[^\n;&|'\"]{0,200})", _I)),
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
    ("git_reset_hard", "high", ("git",), "git reset --hard", re.compile(rf"\bgit{_O}reset\s+(?:\S+\s+)?--hard\b")),
    ("git_clean", "high", ("git",), "git clean -f (deletes untracked files)", re.compile(
        rf"\bgit{_O}clean\s+(?:-[a-zA-Z]*f[a-zA-Z]*[dx]|-[a-zA-Z]*[dx][a-zA-Z]*f|-f\s+-[dx]|-[dx]\s+-f)")),
    ("git_branch_force_delete", "high", ("git",), "git branch -D", re.compile(
        rf"\bgit{_O}branch\s+(?:-D|--delete\s+--force|--force\s+--delete|-d\s+-f|-f\s+-d)\b")),
    ("git_delete_protected", "high", ("git",), "Deleting a protected remote branch", re.compile(
        rf"\bgit{_O}push\s+[^\n;&|]*(?:--delete\s+|\s:)(?:refs/heads/)?(?:main|master|production|release|trunk)\b")),
    ("git_history_rewrite", "high", ("git",), "History rewrite", re.compile(
        rf"\bgit{_O}(?:filter-branch|filter-repo)\b")),
    ("aws_s3_recursive_delete", "high", ("aws",), "Recursive S3 delete", re.compile(
        rf"\baws{_O}s3\s+(?:rm\s+[^\n;&|]*--recursive|rb\s+[^\n;&|]*--force)\b")),
    ("aws_database_delete", "critical", ("aws",), "Database deletion", re.compile(
        rf"\baws{_O}(?:(?:rds|docdb|neptune)\s+delete-db-(?:instance|cluster)|dynamodb\s+delete-table)\b")),
    ("aws_delete", "high", ("aws",), "AWS resource deletion", re.compile(
        rf"\baws{_O}[\w-]+\s+(?:terminate-instances|delete-[\w-]+)\b")),
    ("gcloud_project_delete", "critical", ("gcloud",), "GCP project/database deletion", re.compile(
        rf"\bgcloud{_O}(?:projects|sql\s+instances)\s+delete\b")),
    ("gcloud_delete", "high", ("gcloud",), "GCP resource deletion", re.compile(
        r"\bgcloud\s+(?:[\w-]+\s+){1,4}delete\b")),
    ("kubectl_delete", "high", ("kubectl",), "Kubernetes bulk deletion", re.compile(
        rf"\bkubectl{_O}delete\s+(?:[^\n;&|]*\s)?(?:ns|namespaces?)\b|\bkubectl{_O}delete\b[^\n;&|]*\s--all\b")),
    # one resource or module (`-target=module.preview_pr_482`: a preview environment's teardown): high
    ("infra_destroy", lambda m: "high" if re.search(r"\s-target[= ]", m.group(0)) else "critical", ("destroy",),
     "Infrastructure destroy", re.compile(
        rf"\b(?:terraform|tofu|terragrunt){_O}(?:(?:run-all\s+)?destroy\b|apply\s+[^\n;&|]*-destroy\b)[^\n;&|]*|"
        r"\b(?:pulumi|cdk)\s+destroy\b")),
    ("terraform_state_rm", "high", ("terraform", "tofu"), "terraform state rm",
     re.compile(rf"\b(?:terraform|tofu){_O}state\s+rm\b")),
    ("azure_delete", "high", ("az",), "Azure resource deletion", re.compile(r"\baz\s+(?:[\w-]+\s+){1,3}delete\b")),
    ("helm_uninstall", "high", ("helm",), "helm uninstall", re.compile(rf"\bhelm{_O}(?:uninstall|delete)\b")),
    ("docker_prune", "high", ("docker",), "Docker prune of volumes/all", re.compile(
        rf"\bdocker{_O}(?:system\s+prune\b[^\n;&|]*(?:-a\b|--all\b|--volumes\b)|volume\s+(?:rm|prune)\b)")),
]
_GIT_PUSH = re.compile(rf"\bgit{_O}push\b([^\n;&|]{{0,200}})")
_FORCE = re.compile(r"(?:^|\s)(?:--force(?:-with-lease)?(?:=\S*)?|-f|-\w*f\w*)(?=\s|$)|\s\+\S")
_PROTECTED = re.compile(r"(?:^|[\s:+])(?:refs/heads/)?(?:main|master|production|prod|release|trunk)(?=\s|$)")


_FIND = re.compile(r"(?<![\w.-])find\s+([^\n;&|]{1,400})")
_FIND_RM = re.compile(r"-delete\b|-exec(?:dir)?\s+(?:sudo\s+)?(?:\S*/)?rm\b")
_FIND_TESTS = frozenset(("-name", "-iname", "-path", "-ipath", "-wholename", "-iwholename", "-regex", "-iregex",
                         "-mtime", "-mmin", "-atime", "-amin", "-ctime", "-cmin", "-newer", "-size", "-user",
                         "-group", "-empty", "-perm", "-links", "-inum", "-samefile"))
# Recursive deletes in code: shutil.rmtree('/var/lib/postgresql'), rmtree(path='/'), fs.rmSync('/', {recursive: true})
_CODE_DELETE = re.compile(
    r"\b(?P<fn>shutil\.rmtree|rmtree|rmSync|rmdirSync|promises\.rm|fs\.rm|rimraf(?:\.sync)?|remove_dir_all|"
    r"RemoveAll|rm_rf|rm_r)\s*\(\s*(?:path\s*=\s*)?(?P<q>['\"`])(?P<path>[^'\"`\n]{1,300})(?P=q)"
    r"(?P<rest>[^\n)]{0,120})")
_CODE_DELETE_HINTS = ("rmtree", "rmsync", "rmdirsync", "fs.rm", "promises.rm", "rimraf", "remove_dir_all",
                      "removeall", "rm_r")


def _kind(target: str) -> str | None:
    """What deleting ``target`` recursively removes: "root" (/, ~, a system directory), "data" (a
    database's or container runtime's data), "system" (something below a system or home directory, or the
    logs / caches of a data tree), "broad" (the working directory, an unchecked variable) or None."""
    path = _path(target)
    if path in _CRITICAL_PATHS or path.lower() in _CRITICAL_PATHS:
        return "root"
    data = _DATA_TREES.match(path)
    if data:
        return "system" if _DATA_SCRATCH.search(path[data.end():]) else "data"
    if _SYSTEM_TREES.match(path) and not _SCRATCH.search(path):
        return "system"
    if target in _BROAD_PATHS or path in _BROAD_PATHS or (
            _UNGUARDED_VAR.fullmatch(target) and ":?" not in target and not _TEMP_VAR.search(target)):
        return "broad"
    return None


class DestructiveCommandAnalyzer(Analyzer):
    """Shell, SQL, git and cloud CLI commands that destroy data or hosts (critical/high)."""
    code = "destructive"
    version = "2"       # h4: find filters, IF EXISTS, data-tree scratch, global CLI options, code deletes
    names = frozenset(("git_force_push", "rm_root", "rm_system", "rm_broad", "find_delete_root",
                       *(rule[0] for rule in _DESTRUCTIVE)))

    def analyze(self, ctx: RiskContext) -> list[dict]:
        return self.for_each_segment(ctx, self._segment)

    def _segment(self, seg: Segment) -> list[dict]:
        flags, text, loc = [], seg.text, seg.location
        for m in _RM.finditer(text) if "rm" in text else ():
            flag = self._rm(m.group(1), loc)
            if flag:
                flags.append(flag)
        for m in _FIND.finditer(text) if "find" in text else ():
            flag = self._find(m.group(1), loc)
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
        if any(h in lower for h in _CODE_DELETE_HINTS):
            for m in _CODE_DELETE.finditer(text):
                if m.group("fn") in ("rmSync", "rmdirSync", "promises.rm", "fs.rm") and "recursive" not in m.group(
                        "rest"):
                    continue
                if _kind(m.group("path")) in ("root", "data"):
                    flags.append(self.flag("rm_root", "critical", f"Recursive delete of a root, system or database "
                                           f"path in code: \"{redact(m.group(0))}\"", loc))
                    break
        for name, severity, hints, label, rx in _DESTRUCTIVE:
            if not has_hint(lower, hints):
                continue
            if callable(severity):       # the worst of the matches (at most 20 looked at)
                found = None
                for i, m in enumerate(rx.finditer(text)):
                    level = severity(m)
                    if found is None or SEVERITY_RANK[level] > SEVERITY_RANK[found[0]]:
                        found = (level, m)
                    if level == "critical" or i >= 20:
                        break
                if found:
                    flags.append(self.flag(name, found[0], f"{label}: \"{redact(found[1].group(0))}\"", loc))
                continue
            m = rx.search(text)
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
        kinds = {_kind(t) for t in targets}
        if "--no-preserve-root" in opts or "root" in kinds:
            return self.flag("rm_root", "critical", f"Recursive delete of a root/home/system path: \"{shown}\"", loc)
        if "data" in kinds:
            return self.flag("rm_root", "critical", f"Recursive delete of a database's or container runtime's "
                                                    f"data: \"{shown}\"", loc)
        if "system" in kinds:
            return self.flag("rm_system", "high", f"Recursive delete under a system or home directory: \"{shown}\"",
                             loc)
        if "broad" in kinds:
            return self.flag("rm_broad", "high", f"Recursive delete of the working directory or an "
                                                 f"unchecked variable path: \"{shown}\"", loc)
        return None

    def _find(self, argstring: str, loc: str) -> dict | None:
        """`find PATH... [tests] -delete` / `-exec rm`: from a root, system or data path, critical; with a
        test that picks files (`-name '*.pyc'`, `-mtime +30`; not `-type f` alone), high (from a root or data path)
        or nothing (below a system directory: log rotation)."""
        if not _FIND_RM.search(argstring):
            return None
        args = [a.replace("'", "").replace('"', "") for a in argstring.split()]
        starts = []
        for a in args:
            if a.startswith(("-", "(", "!", "\\")):
                break
            starts.append(a)
        # `-type f` alone picks every file (`find / -type f -exec rm -f {} +` empties the host): no test
        filtered = any(a in _FIND_TESTS and args[i + 1:i + 2] not in (["*"], ["./*"], ["/*"])
                       for i, a in enumerate(args))
        kinds = {_kind(s) for s in starts or ["."]}
        shown = redact("find " + argstring)
        if kinds & {"root", "data"}:
            if filtered:
                return self.flag("find_delete_root", "high", f"find -delete of selected files from a root, "
                                                             f"system or data path: \"{shown}\"", loc)
            return self.flag("find_delete_root", "critical", f"find -delete of everything from a root, system or "
                                                             f"data path: \"{shown}\"", loc)
        if filtered:
            return None
        if "system" in kinds:
            return self.flag("rm_system", "high", f"find -delete under a system or home directory: \"{shown}\"", loc)
        if "broad" in kinds:
            return self.flag("rm_broad", "high", f"find -delete of the working directory: \"{shown}\"", loc)
        return None


def _path(target: str) -> str:
    """A delete's target as the path it names: `/tmp/../etc` is `/etc`, `//etc/` and `/etc/*` are `/etc`."""
    if target.startswith("/"):
        target = "/" + posixpath.normpath(target).lstrip("/")
    return target.rstrip("*").rstrip("/") or target[:1]
