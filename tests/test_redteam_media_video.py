"""Red team (issue 20): driving-video facts a caller plans with must agree with what decoding yields.

``output_frame_count`` is what the engines and the planner size their work by; the expectation here is the
number of frames ``frames()`` really yields for the same arguments, on small clips made at run time.
"""

from __future__ import annotations

import pytest
from _media import make_video

from animate.media import open_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    # 12 frames at 10 fps: 1.2 s, so most output rates land between two whole frame counts
    return open_video(make_video(tmp_path_factory.mktemp("clip") / "c.mp4", n_frames=12, fps=10))


@pytest.mark.parametrize("fps", [3, 4, 6, 7, 9, 13, 24])
def test_the_frame_count_estimate_is_what_frames_yields_at_another_rate(clip, fps: int) -> None:
    # 1.2 s at 3 fps: frames at 0, 1/3, 2/3 and 1 s -> 4 (3.6 rounded, not truncated to 3)
    yielded = sum(1 for _ in clip.frames(fps=fps))
    assert yielded == round(1.2 * fps)
    assert clip.output_frame_count(fps) == yielded


@pytest.mark.parametrize(("fps", "max_frames"), [(None, 5), (None, 20), (9, 7), (9, 11), (9, 40)])
def test_max_frames_caps_the_estimate_like_it_caps_the_frames(clip, fps, max_frames) -> None:
    yielded = sum(1 for _ in clip.frames(fps=fps, max_frames=max_frames))
    assert yielded == min(max_frames, 12 if fps is None else 11)
    assert clip.output_frame_count(fps, max_frames) == yielded
