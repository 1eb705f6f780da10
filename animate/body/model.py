"""Parametric body models behind one small interface, and Anny (the default, CC0 assets in its wheel).

Conventions shared by every model:
- The body is posed straight into camera space (OpenCV axes: x right, y down, z forward): ``root`` is the
  rotation (axis-angle) from the model's canonical frame to the camera and ``transl`` puts the model's root
  joint in camera space, in metres. The camera itself is a pinhole at the origin (``Camera``).
- ``pose`` (B, J, 3) holds one axis-angle per posable joint (``joint_names``), in world-aligned local axes:
  the world rotation of joint ``c`` is ``G_c = G_parent(c) @ exp(pose_c)``, ``G_root = exp(root)``. With
  this form, setting a limb's direction from a target direction is a closed-form step (see ``fit.py``).
- Keypoints are the 23 COCO-WholeBody body + feet points (the order of ``animate.pose.layout``).
- Skinning is linear blend skinning, so any point that is a fixed linear blend of rest vertices (keypoints,
  vertex subsets) is a linear function of the bone transforms; ``Rest`` caches those blends per shape.
"""

from __future__ import annotations

import functools
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from animate.body.parts import anny_bone_part, vertex_parts

#: Posable joints of the fit, in a parent-before-child order (the root's rotation is separate).
JOINT_NAMES: tuple[str, ...] = (
    "spine_lower", "spine_upper", "neck", "head",
    "left_collar", "left_shoulder", "left_elbow", "left_wrist",
    "right_collar", "right_shoulder", "right_elbow", "right_wrist",
    "left_hip", "left_knee", "left_ankle",
    "right_hip", "right_knee", "right_ankle",
)  # fmt: skip
JOINT_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 1, 4, 5, 6, 1, 8, 9, 10, -1, 12, 13, -1, 15, 16)
NUM_JOINTS = len(JOINT_NAMES)
NUM_BODY_KEYPOINTS = 23  # COCO-WholeBody body (17) + feet (6)

COCO23_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle", "left_big_toe", "left_small_toe", "left_heel",
    "right_big_toe", "right_small_toe", "right_heel",
)  # fmt: skip


def rotvec_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle -> (..., 3, 3) rotation (Rodrigues, smooth at zero)."""
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]
    theta = torch.sqrt(theta2 + 1e-12)
    small = theta2 < 1e-8
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / (theta2 + 1e-12))
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*rotvec.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def matrix_to_rotvec(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation -> (..., 3) axis-angle with angle in [0, pi]."""
    import roma

    return roma.rotmat_to_rotvec(matrix)


@dataclass
class Rest:
    """A body shape's rest state: what posing needs, computed once per shape (batch 1 or B)."""

    shape: torch.Tensor  # (B, S)
    vertices: torch.Tensor  # (B, V, 3) rest vertices
    bone_poses: torch.Tensor  # (B, NB, 4, 4) rest bone poses
    joints: torch.Tensor  # (B, NUM_JOINTS + 1, 3) rest positions of the root and each posable joint
    keypoint_blend: torch.Tensor  # (B, NB, 23, 4): keypoint k = sum_b T_b[:3] @ blend[b, k]
    extra: dict


@dataclass
class Posed:
    vertices: torch.Tensor | None  # (B, V', 3) camera space (all vertices, or the requested subset)
    joints: torch.Tensor  # (B, NUM_JOINTS + 1, 3) root then posable joints, camera space
    keypoints: torch.Tensor  # (B, 23, 3) COCO-23 body + feet points, camera space
    transforms: torch.Tensor  # (B, NB, 4, 4) bone transforms (rest -> posed)


