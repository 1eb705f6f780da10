"""Stage progress on stderr, as a person reads it.

In a terminal the running stage is one line redrawn in place (bar, percentage, count, elapsed time, and the
time left once it means something); when a stage ends its line is replaced by the stage's summary. Without
a terminal (a log, a pipe, CI) only the summaries are printed, one line per stage when it ends:

    start-up                 1.9 s
    decode                   0.1 s
    pose        96 frames    3.1 s

``start-up`` is the time from the process start to the first stage (imports, model loading), so it is not
counted as ``decode``. The time left is the stage's own measured rate times what remains of it, shown only
after ``ETA_AFTER_SECONDS`` and ``ETA_AFTER_FRACTION`` of the stage: an early guess from a warming-up
stage is worse than none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO


def process_start() -> float:
    """The ``time.monotonic()`` reading at which this process started (Linux ``/proc``; else: now)."""
    now = time.monotonic()
    try:
        with open("/proc/self/stat") as file:
            start_ticks = int(file.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as file:
            uptime = float(file.read().split()[0])
        return now - max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return now


#: When the process started: ``start-up`` counts from here (interpreter, imports, model loading).
PROCESS_START = process_start()
ETA_AFTER_SECONDS = 2.0
ETA_AFTER_FRACTION = 0.1
REDRAW_SECONDS = 0.1
BAR_WIDTH = 20


def format_seconds(seconds: float) -> str:
    """``3.14`` -> ``"3.1 s"``, ``75`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def stage_line(stage: str, seconds: float, count: int | None = None, unit: str = "frames") -> str:
    """One finished stage: ``"pose        96 frames    3.1 s"``."""
    amount = f"{count} {unit}" if count is not None else ""
    return f"{stage:<8} {amount:>12} {format_seconds(seconds):>8}"


def time_left(elapsed: float, done: float, total: float) -> float | None:
    """The stage's remaining time from its own measured rate, or None while that rate means little."""
    if total <= 0 or done <= 0 or elapsed < ETA_AFTER_SECONDS or done / total < ETA_AFTER_FRACTION:
        return None
    return elapsed / done * (total - done)


class StageProgress:
    """Callback for stage progress (``stage, step, total``), printing to ``stream`` (stderr by default).

    ``tty`` defaults to whether the stream is a terminal. Call ``startup()`` just before the work starts
    (optional: the first stage also prints it), then the instance for each report, and ``close()`` at the end.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.clock = clock
        self.started = PROCESS_START if started is None else started
        self.stage: str | None = None
        self.stage_start = 0.0
        self.step = 0
        self.total = 0
        self._drawn = 0.0
        self._live = False  # a redrawn line is on screen
        self._startup_done = False
        self.lines: list[str] = []  # the summaries printed, for callers that want them

    # -- output
    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _print(self, line: str) -> None:
        if self._live:
            self._write("\r\x1b[K")
            self._live = False
        self.lines.append(line)
        self._write(line + "\n")

    def note(self, line: str) -> None:
        """A line of ours between stages (e.g. a one-time build), not breaking the live line."""
        self._print(line)

    def startup(self) -> None:
        """Print ``start-up`` with the time since the process started, once."""
        if not self._startup_done:
            self._startup_done = True
            self._print(stage_line("start-up", self.clock() - self.started))

    # -- stages
    def __call__(self, stage: str, step: int, total: int) -> None:
        now = self.clock()
        if stage != self.stage:
            self.startup()
            self._end_stage(now)
            self.stage, self.stage_start, self._drawn = stage, now, 0.0
        self.step, self.total = step, total
        if self.tty and (now - self._drawn >= REDRAW_SECONDS or (total and step >= total)):
            self._drawn = now
            self._redraw(now)

    def _end_stage(self, now: float) -> None:
        if self.stage is None:
            return
        count = self.total if self.total > 1 else None
        self._print(stage_line(self.stage, now - self.stage_start, count))
        self.stage = None

    def _redraw(self, now: float) -> None:
        elapsed = now - self.stage_start
        fraction = min(self.step / self.total, 1.0) if self.total else 0.0
        filled = round(fraction * BAR_WIDTH)
        parts = [
            f"{self.stage:<8}",
            "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]",
            f"{fraction:4.0%}",
        ]
        if self.total > 1:
            parts.append(f"{self.step}/{self.total}")
        parts.append(format_seconds(elapsed))
        left = time_left(elapsed, self.step, self.total)
        if left is not None:
            parts.append(f"~{format_seconds(left)} left")
        width = shutil.get_terminal_size((80, 24)).columns
        self._write("\r\x1b[K" + " ".join(parts)[: max(width - 1, 10)])
        self._live = True

    def close(self) -> None:
        """End the running stage (its summary line) and leave the cursor on a fresh line."""
        self._end_stage(self.clock())
        if self._live:
            self._write("\r\x1b[K")
            self._live = False


class _NoteHandler(logging.Handler):
    def __init__(self, progress: StageProgress) -> None:
        super().__init__(logging.WARNING)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.progress.note(f"{record.levelname.lower()}: {record.getMessage()}")
        except Exception:  # a broken stream must not end the run
            self.handleError(record)


@contextlib.contextmanager
def warnings_to(progress: StageProgress, logger: str = "animate") -> Iterator[None]:
    """Our loggers' warnings as ``warning: ...`` lines between the progress lines (not through the bar)."""
    target = logging.getLogger(logger)
    handler = _NoteHandler(progress)
    propagate = target.propagate
    target.addHandler(handler)
    target.propagate = False
    try:
        yield
    finally:
        target.removeHandler(handler)
        target.propagate = propagate
