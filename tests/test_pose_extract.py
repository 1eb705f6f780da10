"""Pose extraction logic without a model: a marker-finding estimator stands in for MediaPipe, so every
view of a reference (as is, padded, alpha crop, upscaled, tiles) and every downscaled video frame must map
its keypoints back onto the marker's position in the original pixels, computed by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from _media import make_video

from animate.pose.errors import PoseError
from animate.pose.estimator import PoseEstimator
from animate.pose.extract import (
    SequenceOptions,
    estimate_frames,
    estimate_image,
    estimate_sequence_from_image,
    estimate_video,
    estimation_size,
    finish_sequence,
)
from animate.pose.smoothing import SmoothingOptions
from animate.pose.tracking import TrackingOptions
from animate.pose.types import NUM_KEYPOINTS, Pose

RED = (255, 0, 0)


def marker_pose(x: float, y: float, strong: int, score: float = 0.9) -> Pose:
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    spread = np.arange(17)  # a body-sized layout around keypoint 0, which sits on the marker's centre
    kp[:17, 0], kp[:17, 1] = x + (spread % 4) * 10, y + (spread // 4) * 10
    kp[:17, 2] = 0.2
    kp[:strong, 2] = score
    return Pose(kp)


class MarkerEstimator(PoseEstimator):
    """Finds the red marker: every body keypoint at its centroid, in the seen frame's pixels.

    The marker is "clear" (17 strong keypoints) only when it covers at least ``min_area`` pixels and lies
    at least ``margin`` of the frame's size from every border; else ``weak`` strong keypoints.
    """

    def __init__(self, min_area: int = 0, margin: float = 0.0, weak: int = 5, with_mask: bool = False):
        self.min_area, self.margin, self.weak, self.with_mask = min_area, margin, weak, with_mask
        self.seen: list[np.ndarray] = []
        self.resets = 0
        self.closed = 0

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        self.closed += 1

    def detect(self, rgb: np.ndarray) -> list[Pose]:
        self.seen.append(rgb)
        red = (rgb[..., 0] > 200) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)
        if not red.any():
            return []
        ys, xs = np.nonzero(red)
        h, w = red.shape
        inside = min(xs.min(), ys.min(), w - 1 - xs.max(), h - 1 - ys.max()) >= self.margin * max(h, w)
        strong = 17 if red.sum() >= self.min_area and inside else self.weak
        pose = marker_pose(xs.mean() + 0.5, ys.mean() + 0.5, strong)  # pixel centres
        if self.with_mask:
            pose.mask = red.astype(np.uint8) * 255
        return [pose]


def picture(w: int, h: int, x0: int, y0: int, size: int, background: int = 90) -> np.ndarray:
    rgb = np.full((h, w, 3), background, np.uint8)
    rgb[y0 : y0 + size, x0 : x0 + size] = RED
    return rgb


def centre(x0: int, y0: int, size: int) -> tuple[float, float]:
    return x0 + size / 2, y0 + size / 2


# --- references: each view maps back ------------------------------------------------------------------


def test_a_clear_reference_is_read_once_as_is() -> None:
    estimator = MarkerEstimator()
    pose = estimate_image(picture(900, 800, 300, 200, 40), estimator)
    assert len(estimator.seen) == 1 and estimator.resets == 1
    assert pose.keypoints[0, :2] == pytest.approx(centre(300, 200, 40), abs=0.01)
    assert (pose.keypoints[:17, 2] == pytest.approx(0.9)) and estimator.closed == 0  # not ours to close


def test_a_person_cut_by_the_frame_is_found_in_the_padded_view() -> None:
    estimator = MarkerEstimator(margin=0.1)
    rgb = picture(900, 800, 0, 300, 50)  # touching the left border
    pose = estimate_image(rgb, estimator)
    pad = round(0.3 * 900)
    assert [s.shape[:2] for s in estimator.seen] == [(800, 900), (800 + 2 * pad, 900 + 2 * pad)]
    assert (estimator.seen[1][:pad] == 127).all()  # grey padding
    assert pose.keypoints[0, :2] == pytest.approx(centre(0, 300, 50), abs=0.01)
    assert pose.keypoints[5, :2] == pytest.approx(np.add(centre(0, 300, 50), (10, 10)), abs=0.01)
    assert (pose.keypoints[:17, 2] > 0.5).all()


def test_a_small_reference_is_read_upscaled_to_1024() -> None:
    estimator = MarkerEstimator(min_area=400)
    rgb = picture(200, 160, 60, 50, 8)  # 64 px of marker; 5.12x upscaled it has about 1700
    pose = estimate_image(rgb, estimator)
    assert [s.shape[:2] for s in estimator.seen][-1] == (819, 1024)  # round(160 * 5.12)
    assert pose.keypoints[0, :2] == pytest.approx(centre(60, 50, 8), abs=0.15)
    assert pose.keypoints[0, 2] == pytest.approx(0.9)


def test_a_large_reference_is_not_upscaled_and_tiles_find_a_small_person() -> None:
    estimator = MarkerEstimator(min_area=150)
    w, h = 1000, 800
    rgb = picture(w, h, 900, 700, 10)  # 100 px in the bottom-right corner
    pose = estimate_image(rgb, estimator)
    shapes = [s.shape[:2] for s in estimator.seen]
    assert (round(h * 1024 / w), 1024) not in shapes  # no upscaled view at 1000 px
    cw, ch = 600, 480
    s = 1000 / 600
    assert shapes[-1] == (round(ch * s), round(cw * s))
    # the tiles are tried left column first, top to bottom: the marker is in the last one
    assert len(shapes) == 2 + 6
    assert pose.keypoints[0, :2] == pytest.approx(centre(900, 700, 10), abs=0.2)


def test_tile_offsets_for_every_tile() -> None:
    """A marker in each tile's exclusive region is found by that tile and mapped back."""
    w, h = 1000, 800
    for x0, y0 in [(20, 20), (20, 390), (20, 760), (960, 20), (960, 390), (960, 760)]:
        estimator = MarkerEstimator(min_area=60)
        pose = estimate_image(picture(w, h, x0, y0, 6), estimator)
        assert pose.keypoints[0, 2] == pytest.approx(0.9), (x0, y0)
        assert pose.keypoints[0, :2] == pytest.approx(centre(x0, y0, 6), abs=0.3), (x0, y0)


