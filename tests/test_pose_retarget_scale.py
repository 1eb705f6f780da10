"""Retargeting rules against hand values: body ratio fallbacks, virtual joints, unseen and zero-length
bones, undetected frames, the root, and MimicMotion's global fit."""

from __future__ import annotations

import numpy as np
import pytest

from animate.pose import Pose, PoseError, PoseSequence
from animate.pose.layout import L_EYE, L_HIP, L_SHOULDER, NOSE, R_EYE, R_HIP, R_SHOULDER
from animate.pose.retarget import RetargetOptions, _extended, body_scale_ratio, global_fit, retarget

NECK, PELVIS = 133, 134
#: A standing body (x, y): head at the top, hips at y = 200.
BODY = {
    NOSE: (100, 40), L_EYE: (110, 30), R_EYE: (90, 30), 3: (120, 35), 4: (80, 35),
    L_SHOULDER: (130, 80), R_SHOULDER: (70, 80), 7: (140, 140), 8: (60, 140), 9: (145, 190), 10: (55, 190),
    L_HIP: (120, 200), R_HIP: (80, 200), 13: (120, 280), 14: (80, 280), 15: (120, 360), 16: (80, 360),
}  # fmt: skip


def keypoints(scale: float = 1.0, offset=(0.0, 0.0), unseen=()) -> np.ndarray:
    kp = np.zeros((133, 3), np.float32)
    for i, (x, y) in BODY.items():
        kp[i] = (x * scale + offset[0], y * scale + offset[1], 0.0 if i in unseen else 0.9)
    return kp


def test_extended_adds_neck_and_pelvis_with_the_weaker_score():
    kp = keypoints()
    kp[L_SHOULDER, 2], kp[R_HIP, 2] = 0.4, 0.2
    out = _extended(np.stack([kp, keypoints(2.0)]))
    assert out.shape == (2, 135, 3)
    assert out[0, NECK].tolist() == pytest.approx([100, 80, 0.4])
    assert out[0, PELVIS].tolist() == pytest.approx([100, 200, 0.2])
    assert out[1, NECK].tolist() == pytest.approx([200, 160, 0.9])


def test_body_ratio_from_the_torso_then_shoulders_then_eyes():
    reference = _extended(keypoints(2.0)[None])[0]
    # Torso 120 px in the reference and 60 px in the driver: 2.0. A frame without hips is not counted.
    driving = _extended(np.stack([keypoints(0.5), keypoints(0.5), keypoints(0.5, unseen=[L_HIP])]))
    driving[2, PELVIS, :2] = (0, 0)
    assert body_scale_ratio(reference, driving) == pytest.approx(4.0)
    no_hips = _extended(keypoints(2.0, unseen=[L_HIP, R_HIP])[None])[0]
    assert body_scale_ratio(no_hips, driving) == pytest.approx(4.0)  # shoulder widths 120 / 30
    no_shoulders = _extended(keypoints(2.0, unseen=[L_HIP, R_SHOULDER])[None])[0]
    assert body_scale_ratio(no_shoulders, driving) == pytest.approx(4.0)  # eye distances 40 / 10
    # A torso under one pixel is no measure: the shoulders decide.
    tiny = keypoints(1.0)
    tiny[[L_HIP, R_HIP], 1] = 80.5
    assert body_scale_ratio(reference, _extended(np.stack([tiny]))) == pytest.approx(120 / 60)
    with pytest.raises(PoseError) as excinfo:
        body_scale_ratio(_extended(keypoints(unseen=[L_HIP, R_SHOULDER, L_EYE])[None])[0], driving)
    assert (excinfo.value.code, excinfo.value.message) == (
        "retarget_failed",
        "reference and driving video share no torso, shoulders or eyes",
    )


def test_global_fit_inverts_a_scaled_and_shifted_driver():
    # Reference in a 300x600 image; the driver (200x400 frames) is the reference at half size + (10, 20):
    # the fitted map takes every driving keypoint back onto the reference.
    reference = Pose(keypoints())
    frames = [Pose(keypoints(0.5, (10.0, 20.0))) for _ in range(3)]
    mask = np.zeros((400, 200), np.uint8)
    frames[0] = Pose(frames[0].keypoints, mask=mask)
    driving = PoseSequence(frames, 200, 400, 25.0)
    fitted = global_fit(driving, reference, 300, 600)
    assert (fitted.width, fitted.height, fitted.fps) == (300, 600, 25.0)
    assert fitted.meta == {"retarget": "global_fit", "scale": pytest.approx(2.0)}
    for frame in fitted.frames:
        np.testing.assert_allclose(frame.keypoints[:17, :2], reference.keypoints[:17, :2], atol=1e-3)
        assert frame.mask is None


def test_global_fit_refusals():
    driving = PoseSequence([Pose(keypoints())], 200, 400, 25.0)
    # Two fit points (nose and left eye) are enough; the nose alone is too few.
    two = keypoints(unseen=[i for i in BODY if i not in (NOSE, L_EYE)])
    assert len(global_fit(driving, Pose(two), 300, 600)) == 1
    few = keypoints(unseen=[i for i in BODY if i != NOSE])
    few[L_EYE, 2] = 0.2
    with pytest.raises(PoseError) as excinfo:
        global_fit(driving, Pose(few), 300, 600)
    assert (excinfo.value.code, excinfo.value.message) == (
        "retarget_failed",
        "the reference shows too few head and torso points to fit",
    )
    nobody = PoseSequence([Pose.empty()], 200, 400, 25.0)
    with pytest.raises(PoseError) as excinfo:
        global_fit(nobody, Pose(keypoints()), 300, 600)
    assert (excinfo.value.code, excinfo.value.message) == (
        "retarget_failed",
        "no driving frame shows a person",
    )


