"""Champ guidance encoder forward against a functional reference; GroupNorm eps; fusion scale factors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from controlnets.guidance_encoder import GuidanceEncoder
from pipelines.testing import reinit_zero_layers, tiny_guidance_encoders


def reference_forward(encoder: GuidanceEncoder, x: torch.Tensor) -> torch.Tensor:
    """conv_in, then blocks alternating stride 1 and 2, SiLU after each; attention; 3x3 conv_out."""
    h = F.silu(F.conv2d(x, encoder.conv_in.weight, encoder.conv_in.bias, padding=1))
    for i, block in enumerate(encoder.blocks):
        h = F.silu(F.conv2d(h, block.weight, block.bias, stride=1 + i % 2, padding=1))
    if encoder.attention is not None:
        h = encoder.attention(h)
    return F.conv2d(h, encoder.conv_out.weight, encoder.conv_out.bias, padding=1)


@pytest.mark.parametrize("use_attention", [True, False])
def test_encoder_forward_equals_the_reference(use_attention):
    torch.manual_seed(0)
    encoder = GuidanceEncoder(
        block_out_channels=(8, 16, 32),
        out_channels=12,
        attention_num_heads=2,
        attention_norm_num_groups=8,
        use_attention=use_attention,
    )
    reinit_zero_layers(encoder)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    out = encoder(x)
    assert out.shape == (6, 12, 4, 4)
    torch.testing.assert_close(out, reference_forward(encoder, x))
    # (batch, frames, C, H, W) is the same as the frames flattened into the batch.
    torch.testing.assert_close(encoder(x.view(2, 3, 3, 16, 16)), out)


def test_attention_group_norm_uses_champs_eps():
    # On a nearly flat input the GroupNorm's eps dominates: Champ's 1e-6, not PyTorch's default 1e-5.
    torch.manual_seed(0)
    encoder = GuidanceEncoder(block_out_channels=(8, 16), attention_num_heads=2, attention_norm_num_groups=8)
    norm = encoder.attention.norm
    x = torch.randn(1, 16, 4, 4) * 1e-3
    torch.testing.assert_close(norm(x), F.group_norm(x, 8, norm.weight, norm.bias, eps=1e-6))


def test_fusion_scales_multiply_each_map():
    torch.manual_seed(0)
    fusion = tiny_guidance_encoders("sum")
    reinit_zero_layers(fusion)
    maps = {name: torch.rand(1, 3, 16, 16) for name in fusion.guidance_types}
    parts = {name: fusion.encoders[name](x) for name, x in maps.items()}
    torch.testing.assert_close(
        fusion(maps, {"depth": 2.0, "normal": 1.0, "semantic": -1.0}),
        2 * parts["depth"] + parts["normal"] - parts["semantic"],
    )
