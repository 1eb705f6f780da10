"""The pose guider's initialisation: He-normal convolutions (as MimicMotion), zero biases and projection."""

from __future__ import annotations

import math

import torch
from torch import nn

from controlnets.pose_guider import PoseGuider


def test_convolutions_are_he_normal_with_zero_bias():
    torch.manual_seed(0)
    guider = PoseGuider()  # MimicMotion's widths: enough weights per layer for the statistics
    checked = 0
    for module in guider.conv_layers:
        if not isinstance(module, nn.Conv2d):
            continue
        assert torch.count_nonzero(module.bias) == 0
        weight = module.weight.detach().double()
        if weight.numel() < 2000:
            continue
        fan_in = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
        expected = math.sqrt(2.0 / fan_in)
        assert abs(weight.mean().item()) < 5 * expected / math.sqrt(weight.numel())
        assert abs(weight.std().item() / expected - 1) < 0.1, module
        checked += 1
    assert checked >= 5
    assert (
        torch.count_nonzero(guider.final_proj.weight) == 0
        and torch.count_nonzero(guider.final_proj.bias) == 0
    )
    assert guider.scale.tolist() == [2.0]
