"""Scores as pure functions of the findings.

Each enforced flag weighs ``SEVERITY_WEIGHT[severity] * confidence``; the risk is
``1 - prod(1 - w_i)`` (order does not matter), ``safety_score = 1 - risk``. ``confidence_score`` is
the share of the analyzers that ran to completion, lowered when the input was not scanned in full.
"""
from __future__ import annotations

import math

from .base import SEVERITY_RANK, SEVERITY_WEIGHT

TRUNCATED_FACTOR = 0.7       # part of the input was not scanned
DECODE_CAPPED_FACTOR = 0.9   # part of the encoded text was not decoded


def weight(flag: dict) -> float:
    return SEVERITY_WEIGHT[flag["severity"]] * float(flag.get("confidence", 1.0))


def risk(flags: list[dict]) -> float:
    return 1.0 - math.prod(1.0 - weight(f) for f in flags) if flags else 0.0


def confidence(*, ran: int, ok: int, truncated: bool, decode_capped: bool) -> float:
    value = ok / ran if ran else 0.0
    if truncated:
        value *= TRUNCATED_FACTOR
    if decode_capped:
        value *= DECODE_CAPPED_FACTOR
    return value


def combine(flags: list[dict], *, ran: int, ok: int, truncated: bool, decode_capped: bool) -> dict:
    r = round(risk(flags), 3)
    level = max((f["severity"] for f in flags), key=SEVERITY_RANK.__getitem__, default="low")
    return {"risk": r, "safety_score": round(1.0 - r, 3), "level": level,
            "confidence_score": round(confidence(ran=ran, ok=ok, truncated=truncated,
                                                 decode_capped=decode_capped), 3)}
