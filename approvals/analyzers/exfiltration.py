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
_UPLOAD = re.compile(r"\bcurl\b[^\n;&|]*?\s(?:-[a-zA-Z]*[dF]|--data(?:-binary|-raw|-urlencode)?|--form)[\s=]+['\"]?"
                     r"(?:\w+=)?@(?!-(?:[\s'\"]|$))\S+|"
                     r"\bcurl\b[^\n;&|]*?\s(?:-T|--upload-file)[\s=]+(?!-(?:\s|$))\S+|"
                     r"\bwget\b[^\n;&|]*?--(?:post-file|body-file)[\s=]+(?!/dev/stdin)\S+")
# An upload of what is piped in: `… | curl -d @- https://host`, `--data-binary @-`, `-T -`, `--post-file=/dev/stdin`
_STDIN_UPLOAD = re.compile(r"\bcurl\b[^\n;&|]*?\s(?:(?:-[a-zA-Z]*[dF]|--data(?:-binary|-raw|-urlencode)?|--form)"
                           r"[\s=]+['\"]?(?:\w+=)?@-|(?:-T|--upload-file)[\s=]+-)(?=[\s'\"]|$)|"
                           r"\bwget\b[^\n;&|]*?--(?:post-file|body-file)[\s=]+/dev/stdin\b")
# What makes piped data secrets: a cluster's secrets, the environment, a secret store, CI secrets
_SECRET_SOURCE = re.compile(
    r"\bkubectl\s+(?:[^|;&\n]*\s)?get\s+secrets?\b|\bprintenv\s*(?:\||$)|(?:^|[|;&(]\s*)env\s*(?:\||$)|"
    r"\baws\s+(?:[^|;&\n]*\s)?(?:secretsmanager\s+get-secret-value|ssm\s+get-parameters?(?:-by-path)?\b"
    r"[^|;&\n]*--with-decryption)|\bvault\s+(?:read|kv\s+get)\b|\$\{\{\s*secrets\.|"
    r"\bgcloud\s+secrets\s+versions\s+access\b|/proc/(?:self|\d+)/environ\b")
# Data flow from a credential file to a network command, besides being its upload argument:
_PIPED_TO_NET = re.compile(r"\|\s*(?:sudo\s+)?(?:curl|wget|nc|ncat|netcat|socat|ssh|telnet|http|https|xh)\b")
_SUBST_OPEN = re.compile(r"\$\([^()]*$")
_DNS_CMD = re.compile(r"\b(?:dig|nslookup|host)\s")
_ASSIGNED = re.compile(r"(?:^|[;\s])(?:(?:const|let|var|my)\s+)?\$?([A-Za-z_]\w*)\s*:?=[^=][^\n]*$")
_PY_SEND = r"\b(?:requests|httpx|session|client)\.(?:post|put|patch)\s*\("   # a Python HTTP client's send
_NET_CALL = re.compile(rf"{_PY_SEND}|\burlopen\s*\(|"
                       r"\bfetch\s*\(|\baxios\.(?:post|put)\s*\(|\bInvoke-(?:WebRequest|RestMethod)\b")
_SHELL_HOST = re.compile(r"\b(?:nc|ncat|netcat|socat|ssh|telnet)\s+(?:-\S+\s+)*(?:[\w.-]+@)?(\[[^\]]+\]|[\w.-]+)")
_PATH_REST = re.compile(r"[^\s'\"`;&|()<>,]*")
_COPY_OPTS_WITH_VALUE = frozenset(("-i", "-P", "-o", "-F", "-e", "-J", "-S", "-c", "-l", "--rsh", "--port"))
_NETCAT = re.compile(r"\b(?:nc|ncat|netcat)\b[^\n;&|]*<\s*\S+|\|\s*(?:nc|ncat|netcat|socat)\s+[\w.-]+\s+\d+")
_REVERSE_SHELL = re.compile(r"\b(?:bash|sh|zsh)\s+-i\b[^\n]*/dev/(?:tcp|udp)/|/dev/(?:tcp|udp)/[\w.-]+/\d+\s*0>&1|"
                            r"\b(?:nc|ncat|netcat)\b[^\n;&|]*\s-[ce]\s+/bin/(?:ba)?sh|"
                            # red team h4: socat's and Python's and PHP's (all were low)
                            r"\bsocat\b[^\n]*\bexec:['\"]?(?:/bin/)?(?:ba|z)?sh\b[^\n]*\btcp(?:4|6)?:|"
                            r"\bsocket\b[\s\S]{0,300}?\bconnect\s*\(\s*\(['\"][\w.:-]+['\"]\s*,\s*\d+\s*\)\s*\)"
                            r"[\s\S]{0,300}?\b(?:dup2|pty\.spawn)\b|"
                            r"\bfsockopen\s*\([^\n]*\)[^\n]*(?:exec|shell_exec|system|proc_open)\s*\(['\"]?(?:/bin/)?sh")
