"""MediaPipe Holistic -> COCO-WholeBody 133: the one table that maps indices.

| COCO-WholeBody       | from MediaPipe                                   | score                        |
|----------------------|--------------------------------------------------|------------------------------|
| 0-16 body            | pose landmarks ``BODY_FROM_POSE``                | pose visibility              |
| 17-22 feet           | pose ``FEET_FROM_POSE``: 31/32 foot index, 29/30 | pose visibility; small toe   |
|                      | heel; the foot index stands in for both toes     | x ``SMALL_TOE_SCORE``        |
| 23-90 face (iBUG 68) | face mesh vertices ``FACE68_FROM_MESH``          | 1 inside the frame, else 0   |
| 91-111 left hand     | left hand landmarks 0-20 (same order)            | 1 inside the frame, else 0   |
| 112-132 right hand   | right hand landmarks 0-20                        | 1 inside the frame, else 0   |

MediaPipe's "left" is the person's left, as in COCO. The 68-point face table is the widely used
dlib/iBUG-to-FaceMesh correspondence (the same one LatentSync 1.5 uses); jaw points are mesh silhouette
vertices, so they follow the face outline, not the true jaw, on strong profiles.
"""

from __future__ import annotations

# COCO-17 body, in COCO order -> BlazePose 33 landmark index.
BODY_FROM_POSE: tuple[int, ...] = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)

# COCO-WholeBody feet 17-22 (L big toe, L small toe, L heel, R big toe, R small toe, R heel) -> BlazePose.
FEET_FROM_POSE: tuple[int, ...] = (31, 31, 29, 32, 32, 30)
SMALL_TOE_SCORE = 0.5  # BlazePose has one toe point: the small toe is a stand-in, so it counts for less

# iBUG 68 face points -> MediaPipe FaceMesh 468 vertex.
FACE68_FROM_MESH: tuple[int, ...] = (
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,  # 0-16 jaw
    71, 63, 105, 66, 107,  # 17-21 right eyebrow
    336, 296, 334, 293, 301,  # 22-26 left eyebrow
    168, 197, 5, 4,  # 27-30 nose bridge
    75, 97, 2, 326, 305,  # 31-35 nose base
    33, 160, 158, 133, 153, 144,  # 36-41 right eye
    362, 385, 387, 263, 373, 380,  # 42-47 left eye
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # 48-59 outer lips
    78, 82, 13, 312, 308, 317, 14, 87,  # 60-67 inner lips
)  # fmt: skip

assert len(BODY_FROM_POSE) == 17 and len(FEET_FROM_POSE) == 6 and len(FACE68_FROM_MESH) == 68
