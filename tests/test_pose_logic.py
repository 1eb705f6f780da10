"""Pose value types, sequence logic, retargeting and drawing on synthetic poses (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from animate.pose import (
    Pose,
    PoseError,
    PoseSequence,
    RetargetOptions,
    SmoothingOptions,
    draw_pose,
    fill_gaps,
    global_fit,
    retarget,
    smooth_keypoints,
    track_main_person,
)
from animate.pose.draw import COLORS
from animate.pose.layout import HAND_EDGES, openpose18
from animate.pose.retarget import BONES, _extended

# A standing person in COCO-17 (x, y), 200 px tall torso, in a 512x768 frame.
STANDING = {
    0: (256, 150), 1: (266, 140), 2: (246, 140), 3: (276, 145), 4: (236, 145),
    5: (306, 220), 6: (206, 220), 7: (326, 300), 8: (186, 300), 9: (336, 380), 10: (176, 380),
    11: (286, 420), 12: (226, 420), 13: (290, 540), 14: (222, 540), 15: (292, 660), 16: (220, 660),
    17: (305, 680), 18: (300, 682), 19: (288, 668), 20: (207, 680), 21: (212, 682), 22: (224, 668),
}  # fmt: skip


def person(offset: tuple[float, float] = (0, 0), scale: float = 1.0, score: float = 0.9) -> Pose:
    kp = np.zeros((133, 3), np.float32)
    for i, (x, y) in STANDING.items():
        kp[i] = (x * scale + offset[0], y * scale + offset[1], score)
    # Hands: a fan of fingers from each wrist; face: a ring around the nose.
    for root, wrist, side in ((91, 9, 1), (112, 10, -1)):
        kp[root] = (*kp[wrist, :2], score)
        for f in range(5):
            for j in range(4):
                kp[root + 1 + f * 4 + j] = (
                    kp[wrist, 0] + side * (5 + 6 * j) * scale,
                    kp[wrist, 1] + (f * 4 + j) * scale,
                    score,
                )
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    kp[23:91, 0] = kp[0, 0] + 25 * scale * np.cos(angles)
    kp[23:91, 1] = kp[0, 1] + 30 * scale * np.sin(angles)
    kp[23:91, 2] = score
    return Pose(kp)


def test_pose_json_round_trip_follows_the_schema(tmp_path: Path) -> None:
    frames = [person(), Pose.empty(), person((5, 0))]
    frames[0].world = np.random.default_rng(0).normal(size=(33, 4)).astype(np.float32)
    seq = PoseSequence(frames, 512, 768, 30.0)
    path = tmp_path / "p.json"
    seq.save(path)
    data = json.loads(path.read_text())
    assert set(data) == {"version", "width", "height", "fps", "layout", "frames"}
    assert data["version"] == 1 and data["layout"] == "coco_wholebody_133"
    assert data["frames"][1] == {
        "detected": False,
        "keypoints": [[0.0, 0.0, 0.0]] * 133,
        "world": [[0.0] * 4] * 33,
    }
    back = PoseSequence.load(path)
    assert (back.width, back.height, back.fps) == (512, 768, 30.0)
    np.testing.assert_allclose(back.keypoints, seq.keypoints, atol=1e-3)
    np.testing.assert_allclose(back[0].world, frames[0].world, atol=1e-5)
    assert back.detected.tolist() == [True, False, True]


def test_pose_file_errors_have_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 2, "layout": "coco_wholebody_133", "frames": []}')
    with pytest.raises(PoseError) as info:
        PoseSequence.load(bad)
    assert info.value.code == "unsupported_pose_file"
    bad.write_text("{not json")
    with pytest.raises(PoseError) as info:
        PoseSequence.load(bad)
    assert info.value.code == "unreadable_pose_file"
    with pytest.raises(ValueError):
        Pose(np.zeros((17, 3)))


def test_fill_gaps_interpolates_short_gaps_and_keeps_long_ones() -> None:
    t = 20
    kp = np.zeros((t, 133, 3), np.float32)
    kp[:, :, 0] = np.arange(t, dtype=np.float32)[:, None] * 10
    kp[:, :, 2] = 0.9
    detected = np.ones(t, bool)
    detected[5:7] = False  # a 2-frame dropout of the whole person
    kp[10:13, 95, 2] = 0.0  # a 3-frame dropout of one finger joint
    kp[12:, 100, 2] = 0.0  # a joint that leaves for good
    kp[3:15, 120, 2] = 0.1  # a 12-frame dropout: too long
    out, det = fill_gaps(kp, detected, max_gap=4)
    assert det.all()
    np.testing.assert_allclose(out[5:7, 0, 0], [50, 60])
    np.testing.assert_allclose(out[10:13, 95, 0], [100, 110, 120])
    assert out[10:13, 95, 2] == pytest.approx(0.9)
    assert (out[12:, 100, 2] == 0).all()
    assert (out[3:15, 120, 2] < 0.3).all()
    assert detected[5] == False  # noqa: E712 - the input is not modified


def test_one_euro_removes_jitter_keeps_motion_and_trusts_confident_points() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(120) / 30.0
    truth = 300 + 60 * np.sin(2 * np.pi * 0.25 * t)
    kp = np.zeros((120, 133, 3), np.float32)
    kp[:, :, 0] = truth[:, None] + rng.normal(0, 3, size=(120, 133))
    kp[:, :, 1] = 400
    kp[:, :, 2] = 1.0
    kp[:, 1, 2] = 0.35  # low confidence: smoothed harder
    out = smooth_keypoints(kp, 30.0, 768)
    confident = [0, *range(2, 133)]
    err_raw = np.abs(kp[:, confident, 0] - truth[:, None]).mean()
    err_out = np.abs(out[:, confident, 0] - truth[:, None]).mean()
    assert err_out < 0.7 * err_raw
    jerk = lambda x: np.abs(np.diff(x, 2)).mean()  # noqa: E731
    assert jerk(out[:, 1, 0]) < jerk(out[:, 0, 0])
    # Forward-backward: no lag on the slow sine (the peak stays where it was).
    assert abs(int(np.argmax(out[:80, 0, 0])) - int(np.argmax(truth[:80]))) <= 3
    one_way = smooth_keypoints(kp, 30.0, 768, SmoothingOptions(bidirectional=False))
    assert np.abs(one_way[:, confident, 0] - truth[:, None]).mean() > err_out


def test_tracking_follows_the_largest_central_person_and_ignores_others() -> None:
    main = [person((10 * i * 0.2, 0)) for i in range(30)]
    small = [person((300, 500), scale=0.3) for _ in range(30)]
    candidates = [[small[i], main[i]] for i in range(30)]
    candidates[12] = [small[12]]  # main person missed once
    candidates[20] = [small[20], person((10 * 20 * 0.2, 0))]
    track = track_main_person(candidates, 512, 768)
    assert not track[12].detected
    assert all(track[i].detected for i in range(30) if i != 12)
    assert all(track[i].keypoints[0, 0] == pytest.approx(256 + 2 * i) for i in range(30) if i != 12)
    # A single-person estimator that jumps to someone far away: the jump is not followed.
    jumpy = [[main[i]] for i in range(10)] + [[person((-180, 0), scale=0.5)] for _ in range(5)]
    track = track_main_person(jumpy, 512, 768)
    assert [p.detected for p in track] == [True] * 10 + [False] * 5


def _bone_lengths(kp: np.ndarray) -> dict[tuple[int, int], float]:
    ext = _extended(kp)
    return {
        (a, b): float(np.linalg.norm(ext[a, :2] - ext[b, :2]))
        for a, b in BONES
        if ext[a, 2] >= 0.3 and ext[b, 2] >= 0.3
    }


def _waving(frames: int, scale: float, offset: tuple[float, float]) -> PoseSequence:
    poses = []
    for t in range(frames):
        p = person(offset, scale)
        angle = np.pi * t / frames  # right forearm sweeps half a turn around the elbow
        elbow = p.keypoints[8, :2]
        length = np.linalg.norm(p.keypoints[10, :2] - elbow)
        p.keypoints[10, :2] = elbow + length * np.array([np.sin(angle), np.cos(angle)])
        p.keypoints[112:133, :2] += p.keypoints[10, :2] - p.keypoints[112, :2]
        p.keypoints[:, 1] += 20 * np.sin(t / 3)  # bobbing up and down
        poses.append(p)
    return PoseSequence(poses, 1080, 1920, 30.0)


def test_retarget_uses_reference_lengths_and_driver_angles() -> None:
    driving = _waving(24, scale=2.0, offset=(100, 50))
    ref = person((40, 0), scale=0.8)
    ref.keypoints[13:23, 1] += 30  # the reference has longer legs (knees, ankles, feet) than the driver
    out = retarget(driving, ref, 512, 768)
    ref_len = _bone_lengths(ref.keypoints)
    for t in range(len(out)):
        got = _bone_lengths(out.keypoints[t])
        for bone, length in ref_len.items():
            assert got[bone] == pytest.approx(length, rel=0.02, abs=1e-3), (t, bone)
        d_fore = driving.keypoints[t, 10, :2] - driving.keypoints[t, 8, :2]
        o_fore = out.keypoints[t, 10, :2] - out.keypoints[t, 8, :2]
        cos = d_fore @ o_fore / np.linalg.norm(d_fore) / np.linalg.norm(o_fore)
        assert cos == pytest.approx(1.0, abs=1e-5)
    # Feet anchoring: the lowest foot rides the driver's ground line, scaled by the torso ratio (0.4).
    ground = out.keypoints[:, 15:23, 1].max(axis=1)
    drv_ground = driving.keypoints[:, 15:23, 1].max(axis=1)
    np.testing.assert_allclose(ground - ground[0], (drv_ground - drv_ground[0]) * 0.4, atol=1e-3)
    assert ground[0] == pytest.approx(ref.keypoints[15:23, 1].max(), abs=1e-3)
    # Hip anchoring instead: the pelvis starts on the reference's.
    hips = retarget(
        driving,
        ref,
        512,
        768,
        options=RetargetOptions(anchor="hips"),
    )
    np.testing.assert_allclose(
        hips.keypoints[0, 11:13, :2].mean(0), ref.keypoints[11:13, :2].mean(0), atol=1e-3
    )


@pytest.mark.parametrize("anchor", ["hips", "feet", "auto"])
def test_retarget_moves_the_root_by_the_driver_displacement_times_the_body_ratio(anchor) -> None:
    """A driver walking right and up (12 px, -8 px a frame at scale 2) moves the reference (scale 0.8)
    by 0.4 times that in every frame, x and y: the torso ratio is 0.8 / 2.0 by construction."""
    steps = [(100 + 12 * t, 300 - 8 * t) for t in range(8)]
    driving = PoseSequence([person(offset, scale=2.0) for offset in steps], 1080, 1920, 30.0)
    driving.frames[5].keypoints[11:13, 2] = 0.0  # hips unseen: that frame is scaled and shifted as a whole
    ref = person((40, 0), scale=0.8)
    out = retarget(driving, ref, 512, 768, options=RetargetOptions(anchor=anchor))
    assert out.meta["scale"] == pytest.approx(0.4)
    pelvis = out.keypoints[:, 11:13, :2].mean(1)
    expected = ref.keypoints[11:13, :2].mean(0) + 0.4 * (np.array(steps) - np.array(steps[0]))
    np.testing.assert_allclose(pelvis, expected, atol=1e-3)
    # the whole body moves with the root: every frame is the first one shifted by the same amount
    np.testing.assert_allclose(
        out.keypoints[:, :, :2] - out.keypoints[:1, :, :2],
        np.broadcast_to((expected - expected[0])[:, None], (8, 133, 2)),
        atol=1e-3,
    )


def test_retarget_bridges_an_unseen_joint_with_the_scaled_driver_offset() -> None:
    """The driver's right elbow is not seen: the wrist hangs off the shoulder by the driver's shoulder ->
    wrist offset times the torso ratio (0.4), and the unseen elbow is carried the same way."""
    driving = PoseSequence([person((100, 300), scale=2.0)], 1080, 1920, 30.0)
    driving.frames[0].keypoints[8, 2] = 0.1  # right elbow (index 8) below the threshold
    out = retarget(driving, person((40, 0), scale=0.8), 512, 768, options=RetargetOptions(anchor="hips"))
    drv, kp = driving.keypoints[0], out.keypoints[0]
    for joint in (8, 10):  # the elbow, then the wrist whose parent (the elbow) was not placed
        np.testing.assert_allclose(kp[joint, :2] - kp[6, :2], 0.4 * (drv[joint, :2] - drv[6, :2]), atol=1e-3)


def test_retarget_partial_reference_takes_scaled_driver_lengths_for_missing_bones() -> None:
    driving = _waving(6, scale=1.0, offset=(0, 0))
    ref = person(scale=1.5)
    ref.keypoints[11:23, 2] = 0.0  # head-and-shoulders photo: no hips, legs or feet
    out = retarget(driving, ref, 768, 1152)
    assert out.meta["scale"] == pytest.approx(1.5)
    shin = np.linalg.norm(out.keypoints[:, 15, :2] - out.keypoints[:, 13, :2], axis=1)
    np.testing.assert_allclose(
        shin,
        1.5 * np.linalg.norm(driving.keypoints[:, 15, :2] - driving.keypoints[:, 13, :2], axis=1),
        rtol=1e-4,
    )


def test_global_fit_recovers_one_scale_and_offset() -> None:
    driving = _waving(10, scale=2.0, offset=(100, 50))
    ref = person(scale=1.0)
    out = global_fit(driving, ref, 512, 768)
    assert out.meta["scale"] == pytest.approx(0.5, rel=0.05)
    ref18 = openpose18(ref.keypoints)
    out18 = openpose18(out.keypoints[0])
    assert np.abs(out18[[0, 1, 2, 5], :2] - ref18[[0, 1, 2, 5], :2]).max() < 15
    with pytest.raises(PoseError):
        global_fit(driving, Pose.empty(), 512, 768)


def test_draw_pose_uses_openpose_colours_confidence_and_antialiasing() -> None:
    pose = person()
    img = draw_pose(pose, 512, 768)
    assert img.shape == (768, 512, 3) and img.dtype == np.uint8
    # Right upper arm (OpenPose limb 3-4, colour index 2 = (255, 170, 0) in DWPose's BGR canvas).
    mid = ((pose.keypoints[6, :2] + pose.keypoints[8, :2]) / 2).round().astype(int)
    pixel = img[mid[1], mid[0]].astype(float)
    expected = np.array(COLORS[2][::-1]) * 0.6 * 0.9 * 0.9  # RGB of the BGR entry, dimmed, x confidences
    np.testing.assert_allclose(pixel / pixel.max(), expected / expected.max(), atol=0.05)
    assert 0.6 * expected.max() <= pixel.max() <= expected.max() + 3  # a 2 px stroke, partly covered
    # Antialiased: edge pixels hold intermediate values, not just background and full colour.
    levels = np.unique(img.max(axis=2))
    assert len(levels) > 20
    # Confidence-aware: the same pose with lower scores is darker; below 0.3 it disappears.
    dim = draw_pose(person(score=0.5), 512, 768)
    assert dim.astype(float).sum() < 0.7 * img.astype(float).sum()
    assert draw_pose(person(score=0.2), 512, 768).max() == 0
    assert draw_pose(Pose.empty(), 64, 64).max() == 0
    # Parts can be switched off: hands carry the HSV edge colours.
    no_hands = draw_pose(pose, 512, 768, hands=False)
    assert (img.astype(int) - no_hands.astype(int)).max() > 100
    assert len(HAND_EDGES) == 20
