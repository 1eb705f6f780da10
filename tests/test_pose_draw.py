"""draw_pose pixel by pixel where it is exact: at 2160 px on the short side the supersampled canvas is the
output (one canvas pixel per output pixel), so a joint's centre, a limb's middle, a hand edge and a face dot
have the published DWPose colours times the confidences, computed here by hand from the tables.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np
import pytest

from animate.pose.draw import draw_pose, draw_pose_mimicmotion
from animate.pose.types import NUM_KEYPOINTS, Pose

S = 2160  # DWPose's canvas short side: scale 1


def rgb(bgr: tuple[float, float, float], factor: float) -> tuple[int, int, int]:
    """DWPose's canvas colours are BGR; the output is the canvas channel-reversed."""
    b, g, r = (int(float(c) * factor) for c in bgr)
    return (r, g, b)


def pose_with(points: dict[int, tuple[float, float, float]]) -> Pose:
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    for index, value in points.items():
        kp[index] = value
    return Pose(kp)


def test_a_joint_dot_has_its_colour_times_score_and_radius_4() -> None:
    # COCO 9 (left wrist) is OpenPose-18 joint 7, colour (0, 255, 85) in BGR
    image = draw_pose(pose_with({9: (1000, 1200, 0.8)}), S, S)
    assert tuple(image[1200, 1000]) == rgb((0, 255, 85), 0.8)
    expected = np.zeros((S, S), np.uint8)
    cv2.circle(expected, (1000, 1200), 4, 255, thickness=-1)
    assert ((image.max(axis=2) > 0) == (expected > 0)).all()  # the whole dot, nothing else


@pytest.mark.parametrize(
    ("coco", "op18", "bgr"),
    [
        (0, 0, (255, 0, 0)),
        (6, 2, (255, 170, 0)),
        (5, 5, (85, 255, 0)),
        (12, 8, (0, 255, 170)),
        (15, 13, (85, 0, 255)),
        (2, 14, (170, 0, 255)),
        (3, 17, (255, 0, 85)),
    ],
)
def test_joint_colours_follow_openpose18_order(coco: int, op18: int, bgr) -> None:
    image = draw_pose(pose_with({coco: (500, 600, 1.0)}), S, S)
    assert tuple(image[600, 500]) == rgb(bgr, 1.0), op18


def test_the_visibility_threshold_is_inclusive() -> None:
    assert tuple(draw_pose(pose_with({0: (500, 500, 0.3)}), S, S)[500, 500]) == rgb((255, 0, 0), 0.3)
    assert draw_pose(pose_with({0: (500, 500, 0.2999)}), S, S).max() == 0


def test_a_limb_is_a_dimmed_ellipse_coloured_by_both_scores() -> None:
    # limb 0 is OpenPose (2, 3): neck -> right shoulder; the neck is the mean of both shoulders
    points = {6: (1000, 1000, 0.9), 5: (1400, 1000, 0.9)}  # right and left shoulder
    image = draw_pose(pose_with(points), S, S)
    # limb (2, 3): neck (1200, 1000) to right shoulder (1000, 1000), colour 0 times 0.9 * 0.9, then 0.6
    colour = tuple(round(c * 0.6) for c in rgb((255, 0, 0), 0.9 * 0.9))
    assert np.abs(image[1000, 1100].astype(int) - colour).max() <= 1
    # limb (2, 6): neck to left shoulder, colour 1
    colour = tuple(round(c * 0.6) for c in rgb((255, 85, 0), 0.9 * 0.9))
    assert np.abs(image[1000, 1300].astype(int) - colour).max() <= 1
    # 4 px half-width: rows 1000 +- 4 inked at the limb's middle, not +- 6
    assert image[1004, 1100].any() and not image[1005, 1100].any() and not image[995, 1100].any()
    # the joints stay bright on top of the dimmed limbs
    assert tuple(image[1000, 1000]) == rgb((255, 170, 0), np.float32(0.9))  # scores are float32


def test_a_limb_needs_both_ends_seen() -> None:
    image = draw_pose(pose_with({6: (1000, 1000, 0.9), 8: (1000, 1400, 0.29)}), S, S)
    assert not image[1200, 1000].any()  # no limb between them
    image = draw_pose(pose_with({6: (1000, 1000, 0.29), 8: (1000, 1400, 0.9)}), S, S)
    assert not image[1200, 1000].any()
    image = draw_pose(pose_with({6: (1000, 1000, 0.9), 8: (1000, 1400, 0.9)}), S, S)
    assert image[1200, 1000].any()


