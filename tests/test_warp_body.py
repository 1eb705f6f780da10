"""The warp engine's body path on synthetic references: bodies rendered here, coloured by part.

The reference image is the body's own semantic render (one Champ colour per part) on grey, so every
output pixel says which part of the reference it was sampled from.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from test_motion_body_field import ARM_ACROSS, FACING_CAMERA, synthetic_motion

from animate.body import CHAMP_PALETTE, PART_NAMES, load_anny
from animate.body.model import matrix_to_rotvec, rotvec_to_matrix
from animate.engines.warp import BodyWarp, WarpEngine, hidden_hands
from animate.motion.bundle import GuidanceBundle

GREY = np.array([128, 128, 128], np.uint8)
TORSO = [PART_NAMES.index(n) for n in ("pelvis", "spine1", "spine2", "spine3")]
LEFT_ARM = [PART_NAMES.index(n) for n in ("left_shoulder", "left_elbow", "left_wrist", "left_hand")]
RIGHT_ARM = [PART_NAMES.index(n) for n in ("right_shoulder", "right_elbow", "right_wrist", "right_hand")]


@pytest.fixture(scope="session")
def anny():
    return load_anny()


def reference_of(motion) -> tuple[np.ndarray, np.ndarray]:
    """The reference image (semantic colours on grey) and its person mask (the body)."""
    render = motion.reference_render
    image = np.where(render.mask[..., None], render.semantic_image, GREY)
    return np.ascontiguousarray(image), render.mask


def palette_part(colours: np.ndarray) -> np.ndarray:
    """The part whose Champ colour is nearest to each (N, 3) colour."""
    distance = np.linalg.norm(colours[:, None].astype(float) - CHAMP_PALETTE[None].astype(float), axis=2)
    return distance.argmin(1)


def interior(mask: np.ndarray, pixels: int = 2) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)) > 0


@pytest.mark.parametrize("scale", [1, 2])
def test_torso_hidden_by_the_arm_is_filled_with_torso(anny, scale):
    """Reference: the left arm across the belly. Frame: arms down at the sides, so the torso the arm hid
    shows; it must be drawn (no hole, no background) and with torso colours, not the arm's."""
    motion = synthetic_motion(anny, ARM_ACROSS, [{}])
    image, person = reference_of(motion)
    warp = BodyWarp(motion, image, person, scale=scale)
    frame, masks = warp.frame(motion.vertices(0, 1)[0])
    body, fill = masks.body, masks.fill
    target = motion.renderer()[0].render(motion.vertices(0, 1)[0], motion.camera)
    mismatch = (body ^ target.mask).sum() / target.mask.sum()
    assert mismatch < 0.06, mismatch  # the rendered body (upsampled at scale 2)
    inside = interior(target.mask)
    grey = (np.abs(frame[inside].astype(int) - GREY).sum(1) < 12).mean()
    assert grey < 0.002, grey
    # The pixels of the torso that the reference's arm covered: torso colours (from the twin side).
    reference_covered = np.isin(motion.reference_render.part, LEFT_ARM) & np.isin(target.part, TORSO)
    revealed = interior(reference_covered) & inside
    assert revealed.sum() > 60
    # Torso colours have green <= 109, the left arm's >= 174 (Champ's viridis ramp).
    colours = frame[revealed].astype(int)
    assert (colours[:, 1] < 140).mean() > 0.98, np.percentile(colours[:, 1], [50, 90, 99])
    assert not np.isin(palette_part(colours), LEFT_ARM).any()
    # Surface both the reference and its twin side hide is filled, and it is small here.
    assert fill[inside].mean() < 0.1


