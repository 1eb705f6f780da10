"""Red team (issue 20): CMP's sparse vectors land in the grid cell that CONTAINS their pixel centre, on both
axes, when the grid is smaller or larger than the image (a rounding rule agrees only at some scales).

The expectation is geometric: cell ``c`` of ``n`` over an axis of ``N`` pixels spans ``[c * N / n,
(c + 1) * N / n)`` in pixel coordinates, and pixel ``x`` has its centre at ``x + 0.5``; the cell is found by
searching the spans, not by the formula the code uses.
"""

from __future__ import annotations

import pytest
import torch

from controlnets.cmp import resample_sparse_flow


def containing_cell(x: int, pixels: int, cells: int) -> int:
    centre = x + 0.5
    found = [c for c in range(cells) if c * pixels / cells <= centre < (c + 1) * pixels / cells]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize(("pixels", "cells"), [(10, 4), (4, 10), (100, 384), (7, 3)])
def test_each_pixel_lands_in_the_cell_containing_its_centre_on_both_axes(pixels, cells):
    for x in range(pixels):
        y = pixels - 1 - x  # a different position on the other axis
        flow = torch.zeros(1, 2, pixels, pixels)
        mask = torch.zeros(1, pixels, pixels)
        flow[0, :, y, x] = torch.tensor([2.0, -3.0])
        mask[0, y, x] = 1
        out, out_mask = resample_sparse_flow(flow, mask, (cells, cells))
        cx, cy = containing_cell(x, pixels, cells), containing_cell(y, pixels, cells)
        assert out_mask.sum() == 1 and out_mask[0, 0, cy, cx] == 1, (x, y)
        # the vector in the grid's pixels: x scaled by cells / pixels on its axis, y on its own
        ratio = cells / pixels
        torch.testing.assert_close(out[0, :, cy, cx], torch.tensor([2.0 * ratio, -3.0 * ratio]))


def test_vectors_sharing_a_cell_are_averaged_and_scaled_per_axis():
    flow = torch.zeros(1, 2, 10, 20)  # H 10, W 20 -> grid (h, w) = (5, 4): x ratio 0.2, y ratio 0.5
    mask = torch.zeros(1, 10, 20)
    # pixels x 5..9 (centres 5.5..9.5) are in column 1 (spans of 5 px), rows 2, 3 in row 1 (spans of 2 px)
    flow[0, :, 2, 5] = torch.tensor([10.0, 4.0])
    flow[0, :, 3, 9] = torch.tensor([20.0, 8.0])
    mask[0, 2, 5] = mask[0, 3, 9] = 1
    out, out_mask = resample_sparse_flow(flow, mask, (5, 4))
    assert out_mask.sum() == 1 and out_mask[0, 0, 1, 1] == 1
    torch.testing.assert_close(out[0, :, 1, 1], torch.tensor([15.0 * 0.2, 6.0 * 0.5]))
