"""One-row LightGBM predictions through the C API's prepared single-row calls.

`Booster.predict` on one row spends most of its ~35 µs in Python: it re-parses parameters,
builds a predictor wrapper and converts the input on every call. LightGBM's
`LGBM_BoosterPredictForMatSingleRowFast` does that preparation once (a FastConfig per predict
type) and then scores a row with one C call. Scores and per-feature contributions are exactly
what `Booster.predict` returns (checked when a model loads, see model.LoadedModel.load).
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
from lightgbm.basic import _LIB, _c_str, _safe_call

# c_api.h constants.
_PREDICT_NORMAL = 0
_PREDICT_CONTRIB = 3
_DTYPE_FLOAT64 = 1

_DOUBLE_P = ctypes.POINTER(ctypes.c_double)


def _free(handle: ctypes.c_void_p) -> None:
    _safe_call(_LIB.LGBM_FastConfigFree(handle))


class FastPredictor:
    """Score and contributions of one row; thread-safe (the booster serializes single-row
    predictions internally, and each call has its own output buffer)."""

    def __init__(self, booster: lgb.Booster) -> None:
        self.num_features = int(booster.num_feature())
        # Keeps the booster (and its C handle) alive as long as the prepared configs use it.
        self._booster = booster
        self._normal = self._prepare(booster, _PREDICT_NORMAL)
        self._contrib = self._prepare(booster, _PREDICT_CONTRIB)

    def _prepare(self, booster: lgb.Booster, predict_type: int) -> ctypes.c_void_p:
        handle = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(predict_type),
                ctypes.c_int(0),  # start iteration
                # What Booster.predict uses by default: the best iteration when early-stopped.
                ctypes.c_int(int(booster.best_iteration)),
                ctypes.c_int(_DTYPE_FLOAT64),
                ctypes.c_int32(self.num_features),
                # One thread: a multi-threaded predict of one row only adds scheduling stalls.
                _c_str("num_threads=1"),
                ctypes.byref(handle),
            )
        )
        weakref.finalize(self, _free, handle)
        return handle

    def _call(self, handle: ctypes.c_void_p, row: np.ndarray, out: np.ndarray) -> None:
        out_len = ctypes.c_int64(0)
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFast(
                handle,
                row.ctypes.data_as(ctypes.c_void_p),
                ctypes.byref(out_len),
                out.ctypes.data_as(_DOUBLE_P),
            )
        )

    def _row(self, vector: Sequence[float]) -> np.ndarray:
        row = np.ascontiguousarray(vector, dtype=np.float64)
        if row.shape != (self.num_features,):
            raise ValueError(f"expected {self.num_features} features, got {row.shape}")
        return row

    def predict(self, vector: Sequence[float]) -> float:
        out = np.empty(1, dtype=np.float64)
        self._call(self._normal, self._row(vector), out)
        return float(out[0])

    def contributions(self, vector: Sequence[float]) -> np.ndarray:
        """Per-feature contributions in raw-score space, the bias last (as pred_contrib)."""
        out = np.empty(self.num_features + 1, dtype=np.float64)
        self._call(self._contrib, self._row(vector), out)
        return out

    def score(self, vector: Sequence[float]) -> tuple[float, np.ndarray]:
        row = self._row(vector)
        score = np.empty(1, dtype=np.float64)
        contrib = np.empty(self.num_features + 1, dtype=np.float64)
        self._call(self._normal, row, score)
        self._call(self._contrib, row, contrib)
        return float(score[0]), contrib
