"""A LightGBM model loaded from the registry, checked before it is allowed to serve."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np

from services.common import features
from services.common.features import CardState, apply_transaction
from services.common.model_registry import ModelRecord
from services.scorer import model_probe
from services.scorer.errors import ModelLoadError
from services.scorer.fast_predict import FastPredictor
from services.scorer.outcome import Reason

log = logging.getLogger(__name__)

TOP_REASONS = 3
_DEFAULT_NAME = re.compile(r"^Column_\d+$")
# 2026-01-01 02:00 UTC: a night hour, so the sanity rows exercise is_night too.
_SANITY_MS = 1_767_232_800_000


def top_reasons(
    names: Sequence[str], contributions: Sequence[float], n: int = TOP_REASONS
) -> list[Reason]:
    """The `n` features that pushed the score up the most, largest first.

    Features pulling the score down are not reasons for suspicion, so they never appear.
    """
    ranked = sorted(
        ((float(c), name) for name, c in zip(names, contributions, strict=True) if c > 0),
        reverse=True,
    )
    return [
        Reason(name, features.FEATURE_DESCRIPTIONS.get(name, name), contribution)
        for contribution, name in ranked[:n]
    ]


def sanity_rows() -> list[list[float]]:
    """A few plausible inputs: a first-seen card, a busy card, a large night-time amount."""
    busy = CardState()
    for i in range(6):
        apply_transaction(busy, f"s{i}", _SANITY_MS - (6 - i) * 120_000, 40.0 + i, 300_000)
    return [
        features.feature_vector(features.all_features(None, 25.0, _SANITY_MS)),
        features.feature_vector(features.all_features(busy, 60.0, _SANITY_MS)),
        features.feature_vector(features.all_features(busy, 4_000.0, _SANITY_MS + 86_400_000)),
    ]


@dataclass(frozen=True)
class LoadedModel:
    """A booster that passed every check in `load`; safe to share between threads."""

    version: str
    booster: lgb.Booster
    #: Prepared single-row predictions; None scores rows through `booster.predict`.
    fast: FastPredictor | None = field(default=None, compare=False)

    @property
    def model_version(self) -> str:
        return f"lgbm-{self.version}"

    @classmethod
    def load(cls, record: ModelRecord) -> LoadedModel:
        """Load and check an artifact; raise ModelLoadError rather than serve a doubtful one."""
        expected = list(features.FEATURE_NAMES)
        recorded = record.metadata.get("feature_names")
        if recorded != expected:
            raise ModelLoadError(
                f"model {record.version}: metadata feature_names {recorded!r} "
                f"differ from the scorer's {expected!r}",
                "feature_mismatch",
            )
        failure = model_probe.probe(record.model_path)
        if failure is not None:
            raise ModelLoadError(
                f"model {record.version}: unreadable artifact: {failure}", "unreadable"
            )
        try:
            booster = lgb.Booster(model_file=str(record.model_path))
        except Exception as exc:  # LightGBMError, OSError, ...: all mean "unusable"
            raise ModelLoadError(
                f"model {record.version}: unreadable artifact: {exc}", "unreadable"
            ) from exc
        if booster.num_feature() != len(expected):
            raise ModelLoadError(
                f"model {record.version}: booster has {booster.num_feature()} features, "
                f"expected {len(expected)}",
                "feature_mismatch",
            )
        names = booster.feature_name()
        # Trained from a bare array the booster only knows Column_<i>; otherwise names must match.
        if not all(_DEFAULT_NAME.match(n) for n in names) and names != expected:
            raise ModelLoadError(
                f"model {record.version}: booster feature names {names!r} differ from {expected!r}",
                "feature_mismatch",
            )
        model = cls(record.version, booster)
        try:
            predictions = [model.predict(row) for row in sanity_rows()]
        except Exception as exc:
            raise ModelLoadError(
                f"model {record.version}: sanity prediction failed: {exc}", "failed_sanity_check"
            ) from exc
        model = model.with_fast_path()
        if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in predictions):
            raise ModelLoadError(
                f"model {record.version}: sanity predictions {predictions} are not "
                "probabilities in [0, 1]",
                "failed_sanity_check",
            )
        log.info("model %s loaded and checked", record.version)
        return model

    def with_fast_path(self) -> LoadedModel:
        """This model with prepared single-row predictions, if they agree with `booster.predict`
        on the sanity rows; otherwise (an unexpected LightGBM build) the plain path, logged."""
        try:
            fast = FastPredictor(self.booster)
            for row in sanity_rows():
                plain = np.asarray([row], dtype=np.float64)
                score, contrib = fast.score(row)
                expected = self.booster.predict(plain, num_threads=1)[0]
                expected_contrib = self.booster.predict(plain, pred_contrib=True, num_threads=1)[0]
                if not (
                    np.isclose(score, expected, rtol=1e-12, atol=1e-15)
                    and np.allclose(contrib, expected_contrib, rtol=1e-12, atol=1e-15)
                ):
                    raise ValueError(f"fast {score} vs plain {expected}")
        except Exception as exc:
            log.warning("model %s: single-row fast path unusable (%s)", self.version, exc)
            return self
        return LoadedModel(self.version, self.booster, fast)

    def predict(self, vector: Sequence[float]) -> float:
        if self.fast is not None:
            return self.fast.predict(vector)
        # One thread per call: the gRPC pool already runs calls in parallel.
        row = np.asarray([vector], dtype=np.float64)
        return float(self.booster.predict(row, num_threads=1)[0])

    def explain(self, vector: Sequence[float], n: int = TOP_REASONS) -> list[Reason]:
        # Per-feature contributions in raw-score space; the last column is the bias.
        if self.fast is not None:
            contrib = self.fast.contributions(vector)
        else:
            row = np.asarray([vector], dtype=np.float64)
            contrib = self.booster.predict(row, pred_contrib=True, num_threads=1)[0]
        return top_reasons(features.FEATURE_NAMES, contrib[:-1].tolist(), n)

    def score(self, vector: Sequence[float]) -> tuple[float, list[Reason]]:
        if self.fast is not None:
            score, contrib = self.fast.score(vector)
            return score, top_reasons(features.FEATURE_NAMES, contrib[:-1].tolist())
        return self.predict(vector), self.explain(vector)

    def score_many(
        self, vectors: Sequence[Sequence[float]], n: int = TOP_REASONS
    ) -> list[tuple[float, list[Reason]]]:
        """Many rows at once: one predict and one contributions call for the whole batch."""
        if not vectors:
            return []
        rows = np.asarray(vectors, dtype=np.float64)
        scores = self.booster.predict(rows, num_threads=1)
        contrib = self.booster.predict(rows, pred_contrib=True, num_threads=1)
        return [
            (float(s), top_reasons(features.FEATURE_NAMES, c[:-1], n))
            for s, c in zip(scores, contrib, strict=True)
        ]
