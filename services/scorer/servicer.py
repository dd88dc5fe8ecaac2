"""FraudScorer.Score: validate, read features, predict, decide; the rules answer whenever the
model path cannot, so a caller never sees an error because Redis or the model had a bad minute.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from opentelemetry import trace

from services.common import events, features
from services.common.settings import ScorerSettings
from services.proto.fraudscore.v1 import scorer_pb2, scorer_pb2_grpc, transaction_pb2
from services.scorer import fallback
from services.scorer.breaker import BreakerOpen, BudgetExceeded, GuardedPath
from services.scorer.errors import InvalidInput
from services.scorer.metrics import ScorerMetrics
from services.scorer.model import LoadedModel
from services.scorer.online_features import FeatureReader, read_features
from services.scorer.outcome import Reason, ScoreOutcome, decide
from services.scorer.registry import ModelHolder

log = logging.getLogger(__name__)

#: Kept back from the caller's deadline to run the fallback and send the answer: a fixed part
#: plus a share of what is left, as the reply's own trip takes longer on a loaded host.
DEADLINE_RESERVE_S = 0.005
DEADLINE_RESERVE_SHARE = 0.1

ScoreHook = Callable[[ScoreOutcome], None]


def validate(request: scorer_pb2.ScoreRequest) -> events.ValidTransaction:
    """The request's transaction, or InvalidInput naming the first bad field."""
    if not request.HasField("transaction"):
        raise InvalidInput("transaction", "is required")
    try:
        return events.validate(request.transaction)
    except events.InvalidTransaction as exc:
        raise InvalidInput(exc.field, exc.reason) from None


@dataclass
class _Partial:
    """What the model path got done before it failed; the fallback may use the features."""

    features: dict[str, float] | None = None


class FraudScorerServicer(scorer_pb2_grpc.FraudScorerServicer):
    def __init__(
        self,
        settings: ScorerSettings,
        feature_reader: FeatureReader,
        model_holder: ModelHolder,
        guarded: GuardedPath,
        metrics: ScorerMetrics,
        clock: Callable[[], float] = time.perf_counter,
        on_scored: ScoreHook | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.feature_reader = feature_reader
        self.model_holder = model_holder
        self.guarded = guarded
        self.metrics = metrics
        self.clock = clock
        self.on_scored = on_scored
        # The global provider unless given one; without an exporter configured, spans are no-ops.
        self.tracer = tracer or trace.get_tracer(__name__)

    def Score(
        self, request: scorer_pb2.ScoreRequest, context: grpc.ServicerContext
    ) -> scorer_pb2.ScoreResponse:
        started = self.clock()
        with self.tracer.start_as_current_span("Score") as span:
            txn = validate(request)
            outcome = self.evaluate(txn, request.transaction.channel, context.time_remaining())
            span.set_attribute("model_version", outcome.model_version)
            span.set_attribute("fallback_used", outcome.fallback_used)
            span.set_attribute("breaker_state", self.guarded.state)
            if outcome.fallback_reason:
                span.set_attribute("fallback_reason", outcome.fallback_reason)
        self.metrics.observe(self.clock() - started, outcome.decision, outcome.fallback_reason)
        if self.on_scored is not None:
            try:
                self.on_scored(outcome)
            except Exception:
                # Publishing a score is a side job; the caller still gets its answer.
                log.exception("on_scored hook failed")
        return outcome.to_proto()

    def evaluate(
        self,
        txn: events.ValidTransaction,
        channel: int = transaction_pb2.CHANNEL_UNSPECIFIED,
        time_remaining: float | None = None,
    ) -> ScoreOutcome:
        """Score a valid transaction with the model if it can, with the rules if not."""
        model = self.model_holder.current
        if model is None:
            return self._fallback(txn, channel, "model_not_ready", None)
        budget = self.settings.budget_ms / 1000.0
        client_bound = False
        if time_remaining is not None:
            usable = time_remaining * (1 - DEADLINE_RESERVE_SHARE) - DEADLINE_RESERVE_S
            if usable <= 0:
                return self._fallback(txn, channel, "deadline", None)
            if usable < budget:
                budget, client_bound = usable, True
        partial = _Partial()
        try:
            score, reasons, feats = self.guarded.run(
                lambda: self._model_path(model, txn, partial), budget, client_bound
            )
        except BreakerOpen:
            return self._fallback(txn, channel, "breaker_open", partial.features)
        except BudgetExceeded:
            return self._fallback(txn, channel, "timeout", partial.features)
        except Exception as exc:
            log.warning("model path failed, rules answer: %s: %s", type(exc).__name__, exc)
            return self._fallback(txn, channel, "error", partial.features)
        return ScoreOutcome(
            transaction_id=txn.transaction_id,
            score=score,
            decision=self._decide(score),
            model_version=model.model_version,
            reasons=reasons,
            fallback_used=False,
            features=feats,
        )

    def _model_path(
        self, model: LoadedModel, txn: events.ValidTransaction, partial: _Partial
    ) -> tuple[float, list[Reason], dict[str, float]]:
        with self.tracer.start_as_current_span("feature_fetch"):
            feats = read_features(self.feature_reader, txn.card_id, txn.amount, txn.event_ms)
        partial.features = feats
        with self.tracer.start_as_current_span("predict"):
            score, reasons = model.score(features.feature_vector(feats))
        if not (math.isfinite(score) and 0.0 <= score <= 1.0):
            raise ValueError(f"model {model.version} produced {score!r}, not a probability")
        return score, reasons, feats

    def _fallback(
        self,
        txn: events.ValidTransaction,
        channel: int,
        reason: str,
        feats: dict[str, float] | None,
    ) -> ScoreOutcome:
        with self.tracer.start_as_current_span("fallback") as span:
            span.set_attribute("fallback_reason", reason)
            score, reasons = fallback.score(
                fallback.FallbackInput(txn.amount, txn.event_ms, channel, feats)
            )
        return ScoreOutcome(
            transaction_id=txn.transaction_id,
            score=score,
            decision=self._decide(score),
            model_version=fallback.RULES_VERSION,
            reasons=reasons,
            fallback_used=True,
            fallback_reason=reason,
            features=feats,
        )

    def _decide(self, score: float) -> scorer_pb2.Decision.ValueType:
        return decide(score, self.settings.review_threshold, self.settings.decline_threshold)
