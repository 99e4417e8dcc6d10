"""Per-key request rate limits (flask-limiter): Redis storage in production, memory when
embedded. Requests are counted per API key (by its sha256, never the key) or, without a key,
per client address; failed authentications are counted per address too, so that guessing
keys is limited although each guess is a new key."""

from __future__ import annotations

import math
import time

from flask import Blueprint, Flask, Response, current_app, request
from flask_limiter import Limiter, RequestLimit
from limits import parse

from infra.config import Settings
from service.errors import problem_response
from service.limits import RetryLater

KEY = "robaudit.limiter"


def client_key() -> str:
    """The bucket of this request: the hashed API key if one is sent, else the address."""
    from service.auth import hash_key  # auth imports this module: avoid the cycle

    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return "key:" + hash_key(key.strip())
    return "ip:" + (request.remote_addr or "unknown")


def _too_many(detail: str, retry_after: int, limit: str) -> Response:
    response = problem_response(
        429,
        "Too Many Requests",
        detail,
        limit={"name": "rate_limit", "max": limit},
        retry_after_s=retry_after,
    )
    response.headers["Retry-After"] = str(retry_after)
    return response


def _on_breach(breach: RequestLimit) -> Response:
    wait = max(1, math.ceil(breach.reset_at - time.time()))
    return _too_many(
        f"rate limit exceeded: {breach.limit} for this API key (or, without a key, this "
        f"address); retry in {wait} s or slow down",
        wait,
        str(breach.limit),
    )


def storage_uri(settings: Settings) -> str:
    return settings.redis_url or "memory://"


def init_app(app: Flask, settings: Settings, exempt: tuple[Blueprint, ...]) -> Limiter:
    """Limit every route except the `exempt` blueprints (health probes) at settings.rate_limit."""
    # The Redis keys start with ROBAUDIT_REDIS_PREFIX, like the broker's.
    options: dict[str, str | int] = (
        {"key_prefix": f"{settings.redis_prefix}limits"} if settings.redis_url else {}
    )
    limiter = Limiter(
        client_key,
        app=app,
        default_limits=[settings.rate_limit],
        storage_uri=storage_uri(settings),
        storage_options=options,
        strategy="moving-window",
        on_breach=_on_breach,
        # A Redis outage must not take the API down: requests pass unlimited meanwhile.
        swallow_errors=True,
    )
    for bp in exempt:
        limiter.exempt(bp)
    app.extensions[KEY] = limiter

    @app.errorhandler(RetryLater)
    def _retry_later(exc: RetryLater) -> Response:
        response = problem_response(exc.status, exc.title, exc.detail, **exc.extra)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    return limiter


def count_bad_key() -> None:
    """Count a failed authentication against the client's address; over the limit, 429."""
    limiter: Limiter = current_app.extensions[KEY]
    settings: Settings = current_app.config["ROBAUDIT_SETTINGS"]
    item = parse(settings.bad_key_rate_limit)
    address = request.remote_addr or "unknown"
    try:
        if limiter.limiter.hit(item, "bad-key", address):
            return
        reset_at, _ = limiter.limiter.get_window_stats(item, "bad-key", address)
    except Exception:  # storage down: answer the 401, as the default limits do
        current_app.logger.warning("rate limit storage unreachable", exc_info=True)
        return
    wait = max(1, math.ceil(reset_at - time.time()))
    raise RetryLater(
        f"too many requests with unknown or revoked API keys from this address "
        f"({settings.bad_key_rate_limit}); retry in {wait} s with a valid key",
        wait,
        limit={"name": "bad_key_rate_limit", "max": settings.bad_key_rate_limit},
    )
