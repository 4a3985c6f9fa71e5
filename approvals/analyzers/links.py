"""Links: hosts outside the project's allow list, IP-literal URLs and URL shorteners (flag codes ``link.*``).

Calls have no allow list, so a plain link in a call is not flagged; IP literals and shorteners are
(low in calls, medium in responses)."""
from __future__ import annotations

import ipaddress
import re

from .base import Analyzer
from .exfiltration import _is_internal_host

_URL = re.compile(r"\b(?:https?|ftp|wss?)://(?:[^\s/@'\"<>]+@)?(\[[0-9A-Fa-f:.]+\]|[^\s/:?#'\"<>)\]}`,;]+)", re.I)
_SHORTENERS = frozenset({
    "bit.ly", "tinyurl.com", "t.co", "goo.gl", "is.gd", "ow.ly", "buff.ly", "rebrand.ly", "cutt.ly", "shorturl.at",
    "tiny.cc", "rb.gy", "t.ly", "v.gd", "bl.ink", "s.id", "shorte.st", "adf.ly", "lnkd.in", "tiny.one", "x.co"})
_DOC_HOSTS = ("example.com", "example.org", "example.net", "localhost")


def _ip(host: str):
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == a or host.endswith("." + a) for a in (h.lower().strip().lstrip(".") for h in allowed) if a)


class LinkAnalyzer(Analyzer):
    """Links to hosts outside ``allowed_hosts`` (medium); public IP-literal URLs (medium), shorteners (medium,
    low in calls); internal IP literals in responses with an allow list (medium)."""
    code = "link"
    names = frozenset(("private_ip", "ip_literal", "shortener", "external_host"))

    def analyze(self, ctx) -> list[dict]:
        return self.for_each_segment(ctx, lambda seg: self._segment(seg, ctx))

    def _segment(self, seg, ctx) -> list[dict]:
        if "://" not in seg.text:
            return []
        response = getattr(ctx, "kind", "call") == "response"
        allowed = tuple(getattr(ctx, "allowed_hosts", None) or ())
        flags, seen = [], set()
        for m in _URL.finditer(seg.text):
            host = m.group(1).lower().rstrip(".")
            if host in seen:
                continue
            seen.add(host)
            ip = _ip(host)
            if ip is not None:
                if ip.is_loopback or ip.is_unspecified:
                    continue
                if _is_internal_host(host) or ip.is_link_local:
                    if response and allowed and not host_allowed(host, allowed):
                        flags.append(self.flag("private_ip", "medium", f"Link to an internal address ({host}) "
                                                                       "outside the project's allow list",
                                               seg.location, confidence=0.7, match=host))
                    continue
                flags.append(self.flag("ip_literal", "medium",
                                       f"Link to a bare IP address ({host})", seg.location, confidence=0.8, match=host))
            elif host in _SHORTENERS:
                flags.append(self.flag("shortener", "medium" if response else "low",
                                       f"Shortened link hides its target ({host})", seg.location, confidence=0.8,
                                       match=host))
            elif (response and allowed and not host_allowed(host, allowed) and not _is_internal_host(host)
                  and not host.endswith(_DOC_HOSTS)):
                flags.append(self.flag("external_host", "medium", f"Link to {host}, outside the project's allow list",
                                       seg.location, confidence=0.7, match=host))
        return flags
