"""Deterministic risk assessment for agent call approvals.

``assess(ctx)`` runs the analyzer classes named in ``settings.HITL_RISK_ANALYZERS`` over the
proposed action and every key and string in ``input_data`` (walked recursively, with a JSON
path for each), and returns ``{"level", "score", "flags"}`` for reviewers. There is no I/O, no
clock and no randomness: the same context always gives the same result. The scanned text is
capped (``MAX_SCAN_CHARS``), so a huge input costs bounded time; a capped scan is itself flagged.
"""
from __future__ import annotations

import bisect
import functools
import ipaddress
import itertools
import logging
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from detect_secrets.filters.heuristic import (
    is_indirect_reference,
    is_potential_uuid,
    is_sequential_string,
    is_templated_secret,
)
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.cloudant import CloudantDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString
from detect_secrets.plugins.ibm_cloud_iam import IbmCloudIamDetector
from detect_secrets.plugins.ibm_cos_hmac import IbmCosHmacDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.keyword import (
    CONFIG_DENYLIST_REGEX_TO_GROUP,
    QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP,
)
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.private_key import PrivateKeyDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.softlayer import SoftlayerDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector
from django.conf import settings
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)

__all__ = ["RiskContext", "Segment", "Analyzer", "assess", "mask", "SecretsAnalyzer", "PersonalDataAnalyzer",
           "PromptInjectionAnalyzer", "DestructiveCommandAnalyzer", "ExfiltrationAnalyzer",
           "ProductionDeployAnalyzer", "CostAnalyzer", "MAX_SCAN_CHARS"]

SEVERITIES = ("low", "medium", "high", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
SEVERITY_WEIGHT = {"low": 0.1, "medium": 0.3, "high": 0.6, "critical": 0.9}
MAX_SCAN_CHARS = 200_000   # total characters of text scanned per call
MAX_NODES = 20_000         # JSON nodes visited in input_data
MAX_DEPTH = 64             # JSON nesting followed
_CHUNK, _OVERLAP = 4096, 256   # third-party regexes only ever see bounded chunks
_PREFILTER_FROM = 256          # texts this long get a literal check before each regex
_MAX_FINDINGS = 50             # secrets reported per text segment (flags are merged per code anyway)
_CONTEXT = 200                 # characters of a line looked at around a match

_I = re.IGNORECASE


# --- Context and extraction --------------------------------------------------------------

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


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _child_path(path: str, key: str) -> str:
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{key!r}]" if '"' in key else f'{path}["{key}"]'


def _extract(proposed_action: Any, input_data: Any) -> tuple[tuple[Segment, ...], bool]:
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

    add("proposed_action", "" if proposed_action is None else str(proposed_action))
    stack: list[tuple[str, Any, str | None, int]] = [("input_data", input_data, None, 0)]
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
                for k, v in itertools.islice(value.items(), max(room, 0)):
                    k = str(k)
                    child = _child_path(path, k)
                    add(child, k, is_key=True)
                    children.append((child, v, k, depth + 1))
            else:
                children = [(f"{path}[{i}]", v, None, depth + 1) for i, v in enumerate(value[:max(room, 0)])]
            stack.extend(reversed(children))       # visit in document order
    return tuple(segments), truncated


# --- Small helpers ---------------------------------------------------------------------

def mask(value: str) -> str:
    """At most the first 4 characters (a quarter of a short value), then an ellipsis."""
    value = value.strip()
    shown = min(4, len(value) // 4)
    return f"{value[:shown]}…"


_B64 = Base64HighEntropyString()


def _entropy(value: str) -> float:
    return _B64.calculate_shannon_entropy(value)


_PLACEHOLDER = re.compile(
    r"(?:x+|\*+|\.+|-+|_+|#+|0+|1234\w*|changeme|change[_-]me|passw(?:or|0r)d\d*|secret|s3cr3t|example\w*|"
    r"sample\w*|dummy\w*|test\w*|fake\w*|mock\w*|placeholder\w*|redacted|hidden|none|null|nil|undefined|"
    r"true|false|todo|tbd|foo\w*|bar|baz|your[_-].*|my[_-]?(?:secret|password|token|key)\w*|.*xxxx.*|.*\*\*\*.*|"
    r"<[^>]*>|\{[^}]*\}|\$\{[^}]*\}|\$\([^)]*\)|\$[A-Za-z_]\w*|%\([^)]*\)s|%s|\?+|"
    r".*(?:insecure|not[-_]?for[-_]?prod|changeme|change[-_]me|placeholder|dummy|example|sample|fake|redacted).*)", _I)
_DOTTED_REF = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
_CONST_REF = re.compile(r"[A-Z][A-Z0-9_]*|[a-z][a-z_]*")


def _plausible_value(value: str, line: str = "") -> bool:
    """A literal that could be a real credential, not a placeholder or a reference."""
    value = value.strip().strip("'\"`").rstrip(":;,)]}")
    if not 6 <= len(value) <= 256 or any(c.isspace() or c in "(){}[]" for c in value) or len(set(value)) < 4:
        return False
    if _PLACEHOLDER.fullmatch(value) or is_templated_secret(value) or value[0] in "$%":
        return False
    if _DOTTED_REF.fullmatch(value) or _CONST_REF.fullmatch(value):
        return False
    if value.startswith(("/", "./", "~/", "http://", "https://", "file:")):
        return False
    return not (line and is_indirect_reference(line))


_SEPARATORS = re.compile(r"[_/+-]")
_CASE_CONSISTENT = re.compile(r"[a-z0-9]+|[A-Z0-9]+|[A-Z][a-z0-9]+")
_WORD_RUN = re.compile(r"[A-Z]?[a-z]{3,}")


def _identifier_like(token: str) -> bool:
    """snake_case / kebab-case / path-like names, or CamelCase made mostly of pronounceable words."""
    parts = [p for p in _SEPARATORS.split(token) if p]
    if len(parts) >= 2 and all(_CASE_CONSISTENT.fullmatch(p) for p in parts if len(p) >= 4):
        return True
    runs = _WORD_RUN.findall(token)
    letters = "".join(runs).lower()
    return len(letters) >= len(token) * 0.5 and sum(c in "aeiou" for c in letters) >= 0.25 * len(letters)


def _random_looking(token: str) -> bool:
    """Shape of a generated key: digits and letters, varied, not a UUID, hash, sequence or name."""
    if not (any(c.isdigit() for c in token) and any(c.isalpha() for c in token)):
        return False
    if len(set(token)) < 8 or is_potential_uuid(token) or is_sequential_string(token):
        return False
    if re.fullmatch(r"[0-9a-fA-F]+", token):      # hex: commit SHAs, checksums, digests
        return False
    if sum(a <= b for a, b in zip(token, token[1:])) >= 0.8 * (len(token) - 1):
        return False                              # a sorted alphabet such as "23456789ABCDEF..."
    return not _identifier_like(token)


def _entropy_limit(length: int) -> float:
    """detect-secrets' 4.5 bits suits long strings; shorter random keys cannot reach it, so the
    limit sits just under the 1st percentile of random base62 strings of that length."""
    if length >= 48:
        return _B64.entropy_limit
    return 4.4 if length >= 40 else 4.15 if length >= 32 else 4.0 if length >= 28 else 3.85


_REDACT = [
    re.compile(r"(://[^/\s:@]+:)[^/\s@]+(@)"),
    re.compile(r"(?<![A-Za-z0-9+/_=-])()([A-Za-z0-9+/_=.-]{20,})()(?![A-Za-z0-9+/_=-])"),
]


def _redact(text: str, limit: int = 80) -> str:
    """A short, single-line snippet for messages, with anything token-like masked."""
    text = " ".join(text.split())
    text = _REDACT[0].sub(lambda m: f"{m.group(1)}…{m.group(2)}", text)
    text = _REDACT[1].sub(lambda m: mask(m.group(2)) if _random_looking(m.group(2).replace(".", "")) else m.group(2),
                          text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _has(lower: str, hints: tuple[str, ...]) -> bool:
    """Cheap literal prefilter before a regex. Short texts skip it: the regex is cheaper there."""
    return len(lower) < _PREFILTER_FROM or any(h in lower for h in hints)


def _chunks(text: str):
    if len(text) <= _CHUNK:
        yield text
        return
    for start in range(0, len(text), _CHUNK - _OVERLAP):
        yield text[start:start + _CHUNK]


_PRIVATE_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "::1/128", "fc00::/7"))
_INTERNAL_SUFFIXES = (".internal", ".local", ".lan", ".corp", ".intra", ".intranet", ".svc",
                      ".cluster.local", ".home.arpa", ".localdomain")


