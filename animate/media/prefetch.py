"""Run a producer ahead of its consumer on a thread (FFmpeg and swscale release the GIL while they work)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")


def prefetched(
    items: Iterable[T],
    depth: int = 4,
    transform: Callable[[T], U] | None = None,
    name: str = "prefetch",
) -> Iterator[U]:
    """Yield ``transform(item)`` for each item, computed up to ``depth`` items ahead on a helper thread.

    An exception in the producer is re-raised in the consumer; closing the consumer stops the producer.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put(item if transform is None else transform(item))
        except BaseException as exc:  # handed to the consumer, raised there
            slots.put(exc)
            return
        slots.put(done)

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(0.01)
