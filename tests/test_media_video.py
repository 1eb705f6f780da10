from __future__ import annotations

import os
import shutil

import numpy as np
import psutil
import pytest
from _media import frame_index, make_audio_only, make_video
from conftest import DANCE, TALKING_HEAD
from PIL import Image

from animate.media import MediaError, open_video, probe_video
from animate.settings import MediaLimits


def _code(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.code


def test_probe_real_dance_video(data_dir):
    info = probe_video(DANCE)
    assert (info.width, info.height, info.rotation) == (1080, 1920, 0)
    assert info.codec == "h264" and info.container.startswith("mov,mp4")
    assert info.fps == pytest.approx(24.0) and info.frame_count == 288
    assert info.duration == pytest.approx(12.0, abs=0.05) and info.has_audio


def test_stream_scaled_frames(data_dir):
    video = open_video(DANCE)
    frames = list(video.frames(size=(576, 1024), max_frames=5))
    assert len(frames) == 5
    assert all(f.shape == (1024, 576, 3) and f.dtype == np.uint8 for f in frames)
    # Real content, not a blank frame.
    assert frames[0].std() > 20


def test_cover_crop_keeps_aspect(data_dir):
    """A square output takes the centre of the 9:16 frame instead of squashing it."""
    video = open_video(TALKING_HEAD)
    full = next(video.frames())
    square = next(video.frames(size=(300, 300)))
    assert square.shape == (300, 300, 3)
    offset = (350 - 300) // 2
    diff = np.abs(square.astype(int) - full[offset : offset + 300].astype(int)).mean()
    assert diff < 4


def test_frame_rate_resampling_constant_input(tmp_path):
    path = make_video(tmp_path / "v.mp4", n_frames=20, fps=10)
    video = open_video(path)
    assert video.info.frame_count == 20
    assert [frame_index(f) for f in video.frames()] == list(range(20))
    halved = [frame_index(f) for f in video.frames(fps=5)]
    assert len(halved) == 10 and halved == list(range(0, 20, 2))


def test_variable_frame_rate_becomes_constant(tmp_path):
    # 10 frames with irregular gaps over 1.8 s: a stutter, then a long hold.
    pts = [0, 100, 150, 200, 400, 900, 1000, 1100, 1500, 1800]
    path = make_video(tmp_path / "vfr.mp4", n_frames=len(pts), pts_ms=pts)
    indices = [frame_index(f) for f in open_video(path).frames(fps=10)]
    # One output frame per 100 ms, each the frame on screen at that time: the latest one whose
    # timestamp (rounded to the output grid) is not after it.
    slots = [int(np.floor(p / 100 + 0.5)) for p in pts]
    expected = [max(i for i, slot in enumerate(slots) if slot <= k) for k in range(19)]
    assert indices == expected
    # The long hold between 400 ms and 900 ms repeats frames: the rate is constant, not the input's.
    assert indices.count(4) >= 2


@pytest.mark.parametrize("rotation", [90, 270, 180])
def test_rotation_metadata_applied_to_pixels(tmp_path, rotation):
    # Stored 64x48 with a red left half; the display matrix turns it counter-clockwise by `rotation`.
    path = make_video(tmp_path / f"rot{rotation}.mp4", n_frames=3, width=64, height=48, rotation=rotation)
    video = open_video(path)
    assert video.info.rotation == rotation
    assert (video.width, video.height) == ((48, 64) if rotation in (90, 270) else (64, 48))
    frame = next(video.frames())
    stored = np.zeros((48, 64), bool)
    stored[:, :32] = True
    expected_red = np.rot90(stored, k=rotation // 90)
    assert frame.shape[:2] == expected_red.shape
    red = frame[..., 0] > 200
    assert (red == expected_red).mean() > 0.95
    # Scaling happens after rotation: the requested size is the displayed orientation.
    assert next(video.frames(size=(24, 32) if rotation != 180 else (32, 24))).shape[:2] == (
        (32, 24) if rotation != 180 else (24, 32)
    )


def test_odd_dimensions(tmp_path):
    path = make_video(tmp_path / "odd.mp4", n_frames=4, width=63, height=47, pix_fmt="yuv444p")
    video = open_video(path)
    assert (video.width, video.height) == (63, 47)
    frames = list(video.frames())
    assert len(frames) == 4 and frames[0].shape == (47, 63, 3)


def test_webm_vp9(tmp_path):
    path = make_video(tmp_path / "v.webm", n_frames=6, container="webm", codec="libvpx-vp9")
    video = open_video(path)
    assert video.info.codec == "vp9" and video.info.frame_count == 6
    assert len(list(video.frames())) == 6


def test_audio_only_file(tmp_path):
    with pytest.raises(MediaError) as excinfo:
        open_video(make_audio_only(tmp_path / "voice.m4a"))
    assert _code(excinfo) == "no_video_stream"


def test_zero_bytes(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(MediaError) as excinfo:
        open_video(path)
    assert _code(excinfo) == "empty_media"


def test_truncated_mp4(tmp_path, data_dir):
    # The shared files keep their index (moov) at the end, as cameras write them: a cut loses it.
    path = tmp_path / "cut.mp4"
    path.write_bytes(DANCE.read_bytes()[: DANCE.stat().st_size // 2])
    with pytest.raises(MediaError) as excinfo:
        open_video(path)
    assert _code(excinfo) == "corrupt_media"


def test_truncated_faststart_mp4_yields_what_is_there(tmp_path):
    full = make_video(tmp_path / "full.mp4", n_frames=40, faststart=True)
    cut = tmp_path / "cut.mp4"
    data = full.read_bytes()
    mdat = data.index(b"mdat")
    cut.write_bytes(data[: mdat + (len(data) - mdat) // 2])
    video = open_video(cut)
    frames = list(video.frames())
    assert 0 < len(frames) < 40


def test_text_renamed_mp4(tmp_path):
    path = tmp_path / "movie.mp4"
    path.write_text("definitely not a video\n" * 100)
    with pytest.raises(MediaError) as excinfo:
        open_video(path)
    assert _code(excinfo) == "unsupported_format"


def test_gif_refused_as_video(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (64, 64), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(MediaError) as excinfo:
        open_video(path)
    assert _code(excinfo) == "unsupported_format"


def test_over_long_video(tmp_path):
    path = make_video(tmp_path / "long.mp4", n_frames=30, fps=10)
    with pytest.raises(MediaError) as excinfo:
        open_video(path, MediaLimits(max_video_seconds=2.0))
    assert _code(excinfo) == "too_long"
    with pytest.raises(MediaError) as excinfo:
        open_video(path, MediaLimits(max_video_frames=20))
    assert _code(excinfo) == "too_long"
    assert open_video(path, MediaLimits(max_video_seconds=3.5)).info.frame_count == 30
    assert open_video(path, MediaLimits(max_video_frames=30)).info.frame_count == 30  # exactly the limit
    with pytest.raises(MediaError) as excinfo:
        open_video(path, MediaLimits(max_video_frames=29))
    assert _code(excinfo) == "too_long"
    duration = probe_video(path).duration
    assert open_video(path, MediaLimits(max_video_seconds=duration)).info.frame_count == 30
    with pytest.raises(MediaError) as excinfo:
        open_video(path, MediaLimits(max_video_seconds=duration - 0.01))
    assert _code(excinfo) == "too_long"


def test_too_many_pixels_and_bytes(tmp_path):
    path = make_video(tmp_path / "v.mp4", n_frames=2)
    with pytest.raises(MediaError) as excinfo:
        open_video(path, MediaLimits(max_video_pixels=1000))
    assert _code(excinfo) == "too_large"
    with pytest.raises(MediaError) as excinfo:
        open_video(path, MediaLimits(max_file_bytes=100))
    assert _code(excinfo) == "too_large"
    # exactly at the limits (64 x 48 pixels, the file's size) is accepted, one over is not
    size = path.stat().st_size
    assert open_video(path, MediaLimits(max_video_pixels=64 * 48, max_file_bytes=size)).width == 64
    for limits in (MediaLimits(max_video_pixels=64 * 48 - 1), MediaLimits(max_file_bytes=size - 1)):
        with pytest.raises(MediaError) as excinfo:
            open_video(path, limits)
        assert _code(excinfo) == "too_large"


@pytest.mark.parametrize(("width", "height"), [(15, 15), (64, 15), (15, 64)])
def test_a_video_under_16_pixels_a_side_is_too_small(tmp_path, width, height):
    path = make_video(tmp_path / "tiny.mp4", n_frames=2, width=width, height=height, pix_fmt="yuv444p")
    with pytest.raises(MediaError) as excinfo:
        open_video(path)  # the default limits: 16 pixels a side
    assert _code(excinfo) == "too_small"
    sixteen = make_video(tmp_path / "16.mp4", n_frames=2, width=16, height=16)
    assert open_video(sixteen).width == 16  # exactly the limit
    with pytest.raises(MediaError) as excinfo:
        open_video(sixteen, MediaLimits(min_video_side=17))
    assert _code(excinfo) == "too_small"


def test_only_local_files(tmp_path):
    for source in ("http://127.0.0.1:9/v.mp4", "rtmp://host/live", "concat:a.mp4|b.mp4"):
        with pytest.raises(MediaError) as excinfo:
            open_video(source)
        assert _code(excinfo) == "unsupported_source", source
    with pytest.raises(MediaError) as excinfo:
        open_video(tmp_path / "missing.mp4")
    assert _code(excinfo) == "not_found"


def test_codec_allowlist(tmp_path, data_dir):
    path = shutil.copy(DANCE, tmp_path / "d.mp4")
    with pytest.raises(MediaError) as excinfo:
        open_video(path, MediaLimits(video_codecs=("vp9",)))
    assert _code(excinfo) == "unsupported_codec"


def test_streaming_memory_is_bounded(data_dir):
    """Full-resolution frames are not accumulated: RSS stays flat across the whole 1080x1920 video."""
    process = psutil.Process(os.getpid())
    frames = open_video(DANCE).frames()
    for _ in range(24):
        next(frames)
    baseline = process.memory_info().rss
    count, peak = 24, baseline
    for _ in frames:
        count += 1
        peak = max(peak, process.memory_info().rss)
    assert count == 288
    # 264 more frames of 6 MB each would be 1.6 GB; a bounded stream stays within a few frames.
    assert peak - baseline < 150 * 2**20
