"""Secrets: known key formats (own regexes + detect-secrets plugins), hardcoded credentials and
high-entropy tokens (flag codes ``secret.*``)."""
from __future__ import annotations

import os
import re
import tempfile
import threading

from detect_secrets.filters.heuristic import (
    is_indirect_reference,
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

from .base import Analyzer
from .context import RiskContext, Segment
from .text import CONTEXT_CHARS, has_hint, mask, random_looking

_CHUNK, _OVERLAP = 4096, 256   # third-party regexes only ever see bounded chunks
_MAX_FINDINGS = 50             # secrets reported per text segment (flags are merged per code anyway)

_I = re.IGNORECASE

_B64 = Base64HighEntropyString()


def _entropy(value: str) -> float:
    return _B64.calculate_shannon_entropy(value)


_PLACEHOLDER = re.compile(
    r"(?:x+|\*+|\.+|-+|_+|#+|0+|1234\w*|changeme|change[_-]me|passw(?:or|0r)d\d*|secret|s3cr3t|example\w*|"
    r"sample\w*|dummy\w*|test\w*|fake\w*|mock\w*|placeholder\w*|redacted|hidden|none|null|nil|undefined|"
    r"true|false|todo|tbd|foo\w*|bar|baz|your[_-].*|my[_-]?(?:secret|password|token|key)\w*|.*xxxx.*|.*\*\*\*.*|"
    r"<[^>]*>|\{[^}]*\}|\$\{[^}]*\}|\$\([^)]*\)|\$[A-Za-z_]\w*|%\([^)]*\)s|%s|\?+|"
    r".*\.\.\..*|.*….*|"
    r".*(?:insecure|not[-_]?for[-_]?prod|changeme|change[-_]me|placeholder|dummy|example|sample|fake|redacted).*)", _I)
# Tokens published as examples (jwt.io's HS256 token, Slack's placeholder webhook): high, not critical
_PUBLIC_EXAMPLE = re.compile(
    r"^eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9\.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    r"\.?(?:SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c)?$|"   # its claims: John Doe, 1234567890
    r"hooks\.slack\.com/services/T0+/B0+/X+$|^T0+/B0+/X+$")
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


def _entropy_limit(length: int) -> float:
    """detect-secrets' 4.5 bits suits long strings; shorter random keys cannot reach it, so the
    limit sits just under the 1st percentile of random base62 strings of that length."""
    if length >= 48:
        return _B64.entropy_limit
    return 4.4 if length >= 40 else 4.15 if length >= 32 else 4.0 if length >= 28 else 3.85


def _chunks(text: str):
    if len(text) <= _CHUNK:
        yield text
        return
    for start in range(0, len(text), _CHUNK - _OVERLAP):
        yield text[start:start + _CHUNK]


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
    ("url_credentials", "critical", ("://",), "Password in a URL",   # the user may be empty (redis://:pw@)
     re.compile(r"://[^\s:/?#@'\"]{0,64}:([^\s/?#@'\"]{3,128})@")),
    # a token as the URL's user (https://<token>@github.com/...): when it looks generated
    ("url_token", "critical", ("://",), "Token in a URL",
     re.compile(r"\b[a-z][a-z0-9+.-]*://([A-Za-z0-9_~-]{8,128})@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")),
    ("cli_password", "critical", ("-p", "password", "sshpass", "-u", "htpasswd"), "Password on a command line",
     re.compile(
        r"\b(?:mysql|mysqldump|mysqladmin)\b[^\n;&|]{0,200}?\s-p([^\s'\"]{4,})|"
        r"(?:\s--password[= ]|\bsshpass\s+-p\s*|\bPGPASSWORD=|\bMYSQL_PWD=)['\"]?([^\s'\"]{4,})|"
        # curl -u user:password / --user user:password (a bare user makes curl ask for it)
        r"\bcurl\b[^\n;&|]{0,200}?\s(?:-u|--user)[= ]?\s*['\"]?[^\s:'\"]+:([^\s'\"]{4,})|"
        r"\b(?:docker|podman|helm\s+registry)\s+login\b[^\n;&|]{0,200}?\s-p[= ]?\s*['\"]?([^\s'\"]{4,})|"
        # htpasswd -b[c...] FILE USER PASSWORD (-bn USER PASSWORD)
        r"\bhtpasswd\s+-\w*b\w*\s+(?:-\S+\s+)*(?:\S+\s+)?\S+\s+['\"]?([^\s'\"]{4,})['\"]?\s*(?:$|[\n;&|])")),
    ("bearer_token", "critical", ("bearer",), "Bearer token", re.compile(r"\bBearer\s+([A-Za-z0-9._~+/-]{20,}=*)", _I)),
]
_KNOWN_FORMAT = {"private_key", "aws_access_key", "aws_secret_key", "github_token", "slack_token", "slack_webhook",
                 "anthropic_key", "stripe_key", "stripe_test_key", "google_api_key", "npm_token", "hitl_api_key"}