def test_the_best_view_wins_when_none_is_good() -> None:
    class Growing(MarkerEstimator):
        def detect(self, rgb):
            people = super().detect(rgb)
            for p in people:  # more strong keypoints in larger views, never 13
                p.keypoints[:17, 2] = 0.2
                p.keypoints[: min(12, 4 + len(self.seen)), 2] = 0.9
            return people

    estimator = Growing()
    pose = estimate_image(picture(900, 800, 450, 350, 30), estimator)  # inside every tile
    assert len(estimator.seen) == 8  # every view tried: as_is, padded, six tiles
    assert int((pose.keypoints[:17, 2] >= 0.5).sum()) == 12


def test_ties_keep_the_earlier_view_and_body_score_breaks_them() -> None:
    class Scores(MarkerEstimator):
        def detect(self, rgb):
            people = super().detect(rgb)
            score = [0.6, 0.6, 0.8, 0.7, 0.6, 0.6, 0.6, 0.6][len(self.seen) - 1]
            for p in people:
                p.keypoints[:17, 2] = 0.2
                p.keypoints[:6, 2] = score
            return people

    estimator = Scores()
    rgb = picture(900, 800, 100, 100, 30)
    pose = estimate_image(rgb, estimator)
    assert pose.keypoints[0, 2] == pytest.approx(0.8)  # view 3 (the first tile), same count, best score
    assert pose.keypoints[0, :2] == pytest.approx(centre(100, 100, 30), abs=0.2)


def test_nobody_or_too_few_keypoints_is_no_person_detected() -> None:
    with pytest.raises(PoseError) as caught:
        estimate_image(np.full((300, 300, 3), 90, np.uint8), MarkerEstimator())
    assert caught.value.code == "no_person_detected"
    with pytest.raises(PoseError):
        estimate_image(picture(900, 800, 300, 300, 30), MarkerEstimator(min_area=10**9, weak=3))
    pose = estimate_image(picture(900, 800, 300, 300, 30), MarkerEstimator(min_area=10**9, weak=4))
    assert int((pose.keypoints[:17, 2] >= 0.5).sum()) == 4
    with pytest.raises(PoseError):
        estimate_image(
            picture(900, 800, 300, 300, 30), MarkerEstimator(min_area=10**9, weak=4), min_keypoints=5
        )
    with pytest.raises(TypeError):
        estimate_image(np.zeros((10, 10), np.uint8), MarkerEstimator())


