"""SVD's EDM objective against a hand-computed example and diffusers' Euler scheduler; the epoch sampler's
sharding. No training here (fast)."""

from __future__ import annotations

import math

import pytest
import torch

from animate.train.objective import EDMObjective
from animate.train.trainer import EpochSampler
from pipelines.testing import svd_scheduler


def test_preconditioning_by_hand_at_sigma_two():
    # sigma = 2: sigma^2 + 1 = 5
    pre = EDMObjective().precondition(torch.tensor(2.0))
    assert pre.c_in.item() == pytest.approx(1 / math.sqrt(5))
    assert pre.c_skip.item() == pytest.approx(0.2)
    assert pre.c_out.item() == pytest.approx(-2 / math.sqrt(5))
    assert pre.c_noise.item() == pytest.approx(0.25 * math.log(2))
    assert pre.weight.item() == pytest.approx(1.25)


def test_loss_by_hand():
    objective = EDMObjective()
    clean = torch.zeros(1, 2, 4, 3, 3)
    noisy = torch.full_like(clean, 2.0)  # x = x0 + sigma * n with x0 = 0, sigma = 2, n = 1
    # the network output F that gives D = x0 + 0.1: D = 0.2 * 2 + (-2 / sqrt 5) * F
    output = torch.full_like(clean, (0.1 - 0.4) / (-2 / math.sqrt(5)))
    denoised = objective.denoise(output, noisy, torch.tensor(2.0))
    assert torch.allclose(denoised, torch.full_like(clean, 0.1), atol=1e-6)
    # lambda(2) * 0.1^2 = 1.25 * 0.01
    assert objective.loss(denoised, clean, torch.tensor(2.0)).item() == pytest.approx(0.0125, rel=1e-5)
    # the EDM weight makes it the plain MSE of the v-target F* = (x0 - c_skip x) / c_out
    target = (clean - 0.2 * noisy) / (-2 / math.sqrt(5))
    assert objective.loss(denoised, clean, torch.tensor(2.0)).item() == pytest.approx(
        ((output - target) ** 2).mean().item(), rel=1e-5
    )


def test_preconditioning_is_the_svd_euler_schedulers():
    """The scheduler SVD-xt ships: its continuous timestep, input scaling and denoised estimate are ours."""
    scheduler = svd_scheduler()
    sigmas = [7.5, 0.8]
    scheduler.set_timesteps(sigmas=sigmas, device="cpu")
    t = scheduler.timesteps[0]
    pre = EDMObjective().precondition(torch.tensor(sigmas[0]))
    assert t.item() == pytest.approx(pre.c_noise.item(), rel=1e-6)
    sample = torch.randn(1, 2, 4, 3, 3, generator=torch.Generator().manual_seed(0)) * 7.5
    output = torch.randn(sample.shape, generator=torch.Generator().manual_seed(1))
    scaled = scheduler.scale_model_input(sample, t)
    assert torch.allclose(scaled, sample * pre.c_in, atol=1e-6)
    denoised = scheduler.step(output, t, sample).pred_original_sample
    ours = EDMObjective().denoise(output, sample, torch.tensor(sigmas[0]))
    assert torch.allclose(denoised, ours, atol=1e-5)


def test_sigmas_are_log_normal_with_svds_parameters():
    sigmas = EDMObjective().sample_sigmas(40000, torch.Generator().manual_seed(0))
    logs = sigmas.log()
    assert logs.mean().item() == pytest.approx(0.7, abs=0.03)
    assert logs.std().item() == pytest.approx(1.6, abs=0.03)


def test_epoch_sampler_shards_without_duplicates_and_matches_one_process():
    size, batch, world = 11, 2, 2
    ranks = [EpochSampler(size, batch, rank, world, seed=3) for rank in range(world)]
    single = EpochSampler(size, batch * world, 0, 1, seed=3)
    for epoch in (0, 1):
        for sampler in (*ranks, single):
            sampler.set_epoch(epoch)
        per_rank = [s.indices() for s in ranks]
        # 11 clips, global batch 4: two whole steps, 8 clips, each at most once over the ranks
        assert [len(i) for i in per_rank] == [4, 4]
        union = per_rank[0] + per_rank[1]
        assert len(set(union)) == 8 and set(union) <= set(range(size))
        # step k: rank r's clips are the r-th half of the single process' k-th batch
        whole = single.indices()
        for step in range(2):
            expected = whole[step * 4 : step * 4 + 4]
            assert per_rank[0][step * 2 : step * 2 + 2] + per_rank[1][step * 2 : step * 2 + 2] == expected
    ranks[0].set_epoch(0)
    first = ranks[0].indices()
    ranks[0].set_epoch(1)
    assert ranks[0].indices() != first  # reshuffled per epoch
    ranks[0].set_epoch(1, start_batch=1)  # resume after one micro-batch: the rest of the same order
    ranks[1].set_epoch(1)
    full = EpochSampler(size, batch, 0, world, seed=3)
    full.set_epoch(1)
    assert ranks[0].indices() == full.indices()[2:]