def test_back_view_is_filled_everywhere(anny):
    """The driver turns around: the reference never showed the back. Every body pixel gets a body colour."""
    turn = rotvec_to_matrix(torch.tensor([0.0, np.pi, 0.0])) @ rotvec_to_matrix(torch.tensor(FACING_CAMERA))
    back = matrix_to_rotvec(turn).tolist()  # facing away from the camera
    motion = synthetic_motion(anny, {}, [{}], roots=[back])
    image, person = reference_of(motion)
    frame, masks = BodyWarp(motion, image, person, scale=1).frame(motion.vertices(0, 1)[0])
    body, fill = masks.body, masks.fill
    inside = interior(body)
    assert fill[inside].mean() > 0.8  # the back is unseen, and so is its mirror image
    colours = frame[inside].astype(float)
    assert (np.abs(colours - GREY).sum(1) > 12).all()  # never a hole
    nearest = np.linalg.norm(colours[:, None] - CHAMP_PALETTE[None].astype(float), axis=2).min(1)
    assert np.median(nearest) < 12  # the colours of the body's own parts


def test_hair_beside_the_head_moves_with_it(anny):
    """Off-body person pixels (a red 'hair' blob on the side of the head) follow the head: the ring."""
    motion = synthetic_motion(anny, {}, [{}], transl=[(0.15, 0.0, 2.8)])
    image, person = reference_of(motion)
    head = motion.reference_render.part == PART_NAMES.index("head")
    ys, xs = np.nonzero(head)
    hair = np.zeros(person.shape, np.uint8)
    cv2.circle(hair, (int(xs.max()) + 2, int(np.median(ys))), 6, 1, -1)
    hair = hair.astype(bool) & ~motion.reference_render.mask
    image[hair] = (220, 30, 30)
    person = person | hair
    frame, masks = BodyWarp(motion, image, person, scale=1).frame(motion.vertices(0, 1)[0])
    silhouette, body = masks.silhouette, masks.body
    red = (frame[..., 0] > 150) & (frame[..., 1] < 90)
    shift = round(0.15 / 2.8 * motion.camera.fx)
    moved = np.roll(hair, shift, axis=1)
    assert red.sum() > 0.5 * hair.sum(), (red.sum(), hair.sum())
    assert (red & moved).sum() > 0.6 * red.sum()
    assert not (red & hair & ~moved).any()  # nothing red left behind
    assert silhouette[red].mean() > 0.8 and not body[red].any()


def whole_body_keypoints(motion) -> np.ndarray:
    """(133, 3) the reference body's own projected COCO body points, all seen (knees included)."""
    kp = np.zeros((133, 3), np.float32)
    reference = motion.with_track(motion.reference)
    kp[:17, :2], kp[:17, 2] = reference.keypoints()[0, :17], 1.0
    return kp


def test_engine_uses_the_body_when_the_bundle_has_one(anny):
    motion = synthetic_motion(anny, {}, [{}, ARM_ACROSS], size=(288, 512))
    image, person = reference_of(motion)
    bundle = GuidanceBundle(
        reference=image,
        reference_mask=person.astype(np.uint8) * 255,
        reference_keypoints=whole_body_keypoints(motion),
        keypoints=np.zeros((2, 133, 3), np.float32),
        fps=24.0,
        size=(288, 512),
        body=motion,
    )
    engine = WarpEngine()
    frames = list(engine.render(bundle))
    assert engine.motion == "body"
    assert len(frames) == 2 and frames[0].shape == (512, 288, 3)
    assert engine.last_body_mask is not None and engine.last_body_mask.sum() > 2000
    # Frame 0 is the reference pose: the reference comes back (up to the soft edge).
    same = interior(person, 3)
    assert np.abs(frames[0][same].astype(int) - image[same]).mean() < 3


