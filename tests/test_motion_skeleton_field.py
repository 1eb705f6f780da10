"""The 2D skeleton dense field: the fallback when neither CMP nor a body fit gives one."""

from __future__ import annotations

import numpy as np

from animate.motion.skeleton_field import skeleton_dense_flow


def test_skeleton_dense_flow_moves_the_person_with_the_keypoints():
    reference = np.zeros((133, 3), np.float32)
    body = [(32, 10), (30, 8), (34, 8), (28, 9), (36, 9), (24, 18), (40, 18), (22, 28), (42, 28), (21, 36),
            (43, 36), (27, 40), (37, 40), (27, 50), (37, 50), (27, 60), (37, 60)]  # fmt: skip
    reference[:17, :2], reference[:17, 2] = body, 1.0
    moved = reference.copy()
    moved[:, :2] += (5.0, -3.0)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:61, 20:45] = 255
    flow = skeleton_dense_flow(reference, np.stack([reference, moved]), mask)
    assert flow.shape == (2, 64, 64, 2) and np.abs(flow[0]).max() < 1e-4
    person = mask > 127
    np.testing.assert_allclose(flow[1][person], np.broadcast_to([5.0, -3.0], (person.sum(), 2)), atol=1e-4)
    assert not flow[1][~person].any()
    # no person, or no usable bones: no motion
    assert not skeleton_dense_flow(reference, np.stack([moved]), np.zeros_like(mask)).any()
    assert not skeleton_dense_flow(np.zeros_like(reference), np.stack([moved]), mask).any()