def test_hand_edges_have_one_hue_each_and_hand_dots_are_red() -> None:
    hand = 91  # left hand: wrist, then 4 points per finger
    points = {hand + 0: (1000, 1000, 1.0), hand + 1: (1000, 1100, 0.5)}  # edge 0: wrist -> thumb 1
    points[hand + 5] = (1200, 1000, 1.0)  # edge 4: wrist -> index 1
    image = draw_pose(pose_with(points), S, S, body=False, face=False)
    edge0 = colorsys.hsv_to_rgb(0 / 20, 1.0, 1.0)
    assert tuple(image[1050, 1000]) == rgb(edge0, 0.5 * 255)
    edge4 = colorsys.hsv_to_rgb(4 / 20, 1.0, 1.0)
    assert tuple(image[1000, 1100]) == rgb(edge4, 1.0 * 255)
    # dots: (0, 0, s * 255) on the BGR canvas, so red in the output
    assert tuple(image[1100, 1000]) == (127, 0, 0)
    assert tuple(image[1000, 1200]) == (255, 0, 0)
    # a 2 px line: one pixel off the line is inked, three are not
    assert image[1050, 1001].any() or image[1050, 999].any()
    assert not image[1050, 1003].any()


def test_the_right_hand_is_drawn_too() -> None:
    image = draw_pose(pose_with({112: (700, 700, 1.0)}), S, S, body=False, face=False)
    assert tuple(image[700, 700]) == (255, 0, 0)


def test_face_points_are_grey_dots_of_radius_3() -> None:
    image = draw_pose(pose_with({23: (800, 900, 0.6), 90: (900, 900, 1.0)}), S, S)
    assert tuple(image[900, 800]) == (153, 153, 153)  # int(0.6 * 255)
    assert tuple(image[900, 900]) == (255, 255, 255)
    expected = np.zeros((S, S), np.uint8)
    cv2.circle(expected, (800, 900), 3, 255, thickness=-1)
    assert ((image[880:920, 780:820].max(axis=2) > 0) == (expected[880:920, 780:820] > 0)).all()


def test_parts_can_be_left_out() -> None:
    pose = pose_with({0: (500, 500, 1.0), 91: (800, 800, 1.0), 23: (1100, 1100, 1.0)})
    full = draw_pose(pose, S, S)
    assert full[500, 500].any() and full[800, 800].any() and full[1100, 1100].any()
    assert not draw_pose(pose, S, S, body=False)[500, 500].any()
    assert not draw_pose(pose, S, S, hands=False)[800, 800].any()
    assert not draw_pose(pose, S, S, face=False)[1100, 1100].any()
    undetected = Pose(pose.keypoints.copy(), detected=False)
    assert draw_pose(undetected, S, S).max() == 0


def test_dots_at_the_border_are_clipped_not_lost() -> None:
    image = draw_pose(pose_with({0: (0, 0, 1.0), 9: (S - 1, S - 1, 1.0)}), S, S)
    assert tuple(image[0, 0]) == rgb((255, 0, 0), 1.0)
    assert tuple(image[S - 1, S - 1]) == rgb((0, 255, 85), 1.0)
    assert image[0, 4].any() and not image[0, 6].any()  # radius 4 around (0, 0)
    # entirely off the image: nothing, no error
    assert draw_pose(pose_with({0: (-50, -50, 1.0)}), 640, 480).max() == 0
    assert draw_pose(pose_with({0: (700, 100, 1.0)}), 640, 480).max() == 0


def test_a_smaller_output_is_the_exact_area_average_of_the_canvas() -> None:
    """At 1080 px the canvas is drawn 2x and averaged: each output pixel is the mean of its 2x2 block."""
    pose = pose_with({0: (300.25, 400.75, 1.0), 9: (500, 450, 0.7), 91: (700, 700, 1.0), 92: (700, 800, 1.0)})
    small = draw_pose(pose, 1080, 1080).astype(float)
    twice = pose_with({i: (x * 2, y * 2, s) for i, (x, y, s) in enumerate(pose.keypoints) if s > 0})
    big = draw_pose(twice, S, S).astype(float)
    averaged = big.reshape(1080, 2, 1080, 2, 3).mean(axis=(1, 3))
    assert np.abs(small - averaged).max() <= 1.0
    assert small[400, 300].sum() > 0 and small.max() > 100


