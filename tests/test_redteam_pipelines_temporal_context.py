"""Red team (issue 20): diffusers 0.27's time context reaches EVERY module it is given, the motion ControlNet
as much as the UNet (UPSTREAM_PARITY.md D1: "every temporal transformer of UNet and ControlNet is affected").

The expectation is the 0.27 rule written per row: row ``r`` of a 2-video call (rows video-major,
``r = video * pixels + p``) gets the CLIP token of video ``r mod 2``.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention import TemporalBasicTransformerBlock

from controlnets import MotionControlNet
from pipelines.temporal_context import TemporalContext
from pipelines.testing import tiny_unet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spy(module: torch.nn.Module, seen: list) -> list:
    blocks = [m for m in module.modules() if isinstance(m, TemporalBasicTransformerBlock)]
    assert blocks
    return [
        b.attn2.register_forward_pre_hook(
            lambda m, a, k: seen.append(k["encoder_hidden_states"].clone()), with_kwargs=True
        )
        for b in blocks
    ]


def test_the_controlnets_temporal_blocks_get_the_027_pairing_too():
    torch.manual_seed(0)
    unet = tiny_unet().eval()
    controlnet = MotionControlNet.from_unet(unet, point_embedding_channels=8, point_mid_channels=4).eval()
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 2, 8, 16, 16, generator=generator)  # 2 videos (a batched CFG call), 2 frames
    tokens = torch.randn(2, 1, 32, generator=generator)
    time_ids = torch.tensor([[6.0, 127.0, 0.02]] * 2)
    seen_unet: list = []
    seen_controlnet: list = []
    handles = _spy(unet, seen_unet) + _spy(controlnet, seen_controlnet)
    try:
        context = TemporalContext((unet, controlnet), "diffusers_0.27")
        unet_blocks = [m for m in unet.modules() if isinstance(m, TemporalBasicTransformerBlock)]
        net_blocks = [m for m in controlnet.modules() if isinstance(m, TemporalBasicTransformerBlock)]
        assert len(context.blocks) == len(unet_blocks) + len(net_blocks)
        with context, torch.no_grad():
            controlnet(sample, 10.0, tokens, time_ids, return_dict=False)
            unet(sample, 10.0, tokens, time_ids)
    finally:
        for handle in handles:
            handle.remove()
    for seen in (seen_controlnet, seen_unet):
        assert seen
        for rows in seen:
            pixels = rows.shape[0] // 2
            assert pixels > 1
            for r in range(rows.shape[0]):
                assert torch.equal(rows[r], tokens[r % 2]), r
