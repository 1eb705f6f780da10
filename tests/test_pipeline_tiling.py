"""Tile indices and triangular weights for progressive latent fusion, by hand from the rule."""

from __future__ import annotations

import pytest
import torch

from pipelines.tiling import tile_indices, triangular_weights


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((7, 3, 0, True), [[0, 1, 2], [0, 3, 4], [0, 5, 6]]),  # anchor: overlap 0 acts as 1 (stride 2)
        ((7, 3, 1, True), [[0, 1, 2], [0, 3, 4], [0, 5, 6]]),
        ((5, 3, 2, True), [[0, 1, 2], [0, 2, 3], [0, 3, 4]]),  # stride 1
        ((6, 3, 1, True), [[0, 1, 2], [0, 3, 4], [0, 4, 5]]),  # the last tile right-aligned
        ((10, 4, 1, False), [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]),  # ends exactly: no extra tile
        ((11, 4, 1, False), [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9], [7, 8, 9, 10]]),
        ((3, 1, 0, False), [[0], [1], [2]]),  # one-frame tiles without an anchor
        ((4, 4, 3, True), [[0, 1, 2, 3]]),  # a video of exactly one tile
        ((2, 2, 0, True), [[0, 1]]),
        ((1, 4, 1, True), [[0]]),  # a single frame is a video too
    ],
)
def test_tile_indices_by_hand(args, expected):
    assert tile_indices(*args[:3], anchor_first=args[3]) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 4, 1, False), "num_frames must be >= 1, got 0"),
        ((5, 1, 0, True), "tile_size must be >= 2, got 1"),
        ((5, 0, 0, False), "tile_size must be >= 1, got 0"),
        ((5, 4, 4, False), "tile_overlap must be in [0, tile_size), got 4 for tile_size 4"),
        ((5, 4, -1, False), "tile_overlap must be in [0, tile_size), got -1 for tile_size 4"),
    ],
)
def test_tile_indices_refuse_bad_settings(args, message):
    with pytest.raises(ValueError) as excinfo:
        tile_indices(*args[:3], anchor_first=args[3])
    assert str(excinfo.value) == message


def test_triangular_weights_by_hand():
    # w_i = (i + 0.5) * 2 / n, weight = min(w, 2 - w)
    five = triangular_weights(5, "cpu", torch.float64)
    assert five.dtype == torch.float64
    torch.testing.assert_close(five, torch.tensor([0.2, 0.6, 1.0, 0.6, 0.2], dtype=torch.float64))
    torch.testing.assert_close(triangular_weights(1, "cpu", torch.float32), torch.tensor([1.0]))
    torch.testing.assert_close(
        triangular_weights(2, torch.device("cpu"), torch.float16),
        torch.tensor([0.5, 0.5], dtype=torch.float16),
    )
