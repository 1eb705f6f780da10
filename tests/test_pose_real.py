"""Pose estimation on the real sample media in ../shared/data (MediaPipe Holistic on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from animate.cli import run
from animate.media import load_image, open_video, write_video
from animate.pose import (
    MediaPipeEstimator,
    PoseError,
    PoseSequence,
    SequenceOptions,
    draw_pose,
    estimate_frames,
    estimate_image,
    estimate_video,
    finish_sequence,
    retarget,
)
from animate.pose.extract import estimation_size
from animate.pose.retarget import BONES, NECK, PELVIS, _extended

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DANCE = DATA / "driving" / "dance_musepose.mp4"
TALKING_HEAD = DATA / "driving" / "talking_head_animateanyone.mp4"
SKELETON_ONLY = DATA / "driving" / "skeleton_only_animateanyone.mp4"
REFERENCES = {
    "woman_street": DATA / "reference" / "woman_street_mimicmotion.jpg",
    "anime_girl": DATA / "reference" / "anime_girl_musepose.png",
    "hero_rgba": DATA / "reference" / "hero_rgba_animateanyone.png",
}


@pytest.fixture(scope="session")
def dance_candidates() -> tuple[list, float]:
    """Raw per-frame MediaPipe detections of the whole dance video (estimated at 576x1024)."""
    video = open_video(DANCE)
    size = estimation_size(video.width, video.height, 1024)
    with MediaPipeEstimator(segmentation=False) as est:
        candidates = estimate_frames(video.frames(size=size), est, width=video.width, height=video.height)
    return candidates, video.fps


@pytest.fixture(scope="session")
def reference_poses() -> dict:
    return {name: (load_image(path), estimate_image(load_image(path))) for name, path in REFERENCES.items()}


def test_dance_person_found_in_at_least_98_percent_of_frames(dance_candidates: tuple) -> None:
    candidates, fps = dance_candidates
    assert len(candidates) == 288
    raw_fraction = np.mean([len(c) > 0 for c in candidates])
    assert raw_fraction >= 0.98
    sequence = finish_sequence(candidates, 1080, 1920, fps)
    assert sequence.detected_fraction() >= 0.98
    # Keypoints are in the input's pixels (1080x1920), not the 576x1024 estimation size.
    body = sequence.keypoints[sequence.detected][:, :17]
    assert body[..., 1].max() > 1200 and body[..., 0].max() <= 1080 * 1.05


def _acceleration(kp: np.ndarray, seen: np.ndarray) -> float:
    acc = kp[2:, :, :2] - 2 * kp[1:-1, :, :2] + kp[:-2, :, :2]
    both = seen[2:] & seen[1:-1] & seen[:-2]
    return float(np.linalg.norm(acc, axis=-1)[both].mean())


def test_smoothing_lowers_acceleration_and_keeps_keypoints_in_place(dance_candidates: tuple) -> None:
    candidates, fps = dance_candidates
    raw = finish_sequence(candidates, 1080, 1920, fps, SequenceOptions(smoothing=None)).keypoints
    smooth = finish_sequence(candidates, 1080, 1920, fps).keypoints
    seen = raw[:, :, 2] >= 0.3
    acc_raw, acc_smooth = _acceleration(raw, seen), _acceleration(smooth, seen)
    moved = float(np.linalg.norm(raw[:, :, :2] - smooth[:, :, :2], axis=-1)[seen].mean())
    # Measured: acceleration 8.0 -> 4.0 px/frame^2 (-50%), mean shift 5.7 px on a 1920 px high frame.
    assert acc_smooth <= 0.6 * acc_raw, (acc_raw, acc_smooth)
    assert moved <= 0.0035 * 1920, moved  # 6.7 px at 1920, 3.6 px at 1024: a few pixels
    np.testing.assert_array_equal(raw[:, :, 2], smooth[:, :, 2])


@pytest.mark.parametrize("name", list(REFERENCES))
def test_reference_images_show_at_least_15_body_keypoints(reference_poses: dict, name: str) -> None:
    image, pose = reference_poses[name]
    assert int((pose.keypoints[:17, 2] >= 0.5).sum()) >= 15
    assert pose.mask is not None and pose.mask.shape == (image.height, image.width)
    xy = pose.keypoints[:17][pose.keypoints[:17, 2] >= 0.5, :2]
    assert (xy[:, 0] >= 0).all() and (xy[:, 0] <= image.width).all() and (xy[:, 1] <= image.height).all()
    # The person's segmentation covers the body keypoints.
    inside = pose.mask[
        xy[:, 1].astype(int).clip(0, image.height - 1), xy[:, 0].astype(int).clip(0, image.width - 1)
    ]
    assert (inside > 127).mean() >= 0.7


def test_reference_retry_finds_a_person_that_fills_the_frame(reference_poses: dict) -> None:
    image, pose = reference_poses["woman_street"]
    box = pose.body_box(0.5)
    assert box is not None
    x0, y0, x1, y1 = (int(v) for v in box)
    # Crop tight around the body (head and feet touch the edges): the padded retry still finds them.
    crop = np.ascontiguousarray(image.rgb[max(0, y0 - 40) : y1 + 10, max(0, x0 - 40) : x1 + 40])
    found = estimate_image(crop)
    assert int((found.keypoints[:17, 2] >= 0.5).sum()) >= 12


def test_blank_image_has_no_person() -> None:
    with pytest.raises(PoseError) as info:
        estimate_image(np.full((512, 384, 3), 200, np.uint8))
    assert info.value.code == "no_person_detected"


def test_skeleton_only_video_has_no_person() -> None:
    with pytest.raises(PoseError) as info:
        estimate_video(SKELETON_ONLY, max_frames=60)
    assert info.value.code == "no_person_detected"


def test_blank_video_has_no_person_and_cli_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blank = tmp_path / "blank.mp4"
    write_video(blank, (np.full((256, 192, 3), 30, np.uint8) for _ in range(24)), 24.0)
    with pytest.raises(PoseError) as info:
        estimate_video(blank)
    assert info.value.code == "no_person_detected"
    assert run(["pose", str(blank), "-o", str(tmp_path / "p.json")]) == 2
    assert "[no_person_detected]" in capsys.readouterr().err


def _bone_lengths(kp: np.ndarray, bones: list[tuple[int, int]]) -> np.ndarray:
    ext = _extended(kp)
    return np.array([np.linalg.norm(ext[..., a, :2] - ext[..., b, :2], axis=-1) for a, b in bones]).T


def test_retargeting_scales_each_bone_by_one_ratio_on_every_frame(
    dance_candidates: tuple, reference_poses: dict
) -> None:
    """Each body bone is the driver's bone times one ratio for the whole clip (the driver foreshortens, the
    output with it), and that ratio is the reference's length over the driver's in some frame (its base):
    some frame draws the bone at the reference's length."""
    candidates, fps = dance_candidates
    driving = finish_sequence(candidates, 1080, 1920, fps)
    image, ref = reference_poses["anime_girl"]
    out = retarget(driving, ref, image.width, image.height)
    assert (out.width, out.height, len(out)) == (image.width, image.height, len(driving))
    ref_ext = _extended(ref.keypoints)
    head = (1, 2, 3, 4)  # eyes and ears move with the face, not bone by bone
    body_bones = [(a, b) for a, b in BONES if (max(a, b) < 23 or a in (NECK, PELVIS)) and b not in head]
    bones = [(a, b) for a, b in body_bones if ref_ext[a, 2] >= 0.3 and ref_ext[b, 2] >= 0.3]
    assert len(bones) >= 12
    ref_len = _bone_lengths(ref.keypoints, bones)
    out_ext = _extended(out.keypoints)
    ratios = [[] for _ in bones]
    nearest = np.full(len(bones), np.inf)
    for t in np.flatnonzero(out.detected):
        lengths = _bone_lengths(out.keypoints[t], bones)
        drv_lengths = _bone_lengths(driving.keypoints[t], bones)
        for i, (a, b) in enumerate(bones):
            if out_ext[t, a, 2] >= 0.3 and out_ext[t, b, 2] >= 0.3 and drv_lengths[i] > 1.0:
                ratios[i].append(lengths[i] / drv_lengths[i])
                nearest[i] = min(nearest[i], abs(lengths[i] / ref_len[i] - 1))
    assert sum(len(r) for r in ratios) >= 0.9 * len(bones) * len(out)
    for i, r in enumerate(ratios):
        np.testing.assert_allclose(r, r[0], rtol=1e-3, err_msg=str(bones[i]))
    assert (nearest < 0.02).all(), nearest
    # The motion is kept: the output moves as much (relative to the torso) as the driver does.
    wrist_path = np.ptp(out.keypoints[:, 10, :2], axis=0).max()
    assert wrist_path > 0.2 * image.height