# The whole environment sent over HTTP (`requests.post(url, json=dict(os.environ))`, `JSON.stringify(process.env)`):
# every secret the process holds (red team h4: low)
_ENV_SENT = re.compile(rf"{_PY_SEND}[^\n]*\b(?:dict\s*\(\s*)?os\.environ\s*[),]|"
                       r"\bfetch\s*\([^\n]*\bJSON\.stringify\s*\(\s*process\.env\s*\)|"
                       r"\baxios\.(?:post|put)\s*\([^\n]*\bprocess\.env\s*\)")
_METADATA_URL = re.compile(r"^\s*https?://(?:169\.254\.169\.254|metadata\.google\.internal|\[fd00:ec2::254\])"
                           r"(?:[:/]|$)", _I)
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
_AS_CREDENTIAL = re.compile(r"(?:Authorization|Bearer|--netrc(?:-file)?|\bauth\s*=|\bheaders?\b|\btoken)[^\n]{0,40}$",
                            re.I)
_READER = re.compile(r"\b(?:cat|head|tail|base64|xxd|od|gzip|tar|openssl|sed|awk|grep|jq|type)\b|<")


def _credential_use(line: str, use: re.Match) -> bool:
    """Is this use of a variable read from a credential file a use of the credential (one of its fields,
    `env.STRIPE_KEY`, `creds['client_id']`; a header, `Bearer ${key}`; `curl --netrc-file "$NETRC"`), not
    the file's content sent? Calling its own API with it was an emergency stop (a second red team)."""
    return line[use.end():use.end() + 1] in (".", "[") or bool(_AS_CREDENTIAL.search(line[:use.start()]))


def _subst_open(before: str) -> bool:
    """Is the file read inside a `$(...)` or a backquoted command still open on its line? A backquote
    left open (an odd number before it) whose text reads the file (`cat`, `<` ...): in Markdown prose the
    backquotes come in pairs, and one opening a file's name (`.env`) reads nothing."""
    if _SUBST_OPEN.search(before):
        return True
    return before.count("`") % 2 == 1 and bool(_READER.search(before[before.rindex("`") + 1:]))


