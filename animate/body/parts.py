"""The 24 SMPL-like body parts and Champ's semantic palette.

Champ labels every SMPL vertex by its dominant skinning joint (24 joints) and colours label ``i`` with
OpenCV's VIRIDIS colormap at index ``10 * i``; the colours below are those, in RGB. Any body model maps its
own bones onto these 24 parts (``ANNY_BONE_PARTS``) and labels each vertex by the part with the largest
summed skinning weight, so its renders use the same colours as Champ's.
"""

from __future__ import annotations

import numpy as np

PART_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
)  # fmt: skip
NUM_PARTS = len(PART_NAMES)

#: RGB of each part (OpenCV VIRIDIS at 10 * label), row = part label.
CHAMP_PALETTE = np.array(
    [
        (68, 1, 84), (71, 16, 99), (72, 29, 111), (71, 42, 122), (69, 55, 129), (65, 66, 135),
        (61, 78, 138), (56, 89, 140), (51, 99, 141), (46, 109, 142), (42, 118, 142), (39, 128, 142),
        (35, 137, 142), (32, 146, 140), (30, 156, 137), (33, 165, 133), (40, 174, 128), (53, 183, 121),
        (70, 192, 111), (90, 200, 100), (112, 207, 87), (137, 213, 72), (162, 218, 55), (189, 223, 38),
    ],
    dtype=np.uint8,
)  # fmt: skip

#: For each part, its left/right twin (itself on the midline), for filling unseen surface by symmetry.
MIRROR_PART = np.array([0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22])


def _side_parts(left: int, right: int) -> dict[str, int]:
    return {".L": left, ".R": right}


def anny_bone_part(bone: str) -> int:
    """The SMPL-like part (0..23) an Anny bone's skin belongs to; the person's left is ``.L``."""
    base, _, side = bone.partition(".")
    side = "." + side if side else ""
    sided = {
        "pelvis": _side_parts(0, 0),
        "upperleg01": _side_parts(1, 2),
        "upperleg02": _side_parts(1, 2),
        "lowerleg01": _side_parts(4, 5),
        "lowerleg02": _side_parts(4, 5),
        "foot": _side_parts(7, 8),
        "clavicle": _side_parts(13, 14),
        "shoulder01": _side_parts(13, 14),
        "upperarm01": _side_parts(16, 17),
        "upperarm02": _side_parts(16, 17),
        "lowerarm01": _side_parts(18, 19),
        "lowerarm02": _side_parts(18, 19),
        "wrist": _side_parts(20, 21),
        "eye": _side_parts(15, 15),
    }
    if base in sided and side in (".L", ".R"):
        return sided[base][side]
    if side in (".L", ".R"):
        if base.startswith("toe"):
            return 10 if side == ".L" else 11
        if base.startswith("metacarpal"):
            return 20 if side == ".L" else 21
        if base.startswith("finger"):
            return 22 if side == ".L" else 23
    middle = {
        "root": 0,
        "spine05": 0,
        "spine04": 3,
        "spine03": 3,
        "spine02": 6,
        "spine01": 9,
        "neck01": 12,
        "neck02": 12,
        "neck03": 12,
        "head": 15,
    }
    if bone in middle:
        return middle[bone]
    if any(key in bone for key in ("jaw", "tongue", "teeth", "eye", "lip", "cheek", "brow", "nose", "ear")):
        return 15
    raise KeyError(f"no body part for bone {bone!r}")


def vertex_parts(bone_weights: np.ndarray, bone_indices: np.ndarray, bone_parts: np.ndarray) -> np.ndarray:
    """(V,) part label per vertex: the part with the largest summed skinning weight.

    ``bone_weights``/``bone_indices`` (V, K) sparse skinning; ``bone_parts`` (num_bones,) part per bone.
    """
    v, k = bone_weights.shape
    totals = np.zeros((v, NUM_PARTS), dtype=np.float64)
    parts = bone_parts[bone_indices]
    for j in range(k):
        np.add.at(totals, (np.arange(v), parts[:, j]), bone_weights[:, j])
    return totals.argmax(axis=1).astype(np.int16)