def _is_internal_host(host: str) -> bool:
    host = host.strip("[]").lower().rstrip(".")
    if host in ("localhost", ""):
        return True
    try:
        return any(ipaddress.ip_address(host) in net for net in _PRIVATE_NETS)
    except ValueError:
        return "." not in host or host.endswith(_INTERNAL_SUFFIXES)


# --- Analyzer base and assess() --------------------------------------------------------

class Analyzer:
    """Subclasses set ``code`` (the flag code prefix) and implement ``analyze``."""
    code = "risk"

    def analyze(self, ctx: RiskContext) -> list[dict]:
        raise NotImplementedError

    def flag(self, name: str, severity: str, message: str, location: str) -> dict:
        return {"code": f"{self.code}.{name}", "severity": severity, "message": message, "location": location}

    def for_each_segment(self, ctx: RiskContext, check) -> list[dict]:
        """``check(segment) -> flags`` over every segment. Repeated texts (the keys and many values of
        tabular input) are checked once; messages must not depend on the location."""
        flags: list[dict] = []
        seen: dict[tuple, list[dict]] = {}
        for seg in ctx.segments:
            memo = (seg.text, seg.key, seg.is_key)
            if memo not in seen:
                seen[memo] = check(seg)
                flags.extend(seen[memo])
            else:
                flags.extend({**f, "location": seg.location} for f in seen[memo])
        return flags


class _Collector:
    """Keeps one flag per (code, location), the most severe, and counts repeats."""

    def __init__(self) -> None:
        self.flags: dict[tuple[str, str], dict] = {}
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, flag: dict) -> None:
        key = (flag["code"], flag["location"])
        self.counts[key] = self.counts.get(key, 0) + 1
        old = self.flags.get(key)
        if old is None or SEVERITY_RANK[flag["severity"]] > SEVERITY_RANK[old["severity"]]:
            self.flags[key] = flag

    def result(self) -> list[dict]:
        out = []
        for key, flag in self.flags.items():
            if self.counts[key] > 1 and not flag["code"].startswith("cost."):
                flag = {**flag, "message": f"{flag['message']} (+{self.counts[key] - 1} more)"}
            out.append(flag)
        return out


@functools.lru_cache(maxsize=16)
def _load_analyzers(paths: tuple[str, ...]) -> tuple[Analyzer, ...]:
    return tuple(import_string(path)() for path in paths)


def _normalise(flag: dict) -> dict:
    severity = flag.get("severity")
    if severity not in SEVERITY_RANK:
        severity = "high"
    return {"code": str(flag.get("code", "risk.unknown")), "severity": severity,
            "message": str(flag.get("message", "")), "location": str(flag.get("location", ""))}


def assess(ctx: RiskContext) -> dict:
    """Run every configured analyzer; flags are deduplicated by (code, location)."""
    collector = _Collector()
    for analyzer in _load_analyzers(tuple(settings.HITL_RISK_ANALYZERS)):
        try:
            flags = [_normalise(flag) for flag in analyzer.analyze(ctx)]
        except Exception:   # an analyzer bug must not hide the call from review: fail towards "look"
            logger.exception("risk analyzer %s failed", type(analyzer).__name__)
            flags = [{"code": "risk.analyzer_failed", "severity": "high", "location": "",
                      "message": f"{type(analyzer).__name__} failed; review this call manually"}]
        for flag in flags:
            collector.add(flag)
    if ctx.truncated:
        collector.add({"code": "risk.scan_truncated", "severity": "medium", "location": "input_data",
                       "message": f"Input is larger than the scanned {MAX_SCAN_CHARS:,} characters "
                                  "(or too deeply nested); the rest was not checked"})
    flags = sorted(collector.result(), key=lambda f: -SEVERITY_RANK[f["severity"]])   # stable
    remaining = 1.0
    for flag in flags:
        remaining *= 1.0 - SEVERITY_WEIGHT[flag["severity"]]
    level = flags[0]["severity"] if flags else "low"
    return {"level": level, "score": round(1.0 - remaining, 3) if flags else 0.0, "flags": flags}


# --- 1. Secrets ------------------------------------------------------------------------