_CONTEXTUAL = {"url_credentials", "cli_password"}   # the syntax says it is a password: any literal counts
# Every other format needs an unbroken run of 16+ token characters: texts without one skip those rules.
_LONG_TOKEN = re.compile(r"[A-Za-z0-9_+/=.-]{16}")
# A value that is nothing but a UUID (an id in the input: the commonest long token agents send) cannot
# give a detect-secrets finding: its filter is_potential_uuid drops every candidate holding a whole UUID,
# its high-entropy plugins take quoted strings only, and no plugin's pattern fits inside the 4-12-character
# hex groups. Such values do not set off its file scan, which costs twice the rest of the analysis.
_BARE_UUID = re.compile(r"\s*[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\s*")
_SHORT_OK = {"private_key", "url_credentials", "url_token", "cli_password", "Private Key", "Basic Auth Credentials"}

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


_PRAGMA = re.compile(r"pragma:\s*allowlist\s*(?:nextline\s+)?secret", _I)
_DS_LOCK = threading.Lock()          # detect-secrets keeps its settings in a process-wide global
_DS_FILTERS = (   # its default filters, without is_line_allowlisted: an agent must not silence a finding
    "detect_secrets.filters.common.is_invalid_file", "detect_secrets.filters.heuristic.is_non_text_file",
    "detect_secrets.filters.heuristic.is_sequential_string", "detect_secrets.filters.heuristic.is_potential_uuid",
    "detect_secrets.filters.heuristic.is_likely_id_string", "detect_secrets.filters.heuristic.is_templated_secret",
    "detect_secrets.filters.heuristic.is_prefixed_with_dollar_sign",
    "detect_secrets.filters.heuristic.is_indirect_reference", "detect_secrets.filters.heuristic.is_lock_file",
    "detect_secrets.filters.heuristic.is_not_alphanumeric_string", "detect_secrets.filters.heuristic.is_swagger_file")
_DS_CONFIG = {"plugins_used": [{"name": type(plugin).__name__} for plugin, _ in _DS_PLUGINS],
              "filters_used": [{"path": path} for path in _DS_FILTERS]}
_DS_MAX_CHARS = 400_000


_DS_CONFIGURED: list = []


def _configure_detect_secrets() -> None:
    """Our plugins and filters as detect-secrets' settings, set once per process (under _DS_LOCK):
    nothing else in this process uses its global settings, and re-applying them per scan (its
    ``transient_settings``) cost more than the scan."""
    from detect_secrets.settings import cache_bust, configure_settings_from_baseline, get_settings

    if _DS_CONFIGURED and _DS_CONFIGURED[0] is get_settings():
        return
    cache_bust()
    configure_settings_from_baseline(_DS_CONFIG)
    _DS_CONFIGURED[:] = [get_settings()]


def ds_name(kind: str) -> str:
    """Our name for a detect-secrets secret type (``GitHub Token``: ``github_token``)."""
    return _DS_NAMES.get(kind) or re.sub(r"\W+", "_", kind.lower())


