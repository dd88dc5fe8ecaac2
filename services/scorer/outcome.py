"""What a score is made of, and how a score becomes a decision."""

from __future__ import annotations

from dataclasses import dataclass, field

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