_SECRET_PATTERNS = [   # (name, severity, hints, label, regex); group 1 (if any) is the secret
    ("private_key", "critical", ("private key",), "Private key block",
     re.compile(r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----")),
    ("aws_access_key", "critical", ("akia", "asia", "abia", "acca", "a3t"), "AWS access key ID",
     re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?![A-Z0-9])")),
    ("aws_secret_key", "critical", ("aws",), "AWS secret access key",
     re.compile(r"aws.{0,20}?secret.{0,20}?[=:]\s*['\"]?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])", _I)),
    ("github_token", "critical", ("gh", "github_pat_"), "GitHub token",
     re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{60,})\b")),
    ("slack_token", "critical", ("xox",), "Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("slack_webhook", "critical", ("hooks.slack.com",), "Slack webhook URL",
     re.compile(r"https://hooks\.slack\.com/services/T\w+/B\w+/\w+")),
    ("anthropic_key", "critical", ("sk-ant-",), "Anthropic API key",
     re.compile(r"\bsk-ant-[a-z]+\d{2}-[A-Za-z0-9_-]{20,}")),
    ("openai_key", "critical", ("sk-",), "OpenAI-style API key",
     re.compile(r"\bsk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}")),
    ("stripe_key", "critical", ("_live_",), "Stripe live key", re.compile(r"\b[rs]k_live_[A-Za-z0-9]{16,}")),
    ("stripe_test_key", "high", ("_test_",), "Stripe test-mode key", re.compile(r"\b[rs]k_test_[A-Za-z0-9]{16,}")),
    ("google_api_key", "critical", ("aiza",), "Google API key",
     re.compile(r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])")),
    ("npm_token", "critical", ("npm_",), "npm token", re.compile(r"\bnpm_[A-Za-z0-9]{36}\b")),
    ("hitl_api_key", "critical", ("hitl_",), "BotArmy HITL API key",
     re.compile(r"\bhitl_[0-9a-f]{1,16}_[A-Za-z0-9_-]{20,128}")),
    ("url_credentials", "critical", ("://",), "Password in a URL",
     re.compile(r"://[^\s:/?#@'\"]{1,64}:([^\s/?#@'\"]{3,128})@")),
    ("cli_password", "critical", ("-p", "password", "sshpass"), "Password on a command line", re.compile(
        r"\b(?:mysql|mysqldump|mysqladmin)\b[^\n;&|]{0,200}?\s-p([^\s'\"]{4,})|"
        r"(?:\s--password[= ]|\bsshpass\s+-p\s*|\bPGPASSWORD=|\bMYSQL_PWD=)['\"]?([^\s'\"]{4,})")),
    ("bearer_token", "critical", ("bearer",), "Bearer token", re.compile(r"\bBearer\s+([A-Za-z0-9._~+/-]{20,}=*)", _I)),
]
_KNOWN_FORMAT = {"private_key", "aws_access_key", "aws_secret_key", "github_token", "slack_token", "slack_webhook",
                 "anthropic_key", "stripe_key", "stripe_test_key", "google_api_key", "npm_token", "hitl_api_key"}

_CONTEXTUAL = {"url_credentials", "cli_password"}   # the syntax says it is a password: any literal counts
# Every other format needs an unbroken run of 16+ token characters: texts without one skip those rules.
_LONG_TOKEN = re.compile(r"[A-Za-z0-9_+/=.-]{16}")
_SHORT_OK = {"private_key", "url_credentials", "cli_password", "Private Key", "Basic Auth Credentials"}

# detect-secrets regex plugins (IPPublicDetector, Artifactory and npm left out: noisy or slow), each with
# literals one of which must occur (lower case) for it to run. Only their regexes are used: no global
# detect-secrets settings, and verify() (a network call) is never made.
_DS_PLUGINS = tuple((cls(), hints) for cls, hints in (
    (AWSKeyDetector, ("akia", "asia", "abia", "acca", "a3t", "aws")), (AzureStorageKeyDetector, ("accountkey=",)),
    (BasicAuthDetector, ("://",)), (CloudantDetector, ("cl",)), (DiscordBotTokenDetector, (".",)),
    (GitHubTokenDetector, ("gh",)), (GitLabTokenDetector, ("gl", "gr1348941")),
    (IbmCloudIamDetector, ("key", "pwd", "pass", "token")), (IbmCosHmacDetector, ("key",)),
    (JwtTokenDetector, ("eyj",)), (MailchimpDetector, ("-us",)), (OpenAIDetector, ("sk-",)),
    (PrivateKeyDetector, ("private key", "putty")), (PypiTokenDetector, ("pypi-",)), (SendGridDetector, ("sg.",)),
    (SlackDetector, ("xox", "hooks.slack.com")), (SoftlayerDetector, ("sl", "softlayer")),
    (SquareOAuthDetector, ("sq0csp-",)), (StripeDetector, ("k_live_",)), (TelegramBotTokenDetector, (":",)),
    (TwilioKeyDetector, ("ac", "sk"))))
_DS_NAMES = {"AWS Access Key": "aws_access_key", "Basic Auth Credentials": "url_credentials",
             "GitHub Token": "github_token", "JSON Web Token": "jwt", "OpenAI Token": "openai_key",
             "Private Key": "private_key", "Slack Token": "slack_token", "Stripe Access Key": "stripe_key"}
# plugins that match "keyword = value" shapes, so the value must still look like a real literal
_DS_GENERIC = {"url_credentials", "ibm_cloud_iam_key", "softlayer_credentials", "cloudant_credentials",
               "ibm_cos_hmac_credentials"}

_KEYWORD_RULES = tuple({**QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP, **CONFIG_DENYLIST_REGEX_TO_GROUP}.items())
_KEYWORD_HINT = re.compile(r"pass|pwd|secret|key|contrase", _I)
_KEYWORD_IDENT = re.compile(r"[\w-]*(?:pass|pwd|secret|key|contrase)[\w-]*", _I)
_CRED_NAME = re.compile(   # a name that holds a credential: it *ends* with a credential noun
    r"(?:^|[_.-]|(?<=[a-z]))(?:pass(?:word|wd|phrase)?|pwd|secret|token|api_?key|apikey|access_?key|auth_?key|"
    r"private_?key|secret_?key|client_?secret|credentials?|auth|key)(?:_?(?:value|str|plain(?:text)?|raw))?\d*$", _I)
_NOT_CRED_NAME = re.compile(r"(?:page|next|continuation|csrf|cursor|sync|refresh_interval|max|idempotency|cache|"
                            r"sort|partition|primary|foreign|ssh_host|public)_?(?:token|key)s?$", _I)
_ENTROPY_TOKEN = re.compile(r"(?<![A-Za-z0-9+/=_-])([A-Za-z0-9+/_-]{24,128}={0,2})(?![A-Za-z0-9+/=_-])")
_BLOB_PREFIX = re.compile(r"(?:base64,|sha\d+[-:]|integrity\W{0,4}|-----BEGIN [A-Z ]+-----\s*|"
                          r"(?:ssh-(?:rsa|dss|ed25519)|ecdsa-sha2-nistp\d+|sk-ssh-ed25519@openssh\.com)\s+)$", _I)
_CRED_CONTEXT = re.compile(r"(?:token|secret|passw|pwd|api[_-]?key|apikey|access[_-]?key|private[_-]?key|"
                           r"auth|credential|bearer)[\w\"' ]{0,12}[:=]\s*['\"]?$", _I)
_ID_CONTEXT = re.compile(r"(?:\bid|_id|Id|\bsha|digest|hash|checksum|etag|nonce|salt|trace|span|request|"
                         r"commit|revision|version|uuid)[\w\"' ]{0,12}[:=]\s*['\"]?$")
_ID_NAME = re.compile(r"(?:^id|_id|Id|ids|sha|hash|digest|checksum|etag|uuid|version|commit|revision|ref)$", _I)


def _ds_values(plugin, text: str):
    """The secret each plugin regex matches: its last capturing group, unless that group is just
    the key's prefix (GitLab's ``(glpat|...)-``), where analyze_string() would yield only the prefix."""
    if type(plugin).analyze_string is not RegexBasedDetector.analyze_string:
        yield from plugin.analyze_string(text)      # the plugin adds its own check (JWT: formally valid)
        return
    for rx in plugin.denylist:
        for m in rx.finditer(text):
            groups = [i for i in range(1, rx.groups + 1) if m.group(i)]
            i = groups[-1] if groups else 0
            yield m.group(i) if i and m.start(i) > m.start() else m.group(0)


class SecretsAnalyzer(Analyzer):
    """Known key formats (own regexes + detect-secrets plugins), hardcoded credentials, high entropy."""
    code = "secret"

    def analyze(self, ctx: RiskContext) -> list[dict]:
        return self.for_each_segment(ctx, self._segment)

    def _segment(self, seg: Segment) -> list[dict]:
        text, loc, found, flags = seg.text, seg.location, [], []
        lower = text.lower()
        chunks = (text,) if len(text) <= _CHUNK else tuple(_chunks(text))

        def report(name: str, severity: str, label: str, value: str) -> None:
            value = value.strip()
            if len(flags) >= _MAX_FINDINGS or any(value in f or f in value for f in found):
                return
            found.append(value)
            shown = value if name == "private_key" else mask(value)
            flags.append(self.flag(name, severity, f"{label} ({shown})", loc))

        long_token = bool(_LONG_TOKEN.search(text))
        for name, severity, hints, label, rx in _SECRET_PATTERNS:
            if not (long_token or name in _SHORT_OK) or not _has(lower, hints):
                continue
            for m in rx.finditer(text):
                value = next((g for g in m.groups() if g), "") if rx.groups else m.group(0)
                if name in _KNOWN_FORMAT:
                    if len(set(value)) < 6 or (name == "aws_secret_key" and not _random_looking(value)):
                        continue
                    report(name, severity, label, value)
                elif _plausible_value(value) and (name in _CONTEXTUAL or _random_looking(value)):
                    report(name, severity, label, value)
        for plugin, hints in _DS_PLUGINS:
            if not (long_token or plugin.secret_type in _SHORT_OK) or not _has(lower, hints):
                continue
            for chunk in chunks:
                for value in _ds_values(plugin, chunk):
                    name = _DS_NAMES.get(plugin.secret_type) or re.sub(r"\W+", "_", plugin.secret_type.lower())
                    if name == "aws_access_key" and not value.startswith(("AKIA", "ASIA", "ABIA", "ACCA", "A3T")):
                        name = "aws_secret_key"
                    if name in _DS_GENERIC and not _plausible_value(value):
                        continue
                    if len(set(value)) < 6 or is_sequential_string(value):
                        continue
                    report(name, "critical", plugin.secret_type, value)
        if _KEYWORD_HINT.search(text):
            for line in text.splitlines():
                if len(line) > _CHUNK or not _KEYWORD_HINT.search(line):
                    continue
                for rx, group in _KEYWORD_RULES:
                    for m in rx.finditer(line):
                        ident = _KEYWORD_IDENT.search(m.group(0))
                        value = m.group(group) or ""
                        if ident and _CRED_NAME.search(ident.group(0)) and _plausible_value(value, line):
                            report("hardcoded_credential", "critical", f"Hardcoded value for '{ident.group(0)}'",
                                   value.strip().strip("'\"`"))
        if (seg.key and not seg.is_key and _CRED_NAME.search(seg.key) and not _NOT_CRED_NAME.search(seg.key)
                and _plausible_value(seg.text)):
            value = seg.text.strip()
            if re.search(r"pass|pwd", seg.key, _I) or (_random_looking(value) or re.fullmatch(r"[0-9a-f]{32,}", value)):
                report("hardcoded_credential", "critical", f"Credential in field '{seg.key}'", value)
        if "private_key" in {f["code"].split(".", 1)[1] for f in flags}:
            return flags
        for m in _ENTROPY_TOKEN.finditer(text):
            token = m.group(1).rstrip("=")
            before = text[max(0, m.start() - 40):m.start()]
            if not _random_looking(token) or _BLOB_PREFIX.search(before) or _ID_CONTEXT.search(before):
                continue
            near = text[max(0, m.start() - _CONTEXT):m.start()]
            word = near[max(near.rfind(" "), near.rfind("\n")) + 1:]
            if ("://" in word or word.startswith(("/", "./", "~/")) or word.endswith((".", ":"))) \
                    and not _CRED_CONTEXT.search(before):
                continue   # part of a URL, a path or a dotted name
            if seg.key and _ID_NAME.search(seg.key):
                continue
            if len(token) >= 60 and (m.start() == 0 or text[m.start() - 1] == "\n") \
                    and (m.end() == len(text) or text[m.end()] in "\r\n"):
                continue   # a wrapped base64 data line, not a key
            if _CRED_CONTEXT.search(before) and _plausible_value(token):
                report("hardcoded_credential", "critical", "Credential-like value", token)
            elif _entropy(token) > _entropy_limit(len(token)):
                report("high_entropy", "high", "High-entropy string (possible key)", token)
        return flags


# --- 2. Personal data ------------------------------------------------------------------

_EMAIL = re.compile(r"(?<![\w.+%:/-])([A-Za-z0-9][A-Za-z0-9._%+-]{0,63})@((?:[A-Za-z0-9-]+\.)+([A-Za-z]{2,24}))"
                    r"(?![\w-]|\.\w|[:@])")
_EMAIL_SKIP_DOMAIN = re.compile(r"(?:^|\.)(?:example\.(?:com|org|net)|example|test|invalid|localhost|local|"
                                r"users\.noreply\.github\.com)$", _I)
_EMAIL_SKIP_LOCAL = re.compile(r"(?:git|noreply|no-reply|donotreply|do-not-reply)$", _I)
_FILE_TLDS = {"png", "jpg", "jpeg", "gif", "svg", "webp", "js", "ts", "css", "py", "json", "md", "txt", "html"}
_PHONE = re.compile(r"(?<![\w+.-])(?:\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){2,5}|\(?[2-9]\d{2}\)?[ .-]\d{3}[ .-]\d{4})"
                    r"(?![\w-]|\.\d)")
_CARD = re.compile(r"(?<![\d-])(?:\d{4}[ -]\d{4}[ -]\d{4}[ -]\d{1,7}|\d{4}[ -]\d{6}[ -]\d{5}|\d{13,19})(?![\d-])")
_CARD_IIN = re.compile(r"(?:4|5[1-5]|2[2-7]|3[47]|6011|65|35)")
_TEST_CARDS = {   # published processor test numbers (Stripe, Adyen, Braintree docs): not personal data
    "4242424242424242", "4000056655665556", "5555555555554444", "2223003122003222", "5200828282828210",
    "5105105105105100", "378282246310005", "371449635398431", "6011111111111117", "6011000990139424",
    "3056930009020004", "36227206271667", "3566002020360505", "4111111111111111", "4012888888881881",
    "4000000000000002", "4000000000009995", "4000000000009987", "4000000000000069", "4000000000000127",
    "4000000000000119", "4000002500003155", "4000000000003220", "4000000000000077", "4000000000000341"}
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_SSN_KEYWORD = re.compile(r"\b(?:ssn|social security(?: number| no\.?)?)\b\W{0,5}(\d{9})\b", _I)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _iban_ok(raw: str) -> bool:
    iban = raw.replace(" ", "")
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


class PersonalDataAnalyzer(Analyzer):
    """Emails and phone numbers (medium); card numbers, US SSNs and IBANs, checksum-validated (high)."""
    code = "pii"

    def analyze(self, ctx: RiskContext) -> list[dict]:
        return self.for_each_segment(ctx, self._segment)

    def _segment(self, seg: Segment) -> list[dict]:
        flags, text, loc = [], seg.text, seg.location
        if "@" in text:
            for m in _EMAIL.finditer(text):
                local, domain, tld = m.group(1), m.group(2), m.group(3).lower()
                if _EMAIL_SKIP_DOMAIN.search(domain) or _EMAIL_SKIP_LOCAL.match(local) or tld in _FILE_TLDS:
                    continue
                flags.append(self.flag("email", "medium", f"Email address ({local[0]}***@{domain})", loc))
        for m in _PHONE.finditer(text):
            digits = re.sub(r"\D", "", m.group(0))
            if 10 <= len(digits) <= 15:
                flags.append(self.flag("phone", "medium", f"Phone number (…{digits[-2:]})", loc))
        for m in _CARD.finditer(text):
            digits = re.sub(r"\D", "", m.group(0))
            if (13 <= len(digits) <= 19 and _CARD_IIN.match(digits) and _luhn(digits)
                    and len(set(digits)) > 2 and digits not in _TEST_CARDS):
                flags.append(self.flag("card_number", "high", f"Payment card number (…{digits[-4:]})", loc))
        for m in list(_SSN.finditer(text)) + list(_SSN_KEYWORD.finditer(text)):
            digits = re.sub(r"\D", "", m.group(m.lastindex or 0))
            flags.append(self.flag("us_ssn", "high", f"US social security number (…{digits[-4:]})", loc))
        for m in _IBAN.finditer(text):
            if _iban_ok(m.group(0)):
                flags.append(self.flag("iban", "high", f"IBAN ({m.group(0)[:4]}…)", loc))
        return flags


# --- 3. Prompt injection ---------------------------------------------------------------

_INJECTION = [   # (name, hints, regex): all "high"
    ("ignore_instructions", ("ignore", "disregard", "forget", "override", "bypass"), re.compile(
        r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:(?:all|any|the|your|my|of|these|those|every)\s+){0,3}"
        r"(?:previous|prior|above|earlier|preceding|former|original|initial|system|developer)\s+"
        r"(?:instructions?|prompts?|rules|directions|guidelines|directives|messages?|context)", _I)),
    ("ignore_instructions", ("ignore", "disregard", "forget"), re.compile(
        r"\b(?:ignore|disregard|forget)\s+(?:all|everything)\s+"
        r"(?:you\s+were\s+told|above|before|(?:of\s+)?your\s+(?:instructions|rules))", _I)),
    ("system_prompt_leak", ("system", "instructions", "prompt"), re.compile(
        r"\b(?:reveal|show|print|output|repeat|display|leak|dump|tell\s+me|give\s+me|what\s+(?:is|are))\s+"
        r"(?:me\s+)?(?:your|the)\s+(?:(?:full|exact|original|hidden|initial|secret|complete)\s+)*"
        r"(?:system\s+(?:prompt|message|instructions)|initial\s+instructions|hidden\s+instructions|"
        r"prompt\s+verbatim)", _I)),
    ("jailbreak_persona", ("now",), re.compile(
        r"\byou\s+are\s+now\s+(?:DAN\b|in\s+(?:developer|god|jailbreak|unrestricted)\s+mode|"
        r"an?\s+(?:unrestricted|unfiltered|uncensored|jailbroken|evil|amoral)|free\s+(?:from|of)\s+)", _I)),
    ("jailbreak_persona", ("anything", "mode"), re.compile(
        r"\bdo\s+anything\s+now\b|\b(?:enable|enter|activate|switch\s+to)\s+(?:DAN|jailbreak|developer|god)\s+mode\b|"
        r"\bdeveloper\s+mode\s+(?:enabled|activated)", _I)),
    ("jailbreak_persona", ("pretend", "imagine", "act"), re.compile(
        r"\b(?:pretend|imagine|act\s+as\s+if)\s+(?:that\s+)?you\s+(?:have|had|are|were)\s+"
        r"(?:no|without|not\s+bound\s+by)\s+(?:any\s+)?"
        r"(?:restrictions|rules|limits|limitations|filters|guidelines|safety|content\s+polic)", _I)),
    ("jailbreak_persona", ("unrestricted", "unfiltered", "uncensored", "jailbroken", "evil", "amoral"), re.compile(
        r"\b(?:act|behave|respond|roleplay|role-play)\s+as\s+(?:an?\s+)?"
        r"(?:unrestricted|unfiltered|uncensored|jailbroken|evil|amoral)\b", _I)),
    ("safety_bypass", ("safety", "content", "ethical", "moral", "guardrails"), re.compile(
        r"\b(?:bypass|disable|override|circumvent|ignore|turn\s+off)\s+(?:(?:your|all|the|any)\s+){0,2}"
        r"(?:safety|content|ethical|moral)\s+"
        r"(?:filters?|guidelines|guardrails|restrictions|polic(?:y|ies)|constraints)|"
        r"\b(?:bypass|disable|circumvent|ignore)\s+(?:(?:your|all|the|any)\s+){0,2}guardrails", _I)),
    ("chat_template_tokens", ("<|", "inst]", "sys>>"), re.compile(
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id)\|>|"
        r"\[/?INST\]|<</?SYS>>")),
    ("new_instructions", ("instructions",), re.compile(
        r"(?:^|\n)\s*(?:#+\s*)?(?:IMPORTANT\W+)?(?:new|updated|real|actual)\s+instructions\s*"
        r"(?:for\s+(?:the\s+)?(?:AI|assistant|agent|model)\s*)?:", _I)),
    ("credential_request", ("key", "credential", "secret", "password", "token", "env"), re.compile(
        r"\b(?:send|post|upload|email|forward|leak|exfiltrate)\s+(?:(?:all|the|your|any|of)\s+){0,3}"
        r"(?:api\s+keys?|credentials|secrets|passwords|tokens|environment\s+variables|env\s+vars|private\s+keys?)"
        r"(?:\s*(?:,|and|&|or)\s*(?:(?:all|the|your|any)\s+)?(?:api\s+keys?|credentials|secrets|passwords|tokens|"
        r"environment\s+variables|env\s+vars|private\s+keys?)){0,3}\s+to\b", _I)),
]
_INJECTION_LABELS = {
    "ignore_instructions": "Instruction override", "system_prompt_leak": "Request to reveal the system prompt",
    "jailbreak_persona": "Jailbreak / role-play persona", "safety_bypass": "Request to bypass safety rules",
    "chat_template_tokens": "Chat-template control tokens", "new_instructions": "Injected 'new instructions' block",
    "credential_request": "Instruction to send credentials somewhere",
}