def test_good_keypoints_threshold_stops_the_search() -> None:
    estimator = MarkerEstimator(min_area=10**9, weak=13)
    estimate_image(picture(900, 800, 300, 300, 30), estimator)
    assert len(estimator.seen) == 1
    estimator = MarkerEstimator(min_area=10**9, weak=12)
    estimate_image(picture(900, 800, 300, 300, 30), estimator)
    assert len(estimator.seen) == 8
    estimator = MarkerEstimator(min_area=10**9, weak=12)
    estimate_image(picture(900, 800, 300, 300, 30), estimator, good_keypoints=12)
    assert len(estimator.seen) == 1


def test_keypoints_off_the_reference_lose_their_score() -> None:
    class Stray(MarkerEstimator):
        def detect(self, rgb):
            people = super().detect(rgb)
            for p in people:
                p.keypoints[20] = (-10.0, 5.0, 0.9)  # 10 px left of a 900 px frame: inside the 2% margin
                p.keypoints[21] = (-30.0, 5.0, 0.9)  # outside it
                p.keypoints[22] = (905.0, 810.0, 0.9)  # inside (18 px and 16 px margins)
                p.keypoints[23] = (900.0, 817.0, 0.9)  # below the margin
            return people

    pose = estimate_image(picture(900, 800, 300, 300, 30), Stray())
    assert pose.keypoints[20:24, 2].tolist() == pytest.approx([0.9, 0.0, 0.9, 0.0])


def test_a_transparent_reference_is_composited_on_grey_and_cropped_to_its_alpha() -> None:
    rgb = np.zeros((900, 800, 3), np.uint8)  # black under transparency
    rgb[500:520, 300:320] = RED
    mask = np.zeros((900, 800), np.uint8)
    mask[400:600, 250:400] = 255
    mask[480:482, 250:252] = 128  # a half-transparent pixel: blended halfway
    estimator = MarkerEstimator(min_area=10**9, weak=5)
    image = type("Ref", (), {"rgb": rgb, "mask": mask})()
    estimate_image(image, estimator)
    first = estimator.seen[0]
    assert (first[0, 0] == 127).all() and (first[510, 310] == RED).all()
    assert first[480, 250] == pytest.approx(np.full(3, 64), abs=1)  # 0 * 128/255 + 127 * 127/255
    crop = estimator.seen[2]  # the alpha crop: the mask's box with 15% margin
    m = round(0.15 * 200)
    assert crop.shape[:2] == (200 + 2 * m, 150 + 2 * m)
    assert (crop[m + 100, m + 50 + 10] == RED).all()  # reference (500, 310) -> crop (500-400+m, 310-250+m)


def test_the_alpha_crop_maps_keypoints_and_masks_back() -> None:
    rgb = np.full((900, 800, 3), 90, np.uint8)
    rgb[500:520, 300:320] = RED
    mask = np.zeros((900, 800), np.uint8)
    mask[400:600, 250:400] = 255

    class OnlyCrops(MarkerEstimator):
        def detect(self, rgb_view):
            people = super().detect(rgb_view)
            if rgb_view.shape[:2] != (260, 210):  # only the alpha crop is clear
                for p in people:
                    p.keypoints[:17, 2] = 0.2
                    p.keypoints[:5, 2] = 0.9
            return people

    estimator = OnlyCrops(with_mask=True)
    image = type("Ref", (), {"rgb": rgb, "mask": mask})()
    pose = estimate_image(image, estimator)
    assert [s.shape[:2] for s in estimator.seen][2] == (260, 210)
    assert pose.keypoints[0, :2] == pytest.approx(centre(300, 500, 20), abs=0.01)
    assert pose.mask.shape == (900, 800)
    ys, xs = np.nonzero(pose.mask > 127)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (500, 519, 300, 319)