@pytest.mark.parametrize("scale", [1, 2])
def test_surface_seen_only_on_its_mirror_twin_takes_the_twins_colour(anny, scale):
    """Reference: the left arm across the belly, the torso's other half painted blue, the right arm
    magenta. Frame: arms down. The belly the arm hid is seen only on its mirror twin (the blue half), so
    it must come out blue, not in the colour of the nearest seen surface (the unpainted half around it)."""
    motion = synthetic_motion(anny, ARM_ACROSS, [{}])
    image, person = reference_of(motion)
    target = motion.renderer()[0].render(motion.vertices(0, 1)[0], motion.camera)
    torso = np.isin(target.part, TORSO)
    midline = np.nonzero(torso)[1].mean()  # the arms-down torso is symmetric about this column
    columns = np.broadcast_to(np.arange(image.shape[1]), image.shape[:2])
    hidden = np.isin(motion.reference_render.part, LEFT_ARM) & torso
    hidden_side = -1 if np.nonzero(hidden)[1].mean() < midline else 1
    far_side = (columns - midline) * hidden_side < 0
    image[np.isin(motion.reference_render.part, TORSO) & far_side] = (0, 0, 255)
    image[np.isin(motion.reference_render.part, RIGHT_ARM)] = (255, 0, 255)
    frame, masks = BodyWarp(motion, image, person, scale=scale).frame(motion.vertices(0, 1)[0])
    # more than 3 px from the midline: the twin lies inside the blue half
    revealed = interior(hidden) & interior(target.mask) & ((columns - midline) * hidden_side > 3)
    assert revealed.sum() > 20
    colours = frame[revealed].astype(int)
    blue = (colours[:, 2] > 200) & (colours[:, :2] < 60).all(1)
    assert blue.mean() > 0.9, blue.mean()
    assert masks.fill[revealed].mean() < 0.1  # drawn from the twin's pixels, not from the mesh colours
    # The side of the left arm the reference turns to the belly shows on the right arm (magenta): the
    # twin's part is the mirrored one, so it counts as seen there.
    left_arm = interior(np.isin(target.part, LEFT_ARM))
    colours = frame[left_arm].astype(int)
    magenta = (colours[:, [0, 2]] > 200).all(1) & (colours[:, 1] < 60)
    assert magenta.mean() > 0.3, magenta.mean()
    assert masks.fill[left_arm].mean() < 0.05