class PromptInjectionAnalyzer(Analyzer):
    """Known injection and jailbreak phrasings, anywhere in the call (high)."""
    code = "injection"

    def analyze(self, ctx: RiskContext) -> list[dict]:
        return self.for_each_segment(ctx, self._segment)

    def _segment(self, seg: Segment) -> list[dict]:
        flags, lower = [], seg.text.lower()
        for name, hints, rx in _INJECTION:
            m = _has(lower, hints) and rx.search(seg.text)
            if m:
                flags.append(self.flag(name, "high", f"{_INJECTION_LABELS[name]}: \"{_redact(m.group(0))}\"",
                                       seg.location))
        return flags


# --- 4. Destructive commands -----------------------------------------------------------

_CRITICAL_PATHS = {"/", "/*", "~", "~/", "~/*", "$HOME", "${HOME}", "$HOME/", "${HOME}/", "$HOME/*", "/home", "/root",
                   "/etc", "/usr", "/var", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/opt", "/srv", "/dev", "/sys",
                   "/proc", "/mnt", "/data", "/var/lib", "/usr/local", "c:\\", "c:/"}
_BROAD_PATHS = {".", "./", "*", "./*", "..", "../", "../*", ".*"}
_RM = re.compile(r"(?<![\w.-])(?:sudo\s+)?rm\s+([^\n;&|)`]{1,300})")
_UNGUARDED_VAR = re.compile(r"\$\{?[A-Za-z_]\w*\}?/?\*?")
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
                                       f"Force push to {what}: \"{_redact(m.group(0))}\"", loc))
        lower = text.lower()
        for name, severity, hints, label, rx in _DESTRUCTIVE:
            m = _has(lower, hints) and rx.search(text)
            if m:
                flags.append(self.flag(name, severity, f"{label}: \"{_redact(m.group(0))}\"", loc))
        return flags

    def _rm(self, argstring: str, loc: str) -> dict | None:
        args = [a.strip("'\"") for a in argstring.split()]
        opts = [a for a in args if a.startswith("-")]
        targets = [a for a in args if not a.startswith("-")]
        recursive = any(o in ("--recursive", "-R") or (not o.startswith("--") and "r" in o.lower()) for o in opts)
        if not recursive:
            return None
        shown = _redact("rm " + argstring)
        if "--no-preserve-root" in opts or any(t.rstrip("/") in _CRITICAL_PATHS or t in _CRITICAL_PATHS
                                               or t.lower() in _CRITICAL_PATHS for t in targets):
            return self.flag("rm_root", "critical", f"Recursive delete of a root/home/system path: \"{shown}\"", loc)
        if any(t in _BROAD_PATHS or (_UNGUARDED_VAR.fullmatch(t) and ":?" not in t) for t in targets):
            return self.flag("rm_broad", "high", f"Recursive delete of the working directory or an "
                                                 f"unchecked variable path: \"{shown}\"", loc)
        return None


