"""MimicMotion's pose guider: skeleton images -> features added to the UNet's hidden state after ``conv_in``.

The default config is key- and shape-exact with the ``pose_net.*`` part of ``MimicMotion_1-1.pth``
(``conv_layers.{0,2,...,14}``, ``final_proj``, ``scale``). Widths and the number of stride-2 stages are
configurable so tests can build a tiny guider that matches a tiny VAE's downsampling factor.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class PoseGuider(ModelMixin, ConfigMixin):
    """A small conv net from a pose image in ``[-1, 1]`` to UNet ``conv_in``-sized features.

    Layout (SiLU after every conv): ``3x3 c->c``; per stage ``4x4 s2`` to ``block_out_channels[i]`` and
    ``3x3`` at that width; a ``3x3`` to ``block_out_channels[-1]``; a zero-initialised ``1x1`` projection to
    ``out_channels``; times a learnable scalar ``scale`` (2.0). The output is ``2 ** (len(block_out_channels)
    - 1)`` times smaller than the input, which must equal the VAE's downsampling factor.
    """

    @register_to_config
    def __init__(
        self,
        conditioning_channels: int = 3,
        block_out_channels: tuple[int, ...] = (16, 32, 64, 128),
        out_channels: int = 320,
        scale_init: float = 2.0,
    ) -> None:
        super().__init__()
        if len(block_out_channels) < 2:
            raise ValueError("block_out_channels needs at least two widths (one stride-2 stage)")
        layers: list[nn.Module] = [
            nn.Conv2d(conditioning_channels, conditioning_channels, 3, padding=1),
            nn.SiLU(),
        ]
        width = conditioning_channels
        for channels in block_out_channels[:-1]:
            layers += [nn.Conv2d(width, channels, 4, stride=2, padding=1), nn.SiLU()]
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU()]
            width = channels
        layers += [nn.Conv2d(width, block_out_channels[-1], 3, padding=1), nn.SiLU()]
        self.conv_layers = nn.Sequential(*layers)
        self.final_proj = nn.Conv2d(block_out_channels[-1], out_channels, 1)
        self.scale = nn.Parameter(torch.full((1,), float(scale_init)))
        self._init_weights()

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def _init_weights(self) -> None:
        # He-normal convs, zero biases (as MimicMotion); zero projection: a fresh guider is an exact no-op.
        for module in self.conv_layers:
            if isinstance(module, nn.Conv2d):
                fan_in = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
                nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_in))
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.final_proj.weight)
        nn.init.zeros_(self.final_proj.bias)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        """``pose``: ``(N, C, H, W)`` or ``(B, F, C, H, W)``, in ``[-1, 1]`` -> ``(N, out, H/f, W/f)``."""
        if pose.ndim == 5:
            pose = pose.flatten(0, 1)
        return self.final_proj(self.conv_layers(pose)) * self.scale