def test_an_upscaled_mask_is_mapped_back_to_reference_pixels() -> None:
    estimator = MarkerEstimator(min_area=400, with_mask=True)
    pose = estimate_image(picture(200, 160, 60, 50, 8), estimator)
    ys, xs = np.nonzero(pose.mask > 127)
    assert (
        abs(ys.min() - 50) <= 1
        and abs(ys.max() - 57) <= 1
        and abs(xs.min() - 60) <= 1
        and abs(xs.max() - 67) <= 1
    )


def test_sequence_from_an_image_is_one_frame_at_fps_0() -> None:
    sequence = estimate_sequence_from_image(picture(640, 480, 100, 100, 20), MarkerEstimator(with_mask=True))
    assert (len(sequence), sequence.width, sequence.height, sequence.fps) == (1, 640, 480, 0.0)
    assert sequence[0].mask is None
    assert sequence[0].keypoints[0, :2] == pytest.approx(centre(100, 100, 20), abs=0.01)


# --- videos ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((1920, 1080), 1024, (1024, 576)),
        ((1080, 1920), 1024, (576, 1024)),
        ((640, 360), 1024, (640, 360)),  # never upscaled
        ((643, 363), 1024, (644, 364)),  # even
        ((1000, 3), 100, (100, 2)),  # at least 2
        ((1001, 1001), 1000, (1000, 1000)),
    ],
)
def test_estimation_size(size, max_side, expected) -> None:
    assert estimation_size(*size, max_side) == expected


def test_frames_are_mapped_to_the_output_size_with_progress() -> None:
    frames = [picture(320, 180, 10 * i, 40, 16) for i in range(5)]
    calls: list[tuple[int, int]] = []
    estimator = MarkerEstimator()
    out = estimate_frames(
        frames, estimator, width=640, height=360, total=3, progress=lambda *a: calls.append(a)
    )
    assert estimator.resets == 1
    assert calls == [(1, 3), (2, 3), (3, 3), (4, 4), (5, 5)]
    for i, people in enumerate(out):
        x, y = centre(10 * i, 40, 16)
        assert people[0].keypoints[0, :2] == pytest.approx((2 * x, 2 * y), abs=0.01)
        assert people[0].mask is None


def test_masks_are_kept_only_when_asked_and_resized_to_the_output() -> None:
    frames = [picture(320, 180, 100, 40, 16)]
    dropped = estimate_frames(frames, MarkerEstimator(with_mask=True), width=640, height=360)
    assert dropped[0][0].mask is None
    kept = estimate_frames(frames, MarkerEstimator(with_mask=True), width=640, height=360, keep_masks=True)
    mask = kept[0][0].mask
    assert mask.shape == (360, 640)
    ys, xs = np.nonzero(mask > 127)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (80, 111, 200, 231)
    same = estimate_frames(frames, MarkerEstimator(with_mask=True), width=320, height=180, keep_masks=True)
    assert same[0][0].mask.shape == (180, 320)
    assert same[0][0].keypoints[0, :2] == pytest.approx(centre(100, 40, 16), abs=0.01)


def detections(present: list[bool], x0: float = 100.0) -> list[list[Pose]]:
    return [[marker_pose(x0 + t, 100.0, 17)] if seen else [] for t, seen in enumerate(present)]


def test_finish_sequence_refuses_a_mostly_empty_video() -> None:
    with pytest.raises(PoseError) as caught:
        finish_sequence(detections([True, False, False, False]), 640, 360, 10.0)
    assert caught.value.code == "no_person_detected"
    assert "25% of 4 frames" in caught.value.message and "at least 50%" in caught.value.message
    finish_sequence(detections([True, True, False, False]), 640, 360, 10.0)  # exactly half: fine
    with pytest.raises(PoseError):
        finish_sequence([], 640, 360, 10.0)
    relaxed = SequenceOptions(min_detected_fraction=0.25)
    assert len(finish_sequence(detections([True, False, False, False]), 640, 360, 10.0, relaxed)) == 4


