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


def _blend_matrices(weights: torch.Tensor, transforms: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning with dense (V, NB) weights: (B, NB, 4, 4) transforms, (B|1, V, 3) -> (B, V, 3)."""
    blended = torch.einsum("vk,bkij->bvij", weights, transforms[..., :3, :])
    return (blended[..., :3] @ points[..., None]).squeeze(-1) + blended[..., 3]


class AnnyBody(BodyModel):
    """Anny (NAVER, Apache-2.0 code, CC0 assets): 13,718 vertices, 104 bones, 6 phenotype parameters.

    Canonical frame: z up, the body faces -y, the person's left is +x. Use ``load_anny()`` to get the
    process-wide instance (building Anny's data the very first time on a machine takes minutes; it is then
    cached under ``~/.cache/anny``).
    """

    name = "anny"
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
        dense = np.zeros((weights.shape[0], len(labels)), np.float32)
        np.add.at(dense, (np.arange(weights.shape[0])[:, None].repeat(weights.shape[1], 1), indices), weights)
        self.skin_weights = torch.from_numpy(dense).to(self.device)  # (V, NB)
        self.keypoint_weights = self._keypoint_weights(model)  # (23, V)

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
        empty = shape.new_zeros(shape.shape[0], 0)
        coeffs = self._model._get_phenotype_blendshape_coefficients(shape, empty, empty)
        rest = self._model.get_rest_model(coeffs)
        bone_poses = rest["rest_bone_poses"]
        heads = bone_poses[..., :3, 3]
        joints = torch.cat([heads[:, :1], heads[:, self.joint_bones]], 1)
        # keypoint k = sum_v w_kv sum_b s_vb T_b [x_v; 1]  ->  blend[b, k] = sum_v w_kv s_vb [x_v; 1]
        homog = torch.cat([rest["rest_vertices"], torch.ones_like(rest["rest_vertices"][..., :1])], -1)
        blend = torch.einsum("kv,vb,nvi->nbki", self.keypoint_weights, self.skin_weights, homog)
        ends = heads[:, self.segment_end_bones]
        return Rest(shape, rest["rest_vertices"], bone_poses, joints, blend, {"segment_ends": ends})

    def _deltas(self, root: torch.Tensor, pose: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
        batch = root.shape[0]
        nb = len(self.bone_labels)
        deltas = torch.eye(4, dtype=self.dtype, device=self.device).repeat(batch, nb, 1, 1)
        deltas[:, 0, :3, :3] = rotvec_to_matrix(root)
        deltas[:, 0, :3, 3] = transl
        deltas[:, self.joint_bones, :3, :3] = rotvec_to_matrix(pose)
        return deltas

    def pose(
        self,
        rest: Rest,
        root: torch.Tensor,
        pose: torch.Tensor,
        transl: torch.Tensor,
        vertex_ids: torch.Tensor | None = None,
        with_vertices: bool = True,
    ) -> Posed:
        # Chains between posable joints hold identity deltas, so in Anny's 'local-ref' parameterisation
        # the world rotation of each driven bone is its nearest driven ancestor's times its own delta.
        deltas = self._deltas(root, pose, transl)
        rest_poses = rest.bone_poses
        if rest_poses.shape[0] != deltas.shape[0]:
            rest_poses = rest_poses.expand(deltas.shape[0], -1, -1, -1)
        transforms, bone_poses = self._model.get_bone_transforms(deltas, rest_poses)
        heads = bone_poses[..., :3, 3]
        joints = torch.cat([heads[:, :1], heads[:, self.joint_bones]], 1)
        keypoints = _keypoints(transforms, rest.keypoint_blend)
        vertices = None
        if with_vertices:
            points = rest.vertices if vertex_ids is None else rest.vertices[:, vertex_ids]
            weights = self.skin_weights if vertex_ids is None else self.skin_weights[vertex_ids]
            vertices = _blend_matrices(weights, transforms, points)
        return Posed(vertices, joints, keypoints, transforms)


def _keypoints(transforms: torch.Tensor, blend: torch.Tensor) -> torch.Tensor:
    """(B, NB, 4, 4) bone transforms, (B|1, NB, K, 4) blends -> (B, K, 3)."""
    if blend.shape[0] == 1:
        return torch.einsum("bnij,nkj->bki", transforms[..., :3, :], blend[0])
    return torch.einsum("bnij,bnkj->bki", transforms[..., :3, :], blend)


@functools.cache
def load_anny(device: str = "cpu") -> AnnyBody:
    """The process-wide Anny body on ``device`` (built once, then shared)."""
    return AnnyBody(device)
