"""Exfiltration: data or credentials leaving the machine (flag codes ``exfil.*``)."""
from __future__ import annotations

import bisect
import ipaddress
import re

from .base import Analyzer
from .context import RiskContext
from .text import CONTEXT_CHARS, redact

_I = re.IGNORECASE

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
    names = frozenset(("credentials_upload", "credential_file_read", "dotenv_read", "system_file_read", "file_upload",
                       "netcat", "reverse_shell", "remote_copy", "paste_or_tunnel_host", "cloud_metadata"))

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

        def line_before(pos: int) -> str:          # the line up to pos, at most CONTEXT_CHARS characters
            return text[max(starts[line_no(pos)], pos - CONTEXT_CHARS):pos]

        def line_around(pos: int) -> str:          # the line around pos, at most CONTEXT_CHARS characters each way
            n = line_no(pos)
            end = starts[n + 1] - 1 if n + 1 < len(starts) else len(text)
            return text[max(starts[n], pos - CONTEXT_CHARS):min(end, pos + CONTEXT_CHARS)]

        creds = sorted([*_CRED_FILE.finditer(text), *_DOTENV.finditer(text)], key=lambda m: m.start())
        if creds:
            net = {line_no(m.start()) for m in _NET_CMD.finditer(text)}
            sent = [m for m in creds if any(line_no(m.start()) + d in net for d in (-2, -1, 0, 1, 2))]
            if sent:
                flags.append(self.flag("credentials_upload", "critical", f"Credential file or environment "
                                       f"({redact(sent[0].group(0), 40)}) sent over the network", loc))
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
                flags.append(self.flag("file_upload", "high", f"Uploads a local file: \"{redact(m.group(0))}\"", loc))
        for name, severity, label, rx in (("netcat", "high", "Pipes data to a raw socket", _NETCAT),
                                          ("reverse_shell", "critical", "Reverse shell", _REVERSE_SHELL)):
            m = rx.search(text)
            if m:
                flags.append(self.flag(name, severity, f"{label}: \"{redact(m.group(0))}\"", loc))
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
