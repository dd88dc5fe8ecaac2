"""Transaction validation shared by the stream (-> DLQ) and the scorer (-> INVALID_ARGUMENT)."""

from __future__ import annotations

import sys
from typing import NamedTuple

from services.common import currency
from services.proto.fraudscore.v1 import transaction_pb2

#: No single card payment above this (in major units) is plausible; it is an upstream bug.
MAX_AMOUNT_MAJOR = 1_000_000.0


class InvalidTransaction(ValueError):
    """A transaction that cannot be scored or counted; `field` names the culprit."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ValidTransaction(NamedTuple):
    """A transaction that passed `validate`. A named tuple: immutable, and built for every
    consumed event at a fraction of a frozen dataclass's cost."""

    transaction_id: str
    card_id: str
    terminal_id: str
    amount: float
    event_ms: int


def looks_like_pan(value: str) -> bool:
    """13-19 digits passing Luhn: a raw card number where a token belongs."""
    digits = value.replace(" ", "").replace("-", "")
    if not digits.isdigit() or not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def validate(txn: transaction_pb2.Transaction) -> ValidTransaction:
    """Check a decoded transaction; raise InvalidTransaction naming the first bad field."""
    # Each field is read once: the stream validates every event, and a protobuf field read
    # costs about as much as the check on it.
    transaction_id, card_id, terminal_id = txn.transaction_id, txn.card_id, txn.terminal_id
    if not transaction_id:
        raise InvalidTransaction("transaction_id", "is required")
    if not card_id:
        raise InvalidTransaction("card_id", "is required")
    if looks_like_pan(card_id):
        # The value itself must never be echoed: it may be a real card number.
        raise InvalidTransaction("card_id", "looks like a card number; send a token")
    if not terminal_id:
        raise InvalidTransaction("terminal_id", "is required")
    if not txn.HasField("event_time"):
        raise InvalidTransaction("event_time", "is required")
    event_time = txn.event_time
    seconds = event_time.seconds
    if seconds <= 0:
        raise InvalidTransaction("event_time", "is required")
    amount_minor = txn.amount_minor
    if amount_minor <= 0:
        raise InvalidTransaction("amount_minor", "must be positive")
    code = txn.currency
    if not currency.is_known(code):
        raise InvalidTransaction("currency", f"unknown ISO-4217 code {code[:8]!r}")
    amount = currency.to_major(amount_minor, code)
    if amount > MAX_AMOUNT_MAJOR:
        raise InvalidTransaction("amount_minor", "is implausibly large")
    event_ms = seconds * 1000 + event_time.nanos // 1_000_000
    # Interned: ids recur from event to event, and states hold them (a card's terminals per
    # hour); one shared object per id keeps bulk reads of those states cache-friendly.
    return ValidTransaction(
        transaction_id, sys.intern(card_id), sys.intern(terminal_id), amount, event_ms
    )
