"""FraudScorer.Score and ScoreBatch: validate, read features, predict, decide; the rules answer
whenever the model path cannot, so a caller never sees an error because Redis or the model had a
bad minute.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from services.common import events, features
from services.common.settings import ScorerSettings
from services.proto.fraudscore.v1 import scorer_pb2, scorer_pb2_grpc, transaction_pb2
from services.scorer import fallback
from services.scorer.breaker import BreakerOpen, BudgetExceeded, GuardedPath
from services.scorer.errors import InvalidInput
from services.scorer.metrics import ScorerMetrics
from services.scorer.model import LoadedModel
from services.scorer.online_features import (
    CombinedReader,
    FeatureReader,
    read_terminal_states,
)
from services.scorer.outcome import Reason, ScoreOutcome, decide
from services.scorer.registry import ModelHolder

log = logging.getLogger(__name__)

#: Kept back from the caller's deadline to run the fallback and send the answer: a fixed part
#: plus a share of what is left, as the reply's own trip takes longer on a loaded host.
DEADLINE_RESERVE_S = 0.005
DEADLINE_RESERVE_SHARE = 0.1

ScoreHook = Callable[[ScoreOutcome], None]

#: Time a single-transaction model path spends on the CPU at worst (feature arithmetic, two
#: LightGBM C calls, a loaded host's scheduling), on top of the reader's own I/O bound.
INLINE_CPU_SLACK_S = 0.004


#: The last second a protobuf Timestamp may hold (9999-12-31T23:59:59Z). Later dates cannot be
#: turned into a calendar time (hour of day, weekend), so neither the model nor the rules could
#: answer; they are the caller's bug, like a missing field.
MAX_EVENT_SECONDS = 253_402_300_799


def validate_transaction(txn: transaction_pb2.Transaction) -> events.ValidTransaction:
    """A transaction the scorer can score, or InvalidTransaction naming the first bad field."""
    valid = events.validate(txn)
    if txn.event_time.seconds > MAX_EVENT_SECONDS or not 0 <= txn.event_time.nanos < 10**9:
        raise events.InvalidTransaction("event_time", "is not a valid timestamp")
    return valid


def validate(request: scorer_pb2.ScoreRequest) -> events.ValidTransaction:
    """The request's transaction, or InvalidInput naming the first bad field."""
    if not request.HasField("transaction"):
        raise InvalidInput("transaction", "is required")
    try:
        return validate_transaction(request.transaction)
    except events.InvalidTransaction as exc:
        raise InvalidInput(exc.field, exc.reason) from None


def validate_batch(
    request: scorer_pb2.ScoreBatchRequest, max_items: int
) -> list[events.ValidTransaction]:
    """Every item, or InvalidInput naming the first bad one as `transactions[<i>].<field>`.

    All or nothing: a caller sending a malformed item has a bug worth hearing about at once,
    and a partly answered batch would be easy to misread as fully answered.
    """
    if len(request.transactions) > max_items:
        raise InvalidInput("transactions", f"at most {max_items} per batch")
    valid = []
    for i, txn in enumerate(request.transactions):
        try:
            valid.append(validate_transaction(txn))
        except events.InvalidTransaction as exc:
            raise InvalidInput(f"transactions[{i}].{exc.field}", exc.reason) from None
    return valid


def read_states(reader: FeatureReader, card_ids: Sequence[str]) -> list[features.CardState | None]:
    """Many card states: in one round trip when the reader can, else one read per card."""
    batch_read = getattr(reader, "read_states", None)
    if batch_read is not None:
        return list(batch_read(card_ids))
    return [reader.read_state(card) for card in card_ids]


