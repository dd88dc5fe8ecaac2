"""The rule-based fallback: answers when the model path cannot (no model, breaker open,
timeout, feature store or model error).

Rule set ``rules-v1``. Each rule that fires adds its weight to a base score; the total is capped
below 1 so rules alone decline only when several independent signals agree. Amounts are in the
transaction's major currency units, like the model's `amount` feature.

=====================  =================================================================  ======
code                   fires when                                                         weight
=====================  =================================================================  ======
AMOUNT_HIGH            amount >= 1,000 (and below 5,000)                                    0.35
AMOUNT_VERY_HIGH       amount >= 5,000                                                      0.55
NIGHT_HIGH_AMOUNT      00:00-06:00 UTC and amount >= 500                                    0.25
CARD_NOT_PRESENT_HIGH  e-commerce or mail/phone order and amount >= 500                     0.20
VELOCITY_1H            (features known) >= 5 card transactions in the last hour             0.25
RAPID_REPEAT           (features known) previous card transaction < 10 s before             0.15
SPEND_SPIKE            (features known) amount >= 200 and >= 5x the card's 24 h average     0.20
=====================  =================================================================  ======

Changing a threshold or weight is a new RULES_VERSION: scores are only comparable within one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.common import features
from services.proto.fraudscore.v1 import transaction_pb2
from services.scorer.outcome import Reason

RULES_VERSION = "rules-v1"
BASE_SCORE = 0.02
MAX_SCORE = 0.99

_CARD_NOT_PRESENT = frozenset({transaction_pb2.CHANNEL_ECOMMERCE, transaction_pb2.CHANNEL_MOTO})


@dataclass(frozen=True)
class FallbackInput:
    """What the rules may look at: the request, plus the card's features if they were read."""

    amount: float
    event_ms: int
    channel: int = transaction_pb2.CHANNEL_UNSPECIFIED
    card_features: Mapping[str, float] | None = None


@dataclass(frozen=True)
class Rule:
    code: str
    description: str
    weight: float
    fires: Callable[[FallbackInput], bool]


def _is_night(tx: FallbackInput) -> bool:
    return bool(features.transaction_features(tx.amount, tx.event_ms)["is_night"])


def _feature(tx: FallbackInput, name: str) -> float | None:
    if tx.card_features is None:
        return None
    value = tx.card_features.get(name)
    if value is None or math.isnan(value):
        return None
    return float(value)


def _velocity(tx: FallbackInput) -> bool:
    count = _feature(tx, "card_count_1h")
    return count is not None and count >= 5


def _rapid_repeat(tx: FallbackInput) -> bool:
    since = _feature(tx, "card_seconds_since_last")
    return since is not None and since < 10


def _spend_spike(tx: FallbackInput) -> bool:
    count = _feature(tx, "card_count_24h")
    total = _feature(tx, "card_amount_sum_24h")
    if not count or total is None:
        return False
    return tx.amount >= 200 and tx.amount >= 5 * (total / count)


RULES: tuple[Rule, ...] = (
    Rule("AMOUNT_HIGH", "high amount", 0.35, lambda tx: 1_000 <= tx.amount < 5_000),
    Rule("AMOUNT_VERY_HIGH", "very high amount", 0.55, lambda tx: tx.amount >= 5_000),
    Rule(
        "NIGHT_HIGH_AMOUNT",
        "high amount at night (00:00-06:00 UTC)",
        0.25,
        lambda tx: tx.amount >= 500 and _is_night(tx),
    ),
    Rule(
        "CARD_NOT_PRESENT_HIGH",
        "high amount, card not present",
        0.20,
        lambda tx: tx.amount >= 500 and tx.channel in _CARD_NOT_PRESENT,
    ),
    Rule("VELOCITY_1H", "many card transactions in the last hour", 0.25, _velocity),
    Rule("RAPID_REPEAT", "card used seconds ago", 0.15, _rapid_repeat),
    Rule("SPEND_SPIKE", "amount far above the card's recent average", 0.20, _spend_spike),
)


def score(tx: FallbackInput) -> tuple[float, list[Reason]]:
    """Score with the rules; reasons are the rules that fired, heaviest first."""
    fired = [rule for rule in RULES if rule.fires(tx)]
    total = min(MAX_SCORE, BASE_SCORE + sum(rule.weight for rule in fired))
    reasons = [
        Reason(rule.code, rule.description, rule.weight)
        for rule in sorted(fired, key=lambda r: r.weight, reverse=True)
    ]
    return round(total, 6), reasons