# --- 5. Exfiltration -------------------------------------------------------------------

_CRED_FILE = re.compile(
    r"/etc/(?:shadow|gshadow|sudoers)\b|(?:~|\$HOME|\$\{HOME\}|/home/[\w.-]+|/root)/\.ssh\b|\.ssh/id_\w+|"
    r"\bid_(?:rsa|dsa|ecdsa|ed25519)\b(?!\.pub)|\.aws/(?:credentials|config)\b|\.netrc\b|\.git-credentials\b|"
    r"\.kube/config\b|\.docker/config\.json|\.pgpass\b|\.npmrc\b|\.pypirc\b|/proc/(?:self|\d+)/environ\b|"
    r"\bcredentials\.json\b|service[-_]account[\w-]*\.json\b|\.config/gcloud\b")
_DOTENV = re.compile(r"(?<![\w.-])(?:[\w./~-]*/)?\.env(?:\.(?:local|prod|production|live))?(?![\w.-])|"
                     r"\b(?:printenv|env)\s*\|")
_MILD_FILE = re.compile(r"/etc/passwd\b")
_NET_CMD = re.compile(
    r"\b(?:curl|wget)\s+(?:-|https?://|['\"]|\$)|\b(?:nc|ncat|netcat|socat|telnet)\s+(?:-\w+\s+)*[\w.-]+\s+\d+|"
    r"\|\s*(?:nc|ncat|netcat|socat)\b|\b(?:scp|sftp|rsync|ftp|tftp)\s+|/dev/(?:tcp|udp)/|"
    r"\b(?:requests|httpx|session)\.(?:post|put)\s*\(|\burllib\.request\b|\bfetch\s*\(|\baxios\.(?:post|put)\s*\(|"
    r"\bInvoke-(?:WebRequest|RestMethod)\b|\bsmtplib\b")