def test_partial_body_driver_retargets_onto_full_body_reference(reference_poses: dict) -> None:
    talking = estimate_video(TALKING_HEAD, max_frames=45)
    assert talking.detected_fraction() >= 0.95
    image, ref = reference_poses["woman_street"]
    out = retarget(talking, ref, image.width, image.height)
    # Rooted at the neck: the head and shoulders land on the reference's, with the reference's proportions.
    first = out.keypoints[0]
    neck_out = first[[5, 6], :2].mean(axis=0)
    neck_ref = ref.keypoints[[5, 6], :2].mean(axis=0)
    assert np.linalg.norm(neck_out - neck_ref) < 2.0
    shoulder = np.linalg.norm(first[5, :2] - first[6, :2])
    assert shoulder == pytest.approx(np.linalg.norm(ref.keypoints[5, :2] - ref.keypoints[6, :2]), rel=0.02)
    # Legs the driver never shows stay invisible.
    assert (out.keypoints[:, 13:17, 2] < 0.3).all()


def test_cli_pose_writes_schema_and_skeleton_video(tmp_path: Path) -> None:
    out = tmp_path / "poses.json"
    skeleton = tmp_path / "skeleton.mp4"
    assert run(["pose", str(DANCE), "-o", str(out), "--render", str(skeleton), "--max-frames", "12"]) == 0
    data = json.loads(out.read_text())
    assert data["version"] == 1 and data["layout"] == "coco_wholebody_133"
    assert (data["width"], data["height"], data["fps"]) == (1080, 1920, 24.0)
    assert len(data["frames"]) == 12
    frame = data["frames"][0]
    assert frame["detected"] is True
    assert np.array(frame["keypoints"]).shape == (133, 3) and np.array(frame["world"]).shape == (33, 4)
    loaded = PoseSequence.load(out)
    assert loaded.detected.all()
    with open_video(skeleton) as video:
        assert (video.width, video.height, video.frame_count) == (1080, 1920, 12)
        first = next(video.frames())
    expected = draw_pose(loaded[0], 1080, 1920)
    assert np.abs(first.astype(int) - expected.astype(int)).mean() < 3.0  # H.264 at crf 18
    assert (first.max(axis=2) > 100).mean() > 0.002  # a skeleton was drawn


def test_cli_pose_on_a_reference_image(tmp_path: Path) -> None:
    out = tmp_path / "ref.json"
    assert run(["pose", str(REFERENCES["hero_rgba"]), "-o", str(out)]) == 0
    loaded = PoseSequence.load(out)
    assert len(loaded) == 1 and loaded.fps == 0.0 and (loaded.width, loaded.height) == (576, 768)
    assert int((loaded[0].keypoints[:17, 2] >= 0.5).sum()) >= 15


def test_cli_dwpose_without_weights_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANIMATE_WEIGHTS_DIR", str(tmp_path / "weights"))
    code = run(["pose", str(DANCE), "-o", str(tmp_path / "p.json"), "--estimator", "dwpose"])
    assert code == 2
    assert "[pose_model_missing]" in capsys.readouterr().err
