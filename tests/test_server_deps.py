"""Request dependencies in-process: the per-minute windows, the Bearer check and its failure limit, the
owner digest. Clock values and digests are computed by hand; no app or socket.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from starlette.requests import Request

from animate.settings import Settings
from server import deps
from server.deps import AppState, RateLimiter, current_owner, get_state, key_digest
from server.errors import ApiError

KEY_A, KEY_B = "key-a-0123456789", "key-b-0123456789"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock(600.0)  # the start of minute 10
    monkeypatch.setattr(deps.time, "time", c)
    return c


def refused(limiter: RateLimiter, key: str, count: bool = True) -> ApiError | None:
    try:
        limiter.check(key, count)
    except ApiError as exc:
        return exc
    return None


def test_limiter_allows_per_minute_events_per_key_then_429_with_retry_after(clock: Clock) -> None:
    limiter = RateLimiter(3)
    clock.now = 615.2  # 44.8 s left in this window
    assert [refused(limiter, "a") for _ in range(3)] == [None, None, None]
    error = refused(limiter, "a")
    assert (error.status, error.code, error.message) == (429, "rate_limited", "too many requests")
    assert error.headers == {"Retry-After": "45"}  # int(660 - 615.2) + 1
    assert refused(limiter, "b") is None  # another key has its own window
    clock.now = 659.9
    assert refused(limiter, "a").headers == {"Retry-After": "1"}  # never 0
    clock.now = 660.0  # the next minute starts afresh
    assert [refused(limiter, "a") for _ in range(3)] == [None, None, None]
    assert refused(limiter, "a") is not None


def test_limiter_without_counting_only_looks(clock: Clock) -> None:
    limiter = RateLimiter(1, "too_many_auth_failures", "wait")
    for _ in range(5):
        assert refused(limiter, "x", count=False) is None
    assert refused(limiter, "x") is None  # the first counted event
    assert refused(limiter, "x", count=False) is None  # at the allowance: looking is fine
    assert refused(limiter, "x").code == "too_many_auth_failures"  # the second counted event is over
    error = refused(limiter, "x", count=False)  # over the allowance: even a look is refused
    assert (error.status, error.code, error.message) == (429, "too_many_auth_failures", "wait")


def test_limiter_forgets_past_windows_only_when_it_holds_many_keys(clock: Clock) -> None:
    limiter = RateLimiter(1)
    for i in range(10_000):
        limiter.check(f"k{i}")
    limiter.check("old")  # still minute 10: nothing is past, nothing forgotten
    assert len(limiter._windows) == 10_001
    clock.now = 660.0
    limiter.check("new")  # over 10 000 keys: the ones from minute 10 go
    assert limiter._windows == {"new": (11, 1)}


def test_limiter_stays_quiet_at_exactly_10000_keys(clock: Clock) -> None:
    limiter = RateLimiter(1)
    limiter._windows = {f"k{i}": (10, 1) for i in range(10_000)}
    clock.now = 660.0
    limiter.check("new")
    assert len(limiter._windows) == 10_001


def request(authorization: str | None = None, client: tuple[str, int] | None = ("10.0.0.1", 5000)) -> Request:
    headers = [(b"authorization", authorization.encode("latin-1"))] if authorization is not None else []
    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers, "query_string": b""}
    if client is not None:
        scope["client"] = client
    return Request(scope)


def state(keys: list[str], per_minute: int = 100, failures: int = 2) -> SimpleNamespace:
    return SimpleNamespace(
        settings=SimpleNamespace(server=SimpleNamespace(api_keys=keys)),
        limiter=RateLimiter(per_minute),
        auth_failures=RateLimiter(failures, "too_many_auth_failures", "wait"),
    )


def owner(req: Request, st) -> str | ApiError:
    try:
        return asyncio.run(current_owner(req, st))
    except ApiError as exc:
        return exc


def test_owner_is_the_sha256_prefix_of_the_key(clock: Clock) -> None:
    st = state([KEY_A, KEY_B])
    expected_a = hashlib.sha256(KEY_A.encode()).hexdigest()[:32]
    assert key_digest(KEY_A) == expected_a and len(expected_a) == 32
    assert owner(request(f"Bearer {KEY_A}"), st) == expected_a
    assert owner(request(f"bearer   {KEY_B}  "), st) == hashlib.sha256(KEY_B.encode()).hexdigest()[:32]


def test_no_keys_configured_means_everyone_is_the_empty_owner(clock: Clock) -> None:
    assert owner(request(None), state([])) == ""
    assert owner(request("Bearer whatever"), state([])) == ""


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        KEY_A,
        f"Basic {KEY_A}",
        f"Bearer {KEY_A}x",
        f"Bearer {KEY_A[:-1]}",
        "Bearer ",
        f"Token {KEY_A}",
    ],
)
def test_a_missing_or_wrong_key_is_401_with_www_authenticate(clock: Clock, authorization: str | None) -> None:
    error = owner(request(authorization), state([KEY_A]))
    assert isinstance(error, ApiError)
    assert (error.status, error.code) == (401, "unauthorized")
    assert error.message == "a valid API key is required"
    assert error.headers == {"WWW-Authenticate": "Bearer"}


def test_wrong_keys_from_an_address_lock_it_out_even_with_the_right_key(clock: Clock) -> None:
    st = state([KEY_A], failures=2)
    assert owner(request("Bearer nope"), st).code == "unauthorized"
    assert owner(request("Bearer nope"), st).code == "unauthorized"
    assert isinstance(owner(request(f"Bearer {KEY_A}"), st), str)  # two failures: still allowed
    assert owner(request("Bearer nope"), st).code == "too_many_auth_failures"  # the third is over
    assert owner(request(f"Bearer {KEY_A}"), st).code == "too_many_auth_failures"
    other = request(f"Bearer {KEY_A}", client=("10.0.0.2", 5000))  # another address is not affected
    assert isinstance(owner(other, st), str)
    assert st.auth_failures._windows["10.0.0.1"] == (10, 3)
    no_client = request("Bearer nope", client=None)  # counted under ""
    assert owner(no_client, st).code == "unauthorized"
    assert st.auth_failures._windows[""] == (10, 1)


def test_a_valid_key_counts_against_its_own_rate_limit(clock: Clock) -> None:
    st = state([KEY_A, KEY_B], per_minute=2)
    assert owner(request(f"Bearer {KEY_A}"), st) == key_digest(KEY_A)
    assert owner(request(f"Bearer {KEY_A}"), st) == key_digest(KEY_A)
    assert owner(request(f"Bearer {KEY_A}"), st).code == "rate_limited"
    assert owner(request(f"Bearer {KEY_B}"), st) == key_digest(KEY_B)
    assert st.auth_failures._windows == {"10.0.0.1": (10, 0)}  # looked at, no failure counted


def test_non_ascii_header_bytes_are_compared_as_sent(clock: Clock) -> None:
    key = "clé-0123456789"  # a configured key with a non-ASCII character, sent as UTF-8
    st = state([key])
    as_starlette_reads_it = key.encode("utf-8").decode("latin-1")
    assert isinstance(owner(request("Bearer " + as_starlette_reads_it), st), str)
    assert owner(request("Bearer " + key.encode("latin-1").decode("latin-1")), st).code == "unauthorized"


def test_state_comes_from_the_app_and_derives_retention_and_probe_limits(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        server={
            "retention_hours": 1.5,
            "probe_timeout_seconds": 7.0,
            "probe_cpu_seconds": 3,
            "probe_memory_bytes": 1 << 30,
        },
    )
    app_state = AppState(settings, None, None, None, RateLimiter(1), RateLimiter(1), None)
    assert app_state.retention == timedelta(minutes=90)
    limits = app_state.probe_limits
    assert (limits.timeout_seconds, limits.cpu_seconds, limits.memory_bytes) == (7.0, 3, 1 << 30)
    req = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(animate=app_state)))
    assert asyncio.run(get_state(req)) is app_state


def test_forgetting_past_windows_keeps_this_minutes_counts(clock: Clock) -> None:
    limiter = RateLimiter(1)
    limiter._windows = {f"k{i}": (10, 1) for i in range(10_000)}
    clock.now = 660.0
    assert refused(limiter, "hot") is None  # 10 000 keys: no purge yet; hot is at 1 of 1
    error = refused(limiter, "hot")  # over 10 000 keys: the purge keeps minute 11's counts
    assert error is not None and error.code == "rate_limited"
    assert limiter._windows == {"hot": (11, 2)}
