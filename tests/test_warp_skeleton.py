"""The warp engine's 2D path on a real half-body drawn character (the shared anime girl cut at the thighs).

The arms swing about the shoulders while the rest stays: the person drawn must stay one connected body
with each arm reaching its driving wrist, and the head with its hair must stay where it was (the
reference's hands are raised beside the face, where hair is easily carried off with them).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import ANIME_PNG

from animate.engines.warp import WarpEngine
from animate.media import load_image
from animate.motion.bundle import GuidanceBundle
from animate.pose import MediaPipeEstimator
from animate.pose.layout import L_EAR, L_ELBOW, L_SHOULDER, L_WRIST, LEFT_HAND, R_EAR, R_SHOULDER, RIGHT_HAND

WIDTH = 288
ANGLES = (0.6, 1.2, -0.5)  # radians, each arm turned away from (or toward) the body about its shoulder


def rotate(points: np.ndarray, centre: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    d = points - centre
    return centre + np.stack([c * d[:, 0] - s * d[:, 1], s * d[:, 0] + c * d[:, 1]], 1)


def swing_arms(keypoints: np.ndarray, angle: float) -> np.ndarray:
    out = keypoints.copy()
    for shoulder, first, hand, sign in (
        (L_SHOULDER, L_ELBOW, LEFT_HAND, 1),
        (R_SHOULDER, L_ELBOW + 1, RIGHT_HAND, -1),
    ):
        centre = out[shoulder, :2].copy()
        for index in (first, first + 2):  # elbow, wrist
            out[index, :2] = rotate(out[index : index + 1, :2], centre, sign * angle)[0]
        out[hand, :2] = rotate(out[hand, :2], centre, sign * angle)
    return out


@pytest.fixture(scope="module")
def half_body(data_dir):
    image = load_image(ANIME_PNG).rgb
    with MediaPipeEstimator(static=True, whole_body=True, segmentation=True) as estimator:
        pose = estimator.detect(image)[0]
    kp = pose.keypoints
    cut = int(0.5 * (kp[[11, 12], 1].mean() + kp[[13, 14], 1].mean()))  # thighs
    size = (WIDTH, round(WIDTH * cut / image.shape[1] / 2) * 2)
    reference = cv2.resize(image[:cut], size, interpolation=cv2.INTER_AREA)
    mask = cv2.resize(
        np.where(pose.mask[:cut] > 127, 255, 0).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST
    )
    keypoints = kp.copy()
    keypoints[:, :2] *= WIDTH / image.shape[1]
    keypoints[keypoints[:, 1] >= size[1], 2] = 0.0  # below the cut: not in the picture
    bundle = GuidanceBundle(
        reference=reference,
        reference_mask=mask,
        reference_keypoints=keypoints,
        keypoints=np.stack([swing_arms(keypoints, a) for a in ANGLES]),
        fps=24.0,
        size=size,
    )
    engine = WarpEngine()
    frames, silhouettes = [], []
    for frame in engine.render(bundle):
        frames.append(frame)
        silhouettes.append(engine.last_silhouette.copy())
    return bundle, frames, silhouettes


def test_half_body_stays_one_body_with_the_arms_attached(half_body):
    bundle, _, silhouettes = half_body
    for keypoints, silhouette in zip(bundle.keypoints, silhouettes, strict=True):
        stats = cv2.connectedComponentsWithStats(silhouette.astype(np.uint8))[2]
        assert stats[1:, cv2.CC_STAT_AREA].max() >= 0.995 * silhouette.sum(), sorted(stats[1:, 4])[-3:]
        for shoulder, elbow, wrist in (
            (L_SHOULDER, L_ELBOW, L_WRIST),
            (R_SHOULDER, L_ELBOW + 1, L_WRIST + 1),
        ):
            # the arm drawn along its driving bones, shoulder to elbow to wrist
            for a, b in ((shoulder, elbow), (elbow, wrist)):
                line = np.linspace(keypoints[a, :2], keypoints[b, :2], 20)
                x, y = np.rint(line).astype(int).T
                assert silhouette[y, x].mean() >= 0.9, (a, b, silhouette[y, x].mean())


def test_half_body_head_and_hair_stay_when_only_the_arms_move(half_body):
    """The hair between the face and the reference's raised hands must not leave with the hands."""
    bundle, frames, _ = half_body
    kp = bundle.reference_keypoints
    ears = kp[[L_EAR, R_EAR], :2]
    centre, width = ears.mean(0), float(np.linalg.norm(ears[0] - ears[1]))
    height, w = bundle.reference_mask.shape
    ys, xs = np.mgrid[0:height, 0:w]
    shoulders_y = kp[[L_SHOULDER, R_SHOULDER], 1].min()
    hands = np.zeros((height, w), np.uint8)
    for hand in (LEFT_HAND, RIGHT_HAND):  # the hands themselves move: leave them out (with 4 px)
        assert (kp[hand, 2] > 0.3).all()
        cv2.fillConvexPoly(hands, cv2.convexHull(np.rint(kp[hand, :2]).astype(np.int32)), 1)
    hands = cv2.dilate(hands, np.ones((9, 9), np.uint8)) > 0
    head = (
        (bundle.reference_mask > 127)
        & (np.abs(xs - centre[0]) < 1.1 * width)
        & (ys < shoulders_y - 0.5 * width)
        & ~hands
    )
    head = cv2.erode(head.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert head.sum() > 2000
    for angle, frame in zip(ANGLES, frames, strict=True):
        if angle < 0:  # the hands swing in front of the face
            continue
        error = np.abs(frame[head].astype(int) - bundle.reference[head].astype(int)).max(1)
        assert np.mean(error > 40) < 0.015, (angle, np.mean(error > 40))


def test_the_facade_moves_a_half_body_reference_with_the_2d_field(tmp_path, data_dir):
    """End to end: the drawn character cut at the thighs (transparent background) driven by the dance. No
    3D body is fitted (it would be guessed below the cut, and its keypoints would bend the arms), so
    the frames' keypoints are the retargeted driving ones, and the result says why."""
    from conftest import DANCE

    from animate.animator import AnimationOptions, Animator

    image = load_image(ANIME_PNG).rgb
    with MediaPipeEstimator(static=True, whole_body=False, segmentation=True) as estimator:
        pose = estimator.detect(image)[0]
    cut = int(0.5 * (pose.keypoints[[11, 12], 1].mean() + pose.keypoints[[13, 14], 1].mean()))
    alpha = np.where(pose.mask[:cut] > 127, 255, 0).astype(np.uint8)
    path = tmp_path / "half.png"
    cv2.imwrite(str(path), np.dstack([cv2.cvtColor(image[:cut], cv2.COLOR_RGB2BGR), alpha]))
    options = AnimationOptions(engine="warp", size=(288, 320), max_frames=3)
    prepared = Animator().prepare(path, DANCE, options)
    assert prepared.bundle.body is None
    assert any("no ankle" in note for note in prepared.notes), prepared.notes
    frames = list(prepared.engine.render(prepared.bundle))
    assert len(frames) == 3 and prepared.engine.motion == "skeleton"
