"""The CPU engine: no weights, it moves the reference person's own pixels onto the driving motion.

Body path (a ``BodyMotion`` in the bundle), backward warping: each frame's transferred body is ray cast
(at half resolution by default; the sampling maps are upsampled, nearest where they jump), so every
output pixel on the body knows the surface point it shows, with occlusion resolved. That point, put back
on the reference body and projected, is where the reference shows it, if the reference ray cast sees it
there too (depth test). Surface the reference does not show is taken from its left/right twin (mirrored
vertex) when that is visible, else from the colour of the nearest visible surface (propagated over the
mesh once), never left as a hole. Hair and loose clothes lie outside the naked body: the target body is
dilated by how far the reference person reaches beyond its body, and each pixel of that ring samples the
reference next to its nearest body pixel (moved with that body part's local 2D motion); it shows only
where that sample is an off-body person pixel that belongs to the same or a neighbouring part, so the
ring never drags another limb or background along. Backward sampling leaves no splatting holes.

Skeleton path (no body fit), the fallback: reference person pixels are carried to their target positions
by the 2D skeleton field (forward splatting with a depth order by body part), the target silhouette is
closed, each target pixel looks up its exact source position (a first-order inverse of the field) and
samples the reference bilinearly.

Both composite with a soft edge over the reference background, whose person was removed and filled once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from animate.body.parts import MIRROR_PART, NUM_PARTS, PART_NAMES
from animate.motion.body_field import (
    BodyMotion,
    interpolate,
    inverse_linear,
    nearest_pixel,
    offbody_reach,
    part_affines,
    part_neighbours,
    project,
)
from animate.motion.bundle import GuidanceBundle
from animate.motion.skeleton_field import BONES, SkeletonField
from animate.pose.layout import (
    L_ANKLE,
    L_ELBOW,
    L_WRIST,
    LEFT_HAND_ROOT,
    R_ANKLE,
    R_ELBOW,
    R_WRIST,
    RIGHT_HAND_ROOT,
)

FrameProgress = Callable[[int, int], None]
HEAD_PART = PART_NAMES.index("head")


def fill_background(image: np.ndarray, person: np.ndarray, scale: int | None = None) -> np.ndarray:
    """The image with the person region inpainted (Navier-Stokes, at 1/scale resolution, pasted back with
    a soft edge), once per reference: it stays still while the person moves over it.

    scale: default the smallest that brings the long side to 384 px or less (benchmarks/quality.py,
    bg PSNR where the reference person stood, 1/4 Telea -> this: talking 20.5 -> 21.3, dance 28.7 ->
    30.9, half-body dance 30.7 -> 31.8 dB at a 512 px long side).
    """
    height, width = person.shape
    if scale is None:
        scale = max(1, -(-max(height, width) // 384))
    grown = cv2.dilate(person.astype(np.uint8), np.ones((9, 9), np.uint8), iterations=2)
    if not grown.any():
        return image.copy()
    small_size = (max(8, width // scale), max(8, height // scale))
    small = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA)
    small_mask = (cv2.resize(grown, small_size, interpolation=cv2.INTER_NEAREST) > 0).astype(np.uint8)
    small_mask = cv2.dilate(small_mask, np.ones((3, 3), np.uint8))
    filled = cv2.inpaint(small, small_mask, 5, cv2.INPAINT_NS)
    filled = cv2.resize(filled, (width, height), interpolation=cv2.INTER_CUBIC)
    alpha = cv2.GaussianBlur(grown.astype(np.float32), (0, 0), 2.0)[..., None]
    return (image * (1 - alpha) + filled * alpha + 0.5).astype(np.uint8)


def partial_reference(keypoints: np.ndarray, size: tuple[int, int], threshold: float = 0.3) -> bool:
    """True when the reference shows no ankle in the picture (half-body, cut at the knees, head and
    shoulders); MediaPipe still guesses knees on a picture cut at the thighs.

    The 3D body fitted to such a picture is guessed below the cut, and its transferred poses swing the
    arms and torso in ways the picture cannot support; the 2D field keeps what is shown attached
    (benchmarks/quality.py: the drawn character cut at the thighs, limb-angle error 42.7 degrees with the
    body; the talking head, PCK@0.05 0.60 -> 0.75, masked PSNR 14.0 -> 15.9 dB).
    """
    width, height = size
    ankles = keypoints[[L_ANKLE, R_ANKLE]]
    inside = (ankles[:, 0] >= 0) & (ankles[:, 0] < width) & (ankles[:, 1] >= 0) & (ankles[:, 1] < height)
    return not ((ankles[:, 2] >= threshold) & inside).any()


LEG_BONES = ("l_thigh", "r_thigh", "l_shin", "r_shin", "l_foot", "r_foot")
#: A leg bone whose end joint lies this low in the picture (or below it) is cut by the picture's edge.
CUT_EDGE = 0.97


def cut_legs(keypoints: np.ndarray, person: np.ndarray, threshold: float = 0.3) -> tuple[str, ...]:
    """2D path: the leg bones whose end joint the picture does not show, below its bottom edge or within
    3% of the height of it, when the picture cuts the person there (its bottom row is 5% or more person,
    as ``_extend_cut``; feet standing above the edge are shown). On a picture cut at the thighs the pose
    estimator guesses the knees from the dress or the cut; turned about the hip toward the driving thigh,
    such a stub swung a skirt's sides down like spread legs (benchmarks/quality.py anime_half_dance:
    thighs 54 and 66 degrees off the driving ones, 36 and 39 when they stay with the torso). Their pixels
    stay with the torso (the parent bones that are left)."""
    height, width = person.shape
    if person[-1].sum() < 0.05 * width:
        return ()
    bottom = CUT_EDGE * height
    return tuple(
        bone.name
        for bone in BONES
        if bone.name in LEG_BONES and keypoints[bone.end, 2] >= threshold and keypoints[bone.end, 1] >= bottom
    )


def hidden_hands(keypoints: np.ndarray, threshold: float = 0.3) -> tuple[int, ...]:
    """Hand parts whose reference keypoints were not found (in pockets, behind the back): the fitted
    body may still put those hands in view, over clothes that are not hands."""
    hidden = []
    for root, part in ((LEFT_HAND_ROOT, "left_hand"), (RIGHT_HAND_ROOT, "right_hand")):
        if np.mean(keypoints[root : root + 21, 2] >= threshold) < 0.5:
            hidden.append(PART_NAMES.index(part))
    return tuple(hidden)


LEFT_ARM_PARTS = tuple(PART_NAMES.index(f"left_{n}") for n in ("elbow", "wrist", "hand"))
RIGHT_ARM_PARTS = tuple(PART_NAMES.index(f"right_{n}") for n in ("elbow", "wrist", "hand"))


def arm_regions(keypoints: np.ndarray, person: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """(H, W) uint8 bits: 1 where the 2D keypoints put the left forearm or hand, 2 the right (within the
    person). A forearm (elbow and wrist seen) is a capsule elbow-wrist of radius 0.12 of its length + 2 px;
    its hand, when at least 3 of its keypoints are seen, the hull of those grown by 0.15 of the forearm
    (a hand not found is hidden or out of view: in front of nothing)."""
    height, width = person.shape
    out = np.zeros((height, width), np.uint8)
    for bit, elbow, wrist, root in (
        (1, L_ELBOW, L_WRIST, LEFT_HAND_ROOT),
        (2, R_ELBOW, R_WRIST, RIGHT_HAND_ROOT),
    ):
        if keypoints[elbow, 2] < threshold or keypoints[wrist, 2] < threshold:
            continue
        a, b = keypoints[elbow, :2].astype(np.float64), keypoints[wrist, :2].astype(np.float64)
        length = float(np.linalg.norm(b - a))
        if length < 2:
            continue
        region = np.zeros((height, width), np.uint8)
        cv2.line(
            region,
            tuple(np.rint(a).astype(int)),
            tuple(np.rint(b).astype(int)),
            1,
            2 * round(0.12 * length + 2) + 1,
        )
        hand = keypoints[root : root + 21]
        seen = hand[:, 2] >= threshold
        if seen.sum() >= 3:
            hull = np.zeros_like(region)
            cv2.fillConvexPoly(hull, cv2.convexHull(np.rint(hand[seen, :2]).astype(np.int32)), 1)
            grow = 2 * round(0.15 * length) + 1
            region |= cv2.dilate(hull, np.ones((grow, grow), np.uint8))
        out[(region > 0) & person] |= bit
    return out


HAND_PARTS = (PART_NAMES.index("left_hand"), PART_NAMES.index("right_hand"))


def hand_regions(keypoints: np.ndarray, person: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """(H, W) uint8 bits: 1 where the reference shows its left hand, 2 its right (within the person): the
    hull of the hand's seen keypoints (at least 3) grown by 0.15 of the palm (wrist to middle knuckle: about
    half a finger's width, the outline beyond the keypoints) or 2 px. A hand not found leaves no bit."""
    height, width = person.shape
    out = np.zeros((height, width), np.uint8)
    for bit, root in ((1, LEFT_HAND_ROOT), (2, RIGHT_HAND_ROOT)):
        hand = keypoints[root : root + 21]
        seen = hand[:, 2] >= threshold
        if seen.sum() < 3:
            continue
        hull = np.zeros((height, width), np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(np.rint(hand[seen, :2]).astype(np.int32)), 1)
        palm = float(np.linalg.norm(hand[9, :2] - hand[0, :2])) if seen[[0, 9]].all() else 0.0
        grow = 2 * max(2, round(0.15 * palm)) + 1
        hull = cv2.dilate(hull, np.ones((grow, grow), np.uint8))
        out[(hull > 0) & person] |= bit
    return out


