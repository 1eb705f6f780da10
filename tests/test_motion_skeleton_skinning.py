"""2D skeleton field: bone maps, inheritance and skinning weights against hand-computed geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from animate.motion.skeleton_field import BONES, SkeletonField, _inside_polygon, skeleton_dense_flow
from animate.pose.layout import (
    L_ANKLE,
    L_BIG_TOE,
    L_ELBOW,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    LEFT_HAND_ROOT,
    NOSE,
    R_ANKLE,
    R_BIG_TOE,
    R_ELBOW,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
    RIGHT_HAND_ROOT,
)

BONE = {bone.name: i for i, bone in enumerate(BONES)}
#: Arms straight out to the sides, legs straight down: every limb is axis-aligned.
POINTS = {
    NOSE: (100, 40), L_SHOULDER: (130, 80), R_SHOULDER: (70, 80), L_ELBOW: (180, 80), R_ELBOW: (20, 80),
    L_WRIST: (230, 80), R_WRIST: (-30, 80), L_HIP: (120, 180), R_HIP: (80, 180), L_KNEE: (120, 260),
    R_KNEE: (80, 260), L_ANKLE: (120, 340), R_ANKLE: (80, 340), L_BIG_TOE: (130, 350), R_BIG_TOE: (70, 350),
    LEFT_HAND_ROOT + 9: (260, 80), RIGHT_HAND_ROOT + 9: (-60, 80),
}  # fmt: skip


def keypoints(moves: dict[int, tuple[float, float]] | None = None, unseen=()) -> np.ndarray:
    kp = np.zeros((133, 3), np.float32)
    for index, xy in {**POINTS, **(moves or {})}.items():
        kp[index] = (*xy, 1.0)
    for index in unseen:
        kp[index, 2] = 0.0
    return kp


def apply(matrix: np.ndarray, x: float, y: float) -> list[float]:
    return (matrix @ np.array([x, y, 1.0])).tolist()


@pytest.fixture
def field() -> SkeletonField:
    pixels = np.array([(205, 80), (205, 120), (110, 60), (100, 130), (400, 400)], np.float64)
    return SkeletonField(keypoints(), pixels)


def test_sigma_follows_the_body_height(field):
    assert field.sigma == pytest.approx(0.035 * (340 - 40))  # nose to ankles: 300 px
    short = SkeletonField(keypoints(), np.zeros((1, 2)), sigma=None)
    assert short.sigma == field.sigma
    assert SkeletonField(keypoints(), np.zeros((1, 2)), sigma=3.0).sigma == 3.0


def test_a_limb_stretches_along_its_bone_but_not_across(field):
    # The forearm turns from pointing right to pointing down and grows from 50 to 75 px.
    mats = field.bone_matrices(keypoints({L_WRIST: (180, 155)}))
    # (205, 84): 25 px along (half the bone), 4 px across -> half of the new bone, still 4 px across.
    assert apply(mats[BONE["l_forearm"]], 205, 84) == pytest.approx([180 - 4, 80 + 37.5])


@pytest.mark.parametrize(("nose_y", "scale"), [(-20, 1.4), (60, 0.7), (30, 1.25)])
def test_the_head_turns_and_scales_as_a_whole_within_limits(field, nose_y, scale):
    # Neck (100, 80) to nose: 40 px in the reference; the head's scale is the ratio, clamped to 0.7..1.4.
    mats = field.bone_matrices(keypoints({NOSE: (100, nose_y)}))
    # (110, 60): 20 px along the neck->nose axis (up), 10 px to the right of it.
    assert apply(mats[BONE["head"]], 110, 60) == pytest.approx([100 + 10 * scale, 80 - 20 * scale])


def test_the_torso_follows_the_affine_map_of_shoulders_and_hips(field):
    moved = {
        i: (1.2 * POINTS[i][0] + 10, 1.2 * POINTS[i][1] - 5) for i in (L_SHOULDER, R_SHOULDER, L_HIP, R_HIP)
    }
    mats = field.bone_matrices(keypoints(moved))
    np.testing.assert_allclose(mats[BONE["torso"]], [[1.2, 0, 10], [0, 1.2, -5]], atol=1e-6)


def test_unseen_bones_move_with_their_parent(field):
    mats = field.bone_matrices(keypoints({L_ELBOW: (180, 130)}, unseen=[L_WRIST]))
    np.testing.assert_array_equal(mats[BONE["l_forearm"]], mats[BONE["l_upper_arm"]])
    np.testing.assert_array_equal(mats[BONE["l_hand"]], mats[BONE["l_upper_arm"]])
    assert not np.allclose(mats[BONE["l_upper_arm"]], mats[BONE["torso"]])
    mats = field.bone_matrices(keypoints(unseen=[L_ELBOW, L_WRIST]))
    for name in ("l_upper_arm", "l_forearm", "l_hand"):
        np.testing.assert_array_equal(mats[BONE[name]], mats[BONE["torso"]])


def test_without_a_torso_everything_shifts_by_the_mean_motion(field):
    shifted = {i: (x + 7, y + 3) for i, (x, y) in POINTS.items()}
    mats = field.bone_matrices(keypoints(shifted, unseen=[L_HIP]))
    np.testing.assert_allclose(mats[BONE["torso"]], [[1, 0, 7], [0, 1, 3]], atol=1e-6)
    nothing_shared = keypoints(unseen=range(17))
    np.testing.assert_allclose(field.bone_matrices(nothing_shared)[BONE["torso"]], [[1, 0, 0], [0, 1, 0]])


def test_skinning_weights_by_hand(field):
    sigma = 0.035 * 300
    # (205, 80) lies on the forearm, 25 px from the upper arm and from the hand. The upper arm reaches
    # 0.35 x 50 + sigma = 28 px, so it gets exp(-25^2 / 2 sigma^2) relative to the forearm's 1; the hand
    # reaches only 0.35 x 30 + sigma = 21 px; the torso and head are too far to count.
    side = math.exp(-(25**2) / (2 * sigma**2))
    weights = field.weights[0]
    assert weights[BONE["l_forearm"]] == pytest.approx(1 / (1 + side), abs=1e-6)
    assert weights[BONE["l_upper_arm"]] == pytest.approx(side / (1 + side), abs=1e-6)
    assert weights[BONE["l_hand"]] == 0
    assert weights.sum() == pytest.approx(1.0)
    assert (field.dominant[0], field.layer[0]) == (BONE["l_forearm"], 4)
    # (205, 120) is 40 px below the forearm, beyond its reach (0.35 x 50 + sigma): it stays with the torso.
    assert field.weights[1, BONE["torso"]] == pytest.approx(1.0)
    # (100, 130) is inside the torso quad: distance 0 to the torso.
    assert field.weights[3, BONE["torso"]] == pytest.approx(1.0)
    assert field.layer[3] == 0
    # (110, 60) beside the neck: the head takes it (heads have no reach limit).
    assert field.dominant[2] == BONE["head"]


def test_positions_apply_the_blended_maps(field):
    target = keypoints({L_WRIST: (180, 155)})
    mats = field.bone_matrices(target)
    blended = np.einsum("nb,bij->nij", field.weights.astype(np.float64), mats)
    expected = [m @ [x, y, 1.0] for m, (x, y) in zip(blended, field.pixels, strict=True)]
    np.testing.assert_allclose(field.positions(target), expected, atol=1e-3)
    np.testing.assert_allclose(field.positions(keypoints()), field.pixels, atol=1e-3)


def test_binding_can_be_limited_to_named_bones():
    pixels = np.array([(205, 80), (100, 300)], np.float64)
    torso_only = SkeletonField(keypoints(), pixels, bones=("torso",))
    assert (torso_only.weights[:, BONE["torso"]] == 1).all()
    assert torso_only.active.tolist() == [BONE["torso"]]
    with pytest.raises(ValueError, match="no usable bones"):
        SkeletonField(keypoints(unseen=range(133)), pixels)


def test_torso_quad_order_and_absence(field):
    np.testing.assert_array_equal(field.torso_quad(), [(130, 80), (70, 80), (80, 180), (120, 180)])
    assert SkeletonField(keypoints(unseen=[R_HIP]), np.zeros((1, 2))).torso_quad() is None


def test_inside_polygon_even_odd():
    square = np.array([(0, 0), (10, 0), (10, 10), (0, 10)], np.float64)
    points = np.array([(5, 5), (-1, 5), (11, 5), (5, -1), (5, 11), (9.9, 0.1)], np.float64)
    assert _inside_polygon(points, square).tolist() == [True, False, False, False, False, True]


def test_torso_distance_is_zero_inside_the_quad_and_to_the_nearest_edge_outside():
    sigma = 0.035 * 300
    # (100, 170): inside the torso quad, 10 px above the hip line and 22.4 px from either thigh.
    # (100, 200): below the hips, 20 px from the hip edge and from both thighs: three equal weights.
    field = SkeletonField(keypoints(), np.array([(100, 170), (100, 200)], np.float64))
    thigh = math.exp(-(20**2 + 10**2) / (2 * sigma**2))
    weights = field.weights[0]
    assert weights[BONE["torso"]] == pytest.approx(1 / (1 + 2 * thigh), abs=1e-6)
    assert weights[BONE["l_thigh"]] == pytest.approx(thigh / (1 + 2 * thigh), abs=1e-6)
    for name in ("torso", "l_thigh", "r_thigh"):
        assert field.weights[1, BONE[name]] == pytest.approx(1 / 3, abs=1e-6)


def test_hair_above_the_head_stays_with_the_head():
    # 30 px above the nose: beyond any limb's reach rule, but the head has none.
    field = SkeletonField(keypoints(), np.array([(100, 10)], np.float64))
    assert field.weights[0, BONE["head"]] == pytest.approx(1.0)


def test_missing_reference_bones_do_not_stop_the_binding():
    # No nose in the reference: no head bone, but every bone after it is still bound.
    field = SkeletonField(keypoints(unseen=[NOSE]), np.array([(205, 80)], np.float64))
    assert BONE["head"] not in field.ref_segments and BONE["l_forearm"] in field.ref_segments
    assert field.dominant[0] == BONE["l_forearm"]
    # No right shoulder: no neck, so no head bone either (the neck needs both shoulders).
    assert BONE["head"] not in SkeletonField(keypoints(unseen=[R_SHOULDER]), np.zeros((1, 2))).ref_segments
    # A bone the reference lacks (no left wrist) moves with its parent even when the frame shows it.
    no_wrist = SkeletonField(keypoints(unseen=[L_WRIST]), np.zeros((1, 2)))
    mats = no_wrist.bone_matrices(keypoints({L_WRIST: (180, 155)}))
    np.testing.assert_array_equal(mats[BONE["l_forearm"]], mats[BONE["l_upper_arm"]])


def test_a_bone_unseen_in_the_frame_does_not_stop_the_others(field):
    mats = field.bone_matrices(keypoints({L_WRIST: (180, 155)}, unseen=[NOSE]))
    assert apply(mats[BONE["l_forearm"]], 205, 84) == pytest.approx([176, 117.5])


def test_keypoints_at_the_threshold_count_as_seen():
    kp = keypoints()
    kp[[L_SHOULDER, R_SHOULDER, L_WRIST], 2] = 0.5
    field = SkeletonField(kp, np.zeros((1, 2)), threshold=0.5)
    assert BONE["head"] in field.ref_segments and BONE["l_forearm"] in field.ref_segments


def test_sigma_from_two_points_and_its_floor():
    kp = np.zeros((133, 3), np.float32)
    kp[L_SHOULDER], kp[L_ELBOW] = (130, 80, 1), (130, 280, 1)  # two body points, 200 px apart
    assert SkeletonField(kp, np.zeros((1, 2))).sigma == pytest.approx(0.035 * 200)
    kp[L_ELBOW] = (130, 140, 1)  # 60 px: 0.035 x 60 is under the 4 px floor
    assert SkeletonField(kp, np.zeros((1, 2))).sigma == 4.0


def test_the_mean_shift_uses_points_seen_in_both():
    field = SkeletonField(keypoints(), np.zeros((1, 2)))
    target = keypoints({i: (x + 7, y + 3) for i, (x, y) in POINTS.items()} | {L_HIP: (0, 0)}, unseen=[L_HIP])
    np.testing.assert_allclose(field.bone_matrices(target)[BONE["torso"]], [[1, 0, 7], [0, 1, 3]], atol=1e-6)


def test_positions_use_the_given_matrices(field):
    moved = keypoints({L_WRIST: (180, 155)})
    given = field.pixel_matrices(moved)
    np.testing.assert_allclose(field.positions(keypoints(), given), field.positions(moved), atol=1e-4)


def test_inside_a_slanted_quad():
    torso = np.array([(130, 80), (70, 80), (80, 180), (120, 180)], np.float64)
    # At y = 130 the slanted sides are at x = 75 and x = 125.
    points = np.array([(73, 130), (77, 130), (123, 130), (127, 130)], np.float64)
    assert _inside_polygon(points, torso).tolist() == [False, True, True, False]


def test_dense_flow_mask_threshold_and_a_single_pixel():
    reference = keypoints()
    moved = keypoints({i: (x + 4, y) for i, (x, y) in POINTS.items()})
    mask = np.zeros((400, 300), np.uint8)
    mask[130, 100], mask[131, 100], mask[132, 100] = 127, 128, 0
    flow = skeleton_dense_flow(reference, np.stack([moved]), mask)
    assert flow.dtype == np.float32
    assert flow[0, 130, 100].tolist() == [0, 0] and flow[0, 131, 100].tolist() == pytest.approx(
        [4, 0], abs=1e-4
    )


def test_a_reference_without_bones_moves_rigidly_with_the_keypoints_it_shows():
    """A face alone (nose seen, no shoulders): no bone can be bound, yet the picture must follow the face,
    by the nose's displacement, not fail or stand still."""
    shown = keypoints(unseen=[i for i in range(133) if i != NOSE])
    pixels = np.array([(100, 40), (60, 10), (150, 120)], np.float64)
    field = SkeletonField(shown, pixels)
    target = keypoints({NOSE: (107, 36)}, unseen=[i for i in range(133) if i != NOSE])
    np.testing.assert_allclose(field.positions(target), pixels + np.array([7.0, -4.0]), atol=1e-6)
    np.testing.assert_allclose(field.positions(shown), pixels, atol=1e-6)
