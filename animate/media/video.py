"""Driving videos: probe, validate against limits, and stream RGB frames at a constant rate.

All pixel work (rotation, frame-rate conversion, scaling, colour conversion) happens inside one FFmpeg
filter graph, so Python only sees finished frames and memory stays bounded by a few frames.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from animate.media.errors import MediaError
from animate.settings import MediaLimits

# Containers start with these bytes; used to tell "damaged video" from "not a video at all".
_CONTAINER_MAGIC = (
    (4, b"ftyp"),  # ISO BMFF: mp4, mov, 3gp
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"wide"),
    (4, b"free"),
    (0, b"\x1a\x45\xdf\xa3"),  # EBML: mkv, webm
    (0, b"RIFF"),  # avi
)
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
# Only plain files may be opened: no demuxer may pull in a URL or another file by reference.
_OPEN_OPTIONS = {"protocol_whitelist": "file"}
# FFmpeg's demuxer and codec names in user words (for messages; MediaLimits holds FFmpeg's names).
CONTAINER_WORDS = {
    "mov,mp4,m4a,3gp,3g2,mj2": ("MP4", "MOV"),
    "matroska,webm": ("MKV", "WebM"),
    "avi": ("AVI",),
}
CODEC_WORDS = {
    "h264": "H.264", "hevc": "HEVC", "vp8": "VP8", "vp9": "VP9", "av1": "AV1", "mpeg4": "MPEG-4",
    "mjpeg": "MJPEG", "prores": "ProRes",
}  # fmt: skip
# Demuxers that read still images (FFmpeg opens a JPEG or PNG as a one-frame "video").
_STILL_IMAGE_DEMUXERS = re.compile(r"^(image2|\w+_pipe|apng|gif|webp)$")


def _in_words(names: tuple[str, ...], words: dict) -> str:
    """("MP4", "MOV", "AVI") -> "MP4, MOV or AVI"."""
    flat: list[str] = []
    for name in names:
        entry = words.get(name, name.upper())
        flat += [entry] if isinstance(entry, str) else list(entry)
    return flat[0] if len(flat) == 1 else f"{', '.join(flat[:-1])} or {flat[-1]}"


def accepted_containers(limits: MediaLimits) -> str:
    """The accepted video files in user words: ``"MP4, MOV, MKV, WebM or AVI"``."""
    return _in_words(limits.video_containers, CONTAINER_WORDS)


@dataclass(frozen=True)
class VideoInfo:
    """Probe facts. ``width``/``height`` are as displayed, i.e. after ``rotation`` is applied."""

    path: str
    container: str
    codec: str
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation: int  # counter-clockwise degrees applied for display: 0, 90, 180 or 270
    fps: float  # average frame rate
    duration: float  # seconds
    frame_count: int
    has_audio: bool
    size_bytes: int
    pix_fmt: str

    def to_dict(self) -> dict:
        return asdict(self)


def _looks_like_container(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(12)
    return any(head[offset : offset + len(magic)] == magic for offset, magic in _CONTAINER_MAGIC)


def _check_local_file(path: str | Path, limits: MediaLimits) -> Path:
    text = str(path)
    if "://" in text or (_URL_LIKE.match(text) and not Path(text).exists()):
        raise MediaError("unsupported_source", f"only local files are accepted, got {text!r}")
    path = Path(path)
    if not path.is_file():
        raise MediaError("not_found", f"no such file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise MediaError("empty_media", f"{path.name} is empty (0 bytes)")
    if size > limits.max_file_bytes:
        raise MediaError("too_large", f"{path.name} is {size} bytes; the limit is {limits.max_file_bytes}")
    return path


def _open_container(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r", options=_OPEN_OPTIONS)
    except av.error.FFmpegError as exc:
        if _looks_like_container(path):
            raise MediaError(
                "corrupt_media", f"{path.name} is damaged or truncated ({exc.strerror})"
            ) from exc
        raise MediaError("unsupported_format", f"{path.name} is not a video file we can read") from exc


def _normalise_rotation(ccw_degrees: float) -> int:
    return round(ccw_degrees / 90.0) % 4 * 90


def probe_video(path: str | Path, limits: MediaLimits | None = None) -> VideoInfo:
    """Read and validate a video's facts, decoding only its first frame."""
    limits = limits or MediaLimits()
    path = _check_local_file(path, limits)
    with _open_container(path) as container:
        fmt = container.format.name
        if fmt not in limits.video_containers:
            if _STILL_IMAGE_DEMUXERS.match(fmt):
                problem = f"{path.name} is a still image, not a video"
            else:
                kind = "/".join(CONTAINER_WORDS.get(fmt, (fmt.split(",")[0].upper(),)))
                problem = f"{path.name}: {kind} files are not accepted"
            raise MediaError("unsupported_format", f"{problem}; send {accepted_containers(limits)}")
        if not container.streams.video:
            raise MediaError("no_video_stream", f"{path.name} has no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        if codec not in limits.video_codecs:
            raise MediaError(
                "unsupported_codec",
                f"{CODEC_WORDS.get(codec, codec)} video is not accepted; "
                f"use {_in_words(limits.video_codecs, CODEC_WORDS)}",
            )

        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            raise MediaError(
                "corrupt_media", f"{path.name}: the video cannot be decoded ({exc.strerror})"
            ) from exc
        if first is None:
            raise MediaError("empty_media", f"{path.name} holds no decodable video frame")

        rotation = _normalise_rotation(first.rotation)
        coded_w, coded_h = first.width, first.height
        width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)

        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        duration = 0.0
        if stream.duration is not None and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        frame_count = int(stream.frames or 0)
        if not rate and frame_count and duration:
            rate = Fraction(frame_count / duration).limit_denominator(1001)
        if not rate:
            raise MediaError("corrupt_media", f"{path.name}: the frame rate cannot be determined")
        fps = float(rate)
        if frame_count == 0:  # Matroska/WebM carry no frame count; estimate from the duration.
            frame_count = max(1, round(duration * fps))

        info = VideoInfo(
            path=str(path),
            container=fmt,
            codec=codec,
            width=width,
            height=height,
            coded_width=coded_w,
            coded_height=coded_h,
            rotation=rotation,
            fps=fps,
            duration=duration,
            frame_count=frame_count,
            has_audio=bool(container.streams.audio),
            size_bytes=path.stat().st_size,
            pix_fmt=stream.codec_context.pix_fmt or "",
        )
    _check_limits(info, limits)
    return info