_SHOW_CMD = re.compile(r"\b(?:cat|less|more|head|tail|strings|xxd|od|base64|open|read_text|readFile(?:Sync)?|"
                       r"Get-Content|type)\b[^\n;&|]{0,120}?$")
_READ_CMD = re.compile(r"\b(?:cat|less|more|head|tail|strings|xxd|od|hexdump|base64|gzip|tar|zip|cp|grep|awk|"
                       r"open|read_text|read_bytes|readFile(?:Sync)?|Get-Content|type)\b[^\n;&]{0,120}?$")
_UPLOAD = re.compile(r"\bcurl\b[^\n;&|]*?\s(?:-d|--data(?:-binary|-raw|-urlencode)?|-F|--form)[\s=]+['\"]?(?:\w+=)?@"
                     r"(?!-)\S+|\bcurl\b[^\n;&|]*?\s(?:-T|--upload-file)[\s=]+\S+|"
                     r"\bwget\b[^\n;&|]*?--(?:post-file|body-file)[\s=]+\S+")
_NETCAT = re.compile(r"\b(?:nc|ncat|netcat)\b[^\n;&|]*<\s*\S+|\|\s*(?:nc|ncat|netcat|socat)\s+[\w.-]+\s+\d+")
_REVERSE_SHELL = re.compile(r"\b(?:bash|sh|zsh)\s+-i\b[^\n]*/dev/tcp/|/dev/tcp/[\w.-]+/\d+\s*0>&1|"
                            r"\b(?:nc|ncat|netcat)\b[^\n;&|]*\s-[ce]\s+/bin/(?:ba)?sh")