# --- draw_pose_mimicmotion (MimicMotion's upstream drawing) at 2160 px: canvas = output ------------------


def test_mimicmotion_limb_follows_its_bone_direction_and_length() -> None:
    # COCO 6 (right shoulder) -> 8 (right elbow) is OpenPose limb (3, 4), colour index 2
    pose = pose_with({6: (1000, 1000, 0.9), 8: (1200, 1200, 0.9)})
    image = draw_pose_mimicmotion(pose, S, S)
    assert image.dtype == np.uint8 and image.shape == (S, S, 3)
    # half-axes (int(282.8 / 2), 4) along 45 degrees, centred on (1100, 1100)
    assert image[1180, 1180].any() and image[1020, 1020].any()  # 113 px from the centre on the axis
    assert not image[1180, 1020].any() and not image[1100, 1180].any()  # off the axis
    colour = rgb((255, 170, 0), float(np.float32(0.9) * np.float32(0.9)))
    expected = tuple(int(c * 0.6) for c in colour)  # the canvas is dimmed by 0.6, truncated
    assert tuple(image[1150, 1150]) == expected


def test_mimicmotion_limbs_need_both_ends_and_one_skipped_limb_does_not_stop_the_rest() -> None:
    # right shoulder unseen: limbs (2, 3) and (3, 4) are skipped; left shoulder -> left elbow is drawn
    pose = pose_with({6: (1000, 1000, 0.1), 5: (1400, 1000, 0.9), 7: (1400, 1300, 0.9), 8: (1000, 1300, 0.9)})
    image = draw_pose_mimicmotion(pose, S, S)
    assert image[1150, 1400].any()  # left upper arm
    assert not image[1150, 1000].any()  # right upper arm: the shoulder is unseen


def test_mimicmotion_joint_dots_have_radius_4() -> None:
    image = draw_pose_mimicmotion(pose_with({0: (500, 500, 1.0)}), S, S)
    assert tuple(image[500, 500]) == rgb((255, 0, 0), 1.0)
    assert image[500, 504].any() and not image[500, 505].any()


def test_mimicmotion_hand_edges_colour_and_edge_rule() -> None:
    hand = 91
    points = {hand + 0: (1000, 1000, 0.9), hand + 1: (1000, 1200, 0.8)}
    image = draw_pose_mimicmotion(pose_with(points), S, S)
    level = int(float(np.float32(0.9) * np.float32(0.8)) * 255)
    hue = colorsys.hsv_to_rgb(0.0, 1.0, 1.0)
    assert tuple(image[1100, 1000]) == tuple(round(float(c) * level) for c in reversed(hue))
    # an edge is drawn only when both ends are at canvas coordinates >= 1
    for a, b, drawn in [
        ((0, 500), (100, 500), False),
        ((100, 500), (0, 500), False),
        ((1, 500), (100, 500), True),
    ]:
        image = draw_pose_mimicmotion(pose_with({hand + 0: (*a, 1.0), hand + 1: (*b, 1.0)}), S, S)
        assert bool(image[500, 50].any()) is drawn, (a, b)


def test_mimicmotion_smaller_outputs_are_the_2160_canvas_resized_bilinearly() -> None:
    pose = pose_with({6: (500, 500, 0.9), 8: (600, 600, 0.9), 0: (300, 200, 1.0), 91: (700, 300, 1.0)})
    for width, height in ((1080, 1080), (1080, 1920)):
        big = draw_pose_mimicmotion(
            pose_with(
                {
                    i: (x * 2160 / min(width, height), y * 2160 / min(width, height), s)
                    for i, (x, y, s) in enumerate(pose.keypoints)
                    if s > 0
                }
            ),
            width * 2160 // min(width, height),
            height * 2160 // min(width, height),
        )
        small = draw_pose_mimicmotion(pose, width, height)
        assert small.shape == (height, width, 3)
        assert (small == cv2.resize(big, (width, height))).all()


def test_a_diagonal_limb_follows_its_bone() -> None:
    pose = pose_with({6: (1000, 1000, 0.9), 8: (1200, 1200, 0.9)})
    image = draw_pose(pose, S, S)
    assert image[1180, 1180].any() and image[1020, 1020].any()  # on the axis, 113 px from the centre
    assert not image[1180, 1020].any() and not image[1100, 1180].any()  # off the axis


