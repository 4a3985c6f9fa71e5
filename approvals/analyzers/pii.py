"""Personal data: e-mail addresses and phone numbers; card numbers, US SSNs and IBANs,
checksum-validated (flag codes ``pii.*``)."""
from __future__ import annotations

import re
import threading

from .base import Analyzer
from .context import RiskContext, Segment

_I = re.IGNORECASE

_EMAIL = re.compile(r"(?<![\w.+%:/-])([A-Za-z0-9][A-Za-z0-9._%+-]{0,63})@((?:[A-Za-z0-9-]+\.)+([A-Za-z]{2,24}))"
                    r"(?![\w-]|\.\w|[:@])")
_EMAIL_SKIP_DOMAIN = re.compile(r"(?:^|\.)(?:example\.(?:com|org|net)|example|test|invalid|localhost|local|"
                                r"users\.noreply\.github\.com)$", _I)
_EMAIL_SKIP_LOCAL = re.compile(r"(?:git|noreply|no-reply|donotreply|do-not-reply|orders?|support|info|sales|billing|"
                               r"contact|hello|help|team|security|privacy|admin|webmaster|postmaster|abuse|ops|"
                               r"notifications?|alerts?|invoices?|accounts|careers|jobs|press|legal|dev|devops)$", _I)
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


# Presidio's pattern recognizers kept: numbers with a checksum or a strong shape. Left out: e-mail and URL
# (tldextract would fetch the public suffix list), dates, IPs, UUIDs and the very weak national ids
# (noisy on versions, order ids and timestamps), and everything NER-based (no spaCy model is loaded).
_NHS_CONTEXT = re.compile(r"\bNHS\b|national\s+health|patient|hospital|\bGP\b|health\s*(?:care|service)", re.I)
_PRESIDIO_ENTITIES = {"CREDIT_CARD": ("card_number", "Payment card number"), "IBAN_CODE": ("iban", "IBAN"),
                      "US_SSN": ("us_ssn", "US social security number"), "UK_NHS": ("uk_nhs", "UK NHS number")}
_PRESIDIO_MIN_SCORE = 0.5
_NUMBERISH = re.compile(r"\d(?:[ -]?\d){8,}|\b[A-Z]{2}\d{2}[ ]?[A-Z0-9]{4}")


class _Presidio:
    """The Presidio engine, built once (lazily) with the no-op NLP engine: no model is downloaded."""
    _engine = None
    _lock = threading.Lock()

    @classmethod
    def engine(cls):
        if cls._engine is not None:  # built: no lock for every call of every request
            return cls._engine
        with cls._lock:
            if cls._engine is None:
                import logging
                logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)   # one INFO line per recognizer
                from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
                from presidio_analyzer.nlp_engine import NoOpNlpEngine
                from presidio_analyzer.predefined_recognizers import (
                    CreditCardRecognizer,
                    IbanRecognizer,
                    NhsRecognizer,
                    UsSsnRecognizer,
                )
                nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
                nlp.load()
                registry = RecognizerRegistry(recognizers=[CreditCardRecognizer(), IbanRecognizer(),
                                                           UsSsnRecognizer(), NhsRecognizer()])
                cls._engine = AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])
        return cls._engine


class PersonalDataAnalyzer(Analyzer):
    """Emails and phone numbers (medium); card numbers, US SSNs, IBANs and NHS numbers, checksum-validated,
    with our regexes and Presidio's pattern recognizers (high)."""
    code = "pii"
    names = frozenset(("email", "phone", "card_number", "us_ssn", "iban", *(n for n, _ in _PRESIDIO_ENTITIES.values())))
    version = "2"

    def prepare(self) -> None:
        _Presidio.engine()

    def analyze(self, ctx: RiskContext) -> list[dict]:
        return self.for_each_segment(ctx, self._segment_all)

    def _segment_all(self, seg: Segment) -> list[dict]:
        flags = self._segment(seg)
        if seg.is_key or not _NUMBERISH.search(seg.text):
            return flags
        seen = {re.sub(r"\W", "", f.get("match", "")) for f in flags}
        for result in _Presidio.engine().analyze(text=seg.text[:20_000], language="en",
                                                 entities=list(_PRESIDIO_ENTITIES)):
            if result.score < _PRESIDIO_MIN_SCORE:
                continue
            value = seg.text[result.start:result.end]
            digits = re.sub(r"\W", "", value)
            if digits in seen:
                continue
            name, label = _PRESIDIO_ENTITIES[result.entity_type]
            if name == "card_number" and not (_luhn(digits) and _CARD_IIN.match(digits) and digits not in _TEST_CARDS
                                              and len(set(digits)) > 2):
                continue
            if name == "iban" and not _iban_ok(value):
                continue
            if name == "uk_nhs" and not _NHS_CONTEXT.search(seg.text[max(0, result.start - 120):result.end + 40]):
                continue   # the mod-11 check passes ~1 in 11 ten-digit numbers (order ids, timestamps)
            seen.add(digits)
            flags.append(self.flag(name, "high", f"{label} (…{digits[-4:]})", seg.location,
                                   confidence=round(min(1.0, result.score), 2), match=digits))
        return flags

    def _segment(self, seg: Segment) -> list[dict]:
        flags, text, loc = [], seg.text, seg.location
        if "@" in text:
            for m in _EMAIL.finditer(text):
                local, domain, tld = m.group(1), m.group(2), m.group(3).lower()
                if _EMAIL_SKIP_DOMAIN.search(domain) or _EMAIL_SKIP_LOCAL.match(local) or tld in _FILE_TLDS:
                    continue
                flags.append(self.flag("email", "medium", f"Email address ({local[0]}***@{domain})", loc,
                                       match=m.group(0)))
        for m in _PHONE.finditer(text):
            digits = re.sub(r"\D", "", m.group(0))
            if 10 <= len(digits) <= 15:
                flags.append(self.flag("phone", "medium", f"Phone number (…{digits[-2:]})", loc, confidence=0.8,
                                       match=digits))
        for m in _CARD.finditer(text):
            digits = re.sub(r"\D", "", m.group(0))
            if (13 <= len(digits) <= 19 and _CARD_IIN.match(digits) and _luhn(digits)
                    and len(set(digits)) > 2 and digits not in _TEST_CARDS):
                flags.append(self.flag("card_number", "high", f"Payment card number (…{digits[-4:]})", loc,
                                       match=digits))
        for m in list(_SSN.finditer(text)) + list(_SSN_KEYWORD.finditer(text)):
            digits = re.sub(r"\D", "", m.group(m.lastindex or 0))
            flags.append(self.flag("us_ssn", "high", f"US social security number (…{digits[-4:]})", loc,
                                   match=digits))
        for m in _IBAN.finditer(text):
            if _iban_ok(m.group(0)):
                flags.append(self.flag("iban", "high", f"IBAN ({m.group(0)[:4]}…)", loc,
                                       match=m.group(0).replace(" ", "")))
        return flags