@pytest.mark.parametrize("scale", [1, 2])
def test_reference_pose_samples_every_pixel_in_place(anny, scale):
    """Frame in the reference's own pose, reference textured with 5 px checks: every body pixel shows the
    reference's pixel at the same place (a sampling offset of half a pixel or more breaks the checks)."""
    motion = synthetic_motion(anny, {}, [{}])
    image, person = reference_of(motion)
    ys, xs = np.mgrid[: person.shape[0], : person.shape[1]]
    checks = ((xs // 5 + ys // 5) % 2).astype(bool)
    image[person & checks] = (230, 40, 40)
    image[person & ~checks] = (30, 60, 220)
    frame, _ = BodyWarp(motion, image, person, scale=scale).frame(motion.vertices(0, 1)[0])
    inside = interior(person, 3)
    error = np.abs(frame[inside].astype(int) - image[inside]).sum(1)
    assert (error > 30).mean() < 0.005, (error > 30).mean()


def test_hidden_hands_take_the_faces_colour(anny):
    """A reference whose hand keypoints were not found (in pockets): the fitted hands may be in view but
    show clothes, so the frame draws them in the face's colour (here: the head's Champ colour). With one
    hand hidden, the other (its mirror twin) is the better source."""
    keypoints = np.zeros((133, 3), np.float32)
    keypoints[112:133, 2] = 0.9  # the right hand's 21 keypoints are found, the left hand's are not
    left, right, head = (PART_NAMES.index(n) for n in ("left_hand", "right_hand", "head"))
    assert hidden_hands(keypoints) == (left,)
    assert hidden_hands(np.zeros((133, 3), np.float32)) == (left, right)
    motion = synthetic_motion(anny, {}, [{}])
    image, person = reference_of(motion)
    vertices = motion.vertices(0, 1)[0]
    hands = {part: interior(motion.reference_render.part == part, 1) for part in (left, right)}
    assert all(mask.sum() > 10 for mask in hands.values())
    frame, masks = BodyWarp(motion, image, person, scale=1, unseen_parts=(left, right)).frame(vertices)
    for mask in hands.values():
        assert (palette_part(frame[mask]) == head).mean() > 0.9
        assert masks.fill[mask].all()
    frame, masks = BodyWarp(motion, image, person, scale=1, unseen_parts=(left,)).frame(vertices)
    assert (palette_part(frame[hands[left]]) == right).mean() > 0.9
    assert (palette_part(frame[hands[right]]) == right).mean() > 0.9


def test_unseen_surface_blends_its_triangles_vertex_colours(anny):
    """Back view, so the surface is filled from the mesh colours; with random colours per vertex, each
    filled pixel (scale 1: the render is the output grid) shows its triangle's three vertex colours blended
    by the pixel's barycentric weights, not one vertex's colour."""
    turn = rotvec_to_matrix(torch.tensor([0.0, np.pi, 0.0])) @ rotvec_to_matrix(torch.tensor(FACING_CAMERA))
    motion = synthetic_motion(anny, {}, [{}], roots=[matrix_to_rotvec(turn).tolist()])
    image, person = reference_of(motion)
    warp = BodyWarp(motion, image, person, scale=1, edge_sigma=0)
    warp.colours = np.random.default_rng(0).uniform(0, 255, warp.colours.shape).astype(np.float32)
    vertices = motion.vertices(0, 1)[0]
    frame, masks = warp.frame(vertices)
    target = motion.renderer()[0].render(vertices, motion.camera)
    # the fill's low-resolution canvas pads its edge with the nearest fill colour: look 1 px inside
    inside = interior(masks.fill & target.mask, 1)
    assert inside.sum() > 500
    corners = motion.faces.astype(np.int64)[target.face[inside]]  # (N, 3) vertex ids
    expected = np.einsum("nk,nkc->nc", target.bary[inside].astype(np.float64), warp.colours[corners])
    error = np.abs(frame[inside].astype(float) - expected)
    assert np.percentile(error.max(1), 99) <= 1.0, np.percentile(error.max(1), 99)


def test_ring_never_carries_a_non_neighbouring_parts_clothes(anny):
    """Reference: left hand hanging beside the thigh, a red patch of loose clothes on the thigh just below
    the hand, and a big blue hair bun (so the ring reaches far). Frame: the left arm raised. The patch
    belongs to the thigh, which does not move: no red pixel may follow the hand up, although the hand's
    ring samples the reference right next to where the hand hung."""
    down, up = {"left_shoulder": (0.0, 0.5, 0.0)}, {"left_shoulder": (0.0, -0.5, 0.0)}
    motion = synthetic_motion(anny, down, [up])
    image, person = reference_of(motion)
    render = motion.reference_render
    hand_y = np.nonzero(render.part == PART_NAMES.index("left_hand"))[0].max()
    thigh_x = np.nonzero(render.part == PART_NAMES.index("left_hip"))[1].max()
    head_y, head_x = np.nonzero(render.part == PART_NAMES.index("head"))
    paint = np.zeros(person.shape, np.uint8)
    cv2.circle(paint, (int(head_x.mean()), int(head_y.min())), 40, 2, -1)
    cv2.rectangle(paint, (int(thigh_x) - 7, int(hand_y) + 10), (int(thigh_x) + 19, int(hand_y) + 50), 1, -1)
    patch, hair = (paint == 1) & ~render.mask, (paint == 2) & ~render.mask
    image[patch], image[hair] = (220, 30, 30), (30, 30, 220)
    warp = BodyWarp(motion, image, person | patch | hair, scale=1)
    assert warp.reach > 25  # the hand's ring reaches the patch
    frame, _ = warp.frame(motion.vertices(0, 1)[0])
    red = (frame[..., 0] > 150) & (frame[..., 1] < 90) & (frame[..., 2] < 90)
    near_patch = cv2.dilate(patch.astype(np.uint8), np.ones((11, 11), np.uint8)) > 0
    assert (red & near_patch).sum() > 0.4 * patch.sum()  # the patch stays drawn with its thigh
    assert not (red & ~near_patch).any(), (red & ~near_patch).sum()


def test_a_reference_that_shows_no_ankle_takes_the_2d_field(anny):
    """A body fitted to a half-body picture is guessed below the cut: the engine moves such a reference with
    the 2D field (its frames follow the driving keypoints), and says so."""
    from animate.engines.warp import partial_reference

    motion = synthetic_motion(anny, {}, [{}], size=(288, 512))
    image, person = reference_of(motion)
    kp = whole_body_keypoints(motion)
    assert not partial_reference(kp, (288, 512))
    half = kp.copy()
    half[15:17, 2] = 0.0  # ankles not found (knees may be guessed at the cut)
    assert partial_reference(half, (288, 512))
    below = kp.copy()
    below[15:17, 1] = 600.0  # found, but guessed below the picture's edge
    assert partial_reference(below, (288, 512))
    one = kp.copy()
    one[15, 2] = 0.0  # one ankle is enough
    assert not partial_reference(one, (288, 512))
    moved = half.copy()
    moved[:17, 0] += 12.0
    bundle = GuidanceBundle(
        reference=image,
        reference_mask=person.astype(np.uint8) * 255,
        reference_keypoints=half,
        keypoints=moved[None],
        fps=24.0,
        size=(288, 512),
        body=motion,
    )
    engine = WarpEngine()
    assert len(list(engine.render(bundle))) == 1
    assert engine.motion == "skeleton" and engine.last_body_mask is None
    # Every keypoint moved 12 px right: so did the person (the silhouette's centre of mass).
    shift = np.nonzero(engine.last_silhouette)[1].mean() - np.nonzero(person)[1].mean()
    assert abs(shift - 12.0) < 1.5, shift


def test_a_hand_on_the_belly_leaves_no_ghost_when_the_fit_is_off(anny):
    """The reference's left hand lies on the belly, but the fitted body's arm is 0.3 rad off, so the
    fitted torso covers real hand pixels. Frame: arms down. With the reference's 2D keypoints (forearm
    and hand where the picture shows them), no left-arm colour may stay on the torso; without them the
    ghost hand is there (the test's own premise)."""
    true = synthetic_motion(anny, ARM_ACROSS, [{}])
    fitted = synthetic_motion(anny, {"left_shoulder": (0.0, 0.9, 0.0)}, [{}])
    image, person = reference_of(true)
    kp = whole_body_keypoints(true)
    hand = np.isin(
        true.reference_render.part, [PART_NAMES.index("left_wrist"), PART_NAMES.index("left_hand")]
    )
    hy, hx = np.nonzero(hand)
    pick = np.linspace(0, len(hx) - 1, 21).astype(int)  # 21 hand keypoints spread over the real hand
    kp[91:112] = np.stack([hx[pick], hy[pick], np.ones(21)], 1)
    vertices = fitted.vertices(0, 1)[0]
    target = fitted.renderer()[0].render(vertices, fitted.camera)
    torso = interior(np.isin(target.part, TORSO), 1)
    ghost = []
    for keypoints in (None, kp):
        frame, _ = BodyWarp(fitted, image, person, scale=1, keypoints=keypoints).frame(vertices)
        ghost.append(np.isin(palette_part(frame[torso]), LEFT_ARM).sum())
        grey = (np.abs(frame[torso].astype(int) - GREY).sum(1) < 12).mean()
        assert grey < 0.002, grey
    assert ghost[0] > 100, ghost  # the misfit does paint the hand on the belly without keypoints
    assert ghost[1] == 0, ghost


def test_arm_regions_by_hand():
    """Forearm capsules (radius 0.12 x length + 2 px) and hand hulls (grown by 0.15 x forearm), one bit per
    side, only inside the person and only for arms whose elbow and wrist are seen (score >= 0.3)."""
    from animate.engines.warp import arm_regions
    from animate.pose.layout import L_ELBOW, L_WRIST, LEFT_HAND_ROOT, R_ELBOW, R_WRIST, RIGHT_HAND_ROOT

    kp = np.zeros((133, 3), np.float32)
    kp[L_ELBOW], kp[L_WRIST] = (50, 50, 0.3), (50, 150, 0.3)  # exactly at the threshold: seen
    kp[LEFT_HAND_ROOT : LEFT_HAND_ROOT + 3] = [(45, 170, 1), (55, 170, 1), (50, 180, 1)]
    kp[R_ELBOW], kp[R_WRIST] = (150, 50, 1.0), (150, 150, 1.0)  # no hand found: the forearm only
    kp[RIGHT_HAND_ROOT : RIGHT_HAND_ROOT + 2] = [(140, 170, 1), (160, 170, 1)]  # 2 points: no hull
    person = np.ones((220, 220), bool)
    person[:, 200:] = False
    regions = arm_regions(kp, person)
    # left forearm: radius round(0.12 * 100 + 2) = 14 around x = 50
    assert (regions[100, 37:64] == 1).all() and regions[100, 34] == 0 and regions[100, 66] == 0
    # left hand: hull of the 3 points grown by 15 px (a square kernel): 15 px below its bottom tip, not 16
    assert regions[195, 50] == 1 and regions[196, 50] == 0
    assert regions[170, 30] == 1 and regions[170, 29] == 0  # 15 px left of the hull's left corner
    # right: the forearm (bit 2), no hand below the wrist beyond the capsule's round end
    assert (regions[100, 137:164] == 2).all() and regions[180, 150] == 0
    assert set(np.unique(regions)) == {0, 1, 2}
    # overlapping arms carry both bits; the person mask clips
    crossed = kp.copy()
    crossed[R_ELBOW], crossed[R_WRIST] = (10, 100, 1.0), (110, 100, 1.0)
    both = arm_regions(crossed, person)
    assert both[100, 50] == 3 and both[100, 100] == 2
    clipped = arm_regions(kp, person & (np.arange(220) < 120)[:, None])
    assert not clipped[120:].any() and (clipped[100, 37:64] == 1).all()
    # an arm below the threshold draws nothing, and does not stop the other side
    unseen = kp.copy()
    unseen[L_ELBOW, 2] = 0.29
    left_gone = arm_regions(unseen, person)
    assert not (left_gone & 1).any() and (left_gone[100, 137:164] == 2).all()
    unseen = kp.copy()
    unseen[L_WRIST, 2] = 0.29
    assert not (arm_regions(unseen, person) & 1).any()
    unseen = kp.copy()
    unseen[R_WRIST, 2] = 0.29
    assert not (arm_regions(unseen, person) & 2).any()


def test_engine_passes_the_reference_keypoints_to_the_body_path(anny):
    """Through ``WarpEngine.render``: the reference's 2D keypoints reach the body warp (no ghost hand on
    the belly with the misfit of the test above), and progress counts every frame of the total."""
    true = synthetic_motion(anny, ARM_ACROSS, [{}])
    fitted = synthetic_motion(anny, {"left_shoulder": (0.0, 0.9, 0.0)}, [{}, {}])
    image, person = reference_of(true)
    kp = whole_body_keypoints(true)
    hand = np.isin(
        true.reference_render.part, [PART_NAMES.index("left_wrist"), PART_NAMES.index("left_hand")]
    )
    hy, hx = np.nonzero(hand)
    pick = np.linspace(0, len(hx) - 1, 21).astype(int)
    kp[91:112] = np.stack([hx[pick], hy[pick], np.ones(21)], 1)
    bundle = GuidanceBundle(
        reference=image,
        reference_mask=person.astype(np.uint8) * 255,
        reference_keypoints=kp,
        keypoints=np.zeros((2, 133, 3), np.float32),
        fps=24.0,
        size=(288, 512),
        body=fitted,
    )
    calls = []
    frames = list(WarpEngine().render(bundle, progress=lambda done, total: calls.append((done, total))))
    assert calls == [(1, 2), (2, 2)]
    target = fitted.renderer()[0].render(fitted.vertices(0, 1)[0], fitted.camera)
    torso = interior(np.isin(target.part, TORSO), 1)
    assert not np.isin(palette_part(frames[0][torso]), LEFT_ARM).any()