def test_a_limb_with_an_unseen_end_inside_the_drawn_region_is_not_drawn() -> None:
    pose = pose_with({6: (1000, 1000, 0.9), 8: (1000, 1100, 0.29), 10: (1000, 1200, 0.9)})
    image = draw_pose(pose, S, S)
    assert not image[1050, 1000].any() and not image[1150, 1000].any()
    image = draw_pose_mimicmotion(pose, S, S)
    assert not image[1050, 1000].any() and not image[1150, 1000].any()


def test_mimicmotion_hand_and_face_dots_need_canvas_coordinates_of_at_least_1() -> None:
    for index, colour, radius in ((91, (255, 0, 0), 4), (23, (255, 255, 255), 3)):
        image = draw_pose_mimicmotion(pose_with({index: (500, 600, 1.0)}), S, S)
        assert tuple(image[600, 500]) == colour
        assert image[600, 500 + radius].any() and not image[600, 501 + radius].any()
        for x, y, drawn in ((0, 600, False), (500, 0, False), (1, 600, True), (500, 1, True)):
            image = draw_pose_mimicmotion(pose_with({index: (x, y, 1.0)}), S, S)
            assert bool(image[y, x].any()) is drawn, (index, x, y)
    image = draw_pose_mimicmotion(pose_with({91: (500, 600, 0.5)}), S, S)
    assert tuple(image[600, 500]) == (127, 0, 0)


def test_hand_lines_are_2_px_and_hand_dots_radius_4() -> None:
    hand = 91
    points = {hand + 0: (1000, 900, 1.0), hand + 1: (1000, 1100, 1.0)}  # x != y: the axes cannot be mixed up
    image = draw_pose(pose_with(points), S, S, body=False, face=False)
    expected = np.zeros((S, S), np.uint8)
    cv2.line(expected, (1000, 900), (1000, 1100), 255, thickness=2)  # DWPose's stroke
    for x, y in ((1000, 900), (1000, 1100)):
        cv2.circle(expected, (x, y), 4, 255, thickness=-1)
    assert ((image.max(axis=2) > 0) == (expected > 0)).all()


def test_a_half_confident_face_dot_is_grey_127() -> None:
    assert tuple(draw_pose(pose_with({40: (700, 700, 0.5)}), S, S)[700, 700]) == (127, 127, 127)


def test_a_point_just_off_the_image_draws_nothing_and_does_not_fail() -> None:
    # at 640 x 480 the margin is ceil(6 * 480 / 2160) + 2 = 4 px: these regions are empty
    assert draw_pose(pose_with({0: (644, 100, 1.0)}), 640, 480).max() == 0
    assert draw_pose(pose_with({0: (100, 484, 1.0)}), 640, 480).max() == 0


def test_strokes_scale_with_the_output_size() -> None:
    # at 1500 px one canvas pixel is one output pixel (k = 1) and DWPose's radius 4 is 4 * 1500 / 2160 = 2.8
    image = draw_pose(pose_with({0: (700, 700, 1.0)}), 1500, 1500)
    assert image[700, 703].any() and not image[700, 704].any()


def test_a_diagonal_limb_away_from_the_diagonal_and_on_a_supersampled_canvas() -> None:
    # x and y differ (so no coordinate can stand in for the other): (1000, 700) -> (1200, 900)
    pose = pose_with({6: (1000, 700, 0.9), 8: (1200, 900, 0.9)})
    image = draw_pose(pose, S, S)
    assert image[880, 1180].any() and image[720, 1020].any()
    assert not image[720, 1180].any() and not image[880, 1020].any()
    # at 1080 px the canvas is drawn 2x (k = 2): the limb keeps its length in output pixels
    half = draw_pose(pose_with({6: (500, 350, 0.9), 8: (600, 450, 0.9)}), 1080, 1080)
    assert half[440, 590].any() and half[360, 510].any() and not half[360, 590].any()


def test_thin_hand_lines_at_1500_px_are_one_pixel() -> None:
    # 1500 px: k = 1, DWPose's 2 px line is round(2 * 1500 / 2160) = 1 px
    hand = 91
    image = draw_pose(pose_with({hand + 0: (700, 600, 1.0), hand + 1: (700, 900, 1.0)}), 1500, 1500)
    assert image[750, 700].any() and not image[750, 699].any() and not image[750, 701].any()
