"""Champ-style guidance encoders (depth, normal, semantic, skeleton) and their fusion.

Each ``GuidanceEncoder`` follows Champ's forward path: ``conv_in``, conv ``blocks`` (SiLU after each,
every second one stride 2), one spatial self-attention block at the last width, zero-initialised
``conv_out``. Champ's module also builds attention blocks its ``forward`` never uses; we build only what
runs, and ``convert_champ_state_dict`` maps a Champ file onto our keys and reports what it ignored.
``GuidanceFusion`` holds one encoder per map and sums their outputs (Champ) or weights them with learned
scalars; the sum is added with the pose guider's output right after the UNet's ``conv_in``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

FUSION_MODES = ("sum", "learned")


class SpatialSelfAttention(nn.Module):
    """GroupNorm, 1x1 ``proj_in``, one self-attention + GEGLU block over the H*W tokens, 1x1 ``proj_out``,
    residual. Key names match Champ's ``Transformer3DModel`` without cross-attention."""

    def __init__(self, channels: int, num_heads: int, norm_num_groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        block = BasicTransformerBlock(channels, num_heads, channels // num_heads, activation_fn="geglu")
        self.transformer_blocks = nn.ModuleList([block])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = hidden_states.shape
        residual = hidden_states
        hidden_states = self.proj_in(self.norm(hidden_states))
        hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states)
        hidden_states = hidden_states.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        return self.proj_out(hidden_states.contiguous()) + residual


class GuidanceEncoder(ModelMixin, ConfigMixin):
    """One guidance map (3 x H x W in ``[-1, 1]``) -> ``out_channels`` features at ``H / 2**(len(widths)-1)``.

    The default config is Champ's (``block_out_channels=(16, 32, 96, 256)``, 8 heads, 320 out channels).
    ``conv_out`` is zero-initialised, so a fresh encoder outputs exact zeros.
    """

    @register_to_config
    def __init__(
        self,
        conditioning_channels: int = 3,
        block_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        out_channels: int = 320,
        attention_num_heads: int = 8,
        attention_norm_num_groups: int = 32,
        use_attention: bool = True,
    ) -> None:
        super().__init__()
        if len(block_out_channels) < 2:
            raise ValueError("block_out_channels needs at least two widths (one stride-2 stage)")
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for channel_in, channel_out in itertools.pairwise(block_out_channels):
            self.blocks.append(nn.Conv2d(channel_in, channel_in, 3, padding=1))
            self.blocks.append(nn.Conv2d(channel_in, channel_out, 3, padding=1, stride=2))
        width = block_out_channels[-1]
        self.attention = (
            SpatialSelfAttention(width, attention_num_heads, attention_norm_num_groups)
            if use_attention
            else None
        )
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        """``condition``: ``(N, C, H, W)`` or ``(B, F, C, H, W)`` -> ``(N or B*F, out, H/f, W/f)``."""
        if condition.ndim == 5:
            condition = condition.flatten(0, 1)
        hidden_states = F.silu(self.conv_in(condition))
        for block in self.blocks:
            hidden_states = F.silu(block(hidden_states))
        if self.attention is not None:
            hidden_states = self.attention(hidden_states)
        return self.conv_out(hidden_states)


@dataclass(frozen=True)
class ChampConversion:
    """A Champ ``guidance_encoder_*.pth`` state dict mapped onto ``GuidanceEncoder`` keys."""

    state_dict: dict[str, torch.Tensor]
    ignored: tuple[str, ...]  # keys Champ stores but its forward never uses
    missing: tuple[str, ...]  # our keys the file did not provide


def convert_champ_state_dict(
    champ_state_dict: Mapping[str, torch.Tensor], encoder: GuidanceEncoder
) -> ChampConversion:
    """Map Champ's keys (``attentions.<last>.*`` is the one attention its forward uses) onto ``encoder``'s.

    Champ's published files do not match its repository's key list exactly (see the research manifest), so
    this maps what it finds and reports the rest instead of assuming a fixed list.
    """
    last_attention = f"attentions.{len(encoder.blocks) - 1}."
    expected = encoder.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, tensor in champ_state_dict.items():
        ours = "attention." + key[len(last_attention) :] if key.startswith(last_attention) else key
        if ours in expected and tuple(expected[ours].shape) == tuple(tensor.shape):
            mapped[ours] = tensor
        else:
            ignored.append(key)
    missing = tuple(key for key in expected if key not in mapped)
    return ChampConversion(state_dict=mapped, ignored=tuple(ignored), missing=missing)


class GuidanceFusion(ModelMixin, ConfigMixin):
    """One ``GuidanceEncoder`` per guidance type; their outputs summed (``"sum"``, Champ) or weighted by
    learned scalars initialised to 1 (``"learned"``). Fresh, the fusion outputs exact zeros."""

    @register_to_config
    def __init__(
        self,
        guidance_types: tuple[str, ...] = ("depth", "normal", "semantic"),
        conditioning_channels: int = 3,
        block_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        out_channels: int = 320,
        attention_num_heads: int = 8,
        attention_norm_num_groups: int = 32,
        fusion: str = "sum",
    ) -> None:
        super().__init__()
        if fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}")
        if len(set(guidance_types)) != len(guidance_types) or not guidance_types:
            raise ValueError(f"guidance_types must be distinct and non-empty, got {guidance_types!r}")
        self.encoders = nn.ModuleDict(
            {
                name: GuidanceEncoder(
                    conditioning_channels=conditioning_channels,
                    block_out_channels=block_out_channels,
                    out_channels=out_channels,
                    attention_num_heads=attention_num_heads,
                    attention_norm_num_groups=attention_norm_num_groups,
                )
                for name in guidance_types
            }
        )
        self.fusion_weights = nn.Parameter(torch.ones(len(guidance_types))) if fusion == "learned" else None

    @property
    def guidance_types(self) -> tuple[str, ...]:
        return tuple(self.config.guidance_types)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(
        self, guidance_maps: Mapping[str, torch.Tensor], scales: Mapping[str, float] | None = None
    ) -> torch.Tensor | None:
        """Fuse the given maps (any subset of ``guidance_types``); ``None`` when nothing contributes.

        ``scales`` multiplies each map's features; a map with scale 0 is not computed at all.
        """
        unknown = set(guidance_maps) - set(self.guidance_types)
        if unknown:
            raise ValueError(
                f"unknown guidance types {sorted(unknown)}; this fusion knows {self.guidance_types}"
            )
        scales = scales or {}
        fused: torch.Tensor | None = None
        for index, name in enumerate(self.guidance_types):
            if name not in guidance_maps or scales.get(name, 1.0) == 0:
                continue
            features = self.encoders[name](guidance_maps[name])
            weight = scales.get(name, 1.0)
            if self.fusion_weights is not None:
                features = features * self.fusion_weights[index]
            if weight != 1.0:
                features = features * weight
            fused = features if fused is None else fused + features
        return fused
