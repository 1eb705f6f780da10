"""Red team (issue 20): DisPose's CMP rule (``io="dispose"``, UPSTREAM_PARITY.md D8) on a reference that is NOT
already CMP's size: the reference goes in resized by nearest neighbour and the flow comes out resized by
nearest neighbour, scaled per axis to output pixels. The expectation indexes pixels by hand in NumPy
(nearest neighbour: output pixel ``i`` reads input pixel ``floor(i * in / out)``) around the network's own
forward; a bilinear resize of the reference is a different input and a different flow."""

from __future__ import annotations

import numpy as np
import torch
from test_cmp import loaded_small_model

from animate.motion.cmp import cmp_dense_flow

SIDE = 64  # CMP's input size for this small network (384 for the released one)


def nearest_rows(size_in: int, size_out: int) -> np.ndarray:
    return np.floor(np.arange(size_out) * size_in / size_out).astype(int)


def test_dispose_resizes_reference_and_flow_by_nearest_neighbour(tmp_path):
    model = loaded_small_model(tmp_path / "small.pth.tar", seed=2, input_size=SIDE)
    height, width = 24, 40
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (height, width, 3), np.uint8)
    person = np.zeros((height, width), np.uint8)
    flow = np.zeros((1, SIDE, SIDE, 2), np.float32)
    mask = np.zeros((1, SIDE, SIDE), np.float32)
    flow[0, 20:26, 30:36] = (3.0, -2.0)
    mask[0, 20:26, 30:36] = 1
    out = cmp_dense_flow(reference, person, flow, mask, model, io="dispose")

    resized = reference[nearest_rows(height, SIDE)][:, nearest_rows(width, SIDE)]
    with torch.no_grad():
        image = torch.from_numpy(resized).permute(2, 0, 1)[None].float() / 255
        features = model.encode_image(model.normalize_image(image))
        marks = torch.from_numpy(mask)[:, None]
        sparse = torch.cat([torch.from_numpy(flow).permute(0, 3, 1, 2), marks, marks], 1)
        grid_flow = (
            model.logits_to_flow(model.decode(features, sparse), (SIDE, SIDE))[0].permute(1, 2, 0).numpy()
        )
    expected = grid_flow[nearest_rows(SIDE, height)][:, nearest_rows(SIDE, width)]
    expected = expected * np.array([width / SIDE, height / SIDE], np.float32)
    assert out.shape == (1, height, width, 2)
    np.testing.assert_allclose(out[0], expected, rtol=1e-4, atol=1e-4)
    assert np.abs(out).max() > 0.05
