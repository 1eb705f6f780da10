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
    """Fixed one-minute windows per key (an API key, a client address), in this process."""

    per_minute: int
    code: str = "rate_limited"
    message: str = "too many requests"
    _windows: dict[str, tuple[int, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, key: str, count: bool = True) -> None:
        """Count one event for ``key`` (unless ``count`` is false); 429 once over the window's allowance."""
        now = time.time()
        window = int(now // 60)
        with self._lock:
            if len(self._windows) > 10_000:  # many addresses: forget the ones from past windows
                self._windows = {k: v for k, v in self._windows.items() if v[0] == window}
            start, seen = self._windows.get(key, (window, 0))
            if start != window:
                start, seen = window, 0
            seen += count
            self._windows[key] = (start, seen)
        if seen > self.per_minute:
            retry = max(1, int((window + 1) * 60 - now) + 1)
            raise ApiError(429, self.code, self.message, headers={"Retry-After": str(retry)})


@dataclass
class AppState:
    settings: Settings
    store: JobStore
    files: JobFiles
    queue: JobQueue
    limiter: RateLimiter
    auth_failures: RateLimiter
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
    """The caller's key digest ("" when no keys are configured); 401 without a valid Bearer key.

    An address that sent too many wrong keys this minute gets 429 for any key, the right one included.
    """
    keys = state.settings.server.api_keys
    if not keys:
        return ""
    address = request.client.host if request.client else ""
    state.auth_failures.check(address, count=False)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    raw = token.strip().encode("latin-1")  # the header's bytes (Starlette decodes them as latin-1)
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(raw, k.encode()) for k in keys):
        state.auth_failures.check(address)
        raise ApiError(401, "unauthorized", "a valid API key is required", {"WWW-Authenticate": "Bearer"})
    owner = key_digest(token.strip())
    state.limiter.check(owner)
    return owner
