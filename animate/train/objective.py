"""SVD's training objective: EDM preconditioning with v-prediction, log-normal noise levels, EDM weighting.

Derived from diffusers' ``EulerDiscreteScheduler`` as SVD-xt ships it (``prediction_type="v_prediction"``,
``timestep_type="continuous"``) and the SVD paper (Blattmann et al. 2023, appendix D: the EDM framework of
Karras et al. 2022 with ``sigma_data = 1``). For clean latents ``x0`` (VAE latents times
``scaling_factor``), noise ``n ~ N(0, I)`` and a noise level ``sigma``:

- noisy latents ``x = x0 + sigma * n``;
- the UNet sees ``c_in * x`` with ``c_in = 1 / sqrt(sigma^2 + 1)`` (the scheduler's ``scale_model_input``)
  at timestep ``c_noise = 0.25 * log(sigma)`` (the scheduler's continuous timesteps);
- its output ``F`` is turned into the denoised estimate ``D = c_skip * x + c_out * F`` with
  ``c_skip = 1 / (sigma^2 + 1)`` and ``c_out = -sigma / sqrt(sigma^2 + 1)`` (the scheduler's
  ``pred_original_sample`` for v-prediction: the same ``D`` sampling uses);
- ``log(sigma) ~ N(P_mean, P_std^2)`` with ``P_mean = 0.7``, ``P_std = 1.6`` (what SVD fine-tuning code uses;
  EDM's image defaults are -1.2 / 1.2, SVD shifts towards more noise for video);
- loss ``lambda(sigma) * ||D - x0||^2`` with ``lambda = (sigma^2 + 1) / sigma^2`` (EDM's
  ``(sigma^2 + sigma_data^2) / (sigma * sigma_data)^2`` at ``sigma_data = 1``), averaged over elements;
  equivalently the plain MSE of the v-target ``F* = (x0 - c_skip * x) / c_out``, since
  ``lambda * c_out^2 = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Preconditioning:
    """The EDM scalings for a tensor of noise levels (each broadcastable over latents)."""

    c_in: torch.Tensor
    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_noise: torch.Tensor
    weight: torch.Tensor


@dataclass(frozen=True)
class EDMObjective:
    """SVD's objective (module docstring). ``sigma_data`` is 1 for SVD; kept as a field so the formulas read
    as EDM's."""

    p_mean: float = 0.7
    p_std: float = 1.6
    sigma_data: float = 1.0

    def sample_sigmas(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` noise levels, ``log(sigma) ~ N(p_mean, p_std^2)`` (float32, CPU)."""
        normal = torch.randn(count, generator=generator, dtype=torch.float32)
        return (normal * self.p_std + self.p_mean).exp()

    def precondition(self, sigma: torch.Tensor) -> Preconditioning:
        s2, d2 = sigma**2, self.sigma_data**2
        return Preconditioning(
            c_in=1.0 / (s2 + d2).sqrt(),
            c_skip=d2 / (s2 + d2),
            c_out=-sigma * self.sigma_data / (s2 + d2).sqrt(),
            c_noise=0.25 * sigma.log(),
            weight=(s2 + d2) / (sigma * self.sigma_data) ** 2,
        )

    def denoise(self, model_output: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``D = c_skip * x + c_out * F``; ``sigma`` broadcastable over ``noisy``."""
        pre = self.precondition(sigma)
        return pre.c_skip * noisy + pre.c_out * model_output

    def loss(self, denoised: torch.Tensor, clean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``mean(lambda(sigma) * (D - x0)^2)`` in float32."""
        weight = self.precondition(sigma.float()).weight
        return (weight * (denoised.float() - clean.float()) ** 2).mean()
