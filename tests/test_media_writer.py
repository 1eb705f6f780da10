from __future__ import annotations

import os

import av
import numpy as np
import pytest
from _media import make_video, top_level_boxes
from conftest import DANCE

from animate.media import MediaError, VideoWriters, open_video, write_video

COLOURS = np.array([[200, 30, 40], [30, 180, 60], [40, 50, 210], [128, 128, 128]], np.uint8)


def quadrants(i: int) -> np.ndarray:
    """64x64, four flat saturated colours (rotated by i): chroma subsampling cannot blur their centres."""
    frame = np.empty((64, 64, 3), np.uint8)
    for q, (y, x) in enumerate([(0, 0), (0, 32), (32, 0), (32, 32)]):
        frame[y : y + 32, x : x + 32] = COLOURS[(q + i) % 4]
    return frame


def test_round_trip_small_keeps_format_colours_and_whole_audio(tmp_path, data_dir):
    """The cheap round trip (the mutation run collects it): H.264 High yuv420p, faststart, BT.709 colours
    back within a few levels, and all 12 s of the source's audio under 12 s of tiny frames."""
    out = tmp_path / "small.mp4"
    frames = (quadrants(i // 72) for i in range(288))  # 288 frames at 24 fps: 12 s, four scenes
    written = write_video(out, frames, 24.0, audio_from=DANCE)
    assert (written.width, written.height, written.frame_count) == (64, 64, 288)
    assert written.fps == 24.0 and written.has_audio and written.path == out

    info = open_video(out).info
    assert (info.codec, info.pix_fmt, info.width, info.height) == ("h264", "yuv420p", 64, 64)
    assert info.frame_count == 288 and info.fps == pytest.approx(24.0)
    boxes = top_level_boxes(out)
    assert boxes.index("moov") < boxes.index("mdat"), boxes
    with av.open(str(out)) as container:
        video = container.streams.video[0].codec_context
        assert video.profile == "High"
        assert (video.colorspace, video.color_primaries, video.color_trc) == (1, 1, 1)  # BT.709 tags
        audio = container.streams.audio[0]
        assert (audio.codec_context.name, audio.rate, audio.codec_context.layout.name) == (
            "aac",
            48000,
            "stereo",
        )
        seconds = sum(frame.samples for frame in container.decode(audio)) / audio.rate
        assert abs(seconds - 12.0) < 0.1
    decoded = list(open_video(out).frames())
    for i in (0, 100, 287):
        expected = quadrants(i // 72)
        for y, x in [(16, 16), (16, 48), (48, 16), (48, 48)]:
            got = decoded[i][y - 4 : y + 4, x - 4 : x + 4].reshape(-1, 3).mean(axis=0)
            assert np.abs(got - expected[y, x]).max() < 6, (i, y, x, got, expected[y, x])  # BT.601: 23


@pytest.mark.slow
def test_round_trip_dance_576x1024(tmp_path, data_dir):
    source = open_video(DANCE)
    out = tmp_path / "dance_576.mp4"
    written = write_video(out, source.frames(size=(576, 1024)), source.info.fps, crf=18, audio_from=DANCE)
    assert (written.width, written.height, written.frame_count) == (576, 1024, 288)

    info = open_video(out).info
    assert (info.codec, info.pix_fmt, info.width, info.height) == ("h264", "yuv420p", 576, 1024)
    assert info.frame_count == 288 and info.fps == pytest.approx(24.0)
    boxes = top_level_boxes(out)
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # faststart: playable while downloading
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.profile == "High"
        audio = container.streams.audio[0]
        seconds = sum(frame.samples for frame in container.decode(audio)) / audio.rate
        assert abs(seconds - 12.0) < 0.1  # the source's 12 s of audio, whole
    # The picture survives: the re-decoded frames match a fresh decode of the source.
    first_out = next(open_video(out).frames())
    first_src = next(source.frames(size=(576, 1024)))
    assert np.abs(first_out.astype(int) - first_src.astype(int)).mean() < 3


def test_audio_trimmed_to_video_length(tmp_path, data_dir):
    source = open_video(DANCE)
    out = write_video(
        tmp_path / "short.mp4", source.frames(max_frames=48, size=(144, 256)), 24, audio_from=DANCE
    )
    assert out.has_audio and out.frame_count == 48
    with av.open(str(out.path)) as container:
        audio = container.streams.audio[0]
        seconds = sum(frame.samples for frame in container.decode(audio)) / audio.rate
    assert abs(seconds - 2.0) < 0.05


def test_no_audio_source_means_no_audio(tmp_path):
    silent = make_video(tmp_path / "silent.mp4", n_frames=3)
    out = write_video(tmp_path / "o.mp4", open_video(silent).frames(), 10, audio_from=silent)
    assert not out.has_audio and not open_video(out.path).info.has_audio


def test_odd_frames_padded_to_even(tmp_path):
    frames = [np.full((47, 63, 3), 100, np.uint8) for _ in range(3)]
    out = write_video(tmp_path / "odd.mp4", frames, 12)
    assert (out.width, out.height) == (64, 48)
    assert open_video(out.path).info.frame_count == 3
    # the added row and column repeat the edge (grey 100), not black
    decoded = next(open_video(out.path).frames())
    assert (
        np.abs(decoded[47, :].astype(int) - 100).max() < 6
        and np.abs(decoded[:, 63].astype(int) - 100).max() < 6
    )
    # only the height odd, or only the width
    for shape, size in (((47, 64, 3), (64, 48)), ((48, 63, 3), (64, 48))):
        out = write_video(tmp_path / "one.mp4", [np.full(shape, 100, np.uint8)] * 2, 12, preset="ultrafast")
        assert (out.width, out.height) == size


def test_fractional_fps(tmp_path):
    frames = (np.full((32, 32, 3), i * 10, np.uint8) for i in range(10))
    out = write_video(tmp_path / "ntsc.mp4", frames, 30000 / 1001)
    assert open_video(out.path).info.fps == pytest.approx(29.97, abs=0.01)


def test_errors_leave_no_file(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(MediaError) as excinfo:
        write_video(target, [], 24)
    assert excinfo.value.code == "empty_media" and "no frames to write" in str(excinfo.value)
    frames = [np.zeros((32, 32, 3), np.uint8), np.zeros((16, 24, 3), np.uint8)]
    with pytest.raises(MediaError) as excinfo:
        write_video(target, frames, 24)
    assert excinfo.value.code == "invalid_frame"
    assert "frame 1 is 24x16, not 32x32" in str(excinfo.value)
    frames = [np.zeros((32, 32, 3), np.uint8)] * 5 + [np.zeros((16, 24, 3), np.uint8)]
    with pytest.raises(MediaError, match="frame 5 is 24x16, not 32x32"):
        write_video(target, frames, 24)
    for bad in (
        np.zeros((32, 32), np.uint8),
        np.zeros((32, 32, 3), np.float32),
        np.zeros((32, 32, 4), np.uint8),
    ):
        with pytest.raises(MediaError) as excinfo:
            write_video(target, [bad], 24)
        assert excinfo.value.code == "invalid_frame"
        assert f"frames must be (H, W, 3) uint8 RGB, got {bad.shape} {bad.dtype}" in str(excinfo.value)

    def failing():
        yield np.zeros((32, 32, 3), np.uint8)
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_video(target, failing(), 24)
    # Atomic output: no half-written video and no temporary file remain.
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic(tmp_path):
    target = tmp_path / "out.mp4"
    write_video(target, [np.zeros((32, 32, 3), np.uint8)] * 2, 24)
    write_video(target, [np.full((32, 32, 3), 200, np.uint8)] * 5, 24)
    assert open_video(target).info.frame_count == 5
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_output_permissions_follow_umask(tmp_path):
    out = write_video(tmp_path / "o.mp4", [np.zeros((32, 32, 3), np.uint8)], 24)
    mask = os.umask(0)
    os.umask(mask)
    assert out.path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_video_writers_write_side_by_side_and_abort_cleanly(tmp_path):
    frames = [np.full((32, 48, 3), 20 * i, np.uint8) for i in range(6)]
    with VideoWriters(tmp_path, ("a", "b"), 12.0) as writers:
        for frame in frames:
            writers.put({"a": frame, "b": 255 - frame})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]
    a, b = (list(open_video(tmp_path / f"{n}.mp4").frames()) for n in "ab")
    assert len(a) == len(b) == 6 and a[5].mean() > 90 and b[5].mean() < 160

    aborted = tmp_path / "aborted"
    with pytest.raises(RuntimeError), VideoWriters(aborted, ("c", "d"), 12.0) as writers:
        for i, frame in enumerate(frames * 3):  # more frames than the queues hold
            writers.put({"c": frame, "d": frame})
            if i == 10:
                raise RuntimeError("the producer failed")
    assert list(aborted.iterdir()) == []  # no video, no partial file

    # a writer's own error reaches the producer at close()
    with pytest.raises(MediaError), VideoWriters(tmp_path / "bad", ("e",), 12.0) as writers:
        writers.put({"e": np.zeros((32, 48), np.uint8)})  # not RGB


def test_defaults_crf_18_medium_and_missing_folders_are_made(tmp_path):
    import re

    out = write_video(tmp_path / "a" / "b" / "o.mp4", [np.full((32, 32, 3), 80, np.uint8)] * 2, 24)
    assert out.path.is_file()
    text = re.search(rb"options: ([^\x00]*)", out.path.read_bytes()).group(1).decode()
    settings = dict(item.split("=", 1) for item in text.split() if "=" in item)
    assert (settings["crf"], settings["subme"]) == ("18.0", "7")  # x264's medium preset: subme 7


def test_fps_bounds(tmp_path):
    for fps in (0, -1, 240.5):
        with pytest.raises(MediaError) as excinfo:
            write_video(tmp_path / "o.mp4", [np.zeros((32, 32, 3), np.uint8)], fps)
        assert excinfo.value.code == "invalid_option"
        assert f"fps must be in (0, 240], got {fps}" in str(excinfo.value)
    assert (
        write_video(tmp_path / "o.mp4", [np.zeros((32, 32, 3), np.uint8)], 0.5, preset="ultrafast").fps == 0.5
    )
    assert (
        write_video(tmp_path / "o.mp4", [np.zeros((32, 32, 3), np.uint8)], 240, preset="ultrafast").fps
        == 240.0
    )
    assert list(tmp_path.iterdir()) == [tmp_path / "o.mp4"]


def test_while_writing_a_hidden_part_file_sits_next_to_the_target(tmp_path):
    """The file appears atomically: until the rename there is only a dot-named .mp4.part in the same folder
    (same file system), and RGB-to-YUV runs on its own named thread."""
    import threading

    seen: list = []

    def frames():
        for i in range(3):
            if i == 2:
                seen.append(sorted(p.name for p in tmp_path.iterdir()))
                seen.append({t.name for t in threading.enumerate()})
            yield np.full((32, 32, 3), 40 * i, np.uint8)

    write_video(tmp_path / "clip.mp4", frames(), 12, preset="ultrafast")
    names, threads = seen
    assert len(names) == 1 and names[0].startswith(".clip.") and names[0].endswith(".mp4.part")
    assert "rgb-to-yuv" in threads
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
