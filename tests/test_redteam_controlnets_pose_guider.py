"""Red team (issue 20): the pose guider and the guidance encoders against MimicMotion's / Champ's forward
written out with ``F.conv2d`` from the published layer list (kernel, stride, padding, activation), not from
our module's attributes; a 5-D ``(batch, frames, ...)`` input is batch-major, as the UNet's rows are; the
learned fusion weight of each guidance type is its own, in the configured order.

MimicMotion's ``PoseNet``: 3x3 c->c, SiLU; per stage a 4x4 stride-2 conv (padding 1), SiLU, a 3x3 conv, SiLU;
a 3x3 conv to the last width, SiLU; a 1x1 ``final_proj``; the result times the learnable ``scale``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from controlnets import GuidanceEncoder, GuidanceFusion, PoseGuider
from pipelines.testing import reinit_zero_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def posenet_reference(guider: PoseGuider, pose: torch.Tensor) -> torch.Tensor:
    """MimicMotion's PoseNet forward on the guider's weights: ``conv_layers.{0, 2, 4, ...}`` in order."""
    convs = [m for m in guider.conv_layers if isinstance(m, torch.nn.Conv2d)]
    stages = len(guider.config.block_out_channels) - 1
    # (stride, padding) of each conv in MimicMotion's list: 3x3, then (4x4 s2, 3x3) per stage, then 3x3
    layout = [(1, 1)] + [(2, 1), (1, 1)] * stages + [(1, 1)]
    assert len(convs) == len(layout)
    x = pose
    for conv, (stride, padding) in zip(convs, layout, strict=True):
        x = F.silu(F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=padding))
    x = F.conv2d(x, guider.final_proj.weight, guider.final_proj.bias)
    return x * guider.scale


@pytest.fixture(scope="module")
def guider() -> PoseGuider:
    torch.manual_seed(0)
    module = PoseGuider(block_out_channels=(4, 8, 12), out_channels=6, scale_init=1.7)
    reinit_zero_layers(module)  # the projection (weight and bias) is no longer zero
    assert module.final_proj.bias.abs().min() > 0
    return module.eval()


def test_pose_guider_equals_mimicmotions_posenet_written_out(guider):
    pose = torch.rand(3, 3, 16, 20, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        out = guider(pose)
        expected = posenet_reference(guider, pose)
    assert out.shape == (3, 6, 4, 5)  # two stride-2 stages: 4x smaller
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    # scale_init 1.7 and a nonzero projection bias (fixture): scaling before the projection would differ


def test_pose_guider_5d_input_is_batch_major(guider):
    """(B, F, C, H, W) -> row ``b * F + f`` is frame f of video b (the UNet's flattened batch * frames)."""
    pose = torch.rand(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        out = guider(pose)
        for b in range(2):
            for f in range(3):
                torch.testing.assert_close(out[b * 3 + f], guider(pose[b, f][None])[0], atol=1e-6, rtol=0)


def champ_encoder_reference(encoder: GuidanceEncoder, condition: torch.Tensor) -> torch.Tensor:
    """Champ's GuidanceEncoder forward: conv_in 3x3, SiLU; per width pair a 3x3 conv, SiLU, a 3x3 stride-2
    conv, SiLU; the attention block (ours is checked against Champ's transformer elsewhere); conv_out 3x3."""
    x = F.silu(F.conv2d(condition, encoder.conv_in.weight, encoder.conv_in.bias, padding=1))
    for index, block in enumerate(encoder.blocks):
        stride = 2 if index % 2 else 1
        x = F.silu(F.conv2d(x, block.weight, block.bias, stride=stride, padding=1))
    if encoder.attention is not None:
        x = encoder.attention(x)
    return F.conv2d(x, encoder.conv_out.weight, encoder.conv_out.bias, padding=1)


@pytest.mark.parametrize("use_attention", [False, True])
def test_guidance_encoder_equals_champs_forward_and_is_batch_major(use_attention):
    torch.manual_seed(0)
    encoder = GuidanceEncoder(
        block_out_channels=(4, 8, 16), out_channels=6, attention_num_heads=2, attention_norm_num_groups=4,
        use_attention=use_attention,
    ).eval()  # fmt: skip
    reinit_zero_layers(encoder)
    maps = torch.rand(2, 3, 3, 16, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = encoder(maps)
        assert out.shape == (6, 6, 4, 3)
        for b in range(2):
            for f in range(3):
                expected = champ_encoder_reference(encoder, maps[b, f][None])[0]
                torch.testing.assert_close(out[b * 3 + f], expected, atol=1e-5, rtol=1e-5)


def test_learned_fusion_weights_follow_the_configured_type_order_and_scales_multiply_once():
    """``fusion_weights[i]`` belongs to ``guidance_types[i]`` whatever order the types were configured in
    (here not alphabetical) or the maps given in; a map's scale multiplies its features once."""
    torch.manual_seed(0)
    kwargs = {"block_out_channels": (4, 8), "out_channels": 4, "attention_num_heads": 1}
    fusion = GuidanceFusion(
        guidance_types=("semantic", "depth", "normal"),
        fusion="learned",
        attention_norm_num_groups=4,
        **kwargs,
    ).eval()
    reinit_zero_layers(fusion)
    with torch.no_grad():
        fusion.fusion_weights.copy_(torch.tensor([3.0, -1.0, 0.5]))
    generator = torch.Generator().manual_seed(4)
    maps = {name: torch.rand(2, 3, 8, 8, generator=generator) for name in ("normal", "depth", "semantic")}
    with torch.no_grad():
        parts = {name: fusion.encoders[name](x) for name, x in maps.items()}
        expected = 3.0 * parts["semantic"] - 1.0 * parts["depth"] + 0.5 * parts["normal"]
        torch.testing.assert_close(fusion(maps), expected, atol=1e-6, rtol=1e-5)
        scaled = fusion(maps, {"semantic": 0.5, "normal": 2.0})
        expected = 1.5 * parts["semantic"] - 1.0 * parts["depth"] + 1.0 * parts["normal"]
        torch.testing.assert_close(scaled, expected, atol=1e-6, rtol=1e-5)
