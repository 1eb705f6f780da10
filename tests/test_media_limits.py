"""Driving-video limits at their exact boundaries, and every refusal's code and message."""

from __future__ import annotations

import av
import pytest
from _media import make_audio_only, make_video

from animate.media import MediaError, open_video, probe_video
from animate.media.video import DrivingVideo
from animate.settings import MediaLimits


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """64x48, 12 frames at 10 fps: 3072 pixels, 1.2 s."""
    return make_video(
        tmp_path_factory.mktemp("limits") / "clip.mp4", n_frames=12, width=64, height=48, fps=10
    )


def refusal(path, limits: MediaLimits | None = None) -> MediaError:
    with pytest.raises(MediaError) as excinfo:
        probe_video(path, limits)
    return excinfo.value


@pytest.mark.parametrize(
    ("field", "at_limit", "over_limit", "code", "message"),
    [
        ("max_video_pixels", 3072, 3071, "too_large", "clip.mp4 is 64x48; the limit is 3071 pixels"),
        ("min_video_side", 48, 49, "too_small", "clip.mp4 is 64x48; too small to hold a person"),
        ("max_video_seconds", 1.2, 1.15, "too_long", "clip.mp4 lasts 1.2 s; the limit is 1.15 s"),
        ("max_video_frames", 12, 11, "too_long", "clip.mp4 has 12 frames; the limit is 11"),
    ],
)
def test_video_limit_boundary(clip, field, at_limit, over_limit, code, message):
    # A video exactly at a limit is accepted; one unit past it is refused with the code and the figures.
    assert probe_video(clip, MediaLimits(**{field: at_limit})).frame_count == 12
    error = refusal(clip, MediaLimits(**{field: over_limit}))
    assert (error.code, error.message) == (code, message)


def test_file_size_boundary(clip):
    size = clip.stat().st_size
    assert probe_video(clip, MediaLimits(max_file_bytes=size)).size_bytes == size
    error = refusal(clip, MediaLimits(max_file_bytes=size - 1))
    assert (error.code, error.message) == ("too_large", f"clip.mp4 is {size} bytes; the limit is {size - 1}")


def test_a_16x16_video_is_big_enough_and_14x14_is_too_small(tmp_path):
    assert probe_video(make_video(tmp_path / "s16.mp4", n_frames=2, width=16, height=16)).width == 16
    error = refusal(make_video(tmp_path / "s14.mp4", n_frames=2, width=14, height=14))
    assert error.code == "too_small"


def test_refusals_name_the_file(tmp_path, clip):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    data = clip.read_bytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(data[:28])  # an mp4 cut inside its first box
    frameless = tmp_path / "frameless.mp4"
    frameless.write_bytes(data[: data.index(b"mdat")])  # the index is whole, the frames are gone
    url = "http://127.0.0.1:9/v.mp4"
    colon = f"{tmp_path}/take://1.mp4"  # "://" anywhere is a URL, even without a scheme in front
    cases = [
        (url, MediaLimits(), "unsupported_source", f"only local files are accepted, got {url!r}"),
        (colon, MediaLimits(), "unsupported_source", f"only local files are accepted, got {colon!r}"),
        (tmp_path / "gone.mp4", MediaLimits(), "not_found", f"no such file: {tmp_path / 'gone.mp4'}"),
        (empty, MediaLimits(), "empty_media", "empty.mp4 is empty (0 bytes)"),
        (text, MediaLimits(), "unsupported_format", "notes.mp4 is not a video file we can read"),
        (frameless, MediaLimits(), "empty_media", "frameless.mp4 holds no decodable video frame"),
        (
            make_audio_only(tmp_path / "voice.m4a"),
            MediaLimits(),
            "no_video_stream",
            "voice.m4a has no video stream",
        ),
        (
            clip,
            MediaLimits(video_containers=("matroska,webm",)),
            "unsupported_format",
            f"{clip.name}: MP4/MOV files are not accepted; send MKV or WebM",
        ),
        (
            clip,
            MediaLimits(video_codecs=("vp9",)),
            "unsupported_codec",
            "H.264 video is not accepted; use VP9",
        ),
    ]
    for path, limits, code, message in cases:
        error = refusal(path, limits)
        assert (error.code, error.message) == (code, message), path
    error = refusal(damaged)
    assert error.code == "corrupt_media"
    assert error.message.startswith("damaged.mp4 is damaged or truncated (")


@pytest.mark.parametrize("fps", [0.5, 240])
def test_frame_rate_option_bounds_accepted(clip, fps):
    open_video(clip).frames(fps=fps)  # checked on the call, before any decoding


@pytest.mark.parametrize("fps", [0, -1, 240.5])
def test_frame_rate_option_bounds_refused(clip, fps):
    with pytest.raises(MediaError) as excinfo:
        open_video(clip).frames(fps=fps)
    assert (excinfo.value.code, excinfo.value.message) == (
        "invalid_option",
        f"fps must be in (0, 240], got {fps}",
    )


@pytest.mark.parametrize("size", [(1, 100), (100, 1), (1, 1)])
def test_size_option_below_2x2_refused(clip, size):
    with pytest.raises(MediaError) as excinfo:
        open_video(clip).frames(size=size)
    assert excinfo.value.code == "invalid_option"
    assert excinfo.value.message == f"size must be at least 2x2, got {size[0]}x{size[1]}"


def test_size_option_2x2_streams(clip):
    assert next(open_video(clip).frames(size=(2, 2))).shape == (2, 2, 3)


def _decoded_until_refused(video) -> tuple[int, MediaError | None]:
    count = 0
    try:
        for _ in video.frames():
            count += 1
    except MediaError as error:
        return count, error
    return count, None


@pytest.mark.parametrize("first_ms", [0, 500])
def test_decoded_length_limits_hold_whatever_the_header_says(tmp_path, first_ms):
    # 12 frames 100 ms apart: 1.1 s from the first frame's time to the last one's, wherever it starts.
    path = make_video(tmp_path / "late.mp4", n_frames=12, pts_ms=[first_ms + 100 * i for i in range(12)])
    info = probe_video(path)
    with av.open(str(path)) as container:
        times = [frame.time for frame in container.decode(video=0)]
    elapsed = times[-1] - times[0]
    assert elapsed == pytest.approx(1.1, abs=1e-3)
    for limits in (MediaLimits(max_video_seconds=elapsed), MediaLimits(max_video_frames=12)):
        assert _decoded_until_refused(DrivingVideo(info, limits)) == (12, None)
    count, error = _decoded_until_refused(DrivingVideo(info, MediaLimits(max_video_frames=11)))
    assert (error.code, error.message) == (
        "too_long",
        "late.mp4 holds over 11 frames, whatever its header says",
    )
    assert 9 <= count <= 11
    count, error = _decoded_until_refused(DrivingVideo(info, MediaLimits(max_video_seconds=0.95)))
    assert (error.code, error.message) == ("too_long", "late.mp4 runs past 0.95 s, whatever its header says")
    assert 8 <= count <= 10  # the frames up to 0.9 s came out first