def read_pairs(
    reader: FeatureReader, card_ids: Sequence[str], terminal_ids: Sequence[str]
) -> tuple[list[features.CardState | None], list[features.TerminalState | None]]:
    """Card and terminal states of many transactions, in as few round trips as the reader
    allows: one for FastFeatureReader, one per transaction for a combined reader (Feast)."""
    pairs = getattr(reader, "read_pairs", None)
    if pairs is not None:
        cards, terminals = pairs(card_ids, terminal_ids)
        return list(cards), list(terminals)
    if isinstance(reader, CombinedReader):
        both = [reader.read_states_of(c, t) for c, t in zip(card_ids, terminal_ids, strict=True)]
        return [c for c, _ in both], [t for _, t in both]
    return read_states(reader, card_ids), read_terminal_states(reader, terminal_ids)


#: W3C trace context keys a caller may send in its gRPC metadata.
_TRACE_KEYS = frozenset({"traceparent", "tracestate"})


def caller_trace(context: grpc.ServicerContext) -> otel_context.Context | None:
    """The caller's trace context from W3C `traceparent`/`tracestate` metadata, so the Score
    span joins the caller's trace; None (a new trace) when the caller sent none."""
    metadata = context.invocation_metadata() or ()
    carrier = {key: value for key, value in metadata if key in _TRACE_KEYS}
    if not carrier:
        return None
    return propagate.extract(carrier)


