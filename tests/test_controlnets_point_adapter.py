"""DisPose point adapter placement rules by hand: which grid cell a point lands in, borders, masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from controlnets.point_adapter import PointAdapter


def test_scatter_cells_borders_and_means():
    # Two 4x4 grids; points in normalised (x, y). x = 1 or y = 1 is the last cell; outside or unseen: skipped.
    positions = torch.tensor(
        [
            [[0.0, 0.0], [1.0, 1.0], [0.5, 0.25], [0.6, 0.3], [1.01, 0.5], [0.5, -0.01]],
            [[0.0, 1.0], [0.9, 0.0], [0, 0], [0, 0], [0, 0], [0, 0]],
        ]
    )
    visible = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    embeddings = torch.arange(12, dtype=torch.float32).view(2, 6, 1).expand(2, 6, 3).contiguous()
    cells, means = PointAdapter.scatter(embeddings, positions, visible, (4, 4))
    # (row, col) -> frame * 16 + row * 4 + col: (0,0)=0, (1,2)=6 twice, (3,3)=15; frame 1: (3,0)=28, (0,3)=19.
    assert cells.tolist() == [0, 6, 15, 19, 28]
    assert means[:, 0].tolist() == [0.0, 2.5, 1.0, 7.0, 6.0]  # cell 6 averages points 2 and 3
    assert means.shape == (5, 3)
    empty_cells, empty_means = PointAdapter.scatter(embeddings, positions, torch.zeros(2, 6), (4, 4))
    assert empty_cells.numel() == 0 and empty_means.shape == (0, 3)
    one = torch.zeros(2, 6)
    one[1, 1] = 1
    cells, means = PointAdapter.scatter(embeddings, positions, one, (4, 4))
    assert cells.tolist() == [19] and means[:, 0].tolist() == [7.0]
    below = torch.tensor([[[0.5, 1.5]]])  # under the image: skipped, not clamped into the last row
    assert PointAdapter.scatter(embeddings[:1, :1], below, torch.ones(1, 1), (4, 4))[0].numel() == 0


def test_level_resize_masks_with_the_nearest_occupancy():
    torch.manual_seed(0)
    adapter = PointAdapter(embedding_channels=3, channels=(5,), mid_channels=4)
    cells = torch.tensor([5])  # row 1, col 1 of a 4x4 grid
    means = torch.rand(1, 3)
    same = adapter.level(0, cells, means, 1, (4, 4))
    expected = torch.zeros(1, 5, 4, 4)
    expected[0, :, 1, 1] = adapter.model_list[0](means)[0]
    torch.testing.assert_close(same, expected)
    torch.testing.assert_close(adapter.level(0, cells, means, 1, (4, 4), (4, 4)), expected)
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 1, 1] = 1.0
    resized = adapter.level(0, cells, means, 1, (4, 4), (8, 8))
    torch.testing.assert_close(
        resized, F.interpolate(expected, size=(8, 8), mode="bilinear") * F.interpolate(mask, size=(8, 8))
    )
    with pytest.raises(ValueError) as excinfo:
        adapter(torch.rand(1, 1, 3), torch.rand(1, 1, 2), torch.ones(1, 1), [(4, 4), (2, 2)])
    assert str(excinfo.value) == "2 level sizes for 1 levels"


def test_sample_reference_at_the_border_reads_the_edge_pixel():
    features = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    samples = PointAdapter.sample_reference(features, torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.375, 0.625]]))
    # Pixel centres sit at (i + 0.5) / 4: (0.375, 0.625) is the centre of column 1, row 2.
    assert samples[0, :, 0].tolist() == [0.0, 15.0, 9.0]


def test_dispose_reference_cells_clamp_into_the_map():
    # Features the image's size: the upsampling is the identity and cell [int(y * W), int(x * H)] is read.
    features = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    positions = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-0.6, -0.6], [0.5, 0.25]])
    out = PointAdapter.read_reference_cells(features, positions, (4, 4))
    assert out[0, :, 0].tolist() == [0.0, 15.0, 0.0, 6.0]  # (0,0), (3,3) clamped, (0,0) clamped, (1,2)
