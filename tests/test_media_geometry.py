"""Driving-video geometry and probe facts: cover size, rotation, crop, frame counts, reported fields."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from _media import make_video

from animate.media import open_video, probe_video
from animate.media.video import _normalise_rotation, cover_size


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [
        ((100, 50), (50, 50), (100, 50)),  # height already fits: exact, no rounding up
        ((50, 100), (50, 50), (50, 100)),
        ((64, 48), (32, 32), (43, 32)),  # 64 * 32/48 = 42.67 -> 43
        ((640, 360), (576, 1024), (1821, 1024)),  # 360 * 1024/360 is 1024 despite float error
    ],
)
def test_cover_size(src, dst, expected):
    assert cover_size(*src, *dst) == expected


@pytest.mark.parametrize(("degrees", "expected"), [(0, 0), (89.6, 90), (136, 180), (-90, 270), (450, 90)])
def test_rotation_rounds_to_the_nearest_quarter_turn(degrees, expected):
    assert _normalise_rotation(degrees) == expected


def _corner_video(path, rotation: int, size: int = 32):
    """A square clip, white in its stored top-left quadrant only, turned `rotation` degrees for display."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv444p"
        stream.set_display_rotation(rotation)
        image = np.zeros((size, size, 3), np.uint8)
        image[: size // 2, : size // 2] = 255
        for i in range(2):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv444p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_moves_a_corner(tmp_path, rotation):
    # A mirror image would also move a half-image right; only a single corner tells rotations from flips.
    frame = next(open_video(_corner_video(tmp_path / "c.mp4", rotation)).frames())
    stored = np.zeros((32, 32), bool)
    stored[:16, :16] = True
    assert ((frame[..., 0] > 128) == np.rot90(stored, k=rotation // 90)).mean() > 0.95


def test_square_video_cropped_to_a_portrait(tmp_path):
    # 48x48 covering 32x48 stays 48x48 and loses 8 columns each side (the red left half shrinks to 16).
    frame = next(
        open_video(make_video(tmp_path / "sq.mp4", n_frames=2, width=48, height=48)).frames(size=(32, 48))
    )
    assert frame.shape == (48, 32, 3)
    red = frame[24, :, 0] > 200
    assert red[:14].all() and not red[18:].any()


def test_landscape_video_cover_cropped(tmp_path):
    # 64x48 to 32x20: scaled to 32x24 (not 27x20), then 2 rows cropped top and bottom.
    frame = next(open_video(make_video(tmp_path / "w.mp4", n_frames=2)).frames(size=(32, 20)))
    assert frame.shape == (20, 32, 3)
    red = frame[10, :, 0] > 200
    assert red[:14].all() and not red[18:].any()


def test_probe_reports_stored_and_displayed_facts(tmp_path):
    path = make_video(tmp_path / "r.mp4", n_frames=12, width=64, height=48, rotation=90)
    video = open_video(path)
    assert video.info.to_dict() == {
        "path": str(path),
        "container": "mov,mp4,m4a,3gp,3g2,mj2",
        "codec": "h264",
        "width": 48,
        "height": 64,
        "coded_width": 64,
        "coded_height": 48,
        "rotation": 90,
        "fps": 10.0,
        "duration": 1.2,
        "frame_count": 12,
        "has_audio": False,
        "size_bytes": path.stat().st_size,
        "pix_fmt": "yuv420p",
    }
    assert repr(video) == "DrivingVideo('r.mp4', 48x64, 10.000 fps, 12 frames)"


def test_variable_rate_fps_is_the_average(tmp_path):
    # 10 frames over 1.35 s (the last one shown for 50 ms): the average, not the 20 fps of the shortest gap.
    pts = [0, 100, 150, 200, 400, 900, 1000, 1100, 1500, 1800]
    info = probe_video(make_video(tmp_path / "vfr.mp4", n_frames=10, pts_ms=pts))
    assert Fraction(info.fps).limit_denominator(1000) == Fraction(10, 1) / Fraction("1.35")


def test_single_frame_webm_counts_one_frame(tmp_path):
    # WebM carries no frame count: it is estimated as duration x rate = 0.1 s x 10 fps.
    info = probe_video(make_video(tmp_path / "one.webm", n_frames=1, container="webm", codec="libvpx-vp9"))
    assert info.frame_count == 1


@pytest.mark.parametrize(
    ("fps", "max_frames", "expected"),
    [
        (None, None, 12),
        (5, None, 6),
        (20, None, 24),
        (0.1, None, 1),
        (None, 4, 4),
        (20, 100, 24),
        (None, 0, 12),
    ],
)
def test_output_frame_count(tmp_path_factory, fps, max_frames, expected):
    # 12 frames over 1.2 s: round(1.2 x fps) at another rate, at least 1, capped by max_frames (0: no cap).
    video = open_video(make_video(tmp_path_factory.mktemp("count") / "c.mp4", n_frames=12, fps=10))
    assert video.output_frame_count(fps, max_frames) == expected
