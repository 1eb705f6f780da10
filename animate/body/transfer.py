"""Shape transfer and the two fits the guidance needs: the reference (shape) and the driving video (pose).

The body the video model must draw is the reference person's: ``transfer`` keeps the driving poses and
motion but gives them the reference's body shape, orientation and place in the reference's camera. The
driver's turning and travelling are applied relative to its first frame: orientation
``D R_drv[t]`` with ``D = R_ref R_drv[0]^T``, position ``t_ref + s (t_drv[t] - t_drv[0])`` with ``s`` the
ratio of the two bodies' heights. The limbs (from the shoulders and hips down) are turned by ``H`` only,
not ``D``: ``H`` turns about the camera's vertical axis by ``D``'s heading less ``HEADING_TOLERANCE``.
Two fits of people who both face the camera differ by up to ~10 degrees of pitch, roll and heading (fit
error, camera height), and a limb pointing at the camera swings by several times that in the picture when
such a rotation is applied to it; the torso and head keep ``D`` (in a self-reconstruction, the reference
fit's exact pose at frame 0), a reference clearly turned away keeps most of its turn on the limbs too.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import torch

from animate.body.camera import Camera
from animate.body.fit import (
    BodyTrack,
    FitOptions,
    ShapeOptions,
    concat_tracks,
    fit_chunks,
    fit_shape,
    fit_threads,
    matrix_to_rotvec,
    rotvec_to_matrix,
)
from animate.body.model import BodyModel


def _pose_arrays(poses) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, 133, 3) keypoints, (T, 33, 4) world landmarks and (T,) detected flags of a PoseSequence."""
    keypoints = poses.keypoints
    world = np.stack([p.world if p.world is not None else np.zeros((33, 4), np.float32) for p in poses])
    detected = poses.detected & np.array([p.world is not None for p in poses])
    return keypoints, world, detected


def _fill_missing(world: np.ndarray, detected: np.ndarray) -> np.ndarray:
    """World landmarks of undetected frames from the nearest detected frame."""
    if detected.all() or not detected.any():
        return world
    idx = np.flatnonzero(detected)
    nearest = idx[np.abs(np.arange(len(world))[:, None] - idx[None]).argmin(1)]
    return world[nearest]


