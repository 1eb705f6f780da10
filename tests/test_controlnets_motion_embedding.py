"""MotionEmbedding against a written-out reference: each given flow runs its own branch (conv_in, blocks with
SiLU, conv_out), the branch outputs are summed, then conv_final; a missing flow adds nothing and no flow at
all gives None. The zero-initialised conv_out layers are re-initialised so the branches show.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from controlnets.motion_controlnet import MotionEmbedding

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_branch(embedding: MotionEmbedding, branch: str, flow: torch.Tensor) -> torch.Tensor:
    hidden = F.silu(getattr(embedding, f"conv_in_{branch}")(flow))
    for block in getattr(embedding, f"blocks_{branch}"):
        hidden = F.silu(block(hidden))
    return getattr(embedding, f"conv_out_{branch}")(hidden)


@pytest.fixture()
def embedding() -> MotionEmbedding:
    torch.manual_seed(0)
    module = MotionEmbedding(out_channels=4, block_out_channels=(4, 8))
    for branch in module.branches:
        conv_out = getattr(module, f"conv_out_{branch}")
        torch.nn.init.normal_(conv_out.weight, std=0.2)
        torch.nn.init.normal_(conv_out.bias, std=0.2)
    return module.eval()


def test_each_flow_steers_its_own_branch_and_the_sum_goes_through_conv_final(embedding) -> None:
    torch.manual_seed(1)
    dense, trajectory = torch.randn(2, 2, 16, 16), torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        both = embedding(dense, trajectory)
        only_dense = embedding(dense, None)
        only_trajectory = embedding(None, trajectory)
        expected = embedding.conv_final(
            reference_branch(embedding, "flow", dense) + reference_branch(embedding, "traj", trajectory)
        )
        assert torch.allclose(both, expected, atol=1e-6)
        assert torch.allclose(
            only_dense, embedding.conv_final(reference_branch(embedding, "flow", dense)), atol=1e-6
        )
        assert torch.allclose(
            only_trajectory, embedding.conv_final(reference_branch(embedding, "traj", trajectory)), atol=1e-6
        )
    assert both.shape == (2, 4, 8, 8) and embedding.downsample_factor == 2
    assert embedding(None, None) is None


def test_flows_of_different_shapes_are_refused(embedding) -> None:
    with pytest.raises(
        ValueError, match=r"dense_flow \(1, 2, 16, 16\) and trajectory_flow \(1, 2, 8, 8\) differ"
    ):
        embedding(torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 8, 8))


def test_from_unet_follows_the_unets_dtype_and_copies_its_parts_exactly() -> None:
    from controlnets.motion_controlnet import UNET_PARTS, MotionControlNet
    from pipelines.testing import tiny_unet

    torch.manual_seed(0)
    unet = tiny_unet().to(torch.float64)
    controlnet = MotionControlNet.from_unet(unet)
    assert controlnet.dtype == torch.float64
    for name in UNET_PARTS:
        ours, theirs = getattr(controlnet, name).state_dict(), getattr(unet, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_defaults_are_dispose_s_two_channel_flows_and_8x_downsampling() -> None:
    module = MotionEmbedding(out_channels=4)  # DisPose's (16, 32, 96, 256): three stride-2 convs
    assert module.downsample_factor == 8
    assert module.conv_in_flow.in_channels == 2 and module.conv_in_traj.in_channels == 2
    with torch.no_grad():
        assert module(torch.zeros(1, 2, 32, 32), None).shape == (1, 4, 4, 4)
