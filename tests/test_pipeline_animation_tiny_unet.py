"""``pipelines.testing.tiny_unet`` must see the timestep and each added time id, or every test built on it is
blind to a pipeline that passes the wrong ones (diffusers normalises in 32 groups: with one channel per
group, as at the tiny UNet's 32-channel level, the next GroupNorm removes the per-channel time embedding;
its 64-channel level, two channels a group, keeps it)."""

from __future__ import annotations

import pytest
import torch

from pipelines.testing import tiny_unet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _predict(unet, timestep: float, time_ids: list[float]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 2, 8, 16, 16, generator=generator)
    context = torch.randn(1, 1, 32, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor(timestep), context, torch.tensor([time_ids])).sample


def test_tiny_unet_prediction_moves_with_the_timestep_and_every_time_id():
    torch.manual_seed(0)
    unet = tiny_unet().eval()
    base = _predict(unet, 1.0, [6.0, 127.0, 0.02])
    changed = {
        "timestep": _predict(unet, 0.3, [6.0, 127.0, 0.02]),
        "fps": _predict(unet, 1.0, [7.0, 127.0, 0.02]),
        "motion bucket": _predict(unet, 1.0, [6.0, 100.0, 0.02]),
        "noise augmentation": _predict(unet, 1.0, [6.0, 127.0, 0.5]),
    }
    for name, other in changed.items():  # 6e-3 to 3e-2 of ~0.27; ~1e-6 when removed
        assert (other - base).abs().max().item() > 1e-3, name
