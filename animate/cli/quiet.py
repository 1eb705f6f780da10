"""Only our lines on the user's terminal: third-party chatter is silenced at its source.

Three kinds of chatter reach a terminal during a run, each stopped where it starts:

- Python libraries' loggers and warnings (transformers' "requires torchvision" notice, deprecation notes):
  their verbosity variables are set before they are imported, Python warnings are ignored, and their loggers
  are raised to ERROR.
- C++ logging of MediaPipe / TFLite (absl: "Created TensorFlow Lite XNNPACK delegate", "All log messages
  before absl::InitializeLog()", ``inference_feedback_manager.cc`` and ``landmark_projection_calculator.cc``
  warnings) and NVIDIA Warp's ``fprintf(stderr, "Warp CUDA warning: ...")`` when the machine has no CUDA
  driver. These are written straight to file descriptor 2 and read no environment variable (absl ignores
  ``GLOG_minloglevel``), so file descriptor 2 becomes a pipe: a thread drops the lines of those known shapes
  and passes every other line (errors, anything new) through unchanged. Python's own ``sys.stderr`` (our
  progress, our messages, tracebacks) keeps writing to the real stderr directly.

``ANIMATE_DEBUG=1`` or ``-v/--verbose`` leaves everything as it was: every third-party line shows.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
import warnings

#: Lines of these shapes on file descriptor 2 are third-party chatter (anything else passes).
NATIVE_NOISE = re.compile(
    rb"""^(?:
        [IW]\d{4}\ [\d:.]+\s+\d+\ [\w.]+:\d+\]         # absl / glog INFO and WARNING lines
      | INFO:\ Created\ TensorFlow\ Lite\ XNNPACK\ delegate
      | WARNING:\ All\ log\ messages\ before\ absl::InitializeLog\(\)
      | Warp\ CUDA\ warning:\ Could\ not\ find\ or\ load\ the\ NVIDIA\ CUDA\ driver
    )""",
    re.X,
)
#: Verbosity switches read by libraries at import time.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DIFFUSERS_VERBOSITY": "error",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "GLOG_minloglevel": "2",
}
#: Third-party loggers that speak at INFO/WARNING about things a user cannot act on, and the level they keep.
QUIET_LOGGERS = {
    **dict.fromkeys(
        ("transformers", "diffusers", "anny", "warp", "mediapipe", "absl", "PIL", "matplotlib"), "ERROR"
    ),
    "huey": "WARNING",  # the queue consumer's start-up banner and command list; its warnings stay
}

_filter: NativeStderrFilter | None = None


def debug_requested(argv: list[str] | None = None) -> bool:
    """``ANIMATE_DEBUG`` set to anything but ``0``/empty, or ``-v``/``--verbose`` among the options."""
    if os.environ.get("ANIMATE_DEBUG", "").strip() not in ("", "0"):
        return True
    args = argv if argv is not None else sys.argv[1:]
    options = args[: args.index("--")] if "--" in args else args
    return "-v" in options or "--verbose" in options


class NativeStderrFilter:
    """File descriptor 2 through a pipe whose reader drops ``NATIVE_NOISE`` lines; ``close`` restores it."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self._saved = os.dup(2)  # the real stderr
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._read = read
        self._python_stderr = sys.stderr
        # Python keeps writing to the real stderr directly (progress redraws, messages, tracebacks)
        sys.stderr = io.TextIOWrapper(
            io.FileIO(self._saved, "w", closefd=False),
            encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
            errors="backslashreplace",
            line_buffering=True,
            write_through=True,
        )
        self.dropped = 0
        self._thread = threading.Thread(target=self._pump, name="stderr-filter", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._read, 65536)
            except OSError:
                break
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            self._forward(lines)
        if pending:
            self._forward([pending])
        os.close(self._read)

    def _forward(self, lines: list[bytes]) -> None:
        kept = []
        for line in lines:
            if NATIVE_NOISE.match(line):
                self.dropped += 1
            else:
                kept.append(line + b"\n")
        if kept:
            with contextlib.suppress(OSError):
                os.write(self._saved, b"".join(kept))

    def close(self) -> None:
        """Put the real stderr back on file descriptor 2 and pass on what is still in the pipe."""
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes the pipe's write end held by fd 2: the reader sees EOF
        self._thread.join(timeout=2.0)  # children that inherited the pipe may keep it open: do not wait
        sys.stderr = self._python_stderr
        os.close(self._saved)


def quiet_python() -> None:
    """Library verbosity off before the libraries are imported; Python warnings off; their loggers at ERROR."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore")
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def install(argv: list[str] | None = None) -> bool:
    """Silence third-party output for this process unless debugging was asked for. True when silenced.

    Call before the heavy libraries are imported; idempotent; ``uninstall`` undoes the native part.
    """
    global _filter
    if debug_requested(argv):
        return False
    quiet_python()
    if _filter is None:
        try:
            _filter = NativeStderrFilter()
        except OSError:  # no file descriptor 2 (a detached process): nothing to filter
            _filter = None
    return True


def uninstall() -> None:
    global _filter
    if _filter is not None:
        _filter.close()
        _filter = None