@dataclass
class _Partial:
    """What the model path got done before it failed; the fallback may use the features."""

    features: list[dict[str, float] | None] = field(default_factory=list)

    def of(self, i: int) -> dict[str, float] | None:
        return self.features[i] if i < len(self.features) else None


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
        with self.tracer.start_as_current_span("Score", context=caller_trace(context)) as span:
            txn = validate(request)
            outcome = self.evaluate(txn, request.transaction.channel, context.time_remaining())
            span.set_attribute("model_version", outcome.model_version)
            span.set_attribute("fallback_used", outcome.fallback_used)
            span.set_attribute("breaker_state", self.guarded.state)
            if outcome.fallback_reason:
                span.set_attribute("fallback_reason", outcome.fallback_reason)
        self._emit(outcome, self.clock() - started)
        return outcome.to_proto()

    def ScoreBatch(
        self, request: scorer_pb2.ScoreBatchRequest, context: grpc.ServicerContext
    ) -> scorer_pb2.ScoreBatchResponse:
        started = self.clock()
        with self.tracer.start_as_current_span("ScoreBatch", context=caller_trace(context)) as span:
            txns = validate_batch(request, self.settings.batch_max)
            span.set_attribute("batch_size", len(txns))
            channels = [t.channel for t in request.transactions]
            outcomes = self.evaluate_batch(txns, channels, context.time_remaining())
            span.set_attribute("breaker_state", self.guarded.state)
        # The call is observed once, whole, in the batch histogram: n copies of its latency in
        # the Score histogram would drown single calls, and a per-item share would flatter it.
        self.metrics.observe_batch(self.clock() - started, len(outcomes))
        for outcome in outcomes:
            self._emit(outcome, None)
        return scorer_pb2.ScoreBatchResponse(responses=[o.to_proto() for o in outcomes])

    def _emit(self, outcome: ScoreOutcome, elapsed_s: float | None) -> None:
        self.metrics.observe(elapsed_s, outcome.decision, outcome.fallback_reason)
        if self.on_scored is not None:
            try:
                self.on_scored(outcome)
            except Exception:
                # Publishing a score is a side job; the caller still gets its answer.
                log.exception("on_scored hook failed")

    def _budget(self, budget_ms: float, time_remaining: float | None) -> tuple[float, bool] | None:
        """The path's time budget and whether the caller's deadline set it; None: no time."""
        budget = budget_ms / 1000.0
        if time_remaining is None:
            return budget, False
        usable = time_remaining * (1 - DEADLINE_RESERVE_SHARE) - DEADLINE_RESERVE_S
        if usable <= 0:
            return None
        if usable < budget:
            return usable, True
        return budget, False

    def evaluate(
        self,
        txn: events.ValidTransaction,
        channel: int = transaction_pb2.CHANNEL_UNSPECIFIED,
        time_remaining: float | None = None,
    ) -> ScoreOutcome:
        """Score a valid transaction with the model if it can, with the rules if not."""
        return self.evaluate_batch([txn], [channel], time_remaining, self.settings.budget_ms)[0]

    def evaluate_batch(
        self,
        txns: Sequence[events.ValidTransaction],
        channels: Sequence[int],
        time_remaining: float | None = None,
        budget_ms: float | None = None,
    ) -> list[ScoreOutcome]:
        """Score valid transactions: one feature read and one model call for all of them, or
        the rules for all of them when that path fails."""
        if not txns:
            return []
        model = self.model_holder.current
        if model is None:
            return self._fallback_all(txns, channels, "model_not_ready", _Partial())
        budget = self._budget(
            self.settings.batch_budget_ms if budget_ms is None else budget_ms, time_remaining
        )
        if budget is None:
            return self._fallback_all(txns, channels, "deadline", _Partial())
        partial = _Partial()
        try:
            scored = self.guarded.run(
                lambda: self._model_path(model, txns, partial),
                budget[0],
                budget[1],
                inline=len(txns) == 1 and self._inline_fits(budget[0]),
            )
        except BreakerOpen:
            return self._fallback_all(txns, channels, "breaker_open", partial)
        except BudgetExceeded:
            return self._fallback_all(txns, channels, "timeout", partial)
        except Exception as exc:
            log.warning("model path failed, rules answer: %s: %s", type(exc).__name__, exc)
            return self._fallback_all(txns, channels, "error", partial)
        return [
            ScoreOutcome(
                transaction_id=txn.transaction_id,
                score=score,
                decision=self._decide(score),
                model_version=model.model_version,
                reasons=reasons,
                fallback_used=False,
                features=feats,
                card_id=txn.card_id,
                event_ms=txn.event_ms,
            )
            for txn, (score, reasons), feats in zip(txns, scored, partial.features, strict=True)
        ]

    def _inline_fits(self, budget_s: float) -> bool:
        """Whether the reader's worst-case blocking is bounded within `budget_s`, so the model
        path may run on the gRPC thread instead of being handed to the timeout pool."""
        bound = getattr(self.feature_reader, "max_blocking_s", None)
        return bound is not None and float(bound) + INLINE_CPU_SLACK_S <= budget_s

    def _model_path(
        self, model: LoadedModel, txns: Sequence[events.ValidTransaction], partial: _Partial
    ) -> list[tuple[float, list[Reason]]]:
        with self.tracer.start_as_current_span("feature_fetch"):
            states, terminals = read_pairs(
                self.feature_reader, [t.card_id for t in txns], [t.terminal_id for t in txns]
            )
            feats = [
                features.all_features(state, t.amount, t.event_ms, terminal)
                for t, state, terminal in zip(txns, states, terminals, strict=True)
            ]
        partial.features = list(feats)
        with self.tracer.start_as_current_span("predict"):
            vectors = [features.feature_vector(f) for f in feats]
            if len(vectors) == 1:
                scored = [model.score(vectors[0])]
            else:
                scored = model.score_many(vectors)
        for score, _ in scored:
            if not (math.isfinite(score) and 0.0 <= score <= 1.0):
                raise ValueError(f"model {model.version} produced {score!r}, not a probability")
        return scored

    def _fallback_all(
        self,
        txns: Sequence[events.ValidTransaction],
        channels: Sequence[int],
        reason: str,
        partial: _Partial,
    ) -> list[ScoreOutcome]:
        return [
            self._fallback(txn, channel, reason, partial.of(i))
            for i, (txn, channel) in enumerate(zip(txns, channels, strict=True))
        ]

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
            card_id=txn.card_id,
            event_ms=txn.event_ms,
        )

    def _decide(self, score: float) -> scorer_pb2.Decision.ValueType:
        return decide(score, self.settings.review_threshold, self.settings.decline_threshold)
