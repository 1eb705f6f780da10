"""The CPU engine: no weights, it moves the reference person's own pixels along the dense motion field.

Per frame, reference person pixels are carried to their target positions (forward splatting with a
depth order by body part), the target silhouette is closed, each target pixel looks up its exact
source position (a first-order inverse of the field) and samples the reference bilinearly; the result
is composited with a soft edge over the reference background, whose person was removed and filled once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import cv2
import numpy as np

from animate.motion.bundle import GuidanceBundle
from animate.motion.skeleton_field import BONES, SkeletonField

FrameProgress = Callable[[int, int], None]


def fill_background(image: np.ndarray, person: np.ndarray, scale: int = 4) -> np.ndarray:
    """The image with the person region inpainted (at 1/scale resolution, pasted back with a soft edge)."""
    height, width = person.shape
    grown = cv2.dilate(person.astype(np.uint8), np.ones((9, 9), np.uint8), iterations=2)
    if not grown.any():
        return image.copy()
    small_size = (max(8, width // scale), max(8, height // scale))
    small = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA)
    small_mask = (cv2.resize(grown, small_size, interpolation=cv2.INTER_NEAREST) > 0).astype(np.uint8)
    small_mask = cv2.dilate(small_mask, np.ones((3, 3), np.uint8))
    filled = cv2.inpaint(small, small_mask, 5, cv2.INPAINT_TELEA)
    filled = cv2.resize(filled, (width, height), interpolation=cv2.INTER_CUBIC)
    alpha = cv2.GaussianBlur(grown.astype(np.float32), (0, 0), 2.0)[..., None]
    return (image * (1 - alpha) + filled * alpha + 0.5).astype(np.uint8)


class WarpEngine:
    """Engine protocol: ``render(bundle, progress, should_cancel)`` yields (H, W, 3) uint8 frames."""

    name = "warp"

    def __init__(self, edge_sigma: float = 1.0) -> None:
        self.edge_sigma = edge_sigma
        self.last_silhouette: np.ndarray | None = None  # the person's pixels in the last frame yielded

    def render(
        self,
        bundle: GuidanceBundle,
        progress: FrameProgress | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Iterator[np.ndarray]:
        width = bundle.size[0]
        reference = bundle.reference
        person = bundle.reference_mask > 127
        background = fill_background(reference, person)
        ys, xs = np.nonzero(person)
        field = SkeletonField(bundle.reference_keypoints, np.stack([xs, ys], 1).astype(np.float64))
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
            frame, self.last_silhouette = self._compose(
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
