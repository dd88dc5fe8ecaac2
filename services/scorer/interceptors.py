"""The one place where domain errors become gRPC status codes.

Servicers raise `services.scorer.errors` exceptions; this interceptor aborts the call with the
matching code. Messages name the offending field, never a request value: a card_id can be a
real card number sent by mistake.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from services.scorer.errors import InvalidInput, ModelNotReady, ScorerError

log = logging.getLogger(__name__)

#: Trailing metadata key naming the invalid request field.
INVALID_FIELD_KEY = "fraudscore-invalid-field"


def _abort(context: grpc.ServicerContext, method: str, exc: Exception) -> None:
    if isinstance(exc, InvalidInput):
        log.debug("%s: invalid %s (%s)", method, exc.field, exc.reason)
        context.set_trailing_metadata(((INVALID_FIELD_KEY, exc.field),))
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    elif isinstance(exc, ModelNotReady):
        context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    elif isinstance(exc, ScorerError):
        log.error("%s failed: %s", method, exc)
        context.abort(grpc.StatusCode.INTERNAL, "scoring failed")
    else:
        # The exception text may quote request values; it is logged here, never returned.
        log.error("%s: unexpected error", method, exc_info=exc)
        context.abort(grpc.StatusCode.INTERNAL, "internal error")


class DomainErrorInterceptor(grpc.ServerInterceptor):
    """Maps exceptions raised by unary-unary handlers to status codes."""

    def intercept_service(
        self,
        continuation: Callable[[Any], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return inner(request, context)
            except Exception as exc:
                # A handler that aborted itself already chose its status: keep it.
                if context.code() is not None:
                    raise
                _abort(context, method, exc)
                raise  # unreachable: abort raises

        return handler._replace(unary_unary=guarded)