def _sequence(frames: list[np.ndarray], detected=None) -> PoseSequence:
    poses = [Pose(kp, detected=True if detected is None else detected[t]) for t, kp in enumerate(frames)]
    return PoseSequence(poses, 200, 400, 30.0)


HIPS = RetargetOptions(anchor="hips")


def test_a_driver_at_half_size_lands_exactly_on_the_reference():
    out = retarget(_sequence([keypoints(0.5)] * 2), Pose(keypoints()), 300, 600, HIPS)
    assert (out.width, out.height, out.fps) == (300, 600, 30.0)
    assert out.meta == {"retarget": "bones", "scale": pytest.approx(2.0)}
    np.testing.assert_allclose(out.keypoints[:, :17], np.stack([keypoints()] * 2)[:, :17], atol=1e-4)


def test_unseen_joints_follow_the_driver_offset_times_the_ratio():
    frame = keypoints(0.5)  # elbow (70, 70), scale 2 back to the reference
    frame[9] = (70 + 5, 70 + 10, 0.1)  # the left wrist, unseen
    frame[91] = (70 + 6, 70 + 11, 0.9)  # the left hand's root, seen, hanging from the unseen wrist
    out = retarget(_sequence([frame]), Pose(keypoints()), 300, 600, HIPS).keypoints[0]
    assert out[9].tolist() == pytest.approx([140 + 10, 140 + 20, 0.1])  # reference elbow + offset x 2
    assert out[91].tolist() == pytest.approx([140 + 12, 140 + 22, 0.9])  # from the last placed joint


def test_a_zero_length_driving_bone_borrows_the_reference_direction():
    frame = keypoints(0.5)
    frame[9, :2] = frame[7, :2]  # wrist on the elbow
    out = retarget(_sequence([frame]), Pose(keypoints()), 300, 600, HIPS).keypoints[0]
    assert out[9, :2].tolist() == pytest.approx([145, 190])  # the reference's own forearm


def test_undetected_frames_are_empty_and_do_not_count():
    # A frame without a person (its stale keypoints twice as large) changes neither the ratio nor the
    # frames after it.
    frames = [keypoints(0.5), keypoints(1.0), keypoints(1.0), keypoints(0.5)]
    out = retarget(_sequence(frames, detected=[True, False, False, True]), Pose(keypoints()), 300, 600, HIPS)
    assert out.meta["scale"] == pytest.approx(2.0)
    assert not out.frames[1].detected and not out.keypoints[1].any()
    np.testing.assert_allclose(out.keypoints[3, :17], keypoints()[:17], atol=1e-4)


def test_the_root_must_be_seen_in_enough_driving_frames():
    # Hips seen in exactly half the frames: the pelvis is still the root (min_root_fraction 0.5), so the
    # frame without it is the driver scaled and shifted as a whole: its longer forearm stays longer
    # (with the neck as root the forearm would take the reference's length).
    second = keypoints(0.5, unseen=[L_HIP])
    second[9] = (70, 110, 0.9)
    out = retarget(_sequence([keypoints(0.5), second]), Pose(keypoints()), 300, 600, HIPS)
    assert out.keypoints[1, 9, :2].tolist() == pytest.approx([100 + (70 - 50) * 2, 200 + (110 - 100) * 2])
    nothing = [keypoints(0.5, unseen=[L_HIP, R_SHOULDER, NOSE])]
    with pytest.raises(PoseError) as excinfo:
        retarget(_sequence(nothing * 2), Pose(keypoints(unseen=[L_HIP, R_SHOULDER, NOSE])), 300, 600, HIPS)
    assert (excinfo.value.code, excinfo.value.message) == (
        "retarget_failed",
        "reference and driving video share no pelvis, neck or nose",
    )


def test_the_feet_anchor_needs_the_reference_feet():
    no_feet = Pose(keypoints(unseen=[15, 16]))
    with pytest.raises(PoseError) as excinfo:
        retarget(_sequence([keypoints(0.5)]), no_feet, 300, 600, RetargetOptions(anchor="feet"))
    assert (excinfo.value.code, excinfo.value.message) == (
        "retarget_failed",
        "anchor 'feet' needs the reference's feet",
    )
    assert (
        len(
            retarget(_sequence([keypoints(0.5)]), Pose(keypoints()), 300, 600, RetargetOptions(anchor="feet"))
        )
        == 1
    )


def test_reference_gaps_use_the_driver_with_the_ratio():
    # The reference shows no hips: the neck is the root and the shoulders give the ratio (60 / 30 = 2).
    # Its left wrist is unseen (stale coordinates): the forearm takes the driver's length times 2.
    reference = keypoints(unseen=[L_HIP, R_HIP, 9])
    reference[[L_HIP, R_HIP, 9], :2] = 0  # stale coordinates of unseen points
    driver = keypoints(0.5)
    driver[NOSE, 2] = 0.0  # the nose is not needed
    mask = np.zeros((400, 200), np.uint8)
    driving = PoseSequence([Pose(driver, mask=mask)], 200, 400, 30.0)
    out = retarget(driving, Pose(reference), 300, 600, HIPS)
    assert out.keypoints[0, L_SHOULDER, :2].tolist() == pytest.approx([130, 80])
    assert out.keypoints[0, 9, :2].tolist() == pytest.approx([145, 190], abs=1e-3)
    assert out.frames[0].mask is None


def test_a_driver_without_feet_keeps_the_feet_anchor_idle():
    # The reference shows its feet but no driving frame does: the clip is still retargeted.
    frames = [keypoints(0.5, unseen=[15, 16])] * 2
    out = retarget(_sequence(frames), Pose(keypoints()), 300, 600)
    np.testing.assert_allclose(out.keypoints[1, :15, :2], keypoints()[:15, :2], atol=1e-3)
