"""Progressive latent fusion over frame tiles (MimicMotion), correct for any video length.

Each tile is denoised by one UNet call; per step the tiles' predictions are weighted by a triangular
window over the tile, summed, normalised, and the scheduler steps once on the full length. With an
anchor (the reference frame at index 0) every tile is ``[0] + tile_size - 1`` consecutive frames.
"""

from __future__ import annotations

import torch


def tile_indices(num_frames: int, tile_size: int, tile_overlap: int, anchor_first: bool) -> list[list[int]]:
    """Frame indices of each tile; together they cover ``range(num_frames)``.

    Tiles start every ``tile_size - tile_overlap`` frames (as MimicMotion; with an anchor the overlap counts
    the shared reference frame, so an overlap of 0 is treated as 1 and no frame is skipped); the last tile is
    right-aligned. A video no longer than one tile is one tile of all its frames (MimicMotion crashes there).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if tile_size < (2 if anchor_first else 1):
        raise ValueError(f"tile_size must be >= {2 if anchor_first else 1}, got {tile_size}")
    if not 0 <= tile_overlap < tile_size:
        raise ValueError(
            f"tile_overlap must be in [0, tile_size), got {tile_overlap} for tile_size {tile_size}"
        )
    if num_frames <= tile_size:
        return [list(range(num_frames))]
    if anchor_first:
        first, window, stride = 1, tile_size - 1, tile_size - max(tile_overlap, 1)
    else:
        first, window, stride = 0, tile_size, tile_size - tile_overlap
    starts = list(range(first, num_frames - window + 1, stride))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    prefix = [0] if anchor_first else []
    return [prefix + list(range(start, start + window)) for start in starts]


def triangular_weights(length: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """MimicMotion's window: ``min(w, 2 - w)`` with ``w = (i + 0.5) * 2 / length``; positive everywhere."""
    ramp = (torch.arange(length, device=device, dtype=dtype) + 0.5) * 2.0 / length
    return torch.minimum(ramp, 2.0 - ramp)