class ExfiltrationAnalyzer(Analyzer):
    """Data leaving the machine: uploads, netcat, remote copies, paste/tunnel hosts (high);
    credential files read (high) or sent out (critical)."""
    code = "exfil"
    version = "2"       # h4: credentials_upload needs a data flow; uploads of piped data
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

        def external(hosts) -> bool:                # no host named (a variable) counts as external
            return not hosts or not all(_is_internal_host(h) for h in hosts)

        creds = [m for m in sorted([*_CRED_FILE.finditer(text), *_DOTENV.finditer(text)], key=lambda m: m.start())
                 if not (m.group(0) + _PATH_REST.match(text, m.end()).group(0)).endswith(".pub")]   # public keys
        uploads = list(_UPLOAD.finditer(text)) if ("curl" in text or "wget" in text) else []
        if creds:
            copies = self._copy_sources(text) if ("scp" in text or "rsync" in text) else []
            net: dict[int, bool] = {}               # line -> a network command there names an outside host
            for p in _NET_CMD.finditer(text):
                n = line_no(p.start())
                net[n] = net.get(n, False) or external(_URL_HOST.findall(line_around(p.start())))
            spans = sorted([(u.start(), u.end(), u) for u in uploads] + copies, key=lambda span: span[0])
            sent = near = None
            for m in creds:
                hosts = self._flow(text, m, spans, starts, line_no, line_before, line_around)
                if hosts is not None:
                    if external(hosts):
                        sent = m
                        break
                    near = near or m                # sent, but to an internal host
                elif near is None and any(net.get(line_no(m.start()) + d) for d in (-2, -1, 0, 1, 2)):
                    near = m
            if sent:
                flags.append(self.flag("credentials_upload", "critical", f"Credential file or environment "
                                       f"({redact(sent.group(0), 40)}) sent over the network", loc))
            elif near:
                # only near a network command (`source .env && curl …/health`), or sent to an internal host:
                # worth a look, not a project stop
                flags.append(self.flag("credentials_upload", "medium", f"Credential file or environment "
                                       f"({redact(near.group(0), 40)}) next to a network command", loc))
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
        for m in _STDIN_UPLOAD.finditer(text) if "@-" in text or " -" in text or "stdin" in text else ():
            hosts = _URL_HOST.findall(line_around(m.end()))
            if not external(hosts):
                continue
            start = max(starts[line_no(m.start())], m.start() - 2 * CONTEXT_CHARS)
            source = re.split(r";|&&|\|\|", text[start:m.start()])[-1]
            if "|" in source and _SECRET_SOURCE.search(source):
                flags.append(self.flag("credentials_upload", "critical", f"Secrets piped to an upload: "
                                       f"\"{redact(source.strip() + ' ' + m.group(0), 120)}\"", loc))
            else:
                flags.append(self.flag("file_upload", "high", f"Uploads piped data: \"{redact(m.group(0))}\"", loc))
        for m in _MILD_FILE.finditer(text):
            if _READ_CMD.search(line_before(m.start())):
                flags.append(self.flag("system_file_read", "medium", "Reads /etc/passwd", loc))
                break
        for m in uploads:
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
        # asked by a network command, or as an HTTP tool's url field ({"url": "http://169.254.169.254/..."})
        if any(_NET_CMD.search(line_around(m.start())) for m in _METADATA.finditer(text)) or _METADATA_URL.match(text):
            flags.append(self.flag("cloud_metadata", "high",
                                   "Queries the cloud instance metadata service (instance credentials)", loc))
        m = _ENV_SENT.search(text) if "environ" in text or "process.env" in text else None
        if m:
            flags.append(self.flag("credentials_upload", "critical",
                                   f"Sends the whole environment (every secret it holds): \"{redact(m.group(0))}\"", loc))
        return flags

    @staticmethod
    def _copy_sources(text: str) -> list[tuple[int, int, str]]:
        """(start, end, destination host) of each source argument of an `scp` / `rsync` to a remote host."""
        out = []
        for m in _REMOTE_COPY.finditer(text):
            args, skip = [], False
            for a in re.finditer(r"\S+", m.group(1)):
                word = a.group(0)
                if skip:
                    skip = False
                elif word.startswith("-"):
                    skip = word in _COPY_OPTS_WITH_VALUE
                else:
                    args.append(a)
            dest = _REMOTE_DEST.match(args[-1].group(0).strip("'\"")) if len(args) >= 2 else None
            if dest:
                base = m.start(1)
                out.extend((base + a.start(), base + a.end(), dest.group(1)) for a in args[:-1])
        return out

    @staticmethod
    def _flow(text, m, spans, starts, line_no, line_before, line_around) -> list[str] | None:
        """The hosts a credential match is sent to when a data flow links it to a network command (it is
        the upload's or the copy's argument, piped into it, `$(cat …)`-substituted in its line, or read
        into a variable the next lines send), else None."""
        pos = m.start()
        i = bisect.bisect_right(spans, (pos, float("inf"))) - 1   # the last upload / copy argument starting here
        for start, end, what in spans[max(0, i - 3):i + 1]:         # or a little before (they do not nest deeply)
            if start <= pos < end:
                if isinstance(what, str):
                    return [what]                   # the host an scp / rsync source goes to
                return _URL_HOST.findall(f"{line_around(what.start())} {line_around(what.end())}")
        line = line_around(pos)
        rest = line_around(m.end())
        rest = rest[rest.find(m.group(0)) + len(m.group(0)):] if m.group(0) in rest else ""
        tail = re.split(r";|&&|\|\||\n", ("|" if m.group(0).endswith("|") else "") + rest, maxsplit=1)[0]
        piped = _PIPED_TO_NET.search(tail)
        if piped:
            after = tail[piped.start():]
            return _URL_HOST.findall(after) + _SHELL_HOST.findall(after)
        before = line_before(pos)
        if _subst_open(before) and (_NET_CMD.search(line) or _DNS_CMD.search(line)):
            return _URL_HOST.findall(line)
        if _NET_CALL.search(before):              # requests.post(url, data=open('.env').read())
            return _URL_HOST.findall(line)
        assigned = _ASSIGNED.search(before)
        if assigned:
            name = re.compile(rf"\b{re.escape(assigned.group(1))}\b")
            n = line_no(pos)
            end = starts[n + 3] if n + 3 < len(starts) else len(text)
            for later in re.finditer(r"[^\n]+", text[m.end():min(end, m.end() + 2000)]):
                piece = later.group(0)
                if (_NET_CMD.search(piece) or _NET_CALL.search(piece)) and any(
                        not _credential_use(piece, use) for use in name.finditer(piece)):
                    return _URL_HOST.findall(piece)
        return None
