"""Fitting a parametric body to estimated poses: driving frames (pose), references (shape + pose).

Design
------
Everything is posed straight into the camera frame of a pinhole ``Camera`` (focal ``max(W, H)``), so a
fit is, per frame, a root rotation, a root translation and one axis-angle per posable joint
(``model.JOINT_NAMES``, world-aligned local axes: ``G_child = G_parent @ exp(pose)``), plus one body shape
for the whole sequence.

1. Initialisation, closed form, every frame at once (``initial_pose``): MediaPipe's 3D world landmarks
   share the camera's axes, so each body segment gets its direction from them. The pelvis frame comes from
   the hip axis and the torso's up vector, the chest frame from the shoulder axis (the spine takes half the
   pelvis -> chest rotation on each of its two joints), the head frame from the ears and the nose (half on
   the neck). Each limb joint then takes the smallest rotation that turns its rest segment (shoulder ->
   elbow, elbow -> wrist, wrist -> hand, hip -> knee, knee -> ankle, ankle -> toes) onto the landmarks'
   direction, given its parent's rotation: ``G_c = R_min(G_p d_rest -> d_target) G_p``; the upper arm and
   thigh are then twisted about their segment so that the elbow or knee below bends about its hinge axis,
   in the plane of the two segments (a shortest arc there bends it sideways, out of the joint limits, and
   the refinement settles with a forearm pointing the wrong way, often at the camera). The translation
   follows from the 2D keypoints by linear least squares (the pinhole equations are linear in it).
2. Refinement, batched (``refine``): a few Adam steps over a window of frames at once on
   - 2D: robust (Charbonnier) distance between the projected model keypoints (COCO body + feet: Anny's
     own regressor, or SMPL joints and vertices) and the detected ones, weighted by their scores and
     measured in units of the person's height in pixels;
   - 3D: cosine between model segment directions and the landmarks' (depth, which 2D cannot see);
   - joint limits: knees and elbows are hinges (positive flexion about an axis from the rest geometry,
     little off-axis rotation), every other joint has a maximum rotation;
   - temporal smoothness: squared acceleration of the joints, the keypoints and a fixed set of surface
     points (which see a limb's twist) across frames.
   Keypoints, joints and surface points are linear blends of the bone transforms, so a step costs one
   forward kinematics pass over the window and never skins the whole mesh.
   Windows (``fit_chunks``, streamed): each chunk of ``FitOptions.chunk`` frames is solved together with
   the ``overlap`` frames after it, and the smoothness term ties it to the last two frames emitted before
   it. Warm start: a window starts from the previous window's solution (its look-ahead frames as solved,
   the others from the closed-form init corrected by the change that took the previous window's last frame
   from its init to its solution) and takes smaller steps, so chunk seams do not jump.
3. Shape (``fit_shape``): the shape parameters are fitted on a few well-detected frames jointly with
   their poses, to the MediaPipe metric bone lengths (scale), the 2D keypoints, and the person mask
   (the silhouette term pulls projected surface points into the mask and the mask's pixels towards the
   nearest projected point, on a fixed subset of vertices). Anny's shape -> rest map is costly, so it is
   linearised (``_LinearRest``); SMPL's is linear already.

Fits run torch on one thread (``fit_threads``): thousands of small ops, where OpenMP costs more than it
gives; on CUDA the same code runs on the body's device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from animate.body.camera import Camera
from animate.body.model import NUM_BODY_KEYPOINTS, BodyModel, Rest, matrix_to_rotvec, rotvec_to_matrix


@contextlib.contextmanager
def fit_threads(threads: int = 1) -> Iterator[None]:
    """Run torch on ``threads`` intra-op threads inside the block, then restore the previous count.

    A fit is thousands of small tensor ops; OpenMP's fork/join per op costs more than a second thread
    saves, and on a shared machine a descheduled worker stalls every op (measured on 2 busy cores: the
    driver fit 8x slower with 2 threads than with 1). One thread also leaves the other core to the renderer.
    """
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# MediaPipe BlazePose world landmark indices.
MP_NOSE, MP_L_EAR, MP_R_EAR = 0, 7, 8
MP_L_SHOULDER, MP_R_SHOULDER, MP_L_ELBOW, MP_R_ELBOW, MP_L_WRIST, MP_R_WRIST = 11, 12, 13, 14, 15, 16
MP_L_PINKY, MP_R_PINKY, MP_L_INDEX, MP_R_INDEX = 17, 18, 19, 20
MP_L_HIP, MP_R_HIP, MP_L_KNEE, MP_R_KNEE, MP_L_ANKLE, MP_R_ANKLE = 23, 24, 25, 26, 27, 28
MP_L_FOOT, MP_R_FOOT = 31, 32

# Joint indices in model.JOINT_NAMES (+1 in Posed.joints / Rest.joints, whose 0 is the root).
J_SPINE_LO, J_SPINE_HI, J_NECK, J_HEAD = 0, 1, 2, 3
J_L_COLLAR, J_L_SHOULDER, J_L_ELBOW, J_L_WRIST = 4, 5, 6, 7
J_R_COLLAR, J_R_SHOULDER, J_R_ELBOW, J_R_WRIST = 8, 9, 10, 11
J_L_HIP, J_L_KNEE, J_L_ANKLE, J_R_HIP, J_R_KNEE, J_R_ANKLE = 12, 13, 14, 15, 16, 17

#: Limb joints: (joint, parent joint or -1 for the root, landmark at the joint, landmark(s) at the segment end).
LIMBS: tuple[tuple[int, int, tuple[int, ...], tuple[int, ...]], ...] = (
    (J_L_SHOULDER, J_SPINE_HI, (MP_L_SHOULDER,), (MP_L_ELBOW,)),
    (J_L_ELBOW, J_L_SHOULDER, (MP_L_ELBOW,), (MP_L_WRIST,)),
    (J_L_WRIST, J_L_ELBOW, (MP_L_WRIST,), (MP_L_PINKY, MP_L_INDEX)),
    (J_R_SHOULDER, J_SPINE_HI, (MP_R_SHOULDER,), (MP_R_ELBOW,)),
    (J_R_ELBOW, J_R_SHOULDER, (MP_R_ELBOW,), (MP_R_WRIST,)),
    (J_R_WRIST, J_R_ELBOW, (MP_R_WRIST,), (MP_R_PINKY, MP_R_INDEX)),
    (J_L_HIP, -1, (MP_L_HIP,), (MP_L_KNEE,)),
    (J_L_KNEE, J_L_HIP, (MP_L_KNEE,), (MP_L_ANKLE,)),
    (J_L_ANKLE, J_L_KNEE, (MP_L_ANKLE,), (MP_L_FOOT,)),
    (J_R_HIP, -1, (MP_R_HIP,), (MP_R_KNEE,)),
    (J_R_KNEE, J_R_HIP, (MP_R_KNEE,), (MP_R_ANKLE,)),
    (J_R_ANKLE, J_R_KNEE, (MP_R_ANKLE,), (MP_R_FOOT,)),
)
#: Maximum rotation (radians) of the ball joints; hinges (elbows, knees) are handled separately.
MAX_ROTATION = {
    J_SPINE_LO: 0.5, J_SPINE_HI: 0.5, J_NECK: 0.6, J_HEAD: 0.7, J_L_COLLAR: 0.3, J_R_COLLAR: 0.3,
    J_L_SHOULDER: 2.8, J_R_SHOULDER: 2.8, J_L_WRIST: 1.3, J_R_WRIST: 1.3,
    J_L_HIP: 2.3, J_R_HIP: 2.3, J_L_ANKLE: 0.8, J_R_ANKLE: 0.8,
}  # fmt: skip
HINGES = (J_L_ELBOW, J_R_ELBOW, J_L_KNEE, J_R_KNEE)
#: The hinge below each limb joint (shoulder -> elbow, hip -> knee) and each limb joint's end landmarks.
HINGE_OF = {J_L_SHOULDER: J_L_ELBOW, J_R_SHOULDER: J_R_ELBOW, J_L_HIP: J_L_KNEE, J_R_HIP: J_R_KNEE}
LIMB_STOP = {joint: stop for joint, _parent, _start, stop in LIMBS}
HINGE_MAX, HINGE_OFF_AXIS = 2.7, 0.35
# Model keypoints that are the same anatomical points as COCO's (used for the bone-length scale).


@dataclass(frozen=True)
class FitOptions:
    steps: int = 60  # Adam steps per chunk
    chunk: int = 16  # frames optimised together
    overlap: int = 4  # frames each chunk also looks ahead at (solved again, from there, by the next chunk)
    lr: float = 0.03
    min_score: float = 0.3  # keypoints below this score are ignored
    w_2d: float = 1.0
    w_3d: float = 0.02
    w_limits: float = 1.0
    w_smooth: float = 2.0  # on joint accelerations in metres per frame^2 (summed over joints)
    w_prior: float = 0.002  # small pull towards the closed-form initialisation
    smooth: bool = True
    smooth_markers: int = 96  # surface points (fixed random vertices) in the smoothness term
    w_markers: float = 0.3  # their share of the smoothness weight, relative to the joints + keypoints
    warm_start: bool = True  # each chunk starts from the previous chunk's solution (see fit_sequence)
    warm_lr_scale: float = 0.3
    warm_steps: int = 0
    cold_steps: int = 0  # steps of the first window, which starts from the closed form (0: 2 x ``steps``)
    focal_factor: float = 1.0
    threads: int = 1  # torch threads while fitting (see fit_threads)


@dataclass
class BodyTrack:
    """A body fitted over frames: one shape, per-frame pose, all in ``camera`` space."""

    model: str
    shape: np.ndarray  # (S,)
    root: np.ndarray  # (T, 3) axis-angle, canonical -> camera
    pose: np.ndarray  # (T, J, 3) axis-angle per joint
    transl: np.ndarray  # (T, 3) metres
    camera: Camera
    fps: float = 0.0
    valid: np.ndarray | None = None  # (T,) frames with a detection behind them
    meta: dict = field(default_factory=dict)
    girth: np.ndarray | None = None  # (24, len(girth.STATIONS)) cross-section scales (animate.body.girth)

    def __len__(self) -> int:
        return len(self.root)

    def tensors(self, body: BodyModel, frames: slice | None = None) -> tuple[torch.Tensor, ...]:
        frames = frames or slice(None)
        return (
            body.tensor(self.root[frames]),
            body.tensor(self.pose[frames]),
            body.tensor(self.transl[frames]),
        )

    def vertices(
        self, body: BodyModel, frames: slice | None = None, rest: Rest | None = None
    ) -> torch.Tensor:
        """(T', V, 3) camera-space mesh of the frames (all by default), its cross-sections scaled by the
        track's ``girth`` when it has one; pass ``rest`` to reuse one."""
        with torch.no_grad(), fit_threads():
            rest = rest or body.rest(body.tensor(self.shape)[None])
            posed = body.pose(rest, *self.tensors(body, frames))
        if self.girth is None:
            return posed.vertices
        from animate.body.girth import inflate

        vertices = inflate(
            posed.vertices.cpu().numpy(),
            posed.joints.cpu().numpy(),
            self.girth,
            body.vertex_parts.astype(np.int64),
            body.faces,
        )
        return torch.from_numpy(vertices).to(posed.vertices)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "camera": self.camera.to_json(),
            "fps": float(self.fps),
            "shape": np.round(self.shape, 5).tolist(),
            "frames": [
                {
                    "root": np.round(self.root[t], 5).tolist(),
                    "transl": np.round(self.transl[t], 5).tolist(),
                    "pose": np.round(self.pose[t], 5).tolist(),
                    "valid": bool(self.valid[t]) if self.valid is not None else True,
                }
                for t in range(len(self))
            ],
            **({"meta": self.meta} if self.meta else {}),
            **({"girth": np.round(self.girth, 4).tolist()} if self.girth is not None else {}),
        }

    @classmethod
    def from_json(cls, data: dict) -> BodyTrack:
        frames = data["frames"]
        return cls(
            model=data["model"],
            shape=np.asarray(data["shape"], np.float32),
            root=np.asarray([f["root"] for f in frames], np.float32).reshape(-1, 3),
            pose=np.asarray([f["pose"] for f in frames], np.float32),
            transl=np.asarray([f["transl"] for f in frames], np.float32).reshape(-1, 3),
            camera=Camera.from_json(data["camera"]),
            fps=float(data.get("fps", 0.0)),
            valid=np.asarray([f.get("valid", True) for f in frames], bool),
            meta=data.get("meta", {}),
            girth=np.asarray(data["girth"], np.float32) if "girth" in data else None,
        )