_REMOTE_COPY = re.compile(r"\b(?:scp|rsync)\s+([^\n;&|]{1,400})")
_REMOTE_DEST = re.compile(r"^(?:[\w.-]+@)?(\[[^\]]+\]|[\w.-]+):(?!//)")
_EXFIL_HOSTS = re.compile(
    r"\b(?:pastebin\.com|paste\.ee|hastebin\.com|ghostbin\.\w+|dpaste\.(?:com|org)|termbin\.com|transfer\.sh|"
    r"file\.io|0x0\.st|(?:[\w-]+\.)?ngrok(?:-free)?\.(?:io|app|dev)|webhook\.site|(?:[\w-]+\.)?requestbin\.\w+|"
    r"[\w-]+\.pipedream\.net|[\w-]+\.oast\.\w+|interact\.sh|burpcollaborator\.net|[\w-]+\.trycloudflare\.com|"
    r"[\w-]+\.loca\.lt|serveo\.net)\b", _I)
_METADATA = re.compile(r"\b169\.254\.169\.254\b|\bmetadata\.google\.internal\b")
_NEWLINE = re.compile(r"\n")
_URL_HOST = re.compile(r"https?://(?:[^/\s@'\"]+@)?(\[[^\]]+\]|[^/\s:'\"?#]+)")


