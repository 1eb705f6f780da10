"""Media files the tests make themselves (edge cases a stranger might upload), with PyAV and Pillow."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def index_frame(i: int, width: int, height: int) -> np.ndarray:
    """A frame whose brightness encodes its index (decodable after lossy coding) plus a red left half."""
    frame = np.full((height, width, 3), (i * 12) % 252, dtype=np.uint8)
    frame[:, : width // 2, 0] = 255
    return frame


def frame_index(frame: np.ndarray) -> int:
    """Inverse of ``index_frame`` on the right half (blue channel carries the brightness)."""
    return round(float(frame[:, frame.shape[1] // 2 :, 2].mean()) / 12)


def make_video(
    path: Path,
    n_frames: int = 12,
    width: int = 64,
    height: int = 48,
    fps: int = 10,
    *,
    rotation: int | None = None,
    pts_ms: Sequence[int] | None = None,
    pix_fmt: str = "yuv420p",
    audio_seconds: float = 0.0,
    faststart: bool = True,
    container: str = "mp4",
    codec: str = "libx264",
) -> Path:
    """Write a small video; ``pts_ms`` gives explicit (variable) timestamps in milliseconds."""
    options = {"movflags": "+faststart"} if faststart and container == "mp4" else {}
    with av.open(str(path), "w", format=container, options=options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        audio = out.add_stream("aac", rate=48000, layout="mono") if audio_seconds else None
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(index_frame(i, width, height), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            else:
                frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if audio is not None:
            _write_tone(out, audio, audio_seconds)
    return path


def make_audio_only(path: Path, seconds: float = 1.0) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        _write_tone(out, out.add_stream("aac", rate=48000, layout="mono"), seconds)
    return path


def _write_tone(out: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    total, chunk = int(seconds * 48000), 1024
    for start in range(0, total, chunk):
        t = np.arange(start, min(start + chunk, total)) / 48000
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, start
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def png_bomb(path: Path, side: int = 100_000) -> Path:
    """A few hundred bytes that claim a side x side RGB image (IHDR only plus a token IDAT)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def top_level_boxes(path: Path) -> list[str]:
    """ISO-BMFF top-level box types in file order (to check that moov precedes mdat)."""
    boxes, data, pos = [], path.read_bytes(), 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        boxes.append(kind.decode("latin-1"))
        if size < 8:
            break
        pos += size
    return boxes
