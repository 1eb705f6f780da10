"""Browser-playable output: H.264 High, yuv420p, even dimensions, ``moov`` before ``mdat`` (faststart)."""

from __future__ import annotations

import itertools
import os
import queue
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from animate.media.errors import MediaError
from animate.media.prefetch import prefetched
from animate.media.video import _OPEN_OPTIONS

_AUDIO_RATE = 48_000


@dataclass(frozen=True)
class WrittenVideo:
    path: Path
    frame_count: int
    width: int
    height: int
    fps: float
    has_audio: bool


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad a frame to even width/height by repeating its last row/column (yuv420p needs even sizes)."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frame


class _AudioCopier:
    """Re-encodes the driving video's first audio track to AAC, interleaved with the video as it grows.

    Audio is written up to the video's current end; the final call trims it to the video's length.
    """

    def __init__(self, source: Path, output: av.container.OutputContainer) -> None:
        self._input = av.open(str(source), options=_OPEN_OPTIONS)
        self._stream = output.add_stream("aac", rate=_AUDIO_RATE, layout="stereo")
        self._stream.bit_rate = 128_000
        self._resampler = av.AudioResampler(format="fltp", layout="stereo", rate=_AUDIO_RATE)
        self._decoded = self._input.decode(self._input.streams.audio[0])
        self._output = output
        self._pending: list[av.AudioFrame] = []
        self._written = 0  # samples handed to the encoder
        self._exhausted = False

    def _pull(self) -> bool:
        """Resample the next decoded frame into ``_pending``; False once the source is used up."""
        if self._exhausted:
            return False
        try:
            frame = next(self._decoded)
        except (StopIteration, av.error.FFmpegError):
            frame = None  # a damaged audio tail ends the track; the video is unaffected
        if frame is None:
            self._exhausted = True
            self._pending += self._resampler.resample(None)
        else:
            frame.pts = None
            self._pending += self._resampler.resample(frame)
        return True

    def write_until(self, seconds: float, final: bool = False) -> None:
        limit = round(seconds * _AUDIO_RATE)
        while self._written < limit:
            if not self._pending and not self._pull():
                return
            if not self._pending:
                continue
            frame = self._pending[0]
            room = limit - self._written
            if frame.samples > room:
                if not final:
                    return  # wait until the video has grown past this frame
                data = np.ascontiguousarray(frame.to_ndarray()[:, :room])
                frame = av.AudioFrame.from_ndarray(data, format="fltp", layout="stereo")
                frame.sample_rate = _AUDIO_RATE
            self._pending.pop(0)
            frame.pts, frame.time_base = self._written, Fraction(1, _AUDIO_RATE)
            self._written += frame.samples
            for packet in self._stream.encode(frame):
                self._output.mux(packet)

    def finish(self, seconds: float) -> None:
        self.write_until(seconds, final=True)
        for packet in self._stream.encode(None):
            self._output.mux(packet)

    def close(self) -> None:
        self._input.close()


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    *,
    crf: int = 18,
    preset: str = "medium",
    audio_from: str | Path | None = None,
) -> WrittenVideo:
    """Encode RGB uint8 frames (H, W, 3) to an mp4 a browser plays; the file appears atomically.

    audio_from: a media file whose first audio track is copied (re-encoded to AAC), trimmed to the
        video's length. Ignored when that file has no audio.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not 0 < fps <= 240:
        raise MediaError("invalid_option", f"fps must be in (0, 240], got {fps}")
    rate = Fraction(fps).limit_denominator(1001)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".mp4.part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_umask())  # mkstemp's private 0600 would survive the rename
    count = 0
    audio: _AudioCopier | None = None
    try:
        with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as output:
            iterator: Iterator[np.ndarray] = iter(frames)
            first = next(iterator, None)
            if first is None:
                raise MediaError("empty_media", "no frames to write")
            first = _even(_check_frame(first))
            height, width = first.shape[:2]
            stream = output.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(crf), "preset": preset, "profile": "high", "movflags": "+faststart"}
            stream.codec_context.colorspace = 1  # BT.709 tags, matching the conversion below
            stream.codec_context.color_primaries = 1
            stream.codec_context.color_trc = 1
            if audio_from is not None:
                with av.open(str(audio_from), options=_OPEN_OPTIONS) as probe:
                    has_audio = bool(probe.streams.audio)
                audio = _AudioCopier(Path(audio_from), output) if has_audio else None

            def encode(frame: av.VideoFrame) -> None:
                nonlocal count
                frame.pts = count
                for packet in stream.encode(frame):
                    output.mux(packet)
                count += 1
                if audio is not None:
                    audio.write_until(count / fps)

            def checked(index: int, array: np.ndarray) -> np.ndarray:
                # runs on the prefetch thread, ahead of ``count``: the frame's own index names it
                array = _even(_check_frame(array))
                if array.shape[:2] != (height, width):
                    raise MediaError(
                        "invalid_frame",
                        f"frame {index} is {array.shape[1]}x{array.shape[0]}, not {width}x{height}",
                    )
                return array

            for frame in prefetched(
                itertools.chain([first], itertools.starmap(checked, enumerate(iterator, 1))),
                transform=_to_yuv,
                name="rgb-to-yuv",
            ):
                encode(frame)
            for packet in stream.encode(None):
                output.mux(packet)
            if audio is not None:
                audio.finish(count / fps)
        os.replace(tmp, path)
    finally:
        if audio is not None:
            audio.close()
        tmp.unlink(missing_ok=True)
    return WrittenVideo(path, count, width, height, float(rate), audio is not None)


def _to_yuv(array: np.ndarray) -> av.VideoFrame:
    # swscale's BGR input path is SIMD-optimised; the channel swap costs less than the slower RGB path.
    bgr = np.ascontiguousarray(array[..., ::-1])
    return av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format="yuv420p", dst_colorspace="itu709")


def _check_frame(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise MediaError(
            "invalid_frame", f"frames must be (H, W, 3) uint8 RGB, got {array.shape} {array.dtype}"
        )
    return np.ascontiguousarray(array)


class VideoWriters:
    """Several videos written side by side from one pass over the frames: one ``write_video`` thread per
    name, fed frame by frame through a short queue (nothing is held in memory). ``close()`` finishes every
    file and re-raises the first writer error; ``abort()`` (or leaving a ``with`` block by an exception)
    stops them without leaving a file behind."""

    def __init__(
        self, out_dir: str | Path, names: Iterable[str], fps: float, *, crf: int = 18, preset: str = "medium"
    ):
        self.out_dir = Path(out_dir)
        self.queues: dict[str, queue.Queue] = {name: queue.Queue(maxsize=4) for name in names}
        self.errors: list[BaseException] = []
        self.written: dict[str, WrittenVideo] = {}
        self._aborted = False
        self.threads = [
            threading.Thread(
                target=self._run, args=(name, fps, crf, preset), name=f"writer-{name}", daemon=True
            )
            for name in self.queues
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, name: str, fps: float, crf: int, preset: str) -> None:
        try:
            self.written[name] = write_video(
                self.out_dir / f"{name}.mp4", self._drain(name), fps, crf=crf, preset=preset
            )
        except BaseException as exc:  # surfaced by close()
            self.errors.append(exc)
            while self.queues[name].get() is not None:  # keep the producer from blocking
                pass

    def _drain(self, name: str) -> Iterator[np.ndarray]:
        while (frame := self.queues[name].get()) is not None:
            if self._aborted:
                raise _Aborted
            yield frame

    def put(self, frames: dict[str, np.ndarray]) -> None:
        """One frame for each video, by name."""
        for name, frame in frames.items():
            self.queues[name].put(frame)

    def close(self) -> dict[str, WrittenVideo]:
        for q in self.queues.values():
            q.put(None)
        for thread in self.threads:
            thread.join()
        errors = [e for e in self.errors if not isinstance(e, _Aborted)]
        if errors:
            raise errors[0]
        return self.written

    def abort(self) -> None:
        self._aborted = True
        for q in self.queues.values():
            q.put(np.zeros((2, 2, 3), np.uint8))  # wakes a writer waiting for a frame; it raises _Aborted
            q.put(None)
        for thread in self.threads:
            thread.join()

    def __enter__(self) -> VideoWriters:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _Aborted(Exception):
    """Raised inside a writer's frame iterator so ``write_video`` removes its partial file."""
