"""SMPL, SMPL-H and SMPL-X bodies from model files the user supplies (we never ship them), via ``smplx``.

Only ``.npz`` model files are read (``numpy.load`` without pickle), so ``chumpy`` is never needed: the
official ``.pkl`` files can be converted once with any chumpy-free script that saves their arrays
(``v_template``, ``shapedirs``, ``posedirs``, ``J_regressor``, ``weights``, ``kintree_table``, ``f``) with
``numpy.savez``. The arrays go through ``smplx.SMPL`` (its buffers: blend shapes, regressor, parents,
skinning weights); posing uses ``smplx.lbs`` building blocks (shape blend shapes, joint regression, the
kinematic chain) plus pose-corrective blend shapes and linear blend skinning of only the vertices asked
for, so fitting steps stay cheap.

The SMPL family fits our conventions as it is: a joint's rotation is relative to its parent in axes that
are world-aligned in the rest pose (``G_child = G_parent @ R``). Our 18 posable joints map onto the model's
joints; the others (third spine joint, feet, hands, fingers, jaw, eyes) keep their rest rotation. Parts:
SMPL's 24 joints are Champ's 24 parts, so a vertex's part is its dominant skinning joint (SMPL-H/X hand,
jaw and eye joints fold into the hand and head parts).
"""

from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path

import numpy as np
import torch

from animate.body.model import COCO23_NAMES, BodyModel, Posed, Rest, rotvec_to_matrix
from animate.errors import AnimateError

#: The arrays every SMPL-family .npz holds (names as in the official files).
REQUIRED_ARRAYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
#: Our posable joints (``model.JOINT_NAMES`` order) as SMPL joint indices (shared by SMPL-H and SMPL-X).
SMPL_JOINTS = (3, 6, 12, 15, 13, 16, 18, 20, 14, 17, 19, 21, 1, 4, 7, 2, 5, 8)
#: The joint further down each posable joint's segment; wrists end at the hand (SMPL) or middle finger.
_SEGMENT_ENDS = {
    "smpl": (6, 12, 15, 15, 16, 18, 20, 22, 17, 19, 21, 23, 4, 7, 10, 5, 8, 11),
    "smplh": (6, 12, 15, 15, 16, 18, 20, 25, 17, 19, 21, 40, 4, 7, 10, 5, 8, 11),
    "smplx": (6, 12, 15, 15, 16, 18, 20, 28, 17, 19, 21, 43, 4, 7, 10, 5, 8, 11),
}
_KIND_BY_JOINTS = {24: "smpl", 52: "smplh", 55: "smplx"}
#: COCO keypoints at SMPL joints; the face and feet points are vertices (``smplx.vertex_ids``).
_KEYPOINT_JOINTS = {
    "left_shoulder": 16, "right_shoulder": 17, "left_elbow": 18, "right_elbow": 19, "left_wrist": 20,
    "right_wrist": 21, "left_hip": 1, "right_hip": 2, "left_knee": 4, "right_knee": 5, "left_ankle": 7,
    "right_ankle": 8,
}  # fmt: skip
_KEYPOINT_VERTICES = {
    "nose": "nose", "left_eye": "leye", "right_eye": "reye", "left_ear": "lear", "right_ear": "rear",
    "left_big_toe": "LBigToe", "left_small_toe": "LSmallToe", "left_heel": "LHeel",
    "right_big_toe": "RBigToe", "right_small_toe": "RSmallToe", "right_heel": "RHeel",
}  # fmt: skip


