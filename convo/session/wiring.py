"""Small pieces both shells share: the default ledger and limiter, the workspace."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

import anthropic

from convo import models
from convo.ledger import Ledger
from convo.limits import RateLimiter
from convo.warm import WarmRegistry, workspace_id

__all__ = ["default_ledger", "default_limiter", "default_registry", "workspace_of"]

_default_ledger: Ledger | None = None
_default_ledger_lock = threading.Lock()


def default_ledger() -> Ledger:
    """The process-wide default ledger that sessions built without one share.

    One object (one writer thread, one batch) for every such session, reopened if a caller
    closed it; it lives where :meth:`convo.Ledger.default` says.
    """
    global _default_ledger
    with _default_ledger_lock:
        if _default_ledger is None or _default_ledger.closed:
            _default_ledger = Ledger.default()
        return _default_ledger


@functools.lru_cache(maxsize=64)
def _registry_on(clock: Callable[[], float]) -> WarmRegistry:
    return WarmRegistry(clock=clock)


def default_registry(clock: Callable[[], float]) -> WarmRegistry:
    """The registry sessions built without one share: the process-wide one on the wall
    clock, or, for sessions given another clock (a test's, the bench's virtual one), one
    shared by every session on that same clock.

    TTLs are judged on one clock: a session on a virtual clock with the wall-clock registry
    would believe an entry live that its clock says expired minutes ago (and predict a read
    that misses).
    """
    if clock is time.time:
        return WarmRegistry.default()
    try:
        return _registry_on(clock)
    except TypeError:  # a clock that cannot be a key (unhashable): one of its own
        return WarmRegistry(clock=clock)


def workspace_of(client: anthropic.Anthropic | anthropic.AsyncAnthropic) -> str:
    """What scopes the server's cache: the API key, at this endpoint.

    It is only ever hashed (by :meth:`convo.warm.WarmKey.for_api_key`), never stored.
    """
    key = client.api_key or client.auth_token or ""
    return f"{client.base_url}|{key}"


def default_limiter(model: str, workspace: str) -> RateLimiter:
    """The process-wide limiter of *model*'s rate-limit class for one API key and endpoint
    (limits are per organisation or workspace; they are learnt from response headers).

    The key is only ever hashed into the limiter's name, never kept.
    """
    try:
        klass = models.lookup(model).rate_limit_class
    except models.UnknownModel:
        klass = model
    return RateLimiter.shared(f"{workspace_id(workspace)}:{klass}")