class BodyModel(ABC):
    """A skinned parametric body: shape parameters, posable joints, mesh, 24-part vertex labels."""

    name: str
    shape_names: tuple[str, ...]
    joint_names: tuple[str, ...] = JOINT_NAMES
    joint_parents: tuple[int, ...] = JOINT_PARENTS
    faces: np.ndarray  # (F, 3) int32 triangles
    vertex_parts: np.ndarray  # (V,) int16 part label 0..23
    device: torch.device
    dtype: torch.dtype = torch.float32
    forward: tuple[float, float, float]  # the direction the body faces in its canonical frame
    up_axis: int  # the canonical axis pointing from the feet to the head
    #: Whether ``rest`` is costly enough that shape fitting should use a linearisation of it.
    costly_rest: bool = False

    @property
    def num_vertices(self) -> int:
        return int(self.vertex_parts.shape[0])

    @abstractmethod
    def default_shape(self) -> np.ndarray:
        """(S,) the average body's shape parameters."""

    @abstractmethod
    def shape_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(S,), (S,) the range the shape parameters are kept in."""

    @abstractmethod
    def rest(self, shape: torch.Tensor) -> Rest:
        """Rest state for (B, S) shapes; differentiable in ``shape``."""

    @abstractmethod
    def pose(
        self,
        rest: Rest,
        root: torch.Tensor,
        pose: torch.Tensor,
        transl: torch.Tensor,
        vertex_ids: torch.Tensor | None = None,
        with_vertices: bool = True,
    ) -> Posed:
        """Pose ``rest`` (batch 1 or B) with (B, 3) root, (B, J, 3) pose, (B, 3) translation."""

    def tensor(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array) if not torch.is_tensor(array) else array).to(
            self.device, self.dtype
        )


class AnnyBody(BodyModel):
    """Anny (NAVER, Apache-2.0 code, CC0 assets): 13,718 vertices, 104 bones, 6 phenotype parameters.

    Canonical frame: z up, the body faces -y, the person's left is +x. Use ``load_anny()`` to get the
    process-wide instance (building Anny's data the very first time on a machine takes minutes; it is then
    cached under ``~/.cache/anny``).
    """

    name = "anny"
    forward = (0.0, -1.0, 0.0)
    up_axis = 2
    costly_rest = True
    # Bones driven by each posable joint; other bones (twists, fingers, toes) follow their parents.
    JOINT_BONES: tuple[str, ...] = (
        "spine03", "spine01", "neck01", "head",
        "clavicle.L", "upperarm01.L", "lowerarm01.L", "wrist.L",
        "clavicle.R", "upperarm01.R", "lowerarm01.R", "wrist.R",
        "upperleg01.L", "lowerleg01.L", "foot.L",
        "upperleg01.R", "lowerleg01.R", "foot.R",
    )  # fmt: skip
    #: A point further down each joint's segment (for bone directions): the child joint's bone.
    SEGMENT_END_BONES: tuple[str, ...] = (
        "spine01", "neck01", "head", "head",
        "upperarm01.L", "lowerarm01.L", "wrist.L", "finger3-1.L",
        "upperarm01.R", "lowerarm01.R", "wrist.R", "finger3-1.R",
        "lowerleg01.L", "foot.L", "toe3-1.L",
        "lowerleg01.R", "foot.R", "toe3-1.R",
    )  # fmt: skip

    def __init__(self, device: str | torch.device = "cpu") -> None:
        import anny

        self.device = torch.device(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = anny.Anny(skinning_method="lbs")
        self._model = model.to(device=self.device, dtype=self.dtype)
        self.shape_names = tuple(model.phenotype_labels)
        labels = list(model.bone_labels)
        self.bone_labels = tuple(labels)
        self.joint_bones = torch.tensor([labels.index(b) for b in self.JOINT_BONES], device=self.device)
        self.segment_end_bones = torch.tensor(
            [labels.index(b) for b in self.SEGMENT_END_BONES], device=self.device
        )
        self.faces = model.get_triangular_faces().cpu().numpy().astype(np.int32)
        bone_parts = np.array([anny_bone_part(b) for b in labels])
        weights = model.vertex_bone_weights.detach().cpu().numpy()
        indices = model.vertex_bone_indices.detach().cpu().numpy()
        self.vertex_parts = vertex_parts(weights, indices, bone_parts)
        self.keypoint_weights = self._keypoint_weights(model)  # (23, V)
        # Drivers: the root and the posable joints' bones; every bone follows its nearest driver.
        parents = list(model.bone_parents)
        driver_bones = [0] + [labels.index(b) for b in self.JOINT_BONES]
        driver_of = {bone: i for i, bone in enumerate(driver_bones)}

        def driver(bone: int) -> int:
            while bone not in driver_of:
                bone = parents[bone]
            return driver_of[bone]

        self.driver_bones = torch.tensor(driver_bones, device=self.device)
        self.bone_driver = torch.tensor([driver(b) for b in range(len(labels))], device=self.device)
        self.driver_parents_list = [-1] + [driver(parents[b]) for b in driver_bones[1:]]
        self.driver_parents = torch.tensor(self.driver_parents_list, device=self.device)
        depth = [0] * len(self.driver_parents_list)
        for d, parent in enumerate(self.driver_parents_list[1:], 1):
            depth[d] = depth[parent] + 1
        self.driver_levels = [
            (
                torch.tensor([d for d in range(len(depth)) if depth[d] == level], device=self.device),
                torch.tensor(
                    [self.driver_parents_list[d] for d in range(len(depth)) if depth[d] == level],
                    device=self.device,
                ),
            )
            for level in range(1, max(depth) + 1)
        ]
        self.vertex_bone_indices = model.vertex_bone_indices.to(self.device)
        self.vertex_bone_weights = model.vertex_bone_weights.to(self.device, self.dtype)

    def _keypoint_weights(self, model) -> torch.Tensor:
        from anny.keypoints import KeypointsRegressor

        regressor = KeypointsRegressor.coco(model, labels=list(COCO23_NAMES))
        return regressor.regression_weights.to(self.device, self.dtype)

    def default_shape(self) -> np.ndarray:
        return np.full(len(self.shape_names), 0.5, np.float32)

    def shape_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.shape_names)
        return np.zeros(n, np.float32), np.ones(n, np.float32)

    def rest(self, shape: torch.Tensor) -> Rest:
        shape = self.tensor(shape).reshape(-1, len(self.shape_names))
        batch = shape.shape[0]
        empty = shape.new_zeros(batch, 0)
        coeffs = self._model._get_phenotype_blendshape_coefficients(shape, empty, empty)
        rest = self._model.get_rest_model(coeffs)
        bone_poses = rest["rest_bone_poses"]
        # Anny's own kinematics once, at identity deltas: each bone's transform relative to its driver.
        nb = len(self.bone_labels)
        identity = torch.eye(4, dtype=self.dtype, device=self.device).expand(batch, nb, 4, 4)
        transforms0, poses0 = self._model.get_bone_transforms(identity, bone_poses)
        heads0 = poses0[..., :3, 3]  # (B, NB, 3) reference-pose heads; drivers sit at G = I there
        drivers = self.bone_driver
        local = transforms0.clone()
        local[..., :3, 3] = (
            transforms0[..., :3, 3] - heads0[:, self.driver_bones[drivers]]
        )  # C_b = [I | -w_d] T_b
        joints = heads0[:, self.driver_bones]  # (B, D, 3)
        offsets = joints - joints[:, self.driver_parents.clamp(min=0)]
        offsets[:, 0] = joints[:, 0]
        # Every skinned point, expressed per driver: y_vd = sum_{b driven by d} s_vb C_b [x_v; 1].
        verts = rest["rest_vertices"]
        homog = torch.cat([verts, torch.ones_like(verts[..., :1])], -1)  # (B, V, 4)
        per_bone = torch.einsum("bvkij,bvj->bvki", local[:, self.vertex_bone_indices], homog)
        per_bone = per_bone * self.vertex_bone_weights[None, :, :, None]
        local_points = per_bone.new_zeros(batch, verts.shape[1], len(self.driver_bones), 4)
        flat_index = self.bone_driver[self.vertex_bone_indices]  # (V, K) driver of each weight
        local_points = local_points.reshape(batch, -1, 4)
        index = (
            torch.arange(verts.shape[1], device=self.device)[:, None] * len(self.driver_bones) + flat_index
        )
        local_points = local_points.index_add(1, index.reshape(-1), per_bone.reshape(batch, -1, 4))
        local_points = local_points.reshape(batch, verts.shape[1], len(self.driver_bones), 4)
        keypoint_blend = torch.einsum("kv,bvdi->bdki", self.keypoint_weights, local_points)
        ends = heads0[:, self.segment_end_bones]
        return Rest(
            shape,
            verts,
            bone_poses,
            joints,
            keypoint_blend,
            {"segment_ends": ends, "offsets": offsets, "local_points": local_points},
        )

    def reference_vertices(
        self, rest: Rest, root: torch.Tensor, pose: torch.Tensor, transl: torch.Tensor
    ) -> torch.Tensor:
        """(B, V, 3) the same posing through Anny's own kinematics and skinning (slow; for checks)."""
        batch, nb = root.shape[0], len(self.bone_labels)
        deltas = torch.eye(4, dtype=self.dtype, device=self.device).repeat(batch, nb, 1, 1)
        deltas[:, 0, :3, :3] = rotvec_to_matrix(root)
        deltas[:, 0, :3, 3] = transl
        deltas[:, self.joint_bones, :3, :3] = rotvec_to_matrix(pose)
        transforms, _ = self._model.get_bone_transforms(deltas, rest.bone_poses.expand(batch, -1, -1, -1))
        return self._model.get_skinned_vertices(rest.vertices.expand(batch, -1, -1), transforms)

    def pose(
        self,
        rest: Rest,
        root: torch.Tensor,
        pose: torch.Tensor,
        transl: torch.Tensor,
        vertex_ids: torch.Tensor | None = None,
        with_vertices: bool = True,
    ) -> Posed:
        # In Anny's 'local-ref' parameterisation a bone with an identity delta turns with its parent, so
        # only the root and the posable joints ("drivers") need kinematics: G_d = G_parent exp(pose_d),
        # head_d = head_parent + G_parent offset_d. Every other bone is a fixed transform after its driver.
        # Drivers of one tree depth at a time (7 levels instead of 18 joints: fewer, larger ops).
        batch = root.shape[0]
        offsets = rest.extra["offsets"].expand(batch, -1, -1)
        local_rot = rotvec_to_matrix(pose)
        g = rotvec_to_matrix(root)[:, None].expand(batch, len(self.driver_parents_list), 3, 3)
        w = transl[:, None].expand(batch, len(self.driver_parents_list), 3)
        for ids, parents in self.driver_levels:
            g_p = g[:, parents]
            w = w.index_copy(1, ids, w[:, parents] + (g_p @ offsets[:, ids, :, None])[..., 0])
            g = g.index_copy(1, ids, g_p @ local_rot[:, ids - 1])
        transforms = torch.cat([g, w[..., None]], -1)  # (B, D, 3, 4) driver world poses
        keypoints = _keypoints(transforms, rest.keypoint_blend)
        vertices = None
        if with_vertices:
            points = rest.extra["local_points"]
            if vertex_ids is not None:
                points = points[:, vertex_ids]
            if points.shape[0] == 1:
                vertices = torch.einsum("bdij,vdj->bvi", transforms, points[0])
            else:
                vertices = torch.einsum("bdij,bvdj->bvi", transforms, points)
        return Posed(vertices, w, keypoints, transforms)


def _keypoints(transforms: torch.Tensor, blend: torch.Tensor) -> torch.Tensor:
    """(B, D, 3, 4) driver poses, (B|1, D, K, 4) blends -> (B, K, 3)."""
    if blend.shape[0] == 1:
        return torch.einsum("bdij,dkj->bki", transforms, blend[0])
    return torch.einsum("bdij,bdkj->bki", transforms, blend)


@functools.cache
def load_anny(device: str = "cpu") -> AnnyBody:
    """The process-wide Anny body on ``device`` (built once, then shared)."""
    return AnnyBody(device)


def load_body(model_path: str | Path | None = None, device: str = "cpu") -> BodyModel:
    """The process-wide body: Anny by default, or the SMPL-family model in the user's ``.npz`` file.

    A missing or unreadable model file raises ``AnimateError`` (``body_model_not_found``, ``bad_body_model``).
    """
    if model_path is None:
        return load_anny(device)
    from animate.body.smpl import load_smpl

    return load_smpl(str(Path(model_path).expanduser().resolve()), device)
