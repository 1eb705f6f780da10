"""DisPose's point adapter: reference keypoint features placed at each target frame's keypoint positions.

The reference's appearance features (DIFT: a Stable Diffusion 1.5 UNet's ``up_blocks[1]`` output, 1280
channels at 1/16 of the image) are sampled at the reference keypoints, one embedding per keypoint. In every
target frame each embedding is written into the grid cell of that keypoint's position there (embeddings
landing in one cell are averaged), per-level MLPs map the written cells to the ControlNet's widths, and the
masked maps are added to the ControlNet's hidden state after each of its down blocks.

Key names equal the ``point_adapter.*`` part of ``DisPose.pth`` (``model_list.{level}.mlp.{0,2}``). The MLPs
are applied to the occupied cells only; DisPose applies them to the whole map and multiplies by the mask,
which gives the same maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class PointMLP(nn.Module):
    """``Linear -> SiLU -> Linear`` (keys ``mlp.0``, ``mlp.2``)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, mid_channels), nn.SiLU(), nn.Linear(mid_channels, out_channels)
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.mlp(hidden_states)


class PointAdapter(ModelMixin, ConfigMixin):
    """Per-level MLPs ``embedding_channels -> mid_channels -> channels[level]`` over keypoint embeddings.

    The default config is DisPose's (1280 -> 128 -> 320 / 640 / 1280 / 1280).
    Positions are normalised image coordinates: ``(x / width, y / height)``, so a point at pixel ``(x, y)``
    of a ``(H, W)`` image lands in cell ``(floor(x / W * w), floor(y / H * h))`` of an ``(h, w)`` grid.
    """

    @register_to_config
    def __init__(
        self,
        embedding_channels: int = 1280,
        channels: tuple[int, ...] = (320, 640, 1280, 1280),
        mid_channels: int = 128,
    ) -> None:
        super().__init__()
        self.model_list = nn.ModuleList(
            [PointMLP(embedding_channels, width, mid_channels) for width in channels]
        )

    @property
    def num_levels(self) -> int:
        return len(self.model_list)

    @staticmethod
    def sample_reference(features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Bilinear samples of ``features`` ``(B, E, h, w)`` at ``positions`` ``(K, 2)`` or ``(B, K, 2)``
        (normalised image coordinates, pixel-centre convention) -> ``(B, K, E)``."""
        batch = features.shape[0]
        if positions.ndim == 2:
            positions = positions.unsqueeze(0).expand(batch, -1, -1)
        grid = (positions.to(features.dtype) * 2.0 - 1.0).unsqueeze(1)  # (B, 1, K, 2), x then y
        sampled = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return sampled[:, :, 0].transpose(1, 2)

    @staticmethod
    def read_reference_cells(
        features: torch.Tensor, positions: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """DisPose's reference embeddings (``pipeline_ctrl.py:535-551``, a defect reproduced for its preset):
        ``features`` ``(B, E, h, w)`` upsampled bilinearly to ``(W, H)`` of the ``(H, W)`` image, height and
        width swapped, then cell ``[int(y * W), int(x * H)]`` read (clamped into the map) for each of the
        ``positions`` ``(K, 2)`` (normalised x, y) -> ``(B, K, E)``. Only those K cells are interpolated,
        with ``F.interpolate``'s arithmetic (``align_corners=False``); the whole map would be E x H x W."""
        height, width = image_size
        x, y = positions[:, 0].float(), positions[:, 1].float()
        rows = (y * width).long().clamp(0, width - 1)  # int() truncates toward zero, then clamped
        cols = (x * height).long().clamp(0, height - 1)

        def source(index: torch.Tensor, size_in: int, size_out: int):
            src = ((index.float() + 0.5) * (size_in / size_out) - 0.5).clamp(min=0)
            low = src.long()
            return low, (low + 1).clamp(max=size_in - 1), (src - low).to(features.dtype)

        y0, y1, ly = source(rows, features.shape[-2], width)
        x0, x1, lx = source(cols, features.shape[-1], height)
        top = (1 - lx) * features[:, :, y0, x0] + lx * features[:, :, y0, x1]
        bottom = (1 - lx) * features[:, :, y1, x0] + lx * features[:, :, y1, x1]
        return ((1 - ly) * top + ly * bottom).transpose(1, 2)

    @staticmethod
    def scatter(
        embeddings: torch.Tensor,
        positions: torch.Tensor,
        visible: torch.Tensor,
        grid_size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The occupied cells of ``N`` grids and the mean embedding written into each.

        embeddings ``(N, K, E)``, positions ``(N, K, 2)`` normalised, visible ``(N, K)``. A point counts when
        it is visible and inside the image. Returns ``(cells, means)``: flat indices into ``N * h * w`` (sorted,
        unique) and ``(U, E)`` embeddings averaged over the points that fall into each cell.
        """
        height, width = grid_size
        n, k = positions.shape[:2]
        x, y = positions[..., 0], positions[..., 1]
        inside = visible.bool() & (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)
        column = (x * width).floor().long().clamp(0, width - 1)
        row = (y * height).floor().long().clamp(0, height - 1)
        frame = torch.arange(n, device=positions.device).unsqueeze(1).expand(n, k)
        flat = (frame * height * width + row * width + column)[inside]
        if flat.numel() == 0:
            return flat, embeddings.new_zeros((0, embeddings.shape[-1]))
        cells, inverse = torch.unique(flat, return_inverse=True)
        points = embeddings[inside]
        sums = points.new_zeros((len(cells), points.shape[-1])).index_add_(0, inverse, points)
        counts = points.new_zeros(len(cells)).index_add_(
            0, inverse, torch.ones_like(inverse, dtype=points.dtype)
        )
        return cells, sums / counts.unsqueeze(1)

    def level(
        self,
        index: int,
        cells: torch.Tensor,
        means: torch.Tensor,
        num_grids: int,
        grid_size: tuple[int, int],
        size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Level ``index``'s features ``(N, channels[index], *size)``: the MLP at the occupied cells, zeros
        elsewhere; resized (bilinear) to ``size`` and masked by the nearest-resized occupancy, as DisPose."""
        height, width = grid_size
        mlp = self.model_list[index]
        out_channels = mlp.mlp[-1].out_features
        dtype = mlp.mlp[0].weight.dtype
        flat = means.new_zeros((num_grids * height * width, out_channels), dtype=dtype)
        if len(cells):
            flat[cells] = mlp(means.to(dtype))
        maps = flat.view(num_grids, height, width, out_channels).permute(0, 3, 1, 2)
        if size is None or tuple(size) == (height, width):
            return maps.contiguous()
        mask = flat.new_zeros(num_grids * height * width)
        mask[cells] = 1.0
        mask = F.interpolate(mask.view(num_grids, 1, height, width), size=tuple(size), mode="nearest")
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
        return maps * mask

    def forward(
        self,
        embeddings: torch.Tensor,
        positions: torch.Tensor,
        visible: torch.Tensor,
        sizes: Sequence[tuple[int, int]],
    ) -> list[torch.Tensor]:
        """One map per level ``(N, channels[level], *sizes[level])``; points are placed on the grid of
        ``sizes[0]`` (DisPose: 1/16 of the image) and the deeper levels resize that grid."""
        if len(sizes) != self.num_levels:
            raise ValueError(f"{len(sizes)} level sizes for {self.num_levels} levels")
        grid = tuple(sizes[0])
        cells, means = self.scatter(embeddings, positions, visible, grid)
        return [
            self.level(i, cells, means, positions.shape[0], grid, tuple(size)) for i, size in enumerate(sizes)
        ]