def test_gaps_up_to_max_gap_seconds_are_filled() -> None:
    raw = SequenceOptions(smoothing=None)
    # 10 fps x 0.3 s = 3 frames: a 3-frame gap is filled by interpolation, a 4-frame one is not
    three = finish_sequence(detections([True] * 3 + [False] * 3 + [True] * 6), 640, 360, 10.0, raw)
    assert three.detected.all()
    assert three[4].keypoints[0, 0] == pytest.approx(104.0)  # between frames 2 (102) and 6 (106)
    four = finish_sequence(detections([True] * 3 + [False] * 4 + [True] * 6), 640, 360, 10.0, raw)
    assert four.detected.tolist() == [True] * 3 + [False] * 4 + [True] * 6
    longer = SequenceOptions(smoothing=None, max_gap_seconds=0.4)
    assert finish_sequence(
        detections([True] * 3 + [False] * 4 + [True] * 6), 640, 360, 10.0, longer
    ).detected.all()
    # at least one frame, whatever the rate
    slow = finish_sequence(detections([True, False, True, True]), 640, 360, 1.0, raw)
    assert slow.detected.all()


def test_smoothing_is_applied_unless_disabled() -> None:
    rng = np.random.default_rng(0)
    candidates = [[marker_pose(300 + rng.normal(0, 4), 100.0, 17)] for _ in range(40)]
    raw = finish_sequence(candidates, 640, 360, 25.0, SequenceOptions(smoothing=None))
    smooth = finish_sequence(candidates, 640, 360, 25.0)
    raw_x, smooth_x = raw.keypoints[:, 0, 0], smooth.keypoints[:, 0, 0]
    assert raw_x == pytest.approx([c[0].keypoints[0, 0] for c in candidates])
    assert np.diff(smooth_x).std() < 0.5 * np.diff(raw_x).std()


def test_estimate_video_reads_at_the_estimation_size_and_maps_back(tmp_path: Path) -> None:
    path = make_video(tmp_path / "v.mp4", n_frames=6, width=128, height=96, fps=10)
    estimator = _LeftHalf()
    sequence = estimate_video(path, estimator, options=SequenceOptions(max_side=64, smoothing=None))
    assert {s.shape[:2] for s in estimator.seen} == {(48, 64)}
    assert (len(sequence), sequence.width, sequence.height, sequence.fps) == (6, 128, 96, 10.0)
    # the red left half of make_video's frames: its centre is (32, 48) in 128x96 pixels
    assert sequence.keypoints[:, 0, :2] == pytest.approx(np.tile([32.0, 48.0], (6, 1)), abs=0.6)
    assert estimator.closed == 0
    limited = estimate_video(path, _LeftHalf(), max_frames=4, options=SequenceOptions(smoothing=None))
    assert len(limited) == 4


class _LeftHalf(MarkerEstimator):
    """make_video paints the left half red: its centroid is the marker."""


# --- more: compositing, the default estimator, options that must reach their stage ----------------------


