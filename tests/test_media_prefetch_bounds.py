"""The prefetch thread's bounds: it reads exactly ``depth`` items ahead (plus the one waiting to be put),
stops reading when the consumer closes, passes any value through (None included), hands on any exception
as it was raised, and runs as a daemon thread of the given name."""

from __future__ import annotations

import threading
import time

import pytest

from animate.media.prefetch import prefetched


class Counting:
    """An iterable of 0 .. n - 1 that counts the items taken from it."""

    def __init__(self, n: int) -> None:
        self.n, self.taken = n, 0

    def __iter__(self):
        for i in range(self.n):
            self.taken += 1
            yield i


def _settled(source: Counting, expected: int, wait: float = 10.0) -> int:
    """source.taken once it reached ``expected`` (or ``wait`` s passed) and then 0.3 s more went by."""
    deadline = time.monotonic() + wait
    while source.taken < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    return source.taken


@pytest.mark.parametrize("depth", [None, 1, 3])
def test_reads_depth_items_ahead_and_no_more(depth):
    source = Counting(100)
    stream = prefetched(source) if depth is None else prefetched(source, depth=depth)
    assert next(stream) == 0
    # one consumed, `depth` queued, one taken and waiting for room (4 is the default depth)
    ahead = 4 if depth is None else depth
    assert _settled(source, 1 + ahead + 1) == 1 + ahead + 1
    assert next(stream) == 1
    assert _settled(source, 2 + ahead + 1) == 2 + ahead + 1
    stream.close()


def test_closing_stops_the_reading():
    source = Counting(100_000)
    stream = prefetched(source, depth=2)
    assert next(stream) == 0
    stream.close()
    taken = _settled(source, 100_000, wait=1.0)
    assert taken <= 6  # not the whole source: the producer saw the stop
    assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())


def test_none_and_falsy_items_pass_through():
    items = [None, 0, "", None, False]
    assert list(prefetched(iter(items), depth=1)) == items
    assert list(prefetched([], depth=3)) == []


def test_the_same_exception_object_is_raised_even_a_base_exception():
    class Stop(BaseException):
        pass

    error = Stop("from the decoder")

    def broken():
        yield 1
        raise error

    stream = prefetched(broken())
    assert next(stream) == 1
    with pytest.raises(Stop) as info:
        next(stream)
    assert info.value is error

    failure = ValueError("bad frame")

    def transform(item):
        if item == 2:
            raise failure
        return item * 10

    stream = prefetched(range(5), transform=transform)
    assert [next(stream), next(stream)] == [0, 10]
    with pytest.raises(ValueError) as info:
        next(stream)
    assert info.value is failure


def test_the_worker_is_a_daemon_thread_of_the_given_name():
    release = threading.Event()

    def slow():
        yield 0
        release.wait(5)
        yield 1

    for name in ("prefetch", "decoder"):
        release.clear()
        stream = prefetched(slow()) if name == "prefetch" else prefetched(slow(), name=name)
        assert next(stream) == 0
        workers = [t for t in threading.enumerate() if t.name == name and t.is_alive()]
        assert len(workers) == 1 and workers[0].daemon
        release.set()
        assert list(stream) == [1]
        workers[0].join(5)
        assert not workers[0].is_alive()


def test_closing_while_the_producer_fails_on_a_full_queue_returns():
    """The producer is blocked putting an item on a full queue when the consumer closes; its source then
    fails, and the failure needs a slot too: close keeps draining until the thread is gone."""
    taken = threading.Event()

    def failing():
        yield 0
        yield 1
        taken.set()
        yield 2
        raise RuntimeError("decoder died after the stop")

    stream = prefetched(failing(), depth=1)
    assert next(stream) == 0
    assert taken.wait(5)  # item 1 queued, item 2 taken: the producer waits for room
    time.sleep(0.1)
    closer = threading.Thread(target=stream.close, daemon=True)
    closer.start()
    closer.join(10)
    assert not closer.is_alive()  # a close that waits on the thread for good would hang here
