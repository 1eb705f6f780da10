"""DIFT features (Tang et al., NeurIPS 2023) of the reference image, as DisPose's point adapter reads them.

A Stable Diffusion 1.5 UNet sees the reference's VAE latent noised to timestep 261 with the prompt "photo of
a human"; the output of ``up_blocks[1]`` (1280 channels at 1/16 of the image) is averaged over an ensemble
of 8 noised copies. DisPose draws that noise unseeded; ours comes from a seeded generator, so the same
image and seed give the same features. The prompt embedding is computed once, with the real CLIP text
encoder, when loading; the text encoder is not kept. The featurizer is meant to run once per job and be
freed after (``close()`` or ``with``): a UNet and a VAE are large.

The UNet runs only as far as ``up_blocks[1]`` (a forward hook ends it there), so the two full-resolution
up blocks are never computed.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

DEFAULT_PROMPT = "photo of a human"
DEFAULT_TIMESTEP = 261
DEFAULT_UP_BLOCK = 1
DEFAULT_ENSEMBLE = 8
SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class DiftLoadError(ValueError):
    """The Stable Diffusion directory is missing a part or its parts do not fit together."""

    code = "weights_invalid"


class _ReachedBlock(Exception):
    """Raised by the forward hook to stop the UNet once the wanted block has run."""


@torch.no_grad()
def encode_prompt(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompt: str) -> torch.Tensor:
    """``(1, max_length, hidden)`` CLIP last hidden state, as Stable Diffusion conditions its UNet."""
    tokens = tokenizer(
        prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return text_encoder(tokens.input_ids.to(text_encoder.device))[0]


def sample_keypoint_features(
    features: torch.Tensor, keypoints: torch.Tensor | np.ndarray, image_size: tuple[int, int]
) -> torch.Tensor:
    """Bilinear samples of a ``(1, C, h, w)`` feature map at image keypoints -> ``(K, C)`` float32.

    keypoints: ``(K, 2+)`` x, y in pixels of an image of ``image_size`` = (width, height), with (0, 0) the
    top-left corner of the image (so the feature cell ``j`` covers ``[j, j + 1) * width / w``). Points
    outside the image take the nearest border value; a confidence column, if any, is ignored.
    """
    width, height = image_size
    points = torch.as_tensor(np.asarray(keypoints, np.float32)[:, :2], device=features.device)
    grid = torch.stack([points[:, 0] / width * 2 - 1, points[:, 1] / height * 2 - 1], dim=-1)
    sampled = F.grid_sample(
        features[:1].float(),
        grid.view(1, 1, -1, 2),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return sampled[0, :, 0].T.contiguous()


class DiftFeaturizer:
    """Reference image -> ``(1, C, H/16, W/16)`` DIFT features (C = 1280 for SD 1.5), float32.

    ``unet``, ``vae`` and ``scheduler`` are Stable Diffusion's (any diffusers scheduler with ``add_noise``
    over ``num_train_timesteps``); ``prompt_embeds`` is ``encode_prompt``'s output. ``ensemble_batch`` copies
    run through the UNet at a time (all of them by default); the result does not depend on it.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDIMScheduler,
        prompt_embeds: torch.Tensor,
        *,
        timestep: int = DEFAULT_TIMESTEP,
        up_block_index: int = DEFAULT_UP_BLOCK,
        ensemble_size: int = DEFAULT_ENSEMBLE,
        ensemble_batch: int | None = None,
        seed: int = 0,
    ) -> None:
        if not 0 <= up_block_index < len(unet.up_blocks) - 1:
            raise ValueError(f"up_block_index must name an upsampling block (< {len(unet.up_blocks) - 1})")
        if prompt_embeds.shape[-1] != unet.config.cross_attention_dim:
            raise DiftLoadError(
                f"prompt embedding width {prompt_embeds.shape[-1]} does not fit the UNet's "
                f"cross_attention_dim {unet.config.cross_attention_dim}"
            )
        if ensemble_size < 1:
            raise ValueError("ensemble_size must be at least 1")
        self.unet: UNet2DConditionModel | None = unet.eval().requires_grad_(False)
        self.vae: AutoencoderKL | None = vae.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.prompt_embeds: torch.Tensor | None = prompt_embeds.to(unet.device, unet.dtype)
        self.timestep = timestep
        self.up_block_index = up_block_index
        self.ensemble_size = ensemble_size
        self.ensemble_batch = ensemble_batch or ensemble_size
        self.seed = seed
        vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        num_blocks = len(unet.config.block_out_channels)
        #: Image pixels per feature cell (16 for SD 1.5's up_blocks[1]).
        self.feature_stride = vae_factor * 2 ** (num_blocks - 2 - up_block_index)
        #: The image is resized to multiples of this (the UNet's full downsampling) before encoding.
        self.size_multiple = vae_factor * 2 ** (num_blocks - 1)
        self.channels = int(tuple(reversed(unet.config.block_out_channels))[up_block_index])

    @classmethod
    def from_pretrained(
        cls,
        sd15_dir: str | Path,
        *,
        device: torch.device | str | None = None,
        torch_dtype: torch.dtype | None = None,
        variant: str | None = None,
        prompt: str = DEFAULT_PROMPT,
        **kwargs,
    ) -> DiftFeaturizer:
        """Load from a diffusers Stable Diffusion directory (``unet/``, ``vae/``, ``text_encoder/``,
        ``tokenizer/``, ``scheduler/``); ``kwargs`` go to the constructor (``seed``, ``ensemble_size``...)."""
        root = Path(sd15_dir)
        absent = [name for name in SD_SUBFOLDERS if not (root / name).is_dir()]
        if absent:
            raise DiftLoadError(f"{root} is not a Stable Diffusion directory: no {', '.join(absent)}")
        device = torch.device(device or "cpu")
        dtype = torch_dtype or torch.float32
        try:
            tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer")
            text_encoder = CLIPTextModel.from_pretrained(
                root, subfolder="text_encoder", torch_dtype=dtype, variant=variant
            ).to(device)
            prompt_embeds = encode_prompt(tokenizer, text_encoder, prompt)
            del text_encoder, tokenizer
            unet = UNet2DConditionModel.from_pretrained(
                root, subfolder="unet", torch_dtype=dtype, variant=variant
            )
            vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=dtype, variant=variant)
            scheduler = DDIMScheduler.from_pretrained(root, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            raise DiftLoadError(f"cannot load Stable Diffusion from {root}: {exc}") from None
        return cls(unet.to(device), vae.to(device), scheduler, prompt_embeds, **kwargs)

    # -- lifetime ------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.unet is None

    def close(self) -> None:
        """Drop the UNet, VAE and prompt embedding and return their memory (CUDA cache included)."""
        on_cuda = self.unet is not None and self.unet.device.type == "cuda"
        self.unet = self.vae = self.prompt_embeds = None
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()

    def __enter__(self) -> DiftFeaturizer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- features ------------------------------------------------------------------------------------
    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """The feature map's (h, w) for an image of (height, width): ``floor(size / feature_stride)``."""
        return max(1, height // self.feature_stride), max(1, width // self.feature_stride)

    @torch.no_grad()
    def __call__(self, image: np.ndarray, *, seed: int | None = None) -> torch.Tensor:
        """``(H, W, 3)`` uint8 RGB -> ``(1, C, H // 16, W // 16)`` float32 on the featurizer's device."""
        if self.unet is None or self.vae is None or self.prompt_embeds is None:
            raise RuntimeError("DiftFeaturizer is closed")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
        unet, vae = self.unet, self.vae
        device, dtype = unet.device, unet.dtype
        height, width = image.shape[:2]
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        m = self.size_multiple
        size = (max(m, round(height / m) * m), max(m, round(width / m) * m))
        if size != (height, width):
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)

        posterior = vae.encode(pixels.to(device, dtype)).latent_dist
        # all randomness drawn up front on the CPU: the result depends on the seed, not the batching or device
        generator = torch.Generator("cpu").manual_seed(self.seed if seed is None else seed)
        shape = (self.ensemble_size, *posterior.mean.shape[1:])
        latent_eps = torch.randn(shape, generator=generator)
        noise = torch.randn(shape, generator=generator)
        latents = posterior.mean + posterior.std * latent_eps.to(device, dtype)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = (latents - shift) * vae.config.scaling_factor
        timesteps = torch.full((self.ensemble_size,), self.timestep, dtype=torch.long, device=device)
        noisy = self.scheduler.add_noise(latents, noise.to(device, dtype), timesteps)

        total = None
        for start in range(0, self.ensemble_size, self.ensemble_batch):
            chunk = noisy[start : start + self.ensemble_batch]
            features = self._up_block_output(chunk, timesteps[: len(chunk)]).float().sum(dim=0, keepdim=True)
            total = features if total is None else total + features
        features = total / self.ensemble_size
        target = self.feature_size(height, width)
        if tuple(features.shape[-2:]) != target:
            features = F.interpolate(features, size=target, mode="bilinear", align_corners=False)
        return features

    def _up_block_output(self, latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def hook(_module, _inputs, output):
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _ReachedBlock

        handle = self.unet.up_blocks[self.up_block_index].register_forward_hook(hook)
        try:
            embeds = self.prompt_embeds.expand(len(latents), -1, -1)
            self.unet(latents, timesteps, encoder_hidden_states=embeds)
        except _ReachedBlock:
            pass
        finally:
            handle.remove()
        return captured[0]