# ---- closed-form initialisation --------------------------------------------------------------------


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-8)


def _frame(axis: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (columns) with x along ``axis`` and y towards ``up``."""
    x = _normalize(axis)
    y = _normalize(up - (up * x).sum(-1, keepdim=True) * x)
    z = torch.linalg.cross(x, y)
    return torch.stack([x, y, z], -1)


def _min_rotation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest rotation taking direction ``a`` to direction ``b`` (..., 3) -> (..., 3, 3)."""
    a, b = _normalize(a), _normalize(b)
    axis = torch.linalg.cross(a, b)
    s = axis.norm(dim=-1, keepdim=True)
    c = (a * b).sum(-1, keepdim=True)
    angle = torch.atan2(s, c)
    # Opposite directions: any perpendicular axis.
    perp = torch.linalg.cross(a, a.new_tensor([1.0, 0.0, 0.0]).expand_as(a))
    perp = torch.where(
        perp.norm(dim=-1, keepdim=True) < 1e-3,
        torch.linalg.cross(a, torch.zeros_like(a) + a.new_tensor([0.0, 1.0, 0.0])),
        perp,
    )
    axis = torch.where(s < 1e-6, _normalize(perp), axis / s.clamp(min=1e-12))
    return rotvec_to_matrix(axis * angle)


def rest_points(body: BodyModel, rest: Rest) -> dict[str, torch.Tensor]:
    """Rest-pose (canonical frame) joints (J+1), segment ends (J) and keypoints (23) of a shape."""
    zeros = torch.zeros(rest.shape.shape[0], 3, dtype=body.dtype, device=body.device)
    pose = torch.zeros(rest.shape.shape[0], len(body.joint_names), 3, dtype=body.dtype, device=body.device)
    with torch.no_grad():
        posed = body.pose(rest, zeros, pose, zeros, with_vertices=False)
    shift = posed.joints[:, :1] - rest.joints[:, :1]
    return {"joints": posed.joints, "ends": rest.extra["segment_ends"] + shift, "keypoints": posed.keypoints}


def initial_pose(body: BodyModel, rest: Rest, world: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form (T, 3) root and (T, J, 3) pose from (T, 33, 3+) MediaPipe world landmarks."""
    pts = rest_points(body, rest)
    joints, ends, kps = pts["joints"][0], pts["ends"][0], pts["keypoints"][0]
    w = world[..., :3]
    t = w.shape[0]
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    g = [eye.expand(t, 3, 3) for _ in range(len(body.joint_names))]

    def j(index: int) -> torch.Tensor:  # rest position of a posable joint
        return joints[index + 1]

    hip_axis_r = j(J_L_HIP) - j(J_R_HIP)
    sh_axis_r = j(J_L_SHOULDER) - j(J_R_SHOULDER)
    up_r = (j(J_L_SHOULDER) + j(J_R_SHOULDER)) / 2 - (j(J_L_HIP) + j(J_R_HIP)) / 2
    hip_axis_t = w[:, MP_L_HIP] - w[:, MP_R_HIP]
    sh_axis_t = w[:, MP_L_SHOULDER] - w[:, MP_R_SHOULDER]
    up_t = (w[:, MP_L_SHOULDER] + w[:, MP_R_SHOULDER]) / 2 - (w[:, MP_L_HIP] + w[:, MP_R_HIP]) / 2
    g_root = _frame(hip_axis_t, up_t) @ _frame(hip_axis_r, up_r).T.expand(t, 3, 3)
    g_chest = _frame(sh_axis_t, up_t) @ _frame(sh_axis_r, up_r).T.expand(t, 3, 3)
    half = matrix_to_rotvec(g_root.transpose(1, 2) @ g_chest) / 2
    pose = torch.zeros(t, len(body.joint_names), 3, dtype=w.dtype, device=w.device)
    pose[:, J_SPINE_LO] = half
    pose[:, J_SPINE_HI] = half
    g[J_SPINE_LO] = g_root @ rotvec_to_matrix(half)
    g[J_SPINE_HI] = g_chest
    g[J_L_COLLAR] = g[J_R_COLLAR] = g_chest
    # Head: ear axis and the nose direction (forward) from the ears' midpoint.
    ear_axis_r = kps[3] - kps[4]
    nose_r = kps[0] - (kps[3] + kps[4]) / 2
    ear_axis_t = w[:, MP_L_EAR] - w[:, MP_R_EAR]
    nose_t = w[:, MP_NOSE] - (w[:, MP_L_EAR] + w[:, MP_R_EAR]) / 2
    g_head = _frame(ear_axis_t, nose_t) @ _frame(ear_axis_r, nose_r).T.expand(t, 3, 3)
    half = matrix_to_rotvec(g_chest.transpose(1, 2) @ g_head) / 2
    pose[:, J_NECK] = half
    pose[:, J_HEAD] = half
    g[J_NECK] = g_chest @ rotvec_to_matrix(half)
    g[J_HEAD] = g_head
    hinge_axes = dict(zip(HINGES, _hinge_axes(body, rest), strict=True))
    for joint, parent, _start, stop in LIMBS:
        g_p = g_root if parent < 0 else g[parent]
        start_t = w[:, _start].mean(1)
        d_t = w[:, stop].mean(1) - start_t
        d_r = ends[joint] - j(joint)
        g_c = _min_rotation((g_p @ d_r[:, None])[..., 0], d_t) @ g_p
        child = HINGE_OF.get(joint)
        if child is not None:
            # Twist the limb about its segment so that the hinge below it bends in the plane of the two
            # segments: the hinge then takes a pure flexion, as the joint limits require (a min rotation
            # there would bend the elbow sideways, and the fit settles with the forearm out of that plane).
            d_child = w[:, LIMB_STOP[child]].mean(1) - w[:, stop].mean(1)
            g_c = _twist_to_hinge(g_c, d_t, d_child, hinge_axes[child]) @ g_c
        pose[:, joint] = matrix_to_rotvec(g_p.transpose(1, 2) @ g_c)
        g[joint] = g_c
    return matrix_to_rotvec(g_root), pose


def _twist_to_hinge(
    g: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor, axis_rest: torch.Tensor, min_bend: float = 0.25
) -> torch.Tensor:
    """(T, 3, 3) rotation about the (T, 3) ``upper`` segment that turns the hinge axis carried by ``g``
    (``axis_rest`` in rest axes) onto the flexion axis taking ``upper`` to ``lower`` (``upper x lower``).
    A nearly straight hinge has no plane to match: the twist fades out as the sine of the bend falls from
    ``min_bend`` to half of it (so the initialisation does not jump between frames)."""
    u = _normalize(upper)
    target = torch.linalg.cross(u, _normalize(lower))
    share = ((target.norm(dim=-1) - 0.5 * min_bend) / (0.5 * min_bend)).clamp(0.0, 1.0)
    target = _normalize(target)
    axis = g @ axis_rest
    axis = _normalize(axis - (axis * u).sum(-1, keepdim=True) * u)
    angle = torch.atan2((torch.linalg.cross(axis, target) * u).sum(-1), (axis * target).sum(-1))
    return rotvec_to_matrix(u * (share * angle)[:, None])


def solve_translation(
    keypoints_cam: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, camera: Camera
) -> torch.Tensor:
    """(T, 3) translation putting (T, K, 3) root-relative points onto (T, K, 2) pixels, least squares."""
    x, y, z = keypoints_cam.unbind(-1)
    u = target[..., 0] - camera.cx
    v = target[..., 1] - camera.cy
    zero, fx, fy = torch.zeros_like(x), torch.full_like(x, camera.fx), torch.full_like(x, camera.fy)
    # fx (X + tx) - u (Z + tz) = 0 ; fy (Y + ty) - v (Z + tz) = 0
    a = torch.cat([torch.stack([fx, zero, -u], -1), torch.stack([zero, fy, -v], -1)], 1)
    b = torch.cat([u * z - fx * x, v * z - fy * y], 1)
    sw = torch.cat([weights, weights], 1).sqrt()[..., None]
    aw, bw = a * sw, b * sw[..., 0]
    ata = aw.transpose(1, 2) @ aw + 1e-6 * torch.eye(3, dtype=a.dtype, device=a.device)
    return torch.linalg.solve(ata, (aw.transpose(1, 2) @ bw[..., None]))[..., 0]


# ---- refinement ------------------------------------------------------------------------------------


def _hinge_axes(body: BodyModel, rest: Rest) -> torch.Tensor:
    """(4, 3) flexion axis of each hinge (elbows bend forward, knees backward) in rest axes."""
    pts = rest_points(body, rest)
    joints, ends = pts["joints"][0], pts["ends"][0]
    forward = torch.tensor(body.forward, dtype=body.dtype, device=body.device)
    axes = []
    for joint in HINGES:
        seg = ends[joint] - joints[joint + 1]
        direction = forward if joint in (J_L_ELBOW, J_R_ELBOW) else -forward
        axes.append(_normalize(torch.linalg.cross(seg, direction)))
    return torch.stack(axes)


def limit_penalty(pose: torch.Tensor, hinge_axes: torch.Tensor) -> torch.Tensor:
    """(T,) squared violation of the joint limits."""
    hinges = pose[:, list(HINGES)]
    flex = (hinges * hinge_axes).sum(-1)
    off = (hinges - flex[..., None] * hinge_axes).norm(dim=-1)
    out = torch.relu(-flex).square() + torch.relu(flex - HINGE_MAX).square()
    out = out + torch.relu(off - HINGE_OFF_AXIS).square()
    balls = list(MAX_ROTATION)
    limits = pose.new_tensor([MAX_ROTATION[k] for k in balls])
    out_balls = torch.relu(pose[:, balls].norm(dim=-1) - limits).square()
    return out.sum(-1) + out_balls.sum(-1)


#: Model segments compared with MediaPipe's 3D directions: (model joint or end, model end) and landmarks.
def _segments() -> list[tuple[int, int, tuple[int, ...], tuple[int, ...]]]:
    return [(joint, joint, start, stop) for joint, _p, start, stop in LIMBS]


def person_height_px(keypoints: np.ndarray, min_score: float = 0.3) -> float:
    """A robust person height in pixels from (T, 133, 3) keypoints: median head-to-ankle extent x 1.12."""
    kp = keypoints[:, :23]
    heights = []
    for frame in kp:
        good = frame[frame[:, 2] >= min_score]
        if len(good) >= 6:
            heights.append(good[:, 1].max() - good[:, 1].min())
    return float(np.median(heights) * 1.12) if heights else 1.0


def smoothness_markers(body: BodyModel, count: int) -> torch.Tensor:
    """A fixed, spread-out set of vertex ids for the smoothness term."""
    gen = torch.Generator().manual_seed(0)
    return torch.randperm(body.num_vertices, generator=gen)[:count].to(body.device)


def _smoothness_points(posed) -> torch.Tensor:
    """(T, N, 3) the points whose accelerations the smoothness term penalises."""
    parts = [posed.joints, posed.keypoints]
    if posed.vertices is not None:
        parts.append(posed.vertices)
    return torch.cat(parts, 1)


def refine(
    body: BodyModel,
    rest: Rest,
    camera: Camera,
    keypoints: torch.Tensor,
    world: torch.Tensor | None,
    root: torch.Tensor,
    pose: torch.Tensor,
    transl: torch.Tensor,
    options: FitOptions,
    height_px: float,
    anchor: torch.Tensor | None = None,
    markers: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A few batched Adam steps over one chunk.

    The smoothness term tracks the joints, the keypoints and the surface points ``markers`` (vertex ids:
    they see a limb's twist, which joints do not); ``anchor`` holds those (2, N, 3) points in the two frames
    before the chunk (``smoothness_points``).
    """
    target = keypoints[:, :NUM_BODY_KEYPOINTS, :2]
    weights = keypoints[:, :NUM_BODY_KEYPOINTS, 2] * (
        keypoints[:, :NUM_BODY_KEYPOINTS, 2] >= options.min_score
    )
    hinge_axes = _hinge_axes(body, rest)
    init_pose = pose.detach().clone()
    params = [p.detach().clone().requires_grad_(True) for p in (root, pose, transl)]
    opt = torch.optim.Adam(params, lr=options.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, options.steps), eta_min=options.lr * 0.05)
    eps = 0.01
    seg = _segments()
    if world is not None:
        w = world[..., :3]
        d_mp = _normalize(
            torch.stack(
                [w[:, list(stop)].mean(1) - w[:, list(start)].mean(1) for _j, _e, start, stop in seg], 1
            )
        )
        vis = world[..., 3] if world.shape[-1] > 3 else torch.ones_like(world[..., 0])
        w_mp = torch.stack(
            [
                torch.minimum(vis[:, list(start)].min(1).values, vis[:, list(stop)].min(1).values)
                for _j, _e, start, stop in seg
            ],
            1,
        )
    ends_index = [e for _j, e, _s, _t in seg]
    if world is not None:
        # The limb segments with a child joint: (Posed.joints index of the joint, of its child, segment k).
        child = {J_L_SHOULDER: J_L_ELBOW, J_L_ELBOW: J_L_WRIST, J_R_SHOULDER: J_R_ELBOW, J_R_ELBOW: J_R_WRIST,
                 J_L_HIP: J_L_KNEE, J_L_KNEE: J_L_ANKLE, J_R_HIP: J_R_KNEE, J_R_KNEE: J_R_ANKLE}  # fmt: skip
        pairs = [(joint + 1, child[joint] + 1, k) for k, joint in enumerate(ends_index) if joint in child]
        seg_joint, seg_child, seg_k = (list(x) for x in zip(*pairs, strict=True))
        d_seg, w_seg = d_mp[:, seg_k], w_mp[:, seg_k]
    t_count = root.shape[0]
    for _ in range(options.steps):
        opt.zero_grad()
        r, p, tr = params
        posed = body.pose(rest, r, p, tr, vertex_ids=markers, with_vertices=markers is not None)
        uv = camera.project(posed.keypoints)
        d = (uv - target).norm(dim=-1) / height_px
        loss_2d = (weights * (torch.sqrt(d * d + eps * eps) - eps)).sum() / weights.sum().clamp(min=1.0)
        loss = options.w_2d * loss_2d * 10.0
        if world is not None and options.w_3d > 0:
            # Segment direction: from the joint to its child joint (limb chains) in the posed body.
            d_model = _normalize(posed.joints[:, seg_child] - posed.joints[:, seg_joint])
            cos = w_seg * (1.0 - (d_model * d_seg).sum(-1))
            loss = loss + options.w_3d * cos.sum(1).mean()
        loss = loss + options.w_limits * limit_penalty(p, hinge_axes).mean()
        loss = loss + options.w_prior * (p - init_pose).square().sum((1, 2)).mean()
        if options.smooth and t_count + (0 if anchor is None else 2) >= 3:
            track = _smoothness_points(posed)
            if anchor is not None:
                track = torch.cat([anchor, track], 0)
            acc = (track[2:] - 2 * track[1:-1] + track[:-2]).square().sum(-1).mean(0)  # per point
            n_skeleton = posed.joints.shape[1] + posed.keypoints.shape[1]
            loss = loss + options.w_smooth * acc[:n_skeleton].sum()
            if len(acc) > n_skeleton:  # markers: the same scale as the skeleton's points, times w_markers
                loss = loss + options.w_smooth * options.w_markers * acc[n_skeleton:].mean() * n_skeleton
        loss.backward()
        opt.step()
        sched.step()
    return tuple(p.detach() for p in params)  # type: ignore[return-value]


def fit_sequence(
    body: BodyModel,
    shape: np.ndarray,
    keypoints: np.ndarray,
    world: np.ndarray | None,
    camera: Camera,
    options: FitOptions | None = None,
    fps: float = 0.0,
    valid: np.ndarray | None = None,
) -> BodyTrack:
    """Fit the pose of every frame: (T, 133, 3) pixels, (T, 33, 4) MediaPipe world landmarks."""
    chunks = list(fit_chunks(body, shape, keypoints, world, camera, options, fps, valid))
    return concat_tracks(chunks)


def fit_chunks(
    body: BodyModel,
    shape: np.ndarray,
    keypoints: np.ndarray,
    world: np.ndarray | None,
    camera: Camera,
    options: FitOptions | None = None,
    fps: float = 0.0,
    valid: np.ndarray | None = None,
) -> Iterator[BodyTrack]:
    """``fit_sequence`` one chunk of ``options.chunk`` frames at a time (consecutive ``BodyTrack``s whose
    ``meta["start"]`` is their first frame), so a caller can render a chunk while the next one is fitted.

    Chunks are continuous: each chunk is solved together with the ``overlap`` frames after it (so its last
    frames are not a free end), the smoothness term ties it to the last two frames emitted before it, and
    with ``warm_start`` its parameters start from the previous window's solution: its look-ahead frames
    as solved, the rest from the closed-form initialisation corrected by the change (per-joint rotations,
    translation) that took the previous window's last frame from its initialisation to its solution.
    """
    options = options or FitOptions()
    if world is None:
        raise ValueError("fitting needs MediaPipe 3D world landmarks for its initialisation")
    t_count = keypoints.shape[0]
    valid = valid if valid is not None else np.ones(t_count, bool)
    height_px = person_height_px(keypoints, options.min_score)
    with fit_threads(options.threads):
        rest = body.rest(body.tensor(shape)[None])
        kp = body.tensor(keypoints)
        world_t = body.tensor(world)
        with torch.no_grad():
            root, pose = initial_pose(body, rest, world_t)
            zeros = torch.zeros_like(root)
            rel = body.pose(rest, root, pose, zeros, with_vertices=False).keypoints
            wts = kp[:, :NUM_BODY_KEYPOINTS, 2] * (kp[:, :NUM_BODY_KEYPOINTS, 2] >= options.min_score)
            transl = solve_translation(rel, kp[:, :NUM_BODY_KEYPOINTS, :2], wts, camera)
    markers = (
        smoothness_markers(body, options.smooth_markers)
        if options.smooth and options.smooth_markers
        else None
    )
    anchor = None
    correction = None
    carried = None  # the previous window's solution of the frames it looked ahead at
    for start in range(0, t_count, options.chunk):
        stop = min(t_count, start + options.chunk)
        window = slice(start, min(t_count, stop + options.overlap))
        with fit_threads(options.threads):
            r, p, tr = root[window], pose[window], transl[window]
            if correction is not None:
                r, p, tr = _apply_correction(correction, r, p, tr)
            if carried is not None:
                n = len(carried[0])
                r, p, tr = (torch.cat([c, x[n:]]) for c, x in zip(carried, (r, p, tr), strict=True))
            if options.steps > 0:
                # The first window starts far from its solution (the closed form): more steps.
                opts = replace(options, steps=options.cold_steps or 2 * options.steps)
                if correction is not None:
                    opts = replace(
                        options,
                        lr=options.lr * options.warm_lr_scale,
                        steps=options.warm_steps or options.steps,
                    )
                r, p, tr = refine(
                    body,
                    rest,
                    camera,
                    kp[window],
                    world_t[window],
                    r,
                    p,
                    tr,
                    opts,
                    height_px,
                    anchor,
                    markers,
                )
            keep = stop - start
            with torch.no_grad():
                two = slice(keep - 2, keep)
                last = body.pose(
                    rest, r[two], p[two], tr[two], vertex_ids=markers, with_vertices=markers is not None
                )
                anchor = _smoothness_points(last) if keep >= 2 else None
            if options.warm_start:
                init_last = (root[window][-1], pose[window][-1], transl[window][-1])
                correction = _correction(init_last, (r[-1], p[-1], tr[-1]))
                carried = (r[keep:], p[keep:], tr[keep:]) if len(r) > keep else None
        yield BodyTrack(
            model=body.name,
            shape=np.asarray(shape, np.float32),
            root=r[:keep].cpu().numpy(),
            pose=p[:keep].cpu().numpy(),
            transl=tr[:keep].cpu().numpy(),
            camera=camera,
            fps=fps,
            valid=valid[start:stop],
            meta={"start": start},
        )


def _correction(init: tuple[torch.Tensor, ...], solved: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The change that took one frame's initialisation to its solution: root and per-joint rotations
    (right-multiplied: R_init^T R_solved) and the translation offset."""
    r0 = rotvec_to_matrix(torch.cat([init[0][None], init[1]]))
    r1 = rotvec_to_matrix(torch.cat([solved[0][None], solved[1]]))
    return r0.transpose(-1, -2) @ r1, solved[2] - init[2]


def _apply_correction(
    correction: tuple[torch.Tensor, ...], root: torch.Tensor, pose: torch.Tensor, transl: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rotations, offset = correction
    r = rotvec_to_matrix(torch.cat([root[:, None], pose], 1)) @ rotations
    rv = matrix_to_rotvec(r)
    return rv[:, 0], rv[:, 1:], transl + offset


def concat_tracks(tracks: list[BodyTrack]) -> BodyTrack:
    """One ``BodyTrack`` from consecutive chunks of the same fit."""
    first = tracks[0]
    return BodyTrack(
        model=first.model,
        shape=first.shape,
        root=np.concatenate([t.root for t in tracks]),
        pose=np.concatenate([t.pose for t in tracks]),
        transl=np.concatenate([t.transl for t in tracks]),
        camera=first.camera,
        fps=first.fps,
        valid=np.concatenate([t.valid if t.valid is not None else np.ones(len(t), bool) for t in tracks]),
        meta={k: v for k, v in first.meta.items() if k != "start"},
        girth=first.girth,
    )


def projected_keypoints(body: BodyModel, track: BodyTrack) -> np.ndarray:
    """(T, 23, 2) pixels of the fitted body's keypoints."""
    rest = body.rest(body.tensor(track.shape)[None])
    with torch.no_grad():
        posed = body.pose(rest, *track.tensors(body), with_vertices=False)
    return track.camera.project(posed.keypoints).cpu().numpy()


def keypoint_errors(
    body: BodyModel, track: BodyTrack, keypoints: np.ndarray, min_score: float = 0.5
) -> np.ndarray:
    """Distances (pixels) between projected model keypoints and detected ones with score >= min_score."""
    uv = projected_keypoints(body, track)
    det = keypoints[:, :NUM_BODY_KEYPOINTS]
    good = det[..., 2] >= min_score
    return np.linalg.norm(uv - det[..., :2], axis=-1)[good]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


# ---- shape -----------------------------------------------------------------------------------------

#: Segments whose MediaPipe world lengths set the body's metric size: pairs of (model joint, landmark).
_LENGTHS = (
    ((J_L_SHOULDER, J_R_SHOULDER), (MP_L_SHOULDER, MP_R_SHOULDER)),
    ((J_L_HIP, J_R_HIP), (MP_L_HIP, MP_R_HIP)),
    ((J_L_SHOULDER, J_L_ELBOW), (MP_L_SHOULDER, MP_L_ELBOW)),
    ((J_R_SHOULDER, J_R_ELBOW), (MP_R_SHOULDER, MP_R_ELBOW)),
    ((J_L_ELBOW, J_L_WRIST), (MP_L_ELBOW, MP_L_WRIST)),
    ((J_R_ELBOW, J_R_WRIST), (MP_R_ELBOW, MP_R_WRIST)),
    ((J_L_HIP, J_L_KNEE), (MP_L_HIP, MP_L_KNEE)),
    ((J_R_HIP, J_R_KNEE), (MP_R_HIP, MP_R_KNEE)),
    ((J_L_KNEE, J_L_ANKLE), (MP_L_KNEE, MP_L_ANKLE)),
    ((J_R_KNEE, J_R_ANKLE), (MP_R_KNEE, MP_R_ANKLE)),
)
SILHOUETTE_SIZE = 256  # long side of the masks the silhouette term compares against
SILHOUETTE_VERTICES = 1500
SILHOUETTE_SAMPLES = 300


@dataclass(frozen=True)
class ShapeOptions:
    steps: int = 20
    relinearise_every: int = 20  # steps between exact evaluations of the shape -> rest map
    lr: float = 0.04
    w_2d: float = 1.0
    w_lengths: float = 2.0
    w_silhouette: float = 1.0
    w_shape: float = 0.02
    max_frames: int = 6
    threads: int = 1  # torch threads while fitting (see fit_threads)


def _silhouette_targets(masks: np.ndarray, camera: Camera) -> tuple[Camera, torch.Tensor, list[torch.Tensor]]:
    """Masks at SILHOUETTE_SIZE: the camera there, outside-distance maps (K, 1, h, w), mask pixel samples."""
    import cv2

    scale = SILHOUETTE_SIZE / max(camera.width, camera.height)
    w, h = max(8, round(camera.width * scale)), max(8, round(camera.height * scale))
    small = camera.resized(w, h)
    dists, samples = [], []
    rng = np.random.default_rng(0)
    for mask in masks:
        m = cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA) > 127
        outside = cv2.distanceTransform((~m).astype(np.uint8), cv2.DIST_L2, 3)
        dists.append(outside)
        ys, xs = np.nonzero(m)
        pick = rng.choice(len(ys), min(SILHOUETTE_SAMPLES, len(ys)), replace=False) if len(ys) else []
        samples.append(
            torch.tensor(
                np.stack([xs[pick] + 0.5, ys[pick] + 0.5], 1) if len(ys) else np.zeros((0, 2)),
                dtype=torch.float32,
            )
        )
    return small, torch.tensor(np.stack(dists))[:, None], samples


def silhouette_loss(
    uv: torch.Tensor, dist: torch.Tensor, samples: list[torch.Tensor], size: tuple[int, int], height_px: float
) -> torch.Tensor:
    """Projected surface points (K, N, 2) outside the mask, and mask pixels far from any of them."""
    w, h = size
    grid = torch.stack([uv[..., 0] / w * 2 - 1, uv[..., 1] / h * 2 - 1], -1)[:, :, None]
    outside = torch.nn.functional.grid_sample(dist, grid, align_corners=False, padding_mode="border")[
        :, 0, :, 0
    ]
    loss = outside.mean() / height_px
    cover = []
    for k, pts in enumerate(samples):
        if len(pts):
            # Each mask pixel's nearest projected point, chosen without gradient (cheap), then pulled closer.
            with torch.no_grad():
                nearest = torch.cdist(pts, uv[k].detach()).argmin(1)
            d = (uv[k][nearest] - pts).norm(dim=-1)
            cover.append(d.mean() / height_px)
    if cover:
        loss = loss + torch.stack(cover).mean()
    return loss


class _LinearRest:
    """The shape -> rest map linearised around a shape (exact rest once, one forward difference per
    parameter), so optimisation steps cost one posing pass instead of a full rest-model evaluation.
    Anny's phenotypes act through piecewise-linear interpolation, so the linear model is close."""

    def __init__(
        self, body: BodyModel, shape0: torch.Tensor, vertex_ids: torch.Tensor | None, eps: float = 0.05
    ):
        hi = body.tensor(body.shape_bounds()[1])
        self.shape0 = shape0.detach()
        self.vertex_ids = vertex_ids
        with torch.no_grad():
            base = self._fields(body.rest(self.shape0[None]))
            self.base = base
            self.jac = {k: [] for k in base}
            for i in range(len(shape0)):
                step = eps if self.shape0[i] + eps <= hi[i] else -eps
                shifted = self.shape0.clone()
                shifted[i] += step
                fields = self._fields(body.rest(shifted[None]))
                for k in base:
                    self.jac[k].append((fields[k] - base[k]) / step)
            self.jac = {k: torch.stack(v, -1) for k, v in self.jac.items()}

    def _fields(self, rest: Rest) -> dict[str, torch.Tensor]:
        points = rest.extra["local_points"]
        out = {
            "joints": rest.joints,
            "keypoint_blend": rest.keypoint_blend,
            "offsets": rest.extra["offsets"],
            "segment_ends": rest.extra["segment_ends"],
        }
        if self.vertex_ids is not None:
            out["local_points"] = points[:, self.vertex_ids]
        return out

    def __call__(self, shape: torch.Tensor) -> Rest:
        ds = shape - self.shape0
        f = {k: self.base[k] + (self.jac[k] * ds).sum(-1) for k in self.base}
        extra = {"offsets": f["offsets"], "segment_ends": f["segment_ends"]}
        if "local_points" in f:
            extra["local_points"] = f["local_points"]
        return Rest(shape[None], None, None, f["joints"], f["keypoint_blend"], extra)  # type: ignore[arg-type]


def fit_shape(
    body: BodyModel,
    keypoints: np.ndarray,
    world: np.ndarray,
    camera: Camera,
    masks: np.ndarray | None = None,
    options: ShapeOptions | None = None,
    shape_init: np.ndarray | None = None,
) -> tuple[np.ndarray, BodyTrack]:
    """Body shape (and the poses of these frames) from (K, 133, 3) keypoints, world landmarks, masks."""
    options = options or ShapeOptions()
    with fit_threads(options.threads):
        return _fit_shape(body, keypoints, world, camera, masks, options, shape_init)


def _fit_shape(
    body: BodyModel,
    keypoints: np.ndarray,
    world: np.ndarray,
    camera: Camera,
    masks: np.ndarray | None,
    options: ShapeOptions,
    shape_init: np.ndarray | None,
) -> tuple[np.ndarray, BodyTrack]:
    lo, hi = (body.tensor(b) for b in body.shape_bounds())
    shape0 = body.tensor(shape_init if shape_init is not None else body.default_shape())
    init = fit_sequence(
        body, shape0.cpu().numpy(), keypoints, world, camera, FitOptions(steps=20, smooth=False)
    )
    kp = body.tensor(keypoints)
    w = body.tensor(world)[..., :3]
    target = kp[:, :NUM_BODY_KEYPOINTS, :2]
    weights = kp[:, :NUM_BODY_KEYPOINTS, 2] * (kp[:, :NUM_BODY_KEYPOINTS, 2] >= 0.3)
    lengths_mp = (
        torch.stack([(w[:, a] - w[:, b]).norm(dim=-1) for _m, (a, b) in _LENGTHS], 1).median(0).values
    )
    height_px = person_height_px(keypoints)
    use_mask = masks is not None and options.w_silhouette > 0
    vertex_ids = None
    if use_mask:
        small, dist, samples = _silhouette_targets(masks, camera)
        dist, samples = dist.to(body.device), [pts.to(body.device) for pts in samples]
        gen = torch.Generator().manual_seed(0)
        vertex_ids = torch.randperm(body.num_vertices, generator=gen)[:SILHOUETTE_VERTICES].to(body.device)
        small_height = height_px * small.height / camera.height
    x = ((shape0 - lo) / (hi - lo)).clamp(0.02, 0.98)
    logit = torch.log(x / (1 - x)).clone().requires_grad_(True)
    params = [p.detach().clone().requires_grad_(True) for p in init.tensors(body)]
    opt = torch.optim.Adam([{"params": [logit], "lr": options.lr}, {"params": params, "lr": 0.02}])
    hinge_axes = _hinge_axes(body, body.rest(shape0[None]))
    linear: _LinearRest | None = None
    for step in range(options.steps):
        opt.zero_grad()
        shape = lo + (hi - lo) * torch.sigmoid(logit)
        if body.costly_rest:  # a linearisation that already holds only the silhouette's vertices
            if step % options.relinearise_every == 0:
                linear = _LinearRest(body, shape.detach(), vertex_ids if use_mask else None)
            rest, ids = linear(shape), None
        else:
            rest, ids = body.rest(shape[None]), vertex_ids
        posed = body.pose(rest, *params, vertex_ids=ids, with_vertices=use_mask)
        d = (camera.project(posed.keypoints) - target).norm(dim=-1) / height_px
        loss = (
            options.w_2d
            * 10.0
            * (weights * (torch.sqrt(d * d + 1e-4) - 0.01)).sum()
            / weights.sum().clamp(min=1)
        )
        joints = posed.joints
        lengths = torch.stack(
            [(joints[:, a + 1] - joints[:, b + 1]).norm(dim=-1) for (a, b), _l in _LENGTHS], 1
        )
        loss = loss + options.w_lengths * ((lengths.mean(0) - lengths_mp) / lengths_mp).square().mean()
        loss = loss + limit_penalty(params[1], hinge_axes).mean()
        loss = loss + options.w_shape * (shape - body.tensor(body.default_shape())).square().sum()
        if use_mask:
            uv = small.project(posed.vertices)
            loss = loss + options.w_silhouette * silhouette_loss(
                uv, dist, samples, (small.width, small.height), small_height
            )
        loss.backward()
        opt.step()
    shape = (lo + (hi - lo) * torch.sigmoid(logit)).detach().cpu().numpy()
    root, pose, transl = (p.detach().cpu().numpy() for p in params)
    track = BodyTrack(body.name, shape, root, pose, transl, camera)
    return shape, track