def test_transparency_is_blended_over_grey_127_exactly() -> None:
    rgb = np.zeros((8, 256, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 255, 200
    mask = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    estimator = MarkerEstimator()
    with pytest.raises(PoseError):
        estimate_image(type("Ref", (), {"rgb": rgb, "mask": mask})(), estimator)
    alpha = np.arange(256) / 255.0
    expected = np.floor(np.array([255, 0, 200]) * alpha[:, None] + 127 * (1 - alpha[:, None]) + 0.5)
    assert (estimator.seen[0][0].astype(int) == expected.astype(int)).all()


def test_a_mask_is_dropped_at_the_same_size_unless_kept() -> None:
    frames = [picture(320, 180, 100, 40, 16)]
    same = estimate_frames(frames, MarkerEstimator(with_mask=True), width=320, height=180)
    assert same[0][0].mask is None


def test_a_reference_object_is_read_through_its_rgb() -> None:
    reference = type("Ref", (), {"rgb": picture(640, 480, 100, 100, 20), "mask": None})()
    sequence = estimate_sequence_from_image(reference, MarkerEstimator())
    assert (sequence.width, sequence.height) == (640, 480)


class Recorder(MarkerEstimator):
    made: ClassVar[list] = []

    def __init__(self, *, static: bool, segmentation: bool) -> None:
        super().__init__(with_mask=segmentation)
        Recorder.made.append(self)
        self.options = (static, segmentation)


def test_without_an_estimator_mediapipe_is_made_for_the_job_and_closed(tmp_path, monkeypatch) -> None:
    import animate.pose.mediapipe_estimator as mp

    monkeypatch.setattr(mp, "MediaPipeEstimator", Recorder)
    Recorder.made = []
    estimate_image(picture(900, 800, 300, 300, 30))
    path = make_video(tmp_path / "v.mp4", n_frames=4, width=128, height=96, fps=10)
    estimate_video(path, options=SequenceOptions(smoothing=None))
    estimate_video(path, options=SequenceOptions(smoothing=None, keep_masks=True))
    assert [r.options for r in Recorder.made] == [(True, True), (False, False), (False, True)]
    assert [r.closed for r in Recorder.made] == [1, 1, 1]
    kept = estimate_video(
        path, _LeftHalf(with_mask=True), options=SequenceOptions(smoothing=None, keep_masks=True)
    )
    assert kept[0].mask is not None and kept[0].mask.shape == (96, 128)


def test_video_options_reach_sampling_progress_and_finishing(tmp_path) -> None:
    import threading

    path = make_video(tmp_path / "v.mp4", n_frames=10, width=128, height=96, fps=10)
    calls: list = []
    threads: set = set()

    class Watching(_LeftHalf):
        def detect(self, rgb):
            threads.update(t.name for t in threading.enumerate())
            return super().detect(rgb)

    sequence = estimate_video(
        path, Watching(), fps=5, options=SequenceOptions(smoothing=None), progress=lambda *a: calls.append(a)
    )
    assert (len(sequence), sequence.fps) == (5, 5.0)
    assert calls == [(i, 5) for i in range(1, 6)]
    assert "pose-decode" in threads
    calls.clear()
    estimate_video(path, _LeftHalf(), max_frames=3, progress=lambda *a: calls.append(a))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_sequence_options_reach_tracking_detection_threshold_and_smoothing() -> None:
    strict = SequenceOptions(smoothing=None, tracking=TrackingOptions(min_body_score=0.95))
    with pytest.raises(PoseError):  # every candidate's body score is under 0.95: nobody is tracked
        finish_sequence(detections([True] * 4), 640, 360, 10.0, strict)
    rng = np.random.default_rng(1)
    candidates = [[marker_pose(300 + rng.normal(0, 4), 100.0, 17)] for _ in range(40)]
    default = finish_sequence(candidates, 640, 360, 25.0).keypoints[:, 0, 0]
    heavy = SequenceOptions(smoothing=SmoothingOptions(min_cutoff=0.05, beta=0.0))
    heavier = finish_sequence(candidates, 640, 360, 25.0, heavy).keypoints[:, 0, 0]
    assert np.diff(heavier).std() < 0.5 * np.diff(default).std()


def test_the_gap_length_follows_the_rate_with_a_floor_of_one_frame() -> None:
    raw = SequenceOptions(smoothing=None)
    one_fps = finish_sequence(detections([True, False, False, True, True, True]), 640, 360, 1.0, raw)
    assert one_fps.detected.tolist() == [True, False, False, True, True, True]  # 0.3 s at 1 fps: 1 frame
    still = finish_sequence(detections([True, False, True, True]), 640, 360, 0.0, raw)
    assert still.detected.tolist() == [True, False, True, True]  # fps 0 (images): nothing is filled


def test_estimation_size_keeps_two_pixels_on_the_short_side() -> None:
    assert estimation_size(3, 1000, 100) == (2, 100)


def test_the_middle_tile_finds_a_tall_person_the_others_cut() -> None:
    w, h = 1000, 800
    rgb = np.full((h, w, 3), 90, np.uint8)
    rgb[200:600, 480:520] = RED  # rows 200..600: only the middle tile (rows 160..640) holds it whole

    class WholeOnly(MarkerEstimator):
        """Clear only in a tile (views 3 to 8 here) that holds the whole marker, rows 200..600."""

        def detect(self, view):
            people = super().detect(view)
            red = (view[..., 0] > 200) & (view[..., 1] < 100)
            ys = np.nonzero(red)[0]
            whole = len(ys) > 0 and ys.min() > 0 and ys.max() < view.shape[0] - 1
            for p in people:
                p.keypoints[:17, 2] = 0.9 if whole and len(self.seen) >= 3 else 0.2
            return people

    estimator = WholeOnly()
    pose = estimate_image(rgb, estimator)
    assert pose.keypoints[0, :2] == pytest.approx((500.0, 400.0), abs=0.5)
    assert pose.keypoints[0, 2] == pytest.approx(0.9)


def test_tiles_start_at_the_first_pixel() -> None:
    for x0, y0 in ((0, 300), (300, 0)):
        pose = estimate_image(picture(1000, 800, x0, y0, 6), MarkerEstimator(min_area=60))
        assert pose.keypoints[0, :2] == pytest.approx(centre(x0, y0, 6), abs=0.3), (x0, y0)


def test_only_references_under_768_px_get_an_upscaled_view() -> None:
    for side, views in ((767, 9), (768, 8)):
        estimator = MarkerEstimator()
        with pytest.raises(PoseError):
            estimate_image(np.full((600, side, 3), 90, np.uint8), estimator)
        assert len(estimator.seen) == views, side


def test_keypoints_exactly_on_the_margin_are_kept() -> None:
    class Edges(MarkerEstimator):
        def detect(self, rgb):
            people = super().detect(rgb)
            for p in people:  # 900 x 800: margins 18 and 16 px
                p.keypoints[20:24] = [
                    (-18.0, 5.0, 0.9),
                    (918.0, 5.0, 0.9),
                    (5.0, -16.0, 0.9),
                    (5.0, 816.0, 0.9),
                ]
            return people

    pose = estimate_image(picture(900, 800, 300, 300, 30), Edges())
    assert pose.keypoints[20:24, 2] == pytest.approx([0.9] * 4)


def test_strong_body_keypoints_count_from_0_5_and_only_the_17_body_points() -> None:
    class Half(MarkerEstimator):
        def __init__(self, strong: int, foot: bool) -> None:
            super().__init__()
            self.strong, self.foot = strong, foot

        def detect(self, rgb):
            people = super().detect(rgb)
            for p in people:
                p.keypoints[:17, 2] = 0.2
                p.keypoints[: self.strong, 2] = 0.5  # exactly 0.5: strong
                p.keypoints[17, 2] = 0.9 if self.foot else 0.0
            return people

    estimator = Half(13, foot=False)
    estimate_image(picture(900, 800, 300, 300, 30), estimator)
    assert len(estimator.seen) == 1  # 13 strong at 0.5: good enough at once
    estimator = Half(12, foot=True)
    estimate_image(picture(900, 800, 300, 300, 30), estimator)
    assert len(estimator.seen) == 8  # a strong foot does not make 13 body points


def test_estimate_video_hands_its_options_to_finishing(tmp_path) -> None:
    path = make_video(tmp_path / "v.mp4", n_frames=4, width=128, height=96, fps=10)
    strict = SequenceOptions(smoothing=None, tracking=TrackingOptions(min_body_score=0.95))
    with pytest.raises(PoseError):
        estimate_video(path, _LeftHalf(), options=strict)


def test_on_a_tie_the_earlier_view_wins_and_errors_say_what_is_wrong() -> None:
    class Shifted(MarkerEstimator):
        """The same count and score in every view, with a per-view shift: the first view's answer is kept."""

        def detect(self, rgb):
            people = super().detect(rgb)
            for p in people:
                p.keypoints[:17, 2] = 0.2
                p.keypoints[:6, 2] = 0.9
                p.keypoints[:, 0] += 3 * (len(self.seen) - 1)  # view 1: +0, view 2: +3, ...
            return people

    pose = estimate_image(picture(900, 800, 450, 350, 30), Shifted())
    assert pose.keypoints[0, 0] == pytest.approx(465.0, abs=0.01)  # the as-is view's own reading
    with pytest.raises(PoseError, match="no person found in the reference image"):
        estimate_image(np.full((300, 300, 3), 90, np.uint8), MarkerEstimator())
    with pytest.raises(TypeError, match=r"needs a ReferenceImage or an \(H, W, 3\) uint8 array"):
        estimate_image(np.zeros((10, 10), np.uint8), MarkerEstimator())
