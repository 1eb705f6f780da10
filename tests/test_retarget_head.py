"""Retargeting against the driver's base frame: the same person maps onto itself, bones and hands scale by
reference / base-frame ratios, and the head moves as one piece (rotation, scale, expression) around the nose.

Every expectation is written out by hand: the driving keypoints themselves for the same person, rotation
matrices and ratios for another person."""

from __future__ import annotations

import numpy as np
import pytest

from animate.pose import Pose, PoseSequence, RetargetOptions, retarget
from animate.pose.layout import HAND_EDGES
from animate.pose.retarget import _base_frame, _extended, _similarity

HIPS = RetargetOptions(anchor="hips")
#: A standing person (x, y) in COCO-17 + feet, 100 px from neck to pelvis, nose at (256, 150).
STANDING = {
    0: (256, 150), 1: (266, 140), 2: (246, 140), 3: (276, 145), 4: (236, 145),
    5: (306, 220), 6: (206, 220), 7: (326, 300), 8: (186, 300), 9: (336, 380), 10: (176, 380),
    11: (286, 320), 12: (226, 320), 13: (290, 440), 14: (222, 440), 15: (292, 560), 16: (220, 560),
    17: (305, 580), 18: (300, 582), 19: (288, 568), 20: (207, 580), 21: (212, 582), 22: (224, 568),
}  # fmt: skip
FACE = np.arange(23, 91)
MOUTH_LOW = np.arange(23 + 55, 23 + 60)  # iBUG 55-59: the lower lip's outer edge
HEAD = np.r_[1:5, 23:91]  # eyes, ears, face


def body(scale: float = 1.0, offset=(0.0, 0.0), face: float = 1.0) -> np.ndarray:
    """(133, 3) keypoints: the standing body times ``scale`` plus ``offset``, a face ellipse (25 x 30 px
    times ``face``) around the nose, and a fan of fingers from each wrist."""
    kp = np.zeros((133, 3), np.float32)
    for i, (x, y) in STANDING.items():
        kp[i] = (x * scale + offset[0], y * scale + offset[1], 0.9)
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    kp[FACE, 0] = kp[0, 0] + 25 * face * scale * np.cos(angles)
    kp[FACE, 1] = kp[0, 1] + 30 * face * scale * np.sin(angles)
    kp[FACE, 2] = 0.9
    for root, wrist, side in ((91, 9, 1), (112, 10, -1)):
        kp[root] = kp[wrist]
        for f in range(5):
            for j in range(4):
                kp[root + 1 + f * 4 + j] = (
                    kp[wrist, 0] + side * (5 + 6 * j) * scale,
                    kp[wrist, 1] + (8 + 3 * f + 2 * j) * scale,
                    0.9,
                )
    return kp


