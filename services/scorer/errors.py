"""Domain errors of the scorer. `interceptors.py` maps them to gRPC status codes in one place."""

from __future__ import annotations


class ScorerError(Exception):
    """Base of every error the scorer raises on purpose."""


class InvalidInput(ScorerError):
    """The request cannot be scored; `field` names the culprit (never its value)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid {field}: {reason}")
        self.field = field
        self.reason = reason


class ModelNotReady(ScorerError):
    """No model has been loaded yet."""


class ModelLoadError(ScorerError):
    """A model artifact was refused: unreadable, wrong features, or implausible predictions.

    `reason` is a short, fixed code (a metric label): feature_mismatch, unreadable or
    failed_sanity_check.
    """

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason
