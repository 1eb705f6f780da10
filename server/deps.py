"""Request dependencies: the app's shared state, the caller's identity and rate limit."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

from fastapi import Depends, Request

from animate.settings import Settings
from server.errors import ApiError
from server.files import JobFiles
from server.probe import ProbeLimits, ProbeSlots
from server.queue import JobQueue
from server.store import JobStore


@dataclass
class RateLimiter:
    """Fixed one-minute windows per key, in this process."""

    per_minute: int
    _windows: dict[str, tuple[int, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, owner: str) -> None:
        now = time.time()
        window = int(now // 60)
        with self._lock:
            start, count = self._windows.get(owner, (window, 0))
            if start != window:
                start, count = window, 0
            count += 1
            self._windows[owner] = (start, count)
        if count > self.per_minute:
            retry = max(1, int((window + 1) * 60 - now) + 1)
            raise ApiError(429, "rate_limited", "too many requests", headers={"Retry-After": str(retry)})


@dataclass
class AppState:
    settings: Settings
    store: JobStore
    files: JobFiles
    queue: JobQueue
    limiter: RateLimiter
    probes: ProbeSlots

    @property
    def retention(self) -> timedelta:
        return timedelta(hours=self.settings.server.retention_hours)

    @property
    def probe_limits(self) -> ProbeLimits:
        server = self.settings.server
        return ProbeLimits(server.probe_timeout_seconds, server.probe_cpu_seconds, server.probe_memory_bytes)


# The dependencies are ``async`` on purpose: they do no I/O, and a sync one would cost every request a
# thread-pool hop each.
async def get_state(request: Request) -> AppState:
    return request.app.state.animate


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


async def current_owner(request: Request, state: AppState = Depends(get_state)) -> str:
    """The caller's key digest ("" when no keys are configured); 401 without a valid Bearer key."""
    keys = state.settings.server.api_keys
    if not keys:
        return ""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.strip(), k) for k in keys):
        raise ApiError(401, "unauthorized", "a valid API key is required", {"WWW-Authenticate": "Bearer"})
    owner = key_digest(token.strip())
    state.limiter.check(owner)
    return owner
