"""The one place where domain errors become gRPC status codes.

Servicers raise `services.scorer.errors` exceptions; this interceptor aborts the call with the
matching code. Messages name the offending field, never a request value: a card_id can be a
real card number sent by mistake.
"""

from __future__ import annotations

import hmac
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


#: Services anyone may call: balancers probe health, operators list services without a token.
OPEN_SERVICES: tuple[str, ...] = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _unauthenticated(request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>` metadata (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an empty token would let everyone in")
        self._expected = f"Bearer {token}".encode()
        self._refuse = grpc.unary_unary_rpc_method_handler(_unauthenticated)

    def intercept_service(
        self,
        continuation: Callable[[Any], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method = handler_call_details.method
        if method.startswith(OPEN_SERVICES):
            return continuation(handler_call_details)
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                # Constant time: the comparison must not leak how much of a guess was right.
                if hmac.compare_digest(given, self._expected):
                    return continuation(handler_call_details)
                break
        log.debug("%s: refused, no valid bearer token", method)
        return self._refuse
