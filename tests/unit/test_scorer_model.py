"""Model loading refuses doubtful artifacts; reasons are the largest positive contributions."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from services.common import features
from services.common.model_registry import ModelRegistry
from services.scorer.errors import ModelLoadError
from services.scorer.model import LoadedModel, sanity_rows, top_reasons

NAMES = list(features.FEATURE_NAMES)


def tiny_booster(columns: list[str], objective: str = "binary") -> lgb.Booster:
    """A few hundred synthetic rows where large night-time amounts are fraud."""
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(rng.random((n, len(columns))), columns=columns)
    frame["amount"] = rng.uniform(1, 2_000, n)
    label = (frame["amount"] > 1_000).astype(int)
    params = {"objective": objective, "verbose": -1, "num_leaves": 4, "min_data_in_leaf": 5}
    return lgb.train(params, lgb.Dataset(frame, label=label), num_boost_round=10)


def register(tmp_path: Path, booster: lgb.Booster, names: list[str]) -> LoadedModel:
    record = ModelRegistry(tmp_path).register(booster.model_to_string(), {"feature_names": names})
    return LoadedModel.load(record)


def test_model_with_the_scorers_features_loads_and_predicts_probabilities(tmp_path: Path) -> None:
    model = register(tmp_path, tiny_booster(NAMES), NAMES)
    assert model.model_version.startswith("lgbm-")
    for row in sanity_rows():
        assert 0.0 <= model.predict(row) <= 1.0


def test_metadata_feature_list_mismatch_is_refused(tmp_path: Path) -> None:
    swapped = [NAMES[1], NAMES[0], *NAMES[2:]]
    with pytest.raises(ModelLoadError, match="feature_names"):
        register(tmp_path, tiny_booster(NAMES), swapped)


def test_booster_with_another_feature_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="features"):
        register(tmp_path, tiny_booster([*NAMES, "extra"]), NAMES)


def test_regression_model_predicting_outside_zero_one_is_refused(tmp_path: Path) -> None:
    # Labels 0/1 but a booster trained on amount itself predicts values far above 1.
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.random((300, len(NAMES))), columns=NAMES)
    frame["amount"] = rng.uniform(1, 5_000, 300)
    params = {"objective": "regression", "verbose": -1, "min_data_in_leaf": 5}
    booster = lgb.train(params, lgb.Dataset(frame, label=frame["amount"]), num_boost_round=5)
    with pytest.raises(ModelLoadError, match=r"\[0, 1\]"):
        register(tmp_path, booster, NAMES)


def test_garbage_artifact_is_refused(tmp_path: Path) -> None:
    record = ModelRegistry(tmp_path).register("not a model", {"feature_names": NAMES})
    with pytest.raises(ModelLoadError, match="unreadable"):
        LoadedModel.load(record)


def test_reasons_are_the_three_largest_positive_contributions() -> None:
    contributions = [0.1, -2.0, 0.0, 0.7, 0.05, 0.3, -0.4, 0.2, 0.0]
    # The rest of the features push nothing.
    contributions += [0.0] * (len(NAMES) - len(contributions))
    reasons = top_reasons(NAMES, contributions)
    assert [r.code for r in reasons] == [NAMES[3], NAMES[5], NAMES[7]]
    assert [r.contribution for r in reasons] == [0.7, 0.3, 0.2]
    assert reasons[0].description == features.FEATURE_DESCRIPTIONS[NAMES[3]]


def test_no_reasons_when_nothing_pushes_the_score_up() -> None:
    assert top_reasons(NAMES, [-0.1] * len(NAMES)) == []


def test_model_reasons_match_lightgbm_contributions(tmp_path: Path) -> None:
    model = register(tmp_path, tiny_booster(NAMES), NAMES)
    row = features.feature_vector(features.all_features(None, 1_800.0, 1_767_232_800_000))
    contrib = model.booster.predict(np.asarray([row]), pred_contrib=True)[0][:-1]
    reasons = model.explain(row)
    assert reasons, "a large amount must push a fraud score up"
    assert reasons[0].code == NAMES[int(np.argmax(contrib))]


def test_refusals_carry_a_fixed_reason_code(tmp_path: Path) -> None:
    record = ModelRegistry(tmp_path / "a").register("not a model", {"feature_names": NAMES})
    with pytest.raises(ModelLoadError) as unreadable:
        LoadedModel.load(record)
    assert unreadable.value.reason == "unreadable"
    swapped = [NAMES[1], NAMES[0], *NAMES[2:]]
    with pytest.raises(ModelLoadError) as mismatch:
        register(tmp_path / "b", tiny_booster(NAMES), swapped)
    assert mismatch.value.reason == "feature_mismatch"


def random_rows(n: int) -> list[list[float]]:
    rng = np.random.default_rng(5)
    rows = rng.random((n, len(NAMES))) * 100
    rows[:, NAMES.index("amount")] = rng.uniform(1, 2_000, n)
    rows[rng.random((n, len(NAMES))) < 0.1] = np.nan  # unknown features reach the model as NaN
    return rows.tolist()


@pytest.mark.parametrize("objective", ["binary", "cross_entropy"])
def test_the_single_row_fast_path_scores_and_explains_exactly_as_booster_predict(
    tmp_path: Path, objective: str
) -> None:
    model = register(tmp_path, tiny_booster(NAMES, objective), NAMES)
    assert model.fast is not None, "a loaded model uses the prepared single-row predictions"
    rows = random_rows(200) + sanity_rows()
    expected = model.booster.predict(np.asarray(rows), num_threads=1)
    contrib = model.booster.predict(np.asarray(rows), pred_contrib=True, num_threads=1)
    for row, score, c in zip(rows, expected, contrib, strict=True):
        assert model.predict(row) == score
        fast_score, reasons = model.score(row)
        assert fast_score == score
        assert reasons == top_reasons(NAMES, c[:-1].tolist())
        assert np.array_equal(model.fast.contributions(row), c)


def test_the_fast_path_refuses_a_row_of_the_wrong_length(tmp_path: Path) -> None:
    model = register(tmp_path, tiny_booster(NAMES), NAMES)
    assert model.fast is not None
    with pytest.raises(ValueError, match="features"):
        model.fast.predict([1.0, 2.0])


def test_an_early_stopped_model_scores_at_its_best_iteration_on_both_paths(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.random((400, len(NAMES))), columns=NAMES)
    label = (rng.random(400) < 0.5).astype(int)  # noise: validation loss stops improving early
    train = lgb.Dataset(frame[:300], label=label[:300])
    valid = lgb.Dataset(frame[300:], label=label[300:], reference=train)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 4, "min_data_in_leaf": 5}
    booster = lgb.train(
        params, train, 50, valid_sets=[valid], callbacks=[lgb.early_stopping(3, verbose=False)]
    )
    model = register(tmp_path, booster, NAMES)
    for row in random_rows(20):
        assert model.predict(row) == model.booster.predict(np.asarray([row]))[0]