def ds_secret_types() -> list[str]:
    """Every secret type detect-secrets' plugins report (its file scan may use any of them)."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    return list(get_mapping_from_secret_type_to_class())


def detect_secrets_file_scan(segments) -> list[tuple[int, str, str]]:
    """detect-secrets' own file scan (``scan_file`` with our settings) of the segments written
    to a temporary file, allowlist pragmas neutralised; [(segment index, secret type, value)]. No
    verification (a network call) is configured."""
    from detect_secrets.core.scan import scan_file

    lines_of: list[int] = []      # file line (0-based) -> segment index
    parts: list[str] = []
    size = 0
    for i, seg in enumerate(segments):
        if seg.is_key:
            continue
        text = _PRAGMA.sub(lambda m: " " * len(m.group(0)), seg.text)
        size += len(text)
        if size > _DS_MAX_CHARS:
            break
        parts.append(text)
        lines_of.extend([i] * (text.count("\n") + 1))
    if not parts:
        return []
    fd, path = tempfile.mkstemp(suffix=".txt", prefix="hitl-secrets-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as fh:
            fh.write("\n".join(parts))
        with _DS_LOCK:
            _configure_detect_secrets()
            found = [(s.line_number, s.type, s.secret_value or "") for s in scan_file(path)]
    finally:
        os.unlink(path)
    return [(lines_of[line - 1], kind, value) for line, kind, value in found if 0 < line <= len(lines_of)]


class SecretsAnalyzer(Analyzer):
    """Known key formats (own regexes + detect-secrets plugins and its file scan), hardcoded credentials,
    high entropy."""
    code = "secret"
    version = "3"       # h4: jwt.io's and Slack's published examples are high
    names = frozenset(("aws_secret_key", "hardcoded_credential", "high_entropy",
                       *(rule[0] for rule in _SECRET_PATTERNS), *(ds_name(kind) for kind in ds_secret_types())))

    def analyze(self, ctx: RiskContext) -> list[dict]:
        flags = self.for_each_segment(ctx, self._segment)
        segments = ctx.segments
        if not any(_LONG_TOKEN.search(seg.text) and not _BARE_UUID.fullmatch(seg.text)
                   for seg in segments if not seg.is_key):
            return flags
        seen: dict[str, list[str]] = {}
        for flag in flags:
            seen.setdefault(flag["location"], []).append(flag.get("match", ""))
        for index, kind, value in detect_secrets_file_scan(segments):
            seg = segments[index]
            name = ds_name(kind)
            if name == "aws_access_key" and not value.startswith(("AKIA", "ASIA", "ABIA", "ACCA", "A3T")):
                name = "aws_secret_key"
            if not value or len(set(value)) < 6 or is_sequential_string(value) or (
                    name in _DS_GENERIC and not _plausible_value(value)):
                continue
            known = seen.setdefault(seg.location, [])
            if any(value in v or v in value for v in known if v):
                continue
            known.append(value)
            flags.append(self.flag(name, "critical", f"{kind} ({mask(value)})", seg.location, match=value))
        return flags

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
            if name.startswith("aws_") and value.endswith(("EXAMPLE", "EXAMPLEKEY")):
                # AWS's own documentation keys (AKIAIOSFODNN7EXAMPLE...): worth a look, not a live secret
                severity, label = "high", f"{label} (AWS documentation example)"
            elif severity == "critical" and _PUBLIC_EXAMPLE.search(value) \
                    and not re.search(r"\bBearer\s+" + re.escape(value[:40]), text, _I):
                # jwt.io's example token, Slack's placeholder webhook: published in every tutorial, not live
                # (sent as `Authorization: Bearer` it is a credential in use, and stays critical)
                severity, label = "high", f"{label} (public documentation example)"
            elif name == "hardcoded_credential" and severity == "critical":
                # a literal in a credential-named place: a finding for the reviewer, but not proof of a
                # live secret (test fixtures, local defaults), so it does not stop the project by itself
                severity = "high"
            flags.append(self.flag(name, severity, f"{label} ({shown})", loc, match=value))

        long_token = bool(_LONG_TOKEN.search(text))
        for name, severity, hints, label, rx in _SECRET_PATTERNS:
            if not (long_token or name in _SHORT_OK) or not has_hint(lower, hints):
                continue
            for m in rx.finditer(text):
                value = next((g for g in m.groups() if g), "") if rx.groups else m.group(0)
                if name in _KNOWN_FORMAT:
                    if len(set(value)) < 6 or (name == "aws_secret_key" and not random_looking(value)):
                        continue
                    report(name, severity, label, value)
                elif _plausible_value(value) and (name in _CONTEXTUAL or random_looking(value)):
                    report(name, severity, label, value)
        for plugin, hints in _DS_PLUGINS:
            if not (long_token or plugin.secret_type in _SHORT_OK) or not has_hint(lower, hints):
                continue
            for chunk in chunks:
                for value in _ds_values(plugin, chunk):
                    name = ds_name(plugin.secret_type)
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
            if re.search(r"pass|pwd", seg.key, _I) or (random_looking(value) or re.fullmatch(r"[0-9a-f]{32,}", value)):
                report("hardcoded_credential", "critical", f"Credential in field '{seg.key}'", value)
        if "private_key" in {f["code"].split(".", 1)[1] for f in flags}:
            return flags
        for m in _ENTROPY_TOKEN.finditer(text):
            token = m.group(1).rstrip("=")
            before = text[max(0, m.start() - 40):m.start()]
            if not random_looking(token) or _BLOB_PREFIX.search(before) or _ID_CONTEXT.search(before):
                continue
            near = text[max(0, m.start() - CONTEXT_CHARS):m.start()]
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
