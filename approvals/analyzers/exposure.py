"""Privilege and exposure: changes that open a system to others or take its defences down, which
destroy nothing at once and so passed every other analyzer as low risk (flag codes
``exposure.*``): an administrator policy granted, a firewall or a bucket opened to the internet, a
backdoor account or key, host defences or TLS verification turned off, a container given the host,
an audit trail erased. High at most: each is a reviewer's call, none stops a project by itself."""
from __future__ import annotations

import re

from .base import Analyzer
from .context import RiskContext, Segment
from .text import has_hint, redact

_I = re.IGNORECASE
_ANYWHERE = "0.0.0.0/0"

# (name, severity, hints (lower case), label, regex)
_RULES = [
    ("iam_admin", "high", ("administratoraccess", '"*"', "roles/owner", "roles/editor", "owner", "cluster-admin",
                           "iam"),
     "Administrator rights granted", re.compile(
         r"\barn:aws:iam::aws:policy/AdministratorAccess\b|"
         r"\battach-(?:user|role|group)-policy\b[^\n]*\bAdministratorAccess\b|"
         r"\"Action\"\s*:\s*(?:\"\*\"|\[\s*\"\*\"\s*\])[^{}]{0,200}?\"Resource\"\s*:\s*(?:\"\*\"|\[\s*\"\*\"\s*\])|"
         r"\"Resource\"\s*:\s*(?:\"\*\"|\[\s*\"\*\"\s*\])[^{}]{0,200}?\"Action\"\s*:\s*(?:\"\*\"|\[\s*\"\*\"\s*\])|"
         r"\bactions\s*=\s*\[\s*\"\*\"\s*\][^{}]{0,200}?\bresources\s*=\s*\[\s*\"\*\"\s*\]|"
         r"\badd-iam-policy-binding\b[^\n]*--role[= ](?:roles/)?(?:owner|editor)\b|"
         r"\bclusterrolebinding\b[^\n]*--clusterrole[= ]cluster-admin\b|"
         r"\brole\s+assignment\s+create\b[^\n]*--role[= ]['\"]?(?:Owner|Contributor|User Access Administrator)\b",
         _I)),
    ("public_to_everyone", "high", ("allusers", "allauthenticatedusers", "system:anonymous", "system:unauthenticated"),
     "Access granted to everyone", re.compile(
         r"--member[= ]['\"]?(?:allUsers|allAuthenticatedUsers)\b|\ballUsers:\w+|"
         r"--(?:user|group)[= ]system:(?:anonymous|unauthenticated)\b", _I)),
    ("public_bucket", "high", ("public-read", "blockpublic", "public-access", "publicly_accessible", "principal"),
     "Storage or database opened to the public", re.compile(
         r"--acl[= ]['\"]?public-read(?:-write)?\b|\bacl\s*=\s*\"public-read(?:-write)?\"|"
         r"\bBlock(?:Public(?:Acls|Policy)|IgnorePublicAcls|RestrictPublicBuckets)=false\b|"
         r"\bblock_public_(?:acls|policy)\s*=\s*false\b|"
         r"--public-access[= ]['\"]?(?:blob|container)\b|\bpublicly_accessible\s*=\s*true\b|"
         r"\"Principal\"\s*:\s*(?:\"\*\"|\{\s*\"AWS\"\s*:\s*\"\*\"\s*\})", _I)),
    ("firewall_open", "high", (_ANYWHERE, "::/0"), "A firewall opened to the whole internet on every port or an "
     "admin or database port", re.compile(
         r"(?:0\.0\.0\.0/0|::/0)[^\n]{0,200}?(?:--protocol[= ](?:-1|all)\b|--allow[= ](?:all|tcp:(?:22|3389|5432|"
         r"3306|6379|27017|9200)\b)|--port[= ](?:22|3389|5432|3306|6379|27017|9200|all)\b)|"
         r"(?:--protocol[= ](?:-1|all)\b|--allow[= ](?:all|tcp:(?:22|3389|5432|3306|6379|27017|9200)\b)|"
         r"--port[= ](?:22|3389|5432|3306|6379|27017|9200|all)\b)[^\n]{0,200}?(?:0\.0\.0\.0/0|::/0)", _I)),
    ("firewall_public", "medium", (_ANYWHERE, "::/0"), "Ingress from the whole internet", re.compile(
         r"(?:authorize-security-group-ingress|firewall-rules\s+create|--source-ranges|ingress|"
         r"security_group_rule|nsg\s+rule\s+create|--source-address-prefixes)[^\n]{0,300}?(?:0\.0\.0\.0/0|::/0)",
         _I)),
    ("host_backdoor", "high", ("nopasswd", "authorized_keys", "useradd", "usermod", "passwd", "permitrootlogin",
                               "ld.so.preload"),
     "A way into the host added", re.compile(
         r"NOPASSWD\s*:\s*ALL[^\n]{0,80}(?:>>?|tee)[^\n]{0,40}/etc/sudoers|"
         r"(?:>>?|tee\s+(?:-a\s+)?)\s*(?:~|/root|/home/\w+|\$HOME)/\.ssh/authorized_keys\b|"
         r"\buser(?:add|mod)\b[^\n]*\s-o\b[^\n]*\s-u\s*0\b|\buser(?:add|mod)\b[^\n]*\s-u\s*0\b[^\n]*\s-o\b|"
         r"\bpasswd\s+-d\s+root\b|\bPermitRootLogin\s+yes\b|/etc/ld\.so\.preload\b", _I)),
    ("defences_off", "high", ("ufw", "iptables", "setenforce", "systemctl", "cloudtrail", "apparmor", "auditd",
                              "firewalld", "guardduty"),
     "Host or account defences turned off", re.compile(
         r"\bufw\s+disable\b|\biptables\s+(?:-F|--flush)\b|\bsetenforce\s+0\b|"
         r"\bsystemctl\s+(?:stop|disable|mask)\s+(?:firewalld|auditd|apparmor|fail2ban)\b|"
         r"\bcloudtrail\s+(?:stop-logging|delete-trail)\b|\bguardduty\s+delete-detector\b", _I)),
    ("tls_verify_off", "medium", ("sslverify", "strict-ssl", "tls_reject", "rejectunauthorized"),
     "TLS certificate checks turned off", re.compile(
         r"\bhttp\.sslVerify\s+false\b|\bstrict-ssl\s+false\b|\bNODE_TLS_REJECT_UNAUTHORIZED\s*=\s*['\"]?0\b|"
         r"\brejectUnauthorized\s*:\s*false\b", _I)),
    ("container_host", "high", ("--privileged", "docker.sock", "privileged"),
     "A container given the host", re.compile(
         r"--privileged\b[^\n]*\s-v\s+/:|\s-v\s+/:/[^\n]*--privileged\b|"
         r"-v\s+/var/run/docker\.sock:|/var/run/docker\.sock:/var/run/docker\.sock|"
         r"\bprivileged\s*:\s*true\b[\s\S]{0,400}?\bhostPath\s*:[\s\S]{0,40}?\bpath\s*:\s*['\"]?/['\"]?\s*$",
         re.I | re.M)),
    ("cover_tracks", "high", ("history", "histfile", "auth.log", "/var/log/secure", "audit.log", "journalctl",
                              "wtmp", "lastlog"),
     "Audit trail or shell history erased", re.compile(
         r"\bhistory\s+-c\b|\brm\b[^\n]*\.bash_history\b|\bunset\s+HISTFILE\b|\bHISTFILE=/dev/null\b|"
         r"\brm\b[^\n]*/var/log/(?:auth\.log|secure|audit/audit\.log|wtmp|btmp|lastlog)\b|"
         r"(?:>|truncate\s+-s\s*0\s+)\s*/var/log/(?:auth\.log|secure|wtmp|lastlog)\b|"
         r"\bjournalctl\s+[^\n]*--vacuum-(?:time=1s|size=1[KM]?)\b", _I)),
]


class ExposureAnalyzer(Analyzer):
    """Privilege grants and exposure to the internet: administrator policies, 0.0.0.0/0 ingress,
    public buckets, backdoors, defences and TLS checks off, host-mounting containers, erased logs."""
    code = "exposure"
    names = frozenset(rule[0] for rule in _RULES)

    def analyze(self, ctx: RiskContext) -> list[dict]:
        return self.for_each_segment(ctx, self._segment)

    def _segment(self, seg: Segment) -> list[dict]:
        if seg.is_key:
            return []
        text = seg.text
        lower = text.lower()
        flags = []
        for name, severity, hints, label, rx in _RULES:
            if name == "firewall_public" and any(f["code"] == "exposure.firewall_open" for f in flags):
                continue  # the same opening, said once at its level
            m = has_hint(lower, hints) and rx.search(text)
            if m:
                flags.append(self.flag(name, severity, f"{label}: \"{redact(m.group(0), 160)}\"", seg.location))
        return flags