def _joint_parts(kind: str, num_joints: int) -> np.ndarray:
    """(num_joints,) the Champ part of each model joint."""
    parts = np.arange(num_joints)
    if kind == "smplh":  # 22..36 left hand, 37..51 right hand
        parts[22:37], parts[37:52] = 22, 23
    elif kind == "smplx":  # 22 jaw, 23/24 eyes, 25..39 left hand, 40..54 right hand
        parts[22:25], parts[25:40], parts[40:55] = 15, 22, 23
    return parts


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise AnimateError("body_model_not_found", f"body model file {path} does not exist")
    if path.suffix.lower() != ".npz":
        raise AnimateError(
            "bad_body_model",
            f"{path.name}: SMPL-family models are read from .npz files (save the arrays of the official "
            ".pkl with numpy.savez; chumpy is not needed)",
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as exc:  # a damaged or non-numpy file, or one that needs pickle
        raise AnimateError(
            "bad_body_model", f"{path.name} is not a readable .npz model file: {exc}"
        ) from None
    missing = [name for name in REQUIRED_ARRAYS if name not in arrays]
    if missing:
        raise AnimateError("bad_body_model", f"{path.name} lacks the arrays {', '.join(missing)}")
    v = arrays["v_template"].shape[0]
    joints = arrays["kintree_table"].shape[-1]
    shapes_ok = (
        arrays["v_template"].shape == (v, 3)
        and arrays["shapedirs"].shape[:2] == (v, 3)
        and arrays["posedirs"].shape[:2] == (v, 3)
        and arrays["posedirs"].shape[2] == 9 * (joints - 1)
        and arrays["J_regressor"].shape == (joints, v)
        and arrays["weights"].shape == (v, joints)
        and arrays["f"].ndim == 2
        and arrays["f"].shape[1] == 3
    )
    if not shapes_ok or joints not in _KIND_BY_JOINTS:
        raise AnimateError(
            "bad_body_model", f"{path.name}: array shapes are not those of SMPL, SMPL-H or SMPL-X"
        )
    return arrays


class SMPLBody(BodyModel):
    """An SMPL-family body from a user-supplied ``.npz`` model file (see the module docstring).

    Canonical frame: y up, the body faces +z, the person's left is +x. Shape parameters: the first
    ``num_betas`` betas, kept within +-3 standard deviations.
    """

    forward = (0.0, 0.0, 1.0)
    up_axis = 1
    costly_rest = False

    def __init__(
        self, model_path: str | Path, device: str | torch.device = "cpu", num_betas: int = 10
    ) -> None:
        import smplx
        from smplx.utils import Struct
        from smplx.vertex_ids import vertex_ids

        path = Path(model_path)
        arrays = _read_npz(path)
        self.device = torch.device(device)
        num_joints = arrays["kintree_table"].shape[-1]
        self.kind = _KIND_BY_JOINTS[num_joints]
        self.name = self.kind
        with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a note about 10-beta models
            model = smplx.SMPL(
                str(path),
                data_struct=Struct(**arrays),
                num_betas=min(num_betas, arrays["shapedirs"].shape[-1]),
                dtype=self.dtype,
            )
        self._smplx = model.to(self.device)
        self.num_betas = model.num_betas
        self.shape_names = tuple(f"beta{i}" for i in range(self.num_betas))
        self.parents = model.parents
        self.faces = np.asarray(arrays["f"], np.int32)
        weights = np.asarray(arrays["weights"], np.float32)
        self.vertex_parts = _joint_parts(self.kind, num_joints)[weights.argmax(1)].astype(np.int16)
        self.joint_index = torch.tensor(SMPL_JOINTS, device=self.device)
        self.segment_end_index = torch.tensor(_SEGMENT_ENDS[self.kind], device=self.device)
        ids = vertex_ids["smplx" if self.kind == "smplx" else "smplh"]
        # Keypoints = cat(joints[keypoint_joints], vertices[keypoint_vertices])[keypoint_order].
        at_joints = [n for n in COCO23_NAMES if n in _KEYPOINT_JOINTS]
        at_vertices = [n for n in COCO23_NAMES if n in _KEYPOINT_VERTICES]
        self.keypoint_joints = torch.tensor([_KEYPOINT_JOINTS[n] for n in at_joints], device=self.device)
        self.keypoint_vertices = torch.tensor(
            [ids[_KEYPOINT_VERTICES[n]] for n in at_vertices], device=self.device
        )
        self.keypoint_order = torch.tensor(
            [(at_joints + at_vertices).index(n) for n in COCO23_NAMES], device=self.device
        )
        if int(self.keypoint_vertices.max()) >= len(weights):
            raise AnimateError("bad_body_model", f"{path.name} has too few vertices for an {self.kind} model")
        num_pose = model.posedirs.shape[0]
        self._posedirs = model.posedirs.reshape(num_pose, -1, 3)  # (P, V, 3)

    def default_shape(self) -> np.ndarray:
        return np.zeros(self.num_betas, np.float32)

    def shape_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(self.num_betas, -3.0, np.float32), np.full(self.num_betas, 3.0, np.float32)

    def rest(self, shape: torch.Tensor) -> Rest:
        from smplx.lbs import blend_shapes, vertices2joints

        betas = self.tensor(shape).reshape(-1, self.num_betas)
        m = self._smplx
        vertices = m.v_template[None] + blend_shapes(betas, m.shapedirs)  # (B, V, 3)
        joints = vertices2joints(m.J_regressor, vertices)  # (B, NJ, 3) every model joint
        bone_poses = torch.eye(4, dtype=self.dtype, device=self.device).repeat(*joints.shape[:2], 1, 1)
        bone_poses[..., :3, 3] = joints  # rest rotations are the identity
        ours = torch.cat([joints[:, :1], joints[:, self.joint_index]], 1)
        empty_blend = joints.new_zeros(joints.shape[0], 0, len(COCO23_NAMES), 4)  # keypoints: see pose()
        extra = {"model_joints": joints, "segment_ends": joints[:, self.segment_end_index]}
        return Rest(betas, vertices, bone_poses, ours, empty_blend, extra)

    def pose(
        self,
        rest: Rest,
        root: torch.Tensor,
        pose: torch.Tensor,
        transl: torch.Tensor,
        vertex_ids: torch.Tensor | None = None,
        with_vertices: bool = True,
    ) -> Posed:
        from smplx.lbs import batch_rigid_transform

        batch = root.shape[0]
        rest_joints = rest.extra["model_joints"].expand(batch, -1, -1)
        num_joints = rest_joints.shape[1]
        local = torch.eye(3, dtype=self.dtype, device=self.device).repeat(batch, num_joints, 1, 1)
        local[:, 0] = rotvec_to_matrix(root)
        local[:, self.joint_index] = rotvec_to_matrix(pose)
        posed_joints, transforms = batch_rigid_transform(local, rest_joints, self.parents, dtype=self.dtype)
        offset = (transl - rest_joints[:, 0])[:, None]  # our ``transl`` is where the root joint goes
        joints = posed_joints + offset
        # Only the vertices asked for (and the keypoints' ones) are skinned.
        kp_ids = self.keypoint_vertices
        if with_vertices:
            ids = (
                vertex_ids if vertex_ids is not None else torch.arange(self.num_vertices, device=self.device)
            )
            ids = torch.cat([kp_ids, ids])
        else:
            ids = kp_ids
        points = self._skin(rest, local, transforms, ids) + offset
        keypoints = torch.cat([joints[:, self.keypoint_joints], points[:, : len(kp_ids)]], 1)[
            :, self.keypoint_order
        ]
        vertices = points[:, len(kp_ids) :] if with_vertices else None
        ours = torch.cat([joints[:, :1], joints[:, self.joint_index]], 1)
        transforms = torch.cat([transforms[..., :3, :3], transforms[..., :3, 3:] + offset[..., None]], -1)
        return Posed(vertices, ours, keypoints, transforms)  # transforms: (B, NJ, 3, 4) rest -> camera

    def _skin(
        self, rest: Rest, local: torch.Tensor, transforms: torch.Tensor, ids: torch.Tensor
    ) -> torch.Tensor:
        """(B, len(ids), 3) skinned vertices ``ids`` (with pose-corrective blend shapes), before translation."""
        batch = local.shape[0]
        eye = torch.eye(3, dtype=self.dtype, device=self.device)
        pose_feature = (local[:, 1:] - eye).reshape(batch, -1)  # (B, P)
        offsets = torch.einsum("bp,pvi->bvi", pose_feature, self._posedirs[:, ids])
        shaped = rest.vertices[:, ids]
        posed = shaped + offsets  # (B, S, 3)
        weights = self._smplx.lbs_weights[ids]  # (S, NJ)
        blended = torch.einsum("sj,bjik->bsik", weights, transforms[..., :3, :])  # (B, S, 3, 4)
        return torch.einsum("bsik,bsk->bsi", blended[..., :3], posed) + blended[..., 3]

    def smplx_vertices(
        self, shape: torch.Tensor, root: torch.Tensor, pose: torch.Tensor, transl: torch.Tensor
    ) -> torch.Tensor:
        """(B, V, 3) the same posing through ``smplx``'s own forward pass (slow; for checks)."""
        from smplx.lbs import lbs

        m = self._smplx
        batch = root.shape[0]
        full = torch.zeros(batch, m.parents.shape[0], 3, dtype=self.dtype, device=self.device)
        full[:, 0] = root
        full[:, self.joint_index] = pose
        betas = self.tensor(shape).reshape(1, -1).expand(batch, -1)
        vertices, _ = lbs(
            betas, full.reshape(batch, -1), m.v_template, m.shapedirs, m.posedirs, m.J_regressor, m.parents,
            m.lbs_weights,
        )  # fmt: skip
        rest_root = self.rest(shape).extra["model_joints"][:, 0]
        return vertices + (transl - rest_root)[:, None]


@functools.cache
def load_smpl(model_path: str, device: str = "cpu") -> SMPLBody:
    """The process-wide SMPL-family body from ``model_path`` on ``device`` (read once, then shared)."""
    return SMPLBody(model_path, device)
