from __future__ import annotations

import threading

import numpy as np
import pytest

from animate.media.prefetch import prefetched


def test_keeps_order_and_applies_the_transform_off_thread():
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(20)]
    threads = set()

    def double(frame):
        threads.add(threading.current_thread().name)
        return frame * 2

    out = list(prefetched(iter(frames), depth=2, transform=double, name="worker"))
    assert [int(f[0, 0, 0]) for f in out] == [2 * i for i in range(20)]
    assert threads == {"worker"}


def test_raises_the_producers_error():
    def broken():
        yield np.zeros((2, 2, 3), np.uint8)
        raise RuntimeError("decoder died")

    with pytest.raises(RuntimeError, match="decoder died"):
        list(prefetched(broken()))


def test_stopping_early_does_not_hang():
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(20)]
    stream = prefetched(iter(frames), depth=1)
    assert int(next(stream)[0, 0, 0]) == 0
    stream.close()  # the producer is blocked on a full queue; close must still return
    assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())