def _check_limits(info: VideoInfo, limits: MediaLimits) -> None:
    name = Path(info.path).name
    if info.width * info.height > limits.max_video_pixels:
        raise MediaError(
            "too_large",
            f"{name} is {info.width}x{info.height}; the limit is {limits.max_video_pixels} pixels",
        )
    if min(info.width, info.height) < limits.min_video_side:
        raise MediaError("too_small", f"{name} is {info.width}x{info.height}; too small to hold a person")
    if info.duration > limits.max_video_seconds:
        raise MediaError(
            "too_long", f"{name} lasts {info.duration:.1f} s; the limit is {limits.max_video_seconds:g} s"
        )
    if info.frame_count > limits.max_video_frames:
        raise MediaError(
            "too_long", f"{name} has {info.frame_count} frames; the limit is {limits.max_video_frames}"
        )


def cover_size(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int]:
    """Smallest size >= (dst_w, dst_h) with the source's aspect ratio (scale to cover, then crop)."""
    scale = max(dst_w / src_w, dst_h / src_h)
    return max(dst_w, math.ceil(src_w * scale - 1e-6)), max(dst_h, math.ceil(src_h * scale - 1e-6))


class DrivingVideo:
    """A validated local video. ``frames()`` may be called any number of times; each call streams anew."""

    def __init__(self, info: VideoInfo, limits: MediaLimits) -> None:
        self.info = info
        self.limits = limits

    def __getattr__(self, name: str):
        # Probe facts read as attributes: video.width, video.fps, video.frame_count, ...
        info = self.__dict__.get("info")
        if info is not None and name in VideoInfo.__dataclass_fields__:
            return getattr(info, name)
        raise AttributeError(name)

    def __enter__(self) -> DrivingVideo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing stays open between ``frames()`` calls; kept for symmetry with file objects."""

    def __repr__(self) -> str:
        i = self.info
        return f"DrivingVideo({Path(i.path).name!r}, {i.width}x{i.height}, {i.fps:.3f} fps, {i.frame_count} frames)"

    def output_frame_count(self, fps: float | None = None, max_frames: int | None = None) -> int:
        """How many frames ``frames(fps, max_frames)`` will yield, estimated from the probe."""
        count = self.info.frame_count if fps is None else max(1, round(self.info.duration * fps))
        return min(count, max_frames) if max_frames else count

    def frames(
        self,
        fps: float | None = None,
        max_frames: int | None = None,
        size: tuple[int, int] | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield upright RGB uint8 frames (H, W, 3) at a constant rate.

        fps: output rate; defaults to the average rate. Variable-rate input is resampled by timestamps
            (nearest frame), so the output always has a constant rate.
        size: (width, height); the frame is scaled to cover it and centre-cropped (no distortion).
        """
        if fps is not None and not (0 < fps <= 240):
            raise MediaError("invalid_option", f"fps must be in (0, 240], got {fps}")
        if size is not None and (size[0] < 2 or size[1] < 2):
            raise MediaError("invalid_option", f"size must be at least 2x2, got {size[0]}x{size[1]}")
        target_fps = Fraction(fps if fps is not None else self.info.fps).limit_denominator(1001)
        stream = self._stream(target_fps, size)
        return stream if max_frames is None else itertools.islice(stream, max_frames)

    def _stream(self, fps: Fraction, size: tuple[int, int] | None) -> Iterator[np.ndarray]:
        path = Path(self.info.path)
        yielded = 0
        with _open_container(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            graph = None
            try:
                for decoded, frame in enumerate(container.decode(stream), 1):
                    if graph is None:
                        graph = self._build_graph(stream, frame, fps, size)
                        start = frame.time or 0.0
                    self._check_decoded(decoded, (frame.time or 0.0) - start)
                    graph.vpush(frame)
                    for out in _drain(graph):
                        yielded += 1
                        yield out
            except av.error.FFmpegError as exc:
                # A damaged tail still leaves the frames before it usable; nothing usable is an error.
                if yielded == 0:
                    raise MediaError(
                        "corrupt_media", f"{path.name} cannot be decoded ({exc.strerror})"
                    ) from exc
            if graph is None:
                raise MediaError("empty_media", f"{path.name} holds no decodable video frame")
            graph.vpush(None)
            yield from _drain(graph)

    def _check_decoded(self, frames: int, seconds: float) -> None:
        """The header may understate the length: the limits hold for what is really decoded."""
        limits, name = self.limits, Path(self.info.path).name
        if seconds > limits.max_video_seconds:
            raise MediaError(
                "too_long", f"{name} runs past {limits.max_video_seconds:g} s, whatever its header says"
            )
        if frames > limits.max_video_frames:
            raise MediaError(
                "too_long", f"{name} holds over {limits.max_video_frames} frames, whatever its header says"
            )

    def _build_graph(
        self,
        stream: av.video.stream.VideoStream,
        first: av.VideoFrame,
        fps: Fraction,
        size: tuple[int, int] | None,
    ) -> av.filter.Graph:
        graph = av.filter.Graph()
        nodes = [graph.add_buffer(template=stream)]
        rotation = _normalise_rotation(first.rotation)
        if rotation == 90:
            nodes.append(graph.add("transpose", "cclock"))
        elif rotation == 270:
            nodes.append(graph.add("transpose", "clock"))
        elif rotation == 180:
            nodes += [graph.add("hflip"), graph.add("vflip")]
        nodes.append(graph.add("fps", f"fps={fps.numerator}/{fps.denominator}:round=near"))
        width, height = self.info.width, self.info.height
        if size is not None and (size[0], size[1]) != (width, height):
            scaled_w, scaled_h = cover_size(width, height, size[0], size[1])
            nodes.append(graph.add("scale", f"{scaled_w}:{scaled_h}:flags=area"))
            if (scaled_w, scaled_h) != tuple(size):
                nodes.append(graph.add("crop", f"{size[0]}:{size[1]}"))
        nodes.append(graph.add("format", "rgb24"))
        nodes.append(graph.add("buffersink"))
        graph.link_nodes(*nodes).configure()
        return graph


def _drain(graph: av.filter.Graph) -> Iterator[np.ndarray]:
    while True:
        try:
            frame = graph.vpull()
        except (av.error.BlockingIOError, av.error.EOFError):
            return
        yield frame.to_ndarray()


def open_video(path: str | Path, limits: MediaLimits | None = None) -> DrivingVideo:
    """Probe and validate a local video file; raises ``MediaError`` with a stable code."""
    limits = limits or MediaLimits()
    return DrivingVideo(probe_video(path, limits), limits)