class WarpEngine:
    """Engine protocol: ``render(bundle, progress, should_cancel)`` yields (H, W, 3) uint8 frames.

    Uses the body path when the bundle carries a ``BodyMotion`` and the reference shows the legs to the
    ankles (``partial_reference``), else the 2D skeleton field; ``motion`` says which the last render used.
    render_scale: the body is ray cast at 1/render_scale of the output size (1 for outputs under 384 px).
    """

    name = "warp"

    def __init__(self, edge_sigma: float = 1.0, render_scale: int = 2) -> None:
        self.edge_sigma = edge_sigma
        self.render_scale = render_scale
        self.last_masks: FrameMasks | None = None  # body path: the last frame's masks
        self._last_silhouette: np.ndarray | None = None  # skeleton path
        self.motion: str | None = None  # "body" or "skeleton": what moved the person in the last render

    @property
    def last_silhouette(self) -> np.ndarray | None:
        """(H, W) bool: the person's pixels in the last frame yielded."""
        return self.last_masks.silhouette if self.last_masks is not None else self._last_silhouette

    @property
    def last_body_mask(self) -> np.ndarray | None:
        """(H, W) bool: the rendered target body of the last frame (body path only)."""
        return self.last_masks.body if self.last_masks is not None else None

    def render(
        self,
        bundle: GuidanceBundle,
        progress: FrameProgress | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Iterator[np.ndarray]:
        if self.uses_body(bundle):
            self.motion = "body"
            yield from self._render_body(bundle, progress, should_cancel)
        else:
            self.motion = "skeleton"
            yield from self._render_skeleton(bundle, progress, should_cancel)

    @staticmethod
    def uses_body(bundle: GuidanceBundle) -> bool:
        """Whether ``render`` takes the body path for this bundle."""
        return bundle.body is not None and not partial_reference(bundle.reference_keypoints, bundle.size)

    def _render_body(
        self,
        bundle: GuidanceBundle,
        progress: FrameProgress | None,
        should_cancel: Callable[[], bool] | None,
    ) -> Iterator[np.ndarray]:
        scale = self.render_scale if min(bundle.size) >= 384 else 1
        warp = BodyWarp(
            bundle.body,
            bundle.reference,
            bundle.reference_mask > 127,
            scale,
            self.edge_sigma,
            unseen_parts=hidden_hands(bundle.reference_keypoints),
            keypoints=bundle.reference_keypoints,
        )
        total = bundle.num_frames
        for t, vertices in enumerate(bundle.body.iter_vertices()):
            if should_cancel is not None and should_cancel():
                return
            frame, self.last_masks = warp.frame(vertices)
            yield frame
            if progress is not None:
                progress(t + 1, total)

    def _render_skeleton(
        self,
        bundle: GuidanceBundle,
        progress: FrameProgress | None,
        should_cancel: Callable[[], bool] | None,
    ) -> Iterator[np.ndarray]:
        self.last_masks = None
        width = bundle.size[0]
        reference = bundle.reference
        person = bundle.reference_mask > 127
        background = fill_background(reference, person)
        cut = cut_legs(bundle.reference_keypoints, person)
        reference, person = _extend_cut(reference, person)
        # Samples just off the person (the closed silhouette's rim) take the person's colour, never the
        # reference background, which would ride along the moved limbs as a halo.
        reference = _extend_person(reference, person)
        ys, xs = np.nonzero(person)
        field = SkeletonField(
            bundle.reference_keypoints,
            np.stack([xs, ys], 1).astype(np.float64),
            bones=tuple(bone.name for bone in BONES if bone.name not in cut) if cut else None,
        )
        fields, layers, source = [field], [field.layer], reference
        hidden = self._hidden_torso(reference, field, person)
        if hidden is not None:
            # The torso behind the reference's arms, filled once, lies under everything. Its colours sit
            # in a second image beside the reference, so one splat and one remap draw both layers.
            hidden_field, hidden_image = hidden
            fields.append(hidden_field)
            layers.append(np.full(len(hidden_field.pixels), -1, np.int32))
            source = np.concatenate([reference, hidden_image], axis=1)
        pixels = np.concatenate([f.pixels for f in fields])
        if hidden is not None:
            pixels[len(field.pixels) :, 0] += width
        layer = np.concatenate(layers)
        total = bundle.num_frames
        for t in range(total):
            if should_cancel is not None and should_cancel():
                return
            matrices = [f.pixel_matrices(bundle.keypoints[t]) for f in fields]
            positions = np.concatenate([f.positions(None, m) for f, m in zip(fields, matrices, strict=True)])
            frame, self._last_silhouette = self._compose(
                source, background, pixels, positions, layer, np.concatenate(matrices)[:, :, :2]
            )
            yield frame
            if progress is not None:
                progress(t + 1, total)

    @staticmethod
    def _hidden_torso(
        reference: np.ndarray, field: SkeletonField, person: np.ndarray
    ) -> tuple[SkeletonField, np.ndarray] | None:
        """Torso and thigh surface the reference's arms cover: its pixels (bound to the torso) and inpainted colours.

        When an arm moves away in a frame, this is what shows where it was, instead of a hole.
        """
        quad = field.torso_quad()
        if quad is None:
            return None
        height, width = person.shape
        torso_region = np.zeros((height, width), np.uint8)
        cv2.fillConvexPoly(torso_region, np.rint(quad).astype(np.int32), 1)
        arm_bones = [i for i, bone in enumerate(BONES) if "arm" in bone.name or "hand" in bone.name]
        on_arm = np.isin(field.dominant, arm_bones)
        ys, xs = field.pixels[on_arm, 1].astype(int), field.pixels[on_arm, 0].astype(int)
        arm = np.zeros((height, width), np.uint8)
        arm[ys, xs] = 1
        # Also the hips and thighs, where hands in pockets or hanging arms lie over the legs.
        for name in ("l_thigh", "r_thigh"):
            i = next(k for k, bone in enumerate(BONES) if bone.name == name)
            if i in field.ref_segments:
                a, b = np.rint(field.ref_segments[i]).astype(np.int32)
                radius = max(2, round(0.25 * float(np.linalg.norm(b - a))))
                cv2.line(
                    torso_region, tuple(int(v) for v in a), tuple(int(v) for v in b), 1, thickness=2 * radius
                )
        under_arm = (arm & torso_region).astype(bool)
        if under_arm.sum() < 50:
            return None
        # The whole torso region goes into this base layer, so tears where skin stretches show torso too.
        covered = torso_region.astype(bool) & person
        visible_torso = person & torso_region.astype(bool) & ~arm.astype(bool)
        if visible_torso.sum() < 50:
            return None
        # Fill the covered torso from the visible torso only (inpainting at half resolution).
        scale = 2
        small = (width // scale, height // scale)
        hole = cv2.resize((~visible_torso).astype(np.uint8), small, interpolation=cv2.INTER_NEAREST)
        filled = cv2.inpaint(
            cv2.resize(reference, small, interpolation=cv2.INTER_AREA), hole, 5, cv2.INPAINT_TELEA
        )
        filled = cv2.resize(filled, (width, height), interpolation=cv2.INTER_LINEAR)
        image = np.where(under_arm[..., None], filled, reference)
        hy, hx = np.nonzero(covered)
        pixels = np.stack([hx, hy], 1).astype(np.float64)
        return SkeletonField(field.reference, pixels, bones=("torso", "l_thigh", "r_thigh")), image

    def _compose(
        self,
        reference: np.ndarray,
        background: np.ndarray,
        pixels: np.ndarray,
        positions: np.ndarray,
        layer: np.ndarray,
        jacobians: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The frame with these pixels carried to ``positions``, and the (H, W) silhouette they cover.

        jacobians: (N, 2, 2) d(target)/d(source) per pixel, to invert the field to first order.
        """
        height, width = background.shape[:2]
        target = np.rint(positions).astype(np.int64)
        inside = (target[:, 0] >= 0) & (target[:, 0] < width) & (target[:, 1] >= 0) & (target[:, 1] < height)
        idx = np.flatnonzero(inside)
        if len(idx) == 0:
            return background.copy(), np.zeros((height, width), bool)
        # Work inside the person's bounding box (plus a margin for the closing and the soft edge).
        margin = 6
        x0, y0 = np.maximum(target[idx].min(0) - margin, 0)
        x1, y1 = np.minimum(target[idx].max(0) + margin + 1, (width, height))
        box_w, box_h = int(x1 - x0), int(y1 - y0)
        keys = (target[idx, 1] - y0) * box_w + (target[idx, 0] - x0)
        # Front-most part wins where several source pixels land on one target pixel: layers are written
        # back to front (within one assignment numpy keeps the last write to a repeated index).
        source = np.full(box_h * box_w, -1, np.int64)
        point_layer = layer[idx]
        for value in np.unique(point_layer):
            chosen = point_layer == value
            source[keys[chosen]] = idx[chosen]
        source = source.reshape(box_h, box_w)
        covered = (source >= 0).astype(np.uint8)
        kernel = np.ones((3, 3), np.uint8)
        closed = cv2.morphologyEx(covered, cv2.MORPH_CLOSE, kernel, iterations=2)
        silhouette = _fill_holes(closed) & cv2.dilate(covered, kernel, iterations=3)
        # Holes inside the silhouette (stretched limbs) borrow their nearest covered neighbour's source.
        holes = silhouette.astype(bool) & ~covered.astype(bool)
        if holes.any():
            _, labels = cv2.distanceTransformWithLabels(
                1 - covered, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
            )
            cover_y, cover_x = np.nonzero(covered)  # label k is the k-th covered pixel in scan order
            nearest = np.zeros(len(cover_y) + 1, np.int64)
            nearest[1:] = source[cover_y, cover_x]
            source = np.where(holes, nearest[labels], source)
        silhouette = silhouette.astype(bool)
        source[~silhouette] = -1

        ty, tx = np.nonzero(silhouette)
        src = source[ty, tx]
        # First-order inverse: step back from where the source pixel landed to this pixel's centre.
        jac_inv = _inverse_2x2(jacobians[src])
        offset = np.stack([tx + x0, ty + y0], 1) - positions[src]
        step = jac_inv[:, :, 0] * offset[:, :1] + jac_inv[:, :, 1] * offset[:, 1:]
        step = np.clip(step, -1.5, 1.5)
        map_x = np.full((box_h, box_w), -1, np.float32)
        map_y = np.full((box_h, box_w), -1, np.float32)
        map_x[ty, tx] = pixels[src, 0] + step[:, 0]
        map_y[ty, tx] = pixels[src, 1] + step[:, 1]
        warped = cv2.remap(reference, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.GaussianBlur(silhouette.astype(np.float32), (0, 0), self.edge_sigma)
        alpha *= cv2.dilate(silhouette.astype(np.uint8), kernel)
        alpha = alpha[..., None]
        frame = background.copy()
        region = frame[y0:y1, x0:x1].astype(np.float32)
        frame[y0:y1, x0:x1] = (region * (1 - alpha) + warped * alpha + 0.5).astype(np.uint8)
        full = np.zeros((height, width), bool)
        full[y0:y1, x0:x1] = silhouette
        return frame, full


class BodyWarp:
    """The body path's per-reference state (built once) and its per-frame backward warp (``frame``)."""

    #: A surface point counts as seen by the reference within this depth (metres) of the reference render.
    DEPTH_TOLERANCE = 0.03
    #: Head surface counts as seen only within this many pixels of the reference person.
    HEAD_OFF_PERSON = 2.0
    #: Body surface the reference shows more than this many pixels off its person is not drawn
    #: (benchmarks/quality.py dance_narrow, the dance squeezed to 60% width: person area 1.25 -> 1.20 of
    #: the driving person's, masked PSNR 14.17 -> 13.86 dB where the per-frame fits disagree; dance
    #: area 1.06 -> 1.05 and dance_turned 1.03 -> 1.02, masked PSNR within 0.03 dB).
    BODY_OFF_PERSON = 3.0

    def __init__(
        self,
        motion: BodyMotion,
        reference: np.ndarray,
        person: np.ndarray,
        scale: int = 2,
        edge_sigma: float = 1.0,
        unseen_parts: tuple[int, ...] = (),
        keypoints: np.ndarray | None = None,
    ) -> None:
        """person: (H, W) bool reference person mask. unseen_parts: body parts the reference hides
        although its body is fitted in view (e.g. hands in pockets): they take the face's skin colour.
        keypoints: the reference's (133, 3) 2D keypoints; where they put a forearm or hand, no other part
        samples the reference (``arm_regions``), however the fitted body lies there."""
        self.motion = motion
        self.scale = scale
        self.edge_sigma = edge_sigma
        self.faces = motion.faces.astype(np.int64)
        self.parts = motion.vertex_parts.astype(np.int64)
        self.mirror = motion.mirror
        self.neighbours = part_neighbours()
        render = motion.reference_render
        body = render.mask
        uv, self.z = motion.reference_projection
        self.uv = uv - 0.5  # remap's pixel (x, y) is centred at x, the camera's at x + 0.5
        # Depth the reference shows around each pixel (3x3 max: lenient at edges); off the body, anything.
        depth = np.where(body, render.depth, 1e6).astype(np.float32)
        self.depth_limit = cv2.dilate(depth, np.ones((3, 3), np.uint8)) + self.DEPTH_TOLERANCE
        self.reference_part = render.part
        self.source = _extend_person(reference, person)
        # How far each pixel lies outside the person: a head fitted wider than the photo's head would
        # sample streaks of the extended edge there (a smeared cheek the face detector rejects).
        self.off_person = cv2.distanceTransform((~person).astype(np.uint8), cv2.DIST_L2, 3)
        self.renderer, self.camera = motion.renderer(scale)
        self.background = fill_background(reference, person | (cv2.dilate(body.astype(np.uint8), None) > 0))
        # Ring pixels show only where the reference is clearly the person: segmentation masks bleed a
        # pixel or two into the background and cover gaps (between an arm and the torso) where the
        # background shows through; both would draw background-coloured lines along moved limbs.
        core = cv2.erode(person.astype(np.uint8), np.ones((3, 3), np.uint8))
        differs = np.abs(reference.astype(np.int16) - self.background.astype(np.int16)).sum(-1) > 40
        person_alpha = cv2.GaussianBlur((core & differs).astype(np.float32) * 255.0, (0, 0), 1.0)
        # What a frame samples: RGB + that alpha, with spare columns on the right for the fill colours.
        height, width = person.shape
        canvas = np.zeros((height, width + self.camera.width + 2, 4), np.uint8)
        canvas[:, :width, :3] = self.source
        canvas[:, :width, 3] = np.clip(person_alpha + 0.5, 0, 255).astype(np.uint8)
        self.canvas = canvas
        # Forearms and hands where the 2D keypoints see them: a body fitted a little off must not paint
        # a hand that lay on the chest onto the chest (a ghost hand once the arm moves away).
        height_, width_ = person.shape
        self.arm_region = (
            arm_regions(keypoints, person) if keypoints is not None else np.zeros((height_, width_), np.uint8)
        )
        self.part_arm = np.zeros(NUM_PARTS, np.uint8)
        self.part_arm[list(LEFT_ARM_PARTS)], self.part_arm[list(RIGHT_ARM_PARTS)] = 1, 2
        # Hands: a hand's surface is seen only inside that hand's keypoints (a fitted hand a little off
        # lies on the sleeve or the background), and where nothing shows it, it takes the hand's own skin.
        self.hand_region = (
            hand_regions(keypoints, person)
            if keypoints is not None
            else np.zeros((height_, width_), np.uint8)
        )
        self.part_hand = np.zeros(NUM_PARTS, np.uint8)
        self.part_hand[HAND_PARTS[0]], self.part_hand[HAND_PARTS[1]] = 1, 2
        self.hand_colours = {
            part: np.median(reference[(self.hand_region & bit) > 0].astype(np.float32), axis=0)
            for part, bit in zip(HAND_PARTS, (1, 2), strict=True)
            if ((self.hand_region & bit) > 0).sum() >= 20
        }
        offbody = _offbody_parts(render.part, person, self.neighbours)
        foreign = (self.arm_region & ~self.part_arm[np.maximum(offbody, 0)]) > 0
        offbody[foreign] = -1
        self.offbody_part = offbody
        tall = float(np.ptp(np.nonzero(body)[0])) if body.any() else float(height)
        self.reach = min(offbody_reach(person, body), 0.1 * tall)
        self.unseen_parts = np.isin(np.arange(NUM_PARTS), unseen_parts)
        self.unseen = self.unseen_parts[self.parts]  # per vertex
        self.colours = self._vertex_colours(body)

    def _visible(self, points: np.ndarray, depth: np.ndarray, parts: np.ndarray) -> np.ndarray:
        """Which surface points of these parts, at reference pixels (N, 2 remap coordinates) and depths,
        the reference ray cast sees: the depth it shows there is as near (within the tolerance), and it
        shows the same or a neighbouring part (an arm resting on the belly is nearly as deep)."""
        height, width = self.depth_limit.shape
        x = np.rint(points[:, 0]).astype(np.int64)
        y = np.rint(points[:, 1]).astype(np.int64)
        inside = np.flatnonzero((x >= 0) & (x < width) & (y >= 0) & (y < height))
        x, y = x[inside], y[inside]
        shown = self.reference_part[y, x].astype(np.int64)
        seen = np.zeros(len(points), bool)
        seen[inside] = (depth[inside] <= self.depth_limit[y, x]) & (
            (shown < 0) | self.neighbours[parts[inside], np.maximum(shown, 0)]
        )
        # Nor where the reference shows another part's forearm or hand (by its 2D keypoints).
        seen[inside] &= (self.arm_region[y, x] & ~self.part_arm[parts[inside]]) == 0
        # The head only on the photo's person (within the tolerance): beyond, its twin or its colours.
        seen[inside] &= (parts[inside] != HEAD_PART) | (self.off_person[y, x] <= self.HEAD_OFF_PERSON)
        # A hand only inside its own hand's keypoints, where the reference found that hand.
        hand = self.part_hand[parts[inside]]
        found = np.isin(parts[inside], list(self.hand_colours))
        seen[inside] &= (hand == 0) | ~found | ((self.hand_region[y, x] & hand) > 0)
        return seen

    def _vertex_colours(self, body: np.ndarray) -> np.ndarray:
        """(V, 3) float32 colour of every vertex: sampled where the reference sees it, else the colour of
        the nearest seen vertex along the mesh (the back takes the sides' colours, not the face's)."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import dijkstra

        seen = self._visible(self.uv, self.z, self.parts) & ~self.unseen
        blurred = cv2.GaussianBlur(self.source, (0, 0), 1.5)
        colours = np.zeros((len(self.uv), 3), np.float32)
        if not seen.any():
            colours[:] = self.source[body].mean(0) if body.any() else self.source.reshape(-1, 3).mean(0)
            return colours
        maps = self.uv[seen].reshape(-1, 1, 2).astype(np.float32)
        colours[seen] = cv2.remap(blurred, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[
            :, 0
        ]
        if self.unseen.any():
            colours[self.unseen] = self._skin_colour(seen)
        missing = ~seen & ~self.unseen
        if not missing.any():
            return colours
        edges = np.concatenate([self.faces[:, [0, 1]], self.faces[:, [1, 2]], self.faces[:, [2, 0]]])
        rest = self.motion.reference_vertices
        length = np.linalg.norm(rest[edges[:, 0]] - rest[edges[:, 1]], axis=1) + 1e-6
        n = len(rest)
        graph = coo_matrix((length, (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
        _, _, sources = dijkstra(
            graph, directed=False, indices=np.flatnonzero(seen), min_only=True, return_predecessors=True
        )
        reached = missing & (sources >= 0)
        colours[reached] = colours[sources[reached]]
        colours[missing & (sources < 0)] = colours[seen].mean(0)
        # Hand surface nobody saw takes its hand's skin, never the sleeve's colour spread along the mesh.
        for part, colour in self.hand_colours.items():
            colours[missing & (self.parts == part)] = colour
        return colours

    def _skin_colour(self, seen: np.ndarray) -> np.ndarray:
        """The median colour of the seen face (front of the head), for hidden hands."""
        head = seen & (self.parts == HEAD_PART)
        if head.any():
            # The face is the head's part nearest to the camera; hair lies at its top and sides.
            z = self.z[head]
            front = np.flatnonzero(head)[z <= np.quantile(z, 0.3)]
            maps = self.uv[front].reshape(-1, 1, 2).astype(np.float32)
            samples = cv2.remap(self.source, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            return np.median(samples[:, 0].astype(np.float32), axis=0)
        return np.array([200.0, 160.0, 140.0], np.float32)

    #: Head surface drawn over more than this many times the area the reference showed it on is stretched.
    HEAD_STRETCH = 3.0

    def _unstretch_head(
        self,
        src: np.ndarray,
        seen: np.ndarray,
        triangles: np.ndarray,
        bary: np.ndarray,
        parts: np.ndarray,
        uv_frame: np.ndarray,
        twinned: np.ndarray,
    ) -> None:
        """Head pixels whose surface the reference saw at a grazing angle (a face turned from the profile
        toward the camera) sample its mirror twin instead, where the twin is seen and at most half as
        stretched: streaks across a cheek are what make a face unrecognisable. In place on ``src`` and
        ``twinned`` (which pixels sample their twin)."""
        head = np.flatnonzero(seen & (parts == HEAD_PART))
        if not len(head):
            return
        drawn = _triangle_areas(uv_frame, triangles[head])
        stretch = drawn / np.maximum(_triangle_areas(self.uv, triangles[head]), 1e-3)
        pick = np.flatnonzero(stretch > self.HEAD_STRETCH)
        if not len(pick):
            return
        rows = head[pick]
        twins = self.mirror[triangles[rows]]
        twin_stretch = drawn[pick] / np.maximum(_triangle_areas(self.uv, twins), 1e-3)
        twin_src = interpolate(self.uv, twins, bary[rows])
        better = twin_stretch <= 0.5 * stretch[pick]
        better &= self._visible(twin_src, interpolate(self.z, twins, bary[rows]), MIRROR_PART[parts[rows]])
        src[rows[better]] = twin_src[better]
        twinned[rows[better]] = True

    def frame(self, vertices: np.ndarray) -> tuple[np.ndarray, FrameMasks]:
        """One output frame for the body at (V, 3) ``vertices``, and its masks (see ``FrameMasks``)."""
        s = self.scale
        height, width = self.source.shape[:2]
        rendered = self.renderer.render(vertices, self.camera)
        small_h, small_w = rendered.mask.shape
        bx, by, bw, bh = rendered.box
        if not bw or not bh or not rendered.mask[by : by + bh, bx : bx + bw].any():
            return self.background.copy(), FrameMasks((height, width), (0, 0), *[np.zeros((0, 0), bool)] * 3)
        # Everything below works inside the body's box grown by the ring, at the render's resolution.
        radius = max(self.reach / s, 1.0)
        grow = int(np.ceil(radius)) + 3
        x0, y0 = max(bx - grow, 0), max(by - grow, 0)
        x1, y1 = min(bx + bw + grow, small_w), min(by + bh + grow, small_h)
        box_h, box_w = y1 - y0, x1 - x0
        body = rendered.mask[y0:y1, x0:x1]
        ys, xs = np.nonzero(body)
        triangles = self.faces[rendered.face[y0:y1, x0:x1][ys, xs]]
        bary = rendered.bary[y0:y1, x0:x1][ys, xs]
        parts = rendered.part[y0:y1, x0:x1][ys, xs].astype(np.int64)
        # 1. Where the reference shows each body pixel's surface point: itself, else its twin, else none.
        src = interpolate(self.uv, triangles, bary)
        seen = self._visible(src, interpolate(self.z, triangles, bary), parts)
        if self.unseen_parts.any():
            seen &= ~self.unseen_parts[parts]
        uv_frame, _ = project(self.motion.camera, vertices)
        twinned = np.zeros(len(src), bool)
        self._unstretch_head(src, seen, triangles, bary, parts, uv_frame - 0.5, twinned)
        fill = np.flatnonzero(~seen)
        if len(fill):
            twins = self.mirror[triangles[fill]]
            twin_src = interpolate(self.uv, twins, bary[fill])
            twin_parts = MIRROR_PART[parts[fill]]
            twin_seen = self._visible(twin_src, interpolate(self.z, twins, bary[fill]), twin_parts)
            if self.unseen_parts.any():
                twin_seen &= ~self.unseen_parts[twin_parts]
            src[fill[twin_seen]] = twin_src[twin_seen]
            twinned[fill[twin_seen]] = True
            fill = fill[~twin_seen]
        # Surface the reference shows off its person (a body fitted wider than the person: a squeezed or
        # side view) is background there, not body: not drawn (surface nobody saw is still filled; hands
        # are always drawn).
        sampled = np.ones(len(src), bool)
        sampled[fill] = False
        sx = np.clip(np.rint(src[:, 0]), 0, width - 1).astype(np.int64)
        sy = np.clip(np.rint(src[:, 1]), 0, height - 1).astype(np.int64)
        off = sampled & (self.off_person[sy, sx] > self.BODY_OFF_PERSON)
        off &= self.part_hand[parts] == 0  # hands: masks often miss fingers, and a hand must not vanish
        if off.any():
            body = body.copy()
            body[ys[off], xs[off]] = False
            keep = ~off
            fill = (np.cumsum(keep) - 1)[fill]
            ys, xs, triangles, bary, parts, src, twinned = (
                a[keep] for a in (ys, xs, triangles, bary, parts, src, twinned)
            )
        # 2. The ring around the body: sample beside the nearest body pixel, moved with its part. Maps
        # reach past the accepted ring so upsampling never blends with unset values.
        distance, nearest = nearest_pixel(body)
        ring = ~body & (distance <= radius + 1.5)
        ry, rx = np.nonzero(ring)
        anchor = nearest[ry, rx]
        inverse = inverse_linear(part_affines(self.uv, uv_frame - 0.5, self.parts))
        anchor_part = parts[anchor]
        offset = np.stack([rx - xs[anchor], ry - ys[anchor]], 1).astype(np.float32) * s
        ring_src = src[anchor] + np.einsum("nij,nj->ni", inverse[anchor_part], offset)
        px = np.clip(np.rint(ring_src[:, 0]), 0, width - 1).astype(np.int64)
        py = np.clip(np.rint(ring_src[:, 1]), 0, height - 1).astype(np.int64)
        source_part = self.offbody_part[py, px].astype(np.int64)
        accept = (source_part >= 0) & (distance[ry, rx] <= radius)
        accept &= self.neighbours[anchor_part, np.maximum(source_part, 0)]
        # Not beside surface drawn from its mirror twin: the hair beside the twin is the other side's,
        # and drawing it would show a bun or tuft twice.
        accept &= ~twinned[anchor]

        # 3. Low-resolution maps of the box, upsampled to the output.
        maps = np.full((box_h, box_w, 2), -1.0, np.float32)
        maps[ys, xs] = src
        maps[ry, rx] = ring_src
        accepted = np.zeros((box_h, box_w), np.float32)
        accepted[ry[accept], rx[accept]] = 1.0
        filled = np.zeros((box_h, box_w), bool)
        if len(fill):
            # Surface nobody saw: the mesh colours, drawn into the canvas's spare columns at low
            # resolution (padded with the nearest fill colour), and mapped there like any source pixel.
            fy, fx = ys[fill], xs[fill]
            filled[fy, fx] = True
            colours = np.zeros((box_h * box_w, 3), np.float32)
            colours[fy * box_w + fx] = interpolate(self.colours, triangles[fill], bary[fill])
            _, nearest_fill = nearest_pixel(filled)
            padded = colours[np.flatnonzero(filled)[nearest_fill]].reshape(box_h, box_w, 3)
            self.canvas[:box_h, width : width + box_w, :3] = np.clip(padded + 0.5, 0, 255).astype(np.uint8)
            maps[fy, fx] = np.stack([fx + width, fy], 1)
        big = (box_w * s, box_h * s)
        full_map = _upsample_map(maps, s)
        alpha = _resize(body.astype(np.float32), big)
        body_alpha = alpha.copy()
        sampled = cv2.remap(self.canvas, full_map, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        ring_alpha = _resize(accepted, big)
        ring_alpha *= sampled[..., 3]
        ring_alpha *= np.float32(1.0 / 255.0)
        np.maximum(alpha, ring_alpha, out=alpha)
        if self.edge_sigma > 0:
            alpha = cv2.GaussianBlur(alpha, (0, 0), self.edge_sigma)
        # The box may pass the frame's edge by the rounding of an odd output size.
        Y0, X0 = y0 * s, x0 * s
        Y1, X1 = min(Y0 + big[1], height), min(X0 + big[0], width)
        alpha = alpha[: Y1 - Y0, : X1 - X0]
        colour = cv2.cvtColor(sampled[: Y1 - Y0, : X1 - X0], cv2.COLOR_RGBA2RGB)
        frame = self.background.copy()
        frame[Y0:Y1, X0:X1] = cv2.blendLinear(colour, frame[Y0:Y1, X0:X1], alpha, 1.0 - alpha)
        fill_mask = cv2.resize(filled.astype(np.uint8), big, interpolation=cv2.INTER_NEAREST) > 0
        crop = (slice(0, Y1 - Y0), slice(0, X1 - X0))
        masks = FrameMasks(
            (height, width), (Y0, X0), alpha > 0.5, body_alpha[crop] > 0.5, fill_mask[crop]
        )  # fmt: skip
        return frame, masks


@dataclass(frozen=True)
class FrameMasks:
    """Masks of one body-path frame, kept as crops of the box that holds the person.

    ``silhouette``: the person drawn (alpha > 0.5); ``body``: the rendered target body; ``fill``: body
    pixels the reference does not show, drawn from the mesh colours. Each is (H, W) bool on access.
    """

    size: tuple[int, int]  # (H, W) of the frame
    origin: tuple[int, int]  # (y, x) of the crops' top-left corner
    silhouette_crop: np.ndarray
    body_crop: np.ndarray
    fill_crop: np.ndarray

    def _full(self, crop: np.ndarray) -> np.ndarray:
        out = np.zeros(self.size, bool)
        y, x = self.origin
        out[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
        return out

    @property
    def silhouette(self) -> np.ndarray:
        return self._full(self.silhouette_crop)

    @property
    def body(self) -> np.ndarray:
        return self._full(self.body_crop)

    @property
    def fill(self) -> np.ndarray:
        return self._full(self.fill_crop)


def _offbody_parts(part: np.ndarray, person: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """(H, W) int16: for person pixels off the body, the part of the nearest body pixel; -1 elsewhere.

    Also -1 where another part that is not a neighbour of that one is nearly as close (the gap between
    an arm and the torso belongs to neither), so a moving limb never drags such pixels along.
    """
    body = part >= 0
    out = np.full(part.shape, -1, np.int16)
    outside = person & ~body
    if not body.any() or not outside.any():
        return out
    distance, nearest = nearest_pixel(body)
    oy, ox = np.nonzero(outside)
    own = part.reshape(-1)[np.flatnonzero(body)][nearest[oy, ox]].astype(np.int64)
    own_distance = distance[oy, ox]
    other = np.full(len(oy), np.inf, np.float32)
    for k in np.unique(part[body]):
        d = cv2.distanceTransform((part != k).astype(np.uint8), cv2.DIST_L2, 5)[oy, ox]
        foreign = ~neighbours[own, k]
        other[foreign] = np.minimum(other[foreign], d[foreign])
    clear = other > 2.0 * own_distance + 4.0
    out[oy[clear], ox[clear]] = own[clear]
    return out


def _extend_cut(image: np.ndarray, person: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A person the picture cuts at its bottom edge (half-body) goes on below it: the image and mask
    with a quarter of their height added, repeating the last row, so a body that moves up in a frame
    brings more of itself into the picture instead of lifting its cut edge off the frame's bottom."""
    if person[-1].sum() < 0.05 * person.shape[1]:
        return image, person
    pad = max(8, person.shape[0] // 4)
    return (
        np.concatenate([image, np.repeat(image[-1:], pad, axis=0)]),
        np.concatenate([person, np.repeat(person[-1:], pad, axis=0)]),
    )


def _extend_person(image: np.ndarray, person: np.ndarray) -> np.ndarray:
    """The image with every pixel off the person (eroded by 1) set to the colour of its nearest person
    pixel, so samples that fall just outside the person (a body fitted a little wide) stay on it."""
    core = cv2.erode(person.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    if not core.any():
        core = person
    if not core.any():
        return image.copy()
    _, nearest = nearest_pixel(core)
    return image.reshape(-1, 3)[np.flatnonzero(core)[nearest]].reshape(image.shape)


def _triangle_areas(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(N,) unsigned areas of (N, 3) vertex-index triangles over (V, 2) points."""
    a, b, c = points[triangles[:, 0]], points[triangles[:, 1]], points[triangles[:, 2]]
    ab, ac = b - a, c - a
    return 0.5 * np.abs(ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0])


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def _upsample_map(maps: np.ndarray, scale: int) -> np.ndarray:
    """(h, w, 2) sampling coordinates (-1: unset) -> (h*scale, w*scale, 2): bilinear where the map is
    smooth, nearest where neighbours jump apart (occlusion edges, twin switches, the unset border), so no
    sample lands between two unrelated places."""
    if scale == 1:
        return maps
    h, w = maps.shape[:2]
    size = (w * scale, h * scale)
    out = cv2.resize(maps, size, interpolation=cv2.INTER_LINEAR)
    kernel = np.ones((3, 3), np.uint8)
    spread = cv2.morphologyEx(maps, cv2.MORPH_GRADIENT, kernel)
    jump = (np.maximum(spread[..., 0], spread[..., 1]) > 3.0 * scale + 2.0).astype(np.uint8)
    jy, jx = np.nonzero(cv2.resize(jump, size, interpolation=cv2.INTER_NEAREST))
    out[jy, jx] = maps[jy // scale, jx // scale]
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """uint8 0/1 mask with enclosed background regions set to 1 (flood fill from the border)."""
    padded = np.pad(mask, 1)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8), (0, 0), 1)
    return (padded | (1 - flood))[1:-1, 1:-1]


def _inverse_2x2(jac: np.ndarray) -> np.ndarray:
    """Batched inverse; near-singular maps (a limb seen end-on) fall back to the identity."""
    det = jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
    bad = np.abs(det) < 0.05
    jac = np.where(bad[:, None, None], np.eye(2, dtype=jac.dtype), jac)
    det = np.where(bad, 1.0, det)
    inv = np.empty_like(jac)
    inv[:, 0, 0], inv[:, 1, 1] = jac[:, 1, 1] / det, jac[:, 0, 0] / det
    inv[:, 0, 1], inv[:, 1, 0] = -jac[:, 0, 1] / det, -jac[:, 1, 0] / det
    return inv
