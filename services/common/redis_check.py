"""One reachability check of the Redis online store, for commands that set things up."""

from __future__ import annotations

import redis

from services.common.settings import RedisSettings


def unreachable(settings: RedisSettings) -> str | None:
    """None when Redis answers a PING within the settings' timeouts; else the error's text."""
    client = redis.Redis(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        password=settings.password.get_secret_value() if settings.password else None,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_connect_timeout_s,
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        return str(exc)
    finally:
        client.close()
    return None
