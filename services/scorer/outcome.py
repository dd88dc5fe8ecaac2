"""What a score is made of, and how a score becomes a decision."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp

from services.proto.fraudscore.v1 import scorer_pb2


@dataclass(frozen=True)
class Reason:
    """One driver of a score: a code, a readable description and its weight."""

    code: str
    description: str
    contribution: float

    def to_proto(self) -> scorer_pb2.Reason:
        return scorer_pb2.Reason(
            code=self.code, description=self.description, contribution=self.contribution
        )


@dataclass(frozen=True)
class ScoreOutcome:
    """The full answer to one Score call, before it becomes a protobuf response."""

    transaction_id: str
    score: float
    decision: scorer_pb2.Decision.ValueType
    model_version: str
    reasons: list[Reason]
    fallback_used: bool
    #: Why the fallback answered (breaker_open, timeout, error, ...); None for model scores.
    fallback_reason: str | None = None
    #: The model input computed for this transaction, when the feature read succeeded.
    features: dict[str, float] | None = field(default=None, compare=False)
    #: The scored transaction's card token and event time, for the `scores` topic.
    card_id: str = field(default="", compare=False)
    event_ms: int = field(default=0, compare=False)
    #: The shadow model's score of `features` and its version, for the `scores` topic only.
    shadow_score: float | None = field(default=None, compare=False)
    shadow_model_version: str = field(default="", compare=False)

    def to_record(self, scored_at_s: float | None = None) -> scorer_pb2.ScoreRecord:
        """The `scores` topic message. NaN features (e.g. no previous transaction) are left
        out: absent and unknown mean the same to a reader of the topic."""
        scored_at = Timestamp()
        scored_at.FromNanoseconds(int((time.time() if scored_at_s is None else scored_at_s) * 1e9))
        event_time = Timestamp()
        event_time.FromMilliseconds(self.event_ms)
        return scorer_pb2.ScoreRecord(
            transaction_id=self.transaction_id,
            card_id=self.card_id,
            score=self.score,
            decision=self.decision,
            model_version=self.model_version,
            fallback_used=self.fallback_used,
            fallback_reason=self.fallback_reason or "",
            features={k: v for k, v in (self.features or {}).items() if not math.isnan(v)},
            reasons=[r.to_proto() for r in self.reasons],
            event_time=event_time,
            scored_at=scored_at,
            shadow_score=self.shadow_score,
            shadow_model_version=self.shadow_model_version,
        )

    def to_proto(self) -> scorer_pb2.ScoreResponse:
        return scorer_pb2.ScoreResponse(
            transaction_id=self.transaction_id,
            score=self.score,
            decision=self.decision,
            model_version=self.model_version,
            reasons=[r.to_proto() for r in self.reasons],
            fallback_used=self.fallback_used,
        )


def decide(
    score: float, review_threshold: float, decline_threshold: float
) -> scorer_pb2.Decision.ValueType:
    """Thresholds are inclusive: a score equal to a threshold takes the stricter decision."""
    if score >= decline_threshold:
        return scorer_pb2.DECISION_DECLINE
    if score >= review_threshold:
        return scorer_pb2.DECISION_REVIEW
    return scorer_pb2.DECISION_APPROVE