class ExfiltrationAnalyzer(Analyzer):
    """Data leaving the machine: uploads, netcat, remote copies, paste/tunnel hosts (high);
    credential files read (high) or sent out (critical)."""
    code = "exfil"

    def analyze(self, ctx: RiskContext) -> list[dict]:
        return self.for_each_segment(ctx, lambda seg: [] if seg.is_key else self._segment(seg.text, seg.location))

    def _segment(self, text: str, loc: str) -> list[dict]:
        """Whole-text regex passes (bounded to one line each); positions map back to lines."""
        flags = []
        if "\\\n" in text:
            text = text.replace("\\\n", "  ")     # shell line continuations: same length, one line
        starts = [0] + [m.end() for m in _NEWLINE.finditer(text)]

        def line_no(pos: int) -> int:
            return bisect.bisect_right(starts, pos) - 1

        def line_before(pos: int) -> str:          # the line up to pos, at most _CONTEXT characters
            return text[max(starts[line_no(pos)], pos - _CONTEXT):pos]

        def line_around(pos: int) -> str:          # the line around pos, at most _CONTEXT characters each way
            n = line_no(pos)
            end = starts[n + 1] - 1 if n + 1 < len(starts) else len(text)
            return text[max(starts[n], pos - _CONTEXT):min(end, pos + _CONTEXT)]

        creds = sorted([*_CRED_FILE.finditer(text), *_DOTENV.finditer(text)], key=lambda m: m.start())
        if creds:
            net = {line_no(m.start()) for m in _NET_CMD.finditer(text)}
            sent = [m for m in creds if any(line_no(m.start()) + d in net for d in (-2, -1, 0, 1, 2))]
            if sent:
                flags.append(self.flag("credentials_upload", "critical", f"Credential file or environment "
                                       f"({_redact(sent[0].group(0), 40)}) sent over the network", loc))
            reads: dict[str, dict] = {}              # the first read of each kind is enough
            for m in creds:
                before = line_before(m.start())
                if m.re is _CRED_FILE and "credential_file_read" not in reads and _READ_CMD.search(before):
                    reads["credential_file_read"] = self.flag(
                        "credential_file_read", "high", f"Reads credential file {m.group(0).strip()}", loc)
                elif (m.re is _DOTENV and "dotenv_read" not in reads and not m.group(0).endswith("|")
                      and _SHOW_CMD.search(before)):
                    reads["dotenv_read"] = self.flag("dotenv_read", "medium", f"Reads environment file "
                                                     f"{m.group(0).strip()} (its secrets enter the model context)", loc)
            flags.extend(reads.values())
        for m in _MILD_FILE.finditer(text):
            if _READ_CMD.search(line_before(m.start())):
                flags.append(self.flag("system_file_read", "medium", "Reads /etc/passwd", loc))
                break
        for m in _UPLOAD.finditer(text):
            hosts = _URL_HOST.findall(f"{line_around(m.start())} {line_around(m.end())}")
            if not hosts or not all(_is_internal_host(h) for h in hosts):
                flags.append(self.flag("file_upload", "high", f"Uploads a local file: \"{_redact(m.group(0))}\"", loc))
        for name, severity, label, rx in (("netcat", "high", "Pipes data to a raw socket", _NETCAT),
                                          ("reverse_shell", "critical", "Reverse shell", _REVERSE_SHELL)):
            m = rx.search(text)
            if m:
                flags.append(self.flag(name, severity, f"{label}: \"{_redact(m.group(0))}\"", loc))
        for m in _REMOTE_COPY.finditer(text):
            args = [a for a in m.group(1).split() if not a.startswith("-")]
            dest = _REMOTE_DEST.match(args[-1]) if len(args) >= 2 else None
            if dest and not _is_internal_host(dest.group(1)):
                flags.append(self.flag("remote_copy", "high", f"Copies files to external host {dest.group(1)}", loc))
        m = _EXFIL_HOSTS.search(text)
        if m:
            flags.append(self.flag("paste_or_tunnel_host", "high",
                                   f"Paste, tunnel or request-capture service ({m.group(0)})", loc))
        for m in _METADATA.finditer(text):
            if _NET_CMD.search(line_around(m.start())):
                flags.append(self.flag("cloud_metadata", "high",
                                       "Queries the cloud instance metadata service (instance credentials)", loc))
                break
        return flags


# --- 6. Production deploys -------------------------------------------------------------

_PROD = re.compile(r"(?<![a-z])(?<!non-)(?<!non_)(?<!pre-)(?<!pre_)(?:production|prod|prd)(?![a-z])|"
                   r"(?<![\w-])live(?=\s+(?:env|environment|site|cluster|servers?|stack)\b)", _I)
_ENV_VALUE = re.compile(r"[\w.:/@-]{2,60}")
_DEPLOY_VERB = re.compile(
    r"\b(?:(?:re-?)?deploy(?:s|ed|ing)?(?![/.\w-])|release|releasing|roll(?:ing)?\s+out|"
    r"rollout\s+(?:restart|undo|resume)|"
    r"promot(?:e|es|ed|ing)|ship(?:s|ping)?|publish(?:es|ing)?|migrat(?:e|es|ed|ing|ions?)|upgrade|apply|"
    r"helm\s+(?:install|upgrade|rollback)|roll\s*back|scale|restart|go\s+live|cut\s*over|switch\s+traffic|"
    r"failover|push)\b", _I)
_DRY_RUN = re.compile(r"--dry-run|\bdry[- ]run\b|\bterraform\s+plan\b|\bhelm\s+diff\b|\bread[- ]only\b", _I)
_WINDOW = 100


class ProductionDeployAnalyzer(Analyzer):
    """Deployer agent deploying, migrating or rolling out to a production environment (high)."""
    code = "deploy"

    def analyze(self, ctx: RiskContext) -> list[dict]:
        if (ctx.agent_type or "").strip().lower() != "deployer":
            return []
        # a dry run / plan only exempts the text it appears in, never the whole call
        mutating = any(_DEPLOY_VERB.search(s.text) and not _DRY_RUN.search(s.text) for s in ctx.segments)
        flags = []
        for seg in ctx.segments:
            text = seg.text
            if seg.is_key or not _has(text.lower(), ("prod", "prd", "live")):
                continue
            if seg.key is not None and _ENV_VALUE.fullmatch(text.strip()) and _PROD.search(text) and mutating:
                flags.append(self.flag("production", "high", f"Deploy to production target "
                                                             f"{seg.key}={text.strip()!r}", seg.location))
                continue
            if _DRY_RUN.search(text):
                continue
            for m in _PROD.finditer(text):
                window = text[max(0, m.start() - _WINDOW):m.end() + _WINDOW]
                if _DEPLOY_VERB.search(window):
                    flags.append(self.flag("production", "high",
                                           f"Deploy/migration touching production: \"{_redact(window.strip(), 100)}\"",
                                           seg.location))
                    break
        return flags


# --- 7. Cost ---------------------------------------------------------------------------

def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


class CostAnalyzer(Analyzer):
    """Estimated cost above the configured thresholds, or large against the remaining budget."""
    code = "cost"

    def analyze(self, ctx: RiskContext) -> list[dict]:
        cost = _decimal(ctx.estimated_cost)
        if cost is None or cost <= 0:
            return []
        flags = []
        medium, high = Decimal(settings.HITL_RISK_COST_MEDIUM), Decimal(settings.HITL_RISK_COST_HIGH)
        if cost > high:
            flags.append(self.flag("high_estimate", "high", f"Estimated cost {cost} is above {high}", "estimated_cost"))
        elif cost > medium:
            flags.append(self.flag("high_estimate", "medium", f"Estimated cost {cost} is above {medium}",
                                   "estimated_cost"))
        budget = _decimal(ctx.budget_remaining)
        if budget is not None:
            if cost > budget:
                flags.append(self.flag("exceeds_budget", "high", f"Estimated cost {cost} exceeds the remaining "
                                                                 f"budget {budget}", "budget_remaining"))
            elif cost > budget / 2:
                flags.append(self.flag("budget_share", "medium",
                                       f"Estimated cost {cost} is more than half the remaining budget {budget}",
                                       "budget_remaining"))
        return flags