def _shape_frames(detected: np.ndarray, keypoints: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` well-detected frames spread over the sequence."""
    score = keypoints[:, :17, 2].mean(1) * detected
    good = np.flatnonzero(score >= max(0.5, np.quantile(score, 0.5) * 0.9))
    if len(good) == 0:
        good = np.flatnonzero(detected)
    return good[np.linspace(0, len(good) - 1, min(count, len(good))).round().astype(int)]


def fit_driving(
    body: BodyModel,
    poses,
    masks: np.ndarray | None = None,
    options: FitOptions | None = None,
    shape_options: ShapeOptions | None = None,
    camera: Camera | None = None,
) -> BodyTrack:
    """Fit the driver's shape on a few frames, then the pose of every frame (shape fixed).

    ``poses`` is an ``animate.pose.PoseSequence`` with MediaPipe world landmarks; ``masks`` (T, H, W) uint8
    person masks at the poses' size (or None to fit the shape without the silhouette).
    """
    return concat_tracks(list(fit_driving_chunks(body, poses, masks, options, shape_options, camera)))


def fit_driving_chunks(
    body: BodyModel,
    poses,
    masks: np.ndarray | None = None,
    options: FitOptions | None = None,
    shape_options: ShapeOptions | None = None,
    camera: Camera | None = None,
) -> Iterator[BodyTrack]:
    """``fit_driving`` streamed: the shape fit first, then one ``BodyTrack`` per chunk of frames as soon as
    it is fitted (``fit_chunks``), so a caller can render while the rest is fitted and never holds the
    whole sequence's meshes. ``transfer`` each chunk with ``origin=`` the first chunk."""
    keypoints, world, detected = _pose_arrays(poses)
    world = _fill_missing(world, detected)
    camera = camera or Camera.default(poses.width, poses.height, (options or FitOptions()).focal_factor)
    shape_options = shape_options or ShapeOptions()
    idx = _shape_frames(detected, keypoints, shape_options.max_frames)
    shape, _ = fit_shape(
        body, keypoints[idx], world[idx], camera, None if masks is None else masks[idx], shape_options
    )
    yield from fit_chunks(body, shape, keypoints, world, camera, options, fps=poses.fps, valid=detected)


def fit_reference(
    body: BodyModel,
    pose,
    width: int,
    height: int,
    mask: np.ndarray | None = None,
    shape_options: ShapeOptions | None = None,
    girth: bool = True,
) -> BodyTrack:
    """Shape, pose and camera of the person in a reference image (one ``animate.pose.Pose``); with a
    ``mask`` and ``girth``, also how much thicker or thinner than the body each limb is (``track.girth``)."""
    if pose.world is None:
        from animate.errors import AnimateError

        raise AnimateError("no_3d_pose", "the reference's pose has no 3D landmarks to fit a body to")
    camera = Camera.default(width, height)
    options = shape_options or ShapeOptions(steps=60, relinearise_every=30)
    masks = None if mask is None else mask[None]
    _, track = fit_shape(body, pose.keypoints[None], pose.world[None], camera, masks, options)
    track.valid = np.ones(1, bool)
    if mask is not None and girth:
        track.girth = reference_girth(body, track, mask)
    return track


def reference_girth(body: BodyModel, track: BodyTrack, mask: np.ndarray) -> np.ndarray:
    """The girth profile (``animate.body.girth``) of a one-frame reference fit against its person mask."""
    from animate.body.girth import measure_girth
    from animate.body.render import Renderer

    with torch.no_grad(), fit_threads():
        rest = body.rest(body.tensor(track.shape)[None])
        posed = body.pose(rest, *track.tensors(body, slice(0, 1)))
    render = Renderer(body.faces, body.vertex_parts).render(posed.vertices[0].cpu().numpy(), track.camera)
    return measure_girth(posed.joints[0].cpu().numpy(), track.camera, mask, render.mask, render.part)


def body_height(body: BodyModel, shape: np.ndarray) -> float:
    """Standing height (metres) of a shape: extent of its rest mesh along the model's up axis."""
    return _body_height(body, tuple(np.asarray(shape, np.float64).round(6).tolist()))


@functools.lru_cache(maxsize=32)
def _body_height(body: BodyModel, shape: tuple[float, ...]) -> float:
    # Cached: chunked transfers ask for the same two shapes again and again.
    with torch.no_grad():
        rest = body.rest(body.tensor(np.asarray(shape, np.float32))[None])
    up = rest.vertices[0, :, body.up_axis]
    return float(up.max() - up.min())


#: Heading differences (degrees) up to this are fit noise between two people facing the camera: dropped
#: (and taken off larger ones, so the kept turn grows continuously from zero).
HEADING_TOLERANCE = 20.0


def heading_turn(rotation: np.ndarray, tolerance: float = HEADING_TOLERANCE) -> np.ndarray:
    """(3, 3) the turn about the camera's vertical (y) axis kept of a relative ``rotation``: its heading
    (where it takes the camera's forward axis, seen from above) less ``tolerance`` degrees, zero within."""
    forward = rotation[:, 2]
    heading = np.degrees(np.arctan2(forward[0], forward[2]))
    kept = np.radians(np.sign(heading) * max(abs(heading) - tolerance, 0.0))
    c, s = np.cos(kept), np.sin(kept)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


#: The joints where a limb starts: below them the limbs keep the driver's orientation in the camera.
LIMB_ROOTS = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")


def _limbs_turned(
    body: BodyModel, pose: np.ndarray, r_drv: torch.Tensor, delta: torch.Tensor, turn: torch.Tensor
) -> np.ndarray:
    """(T, J, 3) the driver's ``pose`` with the limb roots re-solved so that, on a body whose root is
    turned by ``delta`` (``delta @ r_drv``), every limb segment is turned by ``turn`` only: in world-aligned
    local axes a joint's rotation is ``G_c = G_p exp(pose_c)``, so ``exp(pose_c') = G_p^T delta^T turn
    G_p exp(pose_c)`` with ``G_p`` its parent's rotation in the driver's body."""
    local = rotvec_to_matrix(torch.as_tensor(pose, dtype=torch.float32))
    names, parents = body.joint_names, body.joint_parents
    world: list[torch.Tensor] = []
    for j, parent in enumerate(parents):
        world.append((r_drv if parent < 0 else world[parent]) @ local[:, j])
    out = torch.as_tensor(pose, dtype=torch.float32).clone()
    swap = delta.T @ turn.to(delta)
    for name in LIMB_ROOTS:
        j = names.index(name)
        g_p = r_drv if parents[j] < 0 else world[parents[j]]
        out[:, j] = matrix_to_rotvec(g_p.transpose(1, 2) @ swap @ g_p @ local[:, j])
    return out.numpy()


def transfer(
    body: BodyModel,
    driving: BodyTrack,
    reference: BodyTrack,
    camera: Camera | None = None,
    origin: BodyTrack | None = None,
) -> BodyTrack:
    """The driving poses on the reference's body, in the reference's camera and position.

    The motion is taken relative to the first frame of ``origin`` (default: ``driving`` itself); pass the
    first chunk when transferring a sequence chunk by chunk.
    """
    origin = origin if origin is not None else driving
    r_ref = rotvec_to_matrix(torch.as_tensor(reference.root[0], dtype=torch.float32))
    r_drv = rotvec_to_matrix(torch.as_tensor(driving.root, dtype=torch.float32))
    r_origin = rotvec_to_matrix(torch.as_tensor(origin.root[0], dtype=torch.float32))
    delta = r_ref @ r_origin.T
    root = matrix_to_rotvec(delta @ r_drv).numpy()
    pose = _limbs_turned(body, driving.pose, r_drv, delta, torch.as_tensor(heading_turn(delta.numpy())))
    scale = body_height(body, reference.shape) / body_height(body, driving.shape)
    transl = reference.transl[0] + scale * (driving.transl - origin.transl[0])
    return replace(
        driving,
        shape=reference.shape.copy(),
        root=root.astype(np.float32),
        pose=pose.astype(np.float32),
        transl=transl.astype(np.float32),
        camera=camera or reference.camera,
        meta={**driving.meta, "transferred": True},
        girth=None if reference.girth is None else reference.girth.copy(),
    )
