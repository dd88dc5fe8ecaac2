"""The rolling window, the snapshot over it, its gauges and its report (pure logic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry

from services.monitor import drift, reference, report
from services.monitor.metrics import MonitorMetrics
from services.monitor.psi import Drift

RNG = np.random.default_rng(7)
REF = reference.build_reference(
    pd.DataFrame({"amount": RNG.normal(50, 10, 4000), "count_1h": RNG.normal(2, 1, 4000)}),
    RNG.beta(2, 8, 4000),
)


def _refs(version: str) -> reference.Reference | None:
    return REF if version == "v1" else None


def _fill(window: drift.Window, n: int, version: str = "v1", amount_shift: float = 0.0) -> None:
    rng = np.random.default_rng(11)
    for i in range(n):
        window.add(
            drift.Observation(
                model_version=version,
                score=float(rng.beta(2, 8)),
                fallback=False,
                features={
                    "amount": float(rng.normal(50 + amount_shift, 10)),
                    "count_1h": float(rng.normal(2, 1)),
                },
            )
        )
        if i % 4 == 0:
            window.add(drift.Observation(version, 0.3, True, {}))


def test_window_keeps_only_the_newest_records() -> None:
    window = drift.Window(3)
    for i in range(5):
        window.add(drift.Observation("v1", i / 10, False, {}))
    assert [o.score for o in window.items()] == [0.2, 0.3, 0.4]


def test_shifted_feature_drifts_and_the_others_stay_stable() -> None:
    window = drift.Window(10_000)
    _fill(window, 2000, amount_shift=15.0)
    snap = drift.evaluate(window, _refs, min_records=500)
    assert snap.evaluated and snap.model_version == "v1" and snap.reference_found
    by_name = {d.name: d for d in snap.features}
    assert by_name["amount"].drift is Drift.ACT
    assert by_name["count_1h"].drift is Drift.STABLE
    assert snap.features[0].name == "amount"  # worst first
    assert snap.score_psi is not None and snap.score_psi < 0.1
    assert snap.fallback_share is not None
    assert abs(snap.fallback_share - 500 / 2500) < 1e-9
    assert snap.model_records == 2000


def test_fallback_records_do_not_count_towards_feature_psi() -> None:
    window = drift.Window(10_000)
    _fill(window, 1000)
    # Many featureless fallback records would look like all-NaN drift if they were counted.
    for _ in range(3000):
        window.add(drift.Observation("v1", 0.5, True, {}))
    snap = drift.evaluate(window, _refs, min_records=500)
    assert all(d.drift is Drift.STABLE for d in snap.features)
    assert snap.fallback_share == 3250 / 4250


def test_the_newest_model_version_is_evaluated() -> None:
    window = drift.Window(10_000)
    _fill(window, 600, version="v0")
    _fill(window, 600, version="v1")
    snap = drift.evaluate(window, _refs, min_records=500)
    assert snap.model_version == "v1" and snap.model_records == 600 and snap.evaluated


def test_no_reference_or_too_few_records_is_reported_not_guessed() -> None:
    window = drift.Window(10_000)
    _fill(window, 600, version="v9")
    missing = drift.evaluate(window, _refs, min_records=500)
    assert not missing.evaluated and not missing.reference_found and missing.features == []
    assert "no reference.json" in report.render(missing, "scores")
    few = drift.Window(10_000)
    _fill(few, 100)
    thin = drift.evaluate(few, _refs, min_records=500)
    assert not thin.evaluated and thin.reference_found
    assert "at least 500" in report.render(thin, "scores")
    assert "no score records" in report.render(drift.evaluate(drift.Window(5), _refs, 1), "s")


def test_gauges_follow_the_snapshot_and_drop_stale_features() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    window = drift.Window(10_000)
    _fill(window, 1000, amount_shift=15.0)
    snap = drift.evaluate(window, _refs, min_records=500)
    metrics.publish(snap)
    amount = registry.get_sample_value("fraudscore_feature_psi", {"feature": "amount"})
    assert amount is not None and amount > 0.25
    assert registry.get_sample_value("fraudscore_score_psi") == snap.score_psi
    assert registry.get_sample_value("fraudscore_monitor_fallback_share") == snap.fallback_share
    assert registry.get_sample_value("fraudscore_monitor_reference_loaded") == 1
    p50 = registry.get_sample_value("fraudscore_monitor_score_quantile", {"quantile": "0.5"})
    assert p50 == snap.score_quantiles[0.5]
    metrics.publish(drift.evaluate(drift.Window(5), _refs, 500))
    assert registry.get_sample_value("fraudscore_feature_psi", {"feature": "amount"}) is None


def test_report_lists_every_feature_with_its_verdict() -> None:
    window = drift.Window(10_000)
    _fill(window, 1000, amount_shift=15.0)
    text = report.render(drift.evaluate(window, _refs, min_records=500), "scores")
    assert text.startswith("# fraudscore drift report")
    assert "| amount |" in text and "**act**" in text
    assert "| count_1h |" in text and "| stable |" in text
    assert "1 of 2 features beyond 0.1" in text
    assert "## Score distribution" in text


def test_reference_store_reads_versions_and_refuses_paths(tmp_path: Path) -> None:
    reference.save(REF, tmp_path / "versions" / "v1")
    reference.save(REF, tmp_path / "elsewhere")
    store = drift.ReferenceStore(tmp_path)
    assert store("v1") == REF
    assert store("v2") is None
    assert store("../elsewhere") is None and store("..") is None and store("") is None
    # A reference written after the first miss is found on the next look.
    reference.save(REF, tmp_path / "versions" / "v2")
    assert store("v2") == REF