def rotation(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def turn_head(kp: np.ndarray, degrees: float, grow: float = 1.0) -> np.ndarray:
    """The eyes, ears and face turned by ``degrees`` and scaled by ``grow`` about the nose."""
    kp = kp.copy()
    kp[HEAD, :2] = kp[0, :2] + (kp[HEAD, :2] - kp[0, :2]) @ (grow * rotation(degrees)).T
    return kp


def sequence(frames: list[np.ndarray]) -> PoseSequence:
    return PoseSequence([Pose(f.copy()) for f in frames], 512, 768, 30.0)


def moving_clip() -> list[np.ndarray]:
    """Six frames of one person whose 2D bone lengths change: it walks right and up, its left forearm
    foreshortens (pointing at the camera), its head tilts and leans in, its mouth opens, its left fingers
    curl and its right leg lifts."""
    frames = []
    for t in range(6):
        kp = body(offset=(7.0 * t, -3.0 * t))
        kp[9, :2] = kp[7, :2] + (kp[9, :2] - kp[7, :2]) * (1 - 0.12 * t)  # left forearm shortens
        kp[91:112, :2] += kp[9, :2] - body(offset=(7.0 * t, -3.0 * t))[9, :2]  # the hand follows it
        kp[92:112, :2] = kp[91, :2] + (kp[92:112, :2] - kp[91, :2]) * (1 - 0.08 * t)  # fingers curl
        kp = turn_head(kp, 5.0 * t, 1 + 0.03 * t)
        kp[MOUTH_LOW, 1] += 1.5 * t  # the mouth opens
        kp[[14, 16, 20, 21, 22], 1] -= 4.0 * t  # the right knee, ankle and foot lift
        frames.append(kp)
    return frames


@pytest.mark.parametrize("reference_frame", [0, 3])
@pytest.mark.parametrize("anchor", ["hips", "auto"])
def test_the_same_person_retargets_onto_itself(reference_frame, anchor):
    """The reference is one frame of the clip: every frame comes back as it was (within a thousandth of a
    pixel), whichever frame it is, though every bone's 2D length changes over the clip."""
    clip = moving_clip()
    out = retarget(sequence(clip), Pose(clip[reference_frame]), 512, 768, RetargetOptions(anchor=anchor))
    assert out.meta["scale"] == pytest.approx(1.0)
    np.testing.assert_allclose(out.keypoints, np.stack(clip), atol=1e-3)


def test_a_foreshortened_forearm_shortens_by_the_drivers_share():
    """Reference 1.5x the driver's size with forearms 1.2x longer still: in the frame where the driver's
    left forearm shrinks to 40%, the output's is 40% of the reference's, in the driver's direction."""
    ref = body(1.5)
    ref[9, :2] = ref[7, :2] + (ref[9, :2] - ref[7, :2]) * 1.2
    driver = body()
    short = driver.copy()
    short[9, :2] = short[7, :2] + (short[9, :2] - short[7, :2]) * 0.4
    out = retarget(sequence([driver, short]), Pose(ref), 768, 1152, HIPS).keypoints
    ref_fore = np.linalg.norm(ref[9, :2] - ref[7, :2])
    for t, share in ((0, 1.0), (1, 0.4)):
        fore = out[t, 9, :2] - out[t, 7, :2]
        assert np.linalg.norm(fore) == pytest.approx(share * ref_fore, rel=1e-4)
        direction = (STANDING[9][0] - STANDING[7][0], STANDING[9][1] - STANDING[7][1])
        assert np.cross(fore, direction) == pytest.approx(0.0, abs=1e-2)


def test_a_hand_takes_one_ratio_for_all_its_bones():
    """The reference's left hand is the driver's at 2x, but its index finger at 4x (the driver at the same
    body size): every left-hand bone is the driver's times (sum of reference bones / sum of driver bones)."""
    driver = body()
    ref = body()
    wrist = ref[9, :2]
    ref[92:112, :2] = wrist + (ref[92:112, :2] - wrist) * 2.0
    ref[96:100, :2] = wrist + (driver[96:100, :2] - wrist) * 4.0  # the index finger (joints 5-8)

    def lengths(kp: np.ndarray) -> np.ndarray:
        return np.array([np.linalg.norm(kp[91 + a, :2] - kp[91 + b, :2]) for a, b in HAND_EDGES])

    share = lengths(ref).sum() / lengths(driver).sum()
    moved = driver.copy()
    moved[92:112, 0] -= 3.0  # the fingers slide along x: new directions and lengths
    out = retarget(sequence([driver, moved]), Pose(ref), 512, 768, HIPS).keypoints
    np.testing.assert_allclose(lengths(out[1]), lengths(moved) * share, rtol=1e-4)
    # the other hand matches the reference (same size): ratio 1
    np.testing.assert_allclose(out[1, 112:133, :2], ref[112:133, :2], atol=1e-3)


def test_a_bone_ratio_stays_within_three_times_the_body_ratio():
    """A reference shin 10x the driver's (same body size otherwise) is drawn only 3x the driver's."""
    ref = body()
    ref[15, :2] = ref[13, :2] + (ref[15, :2] - ref[13, :2]) * 10
    driver = body()
    out = retarget(sequence([driver]), Pose(ref), 512, 768, HIPS).keypoints[0]
    shin = np.linalg.norm(driver[15, :2] - driver[13, :2])
    assert np.linalg.norm(out[15, :2] - out[13, :2]) == pytest.approx(3 * shin, rel=1e-4)
    # and a tenth of it is drawn a third
    ref[15, :2] = ref[13, :2] + (driver[15, :2] - driver[13, :2]) * 0.1
    out = retarget(sequence([driver]), Pose(ref), 512, 768, HIPS).keypoints[0]
    assert np.linalg.norm(out[15, :2] - out[13, :2]) == pytest.approx(shin / 3, rel=1e-4)


@pytest.mark.parametrize(("degrees", "grow"), [(20.0, 1.0), (-35.0, 1.0), (12.0, 1.25)])
def test_the_reference_head_turns_and_grows_with_the_drivers(degrees, grow):
    """Another person with a face 1.6x wider and 1.3x longer (so not a similar shape): when the driver's
    head turns by an angle and grows, the reference's face, eyes and ears turn by that angle and grow by
    that factor about the reference's nose; the body does not move."""
    ref = body(face=1.0)
    ref[FACE, 0] = ref[0, 0] + (ref[FACE, 0] - ref[0, 0]) * 1.6
    ref[FACE, 1] = ref[0, 1] + (ref[FACE, 1] - ref[0, 1]) * 1.3
    driver = body()
    out = retarget(sequence([driver, turn_head(driver, degrees, grow)]), Pose(ref), 512, 768, HIPS)
    turned = out.keypoints[1]
    expected = ref[0, :2] + (ref[HEAD, :2] - ref[0, :2]) @ (grow * rotation(degrees)).T
    np.testing.assert_allclose(turned[HEAD, :2], expected, atol=1e-3)
    np.testing.assert_allclose(turned[:1, :2], ref[:1, :2], atol=1e-3)
    np.testing.assert_allclose(turned[5:17, :2], ref[5:17, :2], atol=1e-3)
    np.testing.assert_allclose(out.keypoints[0, :91, :2], ref[:91, :2], atol=1e-3)


def test_an_open_mouth_moves_a_face_twice_the_size_twice_as_far():
    """The reference face is the driver's at 2x about the nose, the body the same size: the driver's
    lower lip drops 6 px, the reference's drops 12 px; every other face point stays on the reference."""
    ref = body(face=2.0)
    ref[1:5, :2] = ref[0, :2] + (ref[1:5, :2] - ref[0, :2]) * 2.0
    driver = body()
    opened = driver.copy()
    opened[MOUTH_LOW, 1] += 6.0
    out = retarget(sequence([driver, opened]), Pose(ref), 512, 768, HIPS).keypoints[1]
    expected = ref[:91, :2].copy()
    expected[MOUTH_LOW, 1] += 12.0
    np.testing.assert_allclose(out[:91, :2], expected, atol=1e-3)


def test_head_points_one_side_does_not_show():
    """The reference shows no right ear: the output's is the driver's own offset from the nose times the
    face ratio (2), turned with it. The base frame shows no left ear but the reference does: the output's
    is the reference's, turned rigidly with the head (30 degrees)."""
    ref = body(face=2.0)
    ref[1:5, :2] = ref[0, :2] + (ref[1:5, :2] - ref[0, :2]) * 2.0
    ref[4, 2] = 0.1  # no right ear in the reference
    ref[4, :2] = (0, 0)
    ref[3, :2] += (8.0, -5.0)  # its left ear is not the driver's at 2x
    driver = body()
    driver[3, 2] = 0.1  # no left ear in the driver's base frame
    now = turn_head(body(), 30.0)
    now[[7, 8, 9, 10], 1] -= 150  # arms up: this frame is no base
    out = retarget(sequence([driver, now]), Pose(ref), 512, 768, HIPS).keypoints[1]
    assert out[4, :2] == pytest.approx(ref[0, :2] + 2.0 * (now[4, :2] - now[0, :2]), abs=1e-3)
    assert out[3, :2] == pytest.approx(ref[0, :2] + rotation(30.0) @ (ref[3, :2] - ref[0, :2]), abs=1e-3)


def test_an_unseen_nose_leaves_the_head_to_the_skeleton():
    """Without the nose in a frame the head points hang off the neck: the driver's offset times the body
    ratio (reference 2x the driver)."""
    ref = body(2.0)
    driver = body()
    blind = turn_head(driver, 25.0)
    blind[0, 2] = 0.1
    out = retarget(sequence([driver, blind]), Pose(ref), 1024, 1536, HIPS).keypoints[1]
    neck_out = (ref[5, :2] + ref[6, :2]) / 2
    neck_drv = (blind[5, :2] + blind[6, :2]) / 2
    for i in (0, 1, 3, 40, 80):
        assert out[i, :2] == pytest.approx(neck_out + 2.0 * (blind[i, :2] - neck_drv), abs=1e-3)


def test_the_base_frame_is_the_driving_pose_most_like_the_reference():
    """Frame 0 raises the arms, frame 1 is the reference's pose at half size and shifted (knees 2 px
    apart), frame 2 matches it exactly but hides both wrists, both elbows and the nose: frame 1 is the
    base. The root then sits on the reference's in frame 1, and moves from there by the driver's
    displacement times 2 in the others."""
    ref = body()
    up = body(0.5, (40, 30))
    up[[7, 8], 1] -= 80
    up[[9, 10], 1] -= 170
    same = body(0.5, (40, 30))
    same[13, 0] += 1.0
    same[14, 0] -= 1.0
    hidden = body(0.5, (70, 30))
    hidden[[0, 7, 8, 9, 10], 2] = 0.1
    drv = _extended(np.stack([up, same, hidden]))
    assert _base_frame(_extended(ref[None])[0], drv, 134, 0.3) == 1
    out = retarget(sequence([up, same, hidden]), Pose(ref), 512, 768, HIPS).keypoints
    pelvis = out[:, [11, 12], :2].mean(1)
    np.testing.assert_allclose(pelvis[1], ref[[11, 12], :2].mean(0), atol=1e-3)
    np.testing.assert_allclose(pelvis[2] - pelvis[1], [60.0, 0.0], atol=1e-3)
    # ties (the same pose twice) go to the earliest; a frame without the root is no candidate
    twice = _extended(np.stack([up, same, same]))
    assert _base_frame(_extended(ref[None])[0], twice, 134, 0.3) == 1
    no_root = same.copy()
    no_root[11, 2] = 0.1
    assert _base_frame(_extended(ref[None])[0], _extended(np.stack([up, no_root])), 134, 0.3) == 0


def test_the_base_frame_needs_three_shared_points_and_some_extent():
    """With the nose as root: a frame that shares fewer than three points with the reference (the nose and
    an eye match it exactly once centred and scaled), or collapses them to one spot, is no candidate, even
    against an upside-down body; with none, the first frame with the root is the fallback."""
    ref = _extended(body()[None])[0]
    far = body(0.5)
    far[:, 1] = 500 - far[:, 1]  # upside down: unlike the reference, but a candidate
    few = body(0.5)
    few[[i for i in range(17) if i not in (0, 1)], 2] = 0.1  # the nose and left eye only
    dot = body(0.5)
    dot[:, :2] = 50.0  # every point on one spot
    assert _base_frame(ref, _extended(np.stack([few, far])), 0, 0.3) == 1
    assert _base_frame(ref, _extended(np.stack([dot, far])), 0, 0.3) == 1
    assert _base_frame(ref, _extended(np.stack([few, dot])), 0, 0.3) == 0


def test_the_body_ratio_comes_from_the_base_frame():
    """The driver's torso is 100 px in its base frame (the reference's pose) and 50 px in a crouch: the
    ratio is the reference's torso (150 px) over the base frame's, 1.5, not over the clip's median (50)."""
    ref = body(1.5)
    crouch = body()
    crouch[[11, 12], 1] -= 50
    crouch[13:23, 1] -= 50
    crouch[[7, 8, 9, 10], 0] += np.array([60, -60, 120, -120])
    out = retarget(sequence([body(), crouch, crouch]), Pose(ref), 768, 1152, HIPS)
    assert out.meta["scale"] == pytest.approx(1.5)
    # a base frame without torso, shoulders or eyes leaves the clip's ratio (torso: 150 / 125)
    faceless = body()
    faceless[[1, 2, 5, 6], 2] = 0.1
    upside = body(1.25)
    upside[:, 1] = 900 - upside[:, 1]
    out = retarget(sequence([faceless, upside]), Pose(ref), 768, 1152, HIPS)
    assert out.meta["scale"] == pytest.approx(1.2)


def test_a_root_no_driving_frame_shows_is_skipped_even_at_fraction_zero():
    """min_root_fraction 0 lets any root pass the share test, but one never seen cannot anchor: the
    driver shows no hips, so the neck is the root and lands on the reference's."""
    driver = body(0.5)
    driver[[11, 12], 2] = 0.1
    options = RetargetOptions(anchor="hips", min_root_fraction=0.0)
    out = retarget(sequence([driver]), Pose(body()), 512, 768, options)
    neck = out.keypoints[0, [5, 6], :2].mean(0)
    assert neck == pytest.approx(body()[[5, 6], :2].mean(0), abs=1e-3)


def test_similarity_recovers_a_rotation_and_scale():
    rng = np.random.default_rng(3)
    src = rng.normal(size=(7, 2)) * 20
    matrix = 1.7 * rotation(-40.0)
    dst = src @ matrix.T + np.array([5.0, -9.0])
    np.testing.assert_allclose(_similarity(src, dst), matrix, atol=1e-9)
    # a face a tenth of a pixel across is still a face
    np.testing.assert_allclose(_similarity(src * 0.005, dst * 0.005), matrix, atol=1e-9)
    assert _similarity(np.ones((3, 2)), src[:3]) is None


def test_a_base_frame_with_exactly_three_shared_points_is_a_candidate():
    """With the nose as root, a frame showing the nose and both eyes (three points, the reference's
    shape) beats an upside-down body."""
    ref = _extended(body()[None])[0]
    three = body(0.5)
    three[[i for i in range(17) if i not in (0, 1, 2)], 2] = 0.1
    far = body(0.5)
    far[:, 1] = 500 - far[:, 1]
    assert _base_frame(ref, _extended(np.stack([far, three])), 0, 0.3) == 1


def test_undetected_frames_are_never_the_base():
    """A frame without a person whose stale keypoints are exactly the reference's pose is no base: the
    ratio comes from a detected frame (reference torso 100 px / 50 px)."""
    stale = body()
    bent = body(0.5)
    bent[[7, 8], 0] += np.array([3.0, -3.0])  # the elbows a little out: not the reference's exact pose
    poses = [Pose(bent.copy()), Pose(stale.copy(), detected=False), Pose(bent.copy())]
    out = retarget(PoseSequence(poses, 512, 768, 30.0), Pose(body()), 512, 768, HIPS)
    assert out.meta["scale"] == pytest.approx(2.0)


def test_a_bone_the_base_frame_hides_takes_the_clips_median_length():
    """The base frame hides the left wrist; the other frames show a forearm of 40 and 60 px (median
    50): the reference's 100 px forearm makes the ratio 2, so the 60 px forearm is drawn 120 px."""
    ref = body()
    ref[9, :2] = ref[7, :2] + (0, 100)
    base = body()
    base[9, 2] = 0.1
    frames = []
    for length in (40.0, 60.0):
        kp = body()
        kp[9, :2] = kp[7, :2] + (0, length)
        kp[[8, 10], 1] -= 250.0  # the right arm up: not the reference's pose
        frames.append(kp)
    out = retarget(sequence([base, *frames]), Pose(ref), 512, 768, HIPS).keypoints
    assert out[2, 9, :2] - out[2, 7, :2] == pytest.approx([0.0, 120.0], abs=1e-3)


@pytest.mark.parametrize(("face", "drop"), [(5.0, 18.0), (0.2, 2.0)])
def test_the_face_ratio_stays_within_three_times_the_body_ratio(face, drop):
    """A reference face 5x (or 0.2x) the driver's on a body of the same size: its expression moves 3x (or
    1/3x) the driver's, the clamped face ratio (the lower lip drops 18 or 2 px for 6), and at rest it is
    the reference's own face."""
    ref = body(face=face)
    ref[1:5, :2] = ref[0, :2] + (ref[1:5, :2] - ref[0, :2]) * face
    driver = body()
    opened = driver.copy()
    opened[MOUTH_LOW, 1] += 6.0
    out = retarget(sequence([driver, opened]), Pose(ref), 512, 768, HIPS).keypoints
    np.testing.assert_allclose(out[0, :91, :2], ref[:91, :2], atol=1e-3)
    expected = ref[:91, :2].copy()
    expected[MOUTH_LOW, 1] += drop
    np.testing.assert_allclose(out[1, :91, :2], expected, atol=1e-3)


def test_a_base_frame_without_the_nose_moves_the_reference_head_rigidly():
    """The base frame hides the nose (stale coordinates at the origin): no head point has a base offset,
    so in a frame with the head turned 20 degrees the reference's head (another shape) turns rigidly
    about the output nose, fitted on the eyes, ears and face only."""
    ref = body()
    ref[FACE, 0] = ref[0, 0] + (ref[FACE, 0] - ref[0, 0]) * 1.6
    base = body()
    base[0] = (0.0, 0.0, 0.1)
    now = turn_head(body(), 20.0)
    now[[7, 8, 9, 10], 1] -= 150  # arms up: no base
    out = retarget(sequence([base, now]), Pose(ref), 512, 768, HIPS).keypoints[1]
    assert out[0, :2] == pytest.approx(ref[0, :2], abs=1e-3)
    expected = ref[0, :2] + (ref[HEAD, :2] - ref[0, :2]) @ rotation(20.0).T
    np.testing.assert_allclose(out[HEAD, :2], expected, atol=1e-3)


def test_two_head_points_are_enough_to_turn_the_head():
    """Only the nose and the left eye are seen in a frame whose head turned 25 degrees: that pair gives
    the turn, and the reference's head (another shape) turns by it."""
    ref = body()
    ref[FACE, 1] = ref[0, 1] + (ref[FACE, 1] - ref[0, 1]) * 1.4
    driver = body()
    now = turn_head(driver, 25.0)
    now[[2, 3, 4, *FACE], 2] = 0.1
    out = retarget(sequence([driver, now]), Pose(ref), 512, 768, HIPS).keypoints[1]
    expected = ref[0, :2] + (ref[HEAD, :2] - ref[0, :2]) @ rotation(25.0).T
    np.testing.assert_allclose(out[HEAD, :2], expected, atol=1e-3)


def test_the_feet_follow_the_ground_of_the_first_frame_that_shows_them():
    """The reference's legs are 1.25x the driver's; the base frame shows no feet. The next frame stands,
    with its arms up, then squats (hips 20 px down, knees 10, feet stay) and jumps (everything 20 px up):
    with the feet anchor the output's lowest foot stays on the reference's ground in the squat and rises
    20 px in the jump. The hips alone would lift it about 5 px in the squat: the hips sink 20 px, the legs
    lose about 20 x 1.25 (the ratios are of lengths, and x is not scaled: 641.9 px)."""
    ref = body()
    ref[13:23, 1] = 320 + (ref[13:23, 1] - 320) * 1.25
    base = body()
    base[[15, 16, *range(17, 23)], 2] = 0.1
    standing = body()
    standing[[7, 8, 9, 10], 1] -= 200.0  # arms up: not the base
    squat = standing.copy()
    squat[:13, 1] += 20.0
    squat[[13, 14], 1] += 10.0
    jump = standing.copy()
    jump[:, 1] -= 20.0
    frames = [base, standing, squat, jump]
    out = retarget(sequence(frames), Pose(ref), 512, 768, RetargetOptions(anchor="feet")).keypoints
    ground = ref[15:23, 1].max()
    assert out[1:, 15:23, 1].max(axis=1) == pytest.approx([ground, ground, ground - 20.0], abs=1e-3)
    hips = retarget(sequence(frames), Pose(ref), 512, 768, HIPS).keypoints
    assert ground - 7.0 < hips[2, 15:23, 1].max() < ground - 4.0


def test_an_unseen_joint_below_a_placed_parent_takes_the_body_ratio():
    """The reference's forearms are 2x the driver's on a body of the same size (ratio 1): a wrist the
    driver does not see in a frame hangs off its elbow by the driver's offset times the body ratio, not
    the forearm's 2."""
    ref = body()
    ref[9, :2] = ref[7, :2] + (ref[9, :2] - ref[7, :2]) * 2
    driver = body()
    blind = body()
    blind[9] = (blind[7, 0] + 30.0, blind[7, 1] + 40.0, 0.1)
    out = retarget(sequence([driver, blind]), Pose(ref), 512, 768, HIPS).keypoints[1]
    assert out[9, :2] - out[7, :2] == pytest.approx([30.0, 40.0], abs=1e-3)


@pytest.mark.parametrize(("shown", "turn"), [((0, 1), 0.0), ((0, 1, 2), 30.0)])
def test_the_face_map_needs_three_points_the_reference_shows(shown, turn):
    """The reference (2x the driver) shows its head turned 30 degrees, but only the nose and the given
    eyes. With the nose and both eyes the driver's head maps onto it by 2x turned 30 degrees; with two
    points the map is the body ratio alone (2x). The driver's ears and face, which the reference does
    not show, are drawn with that map around the output nose."""
    ref = body(2.0)
    ref = turn_head(ref, 30.0)
    ref[[i for i in HEAD if i not in shown], 2] = 0.1
    driver = body()
    out = retarget(sequence([driver, driver.copy()]), Pose(ref), 1024, 1536, HIPS).keypoints[1]
    hidden = [i for i in HEAD if i not in shown]
    expected = ref[0, :2] + (driver[hidden, :2] - driver[0, :2]) @ (2.0 * rotation(turn)).T
    np.testing.assert_allclose(out[hidden, :2], expected, atol=1e-3)


def test_a_person_a_pixel_across_still_has_a_shape():
    """The match normalises size away: a driving frame (or a reference) 0.004x the size, under a pixel
    across, matches its own pose better than an upside-down body."""
    ref = _extended(body()[None])[0]
    far = body()
    far[:, 1] = 900 - far[:, 1]
    tiny = body(0.004, (3.0, 3.0))
    assert _base_frame(ref, _extended(np.stack([far, tiny])), 134, 0.3) == 1
    tiny_ref = _extended(tiny[None])[0]
    assert _base_frame(tiny_ref, _extended(np.stack([far, body()])), 134, 0.3) == 1
