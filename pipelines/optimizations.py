"""Opt-in speed and memory paths for a built ``AnimationPipeline`` (or diffusers' SVD pipeline).

Nothing here changes the pipeline's code: every path is applied to the built modules by ``optimize(pipe,
options)``. Each one is measured by ``benchmarks/gpu_pipeline.py`` and held to a tolerance against the plain
path by ``tests/test_optimizations.py`` (tiny configs, CPU):

- ``attention``: the attention kernel of every UNet / ControlNet attention layer. ``"sdpa"`` sets diffusers'
  ``AttnProcessor2_0`` (PyTorch ``scaled_dot_product_attention``: flash / memory-efficient kernels on GPU),
  ``"eager"`` the materialised-scores ``AttnProcessor`` (reference only: at 576x1024 the score matrix of the
  highest-resolution layer alone needs ~42 GB), ``"xformers"`` xformers' kernel (the ``gpu`` extra).
- ``fused_qkv``: one projection matmul for q, k, v (self-attention) and for k, v (cross-attention).
  diffusers' ``UNetSpatioTemporalConditionModel.fuse_qkv_projections()`` is a no-op on this UNet (its
  attention layers are the legacy ``Attention`` class, which that method skips), so the layers are fused
  one by one and given ``FusedAttnProcessor2_0``. The separate projections stay (``state_dict`` unchanged).
- ``channels_last``: NHWC weights for the UNet, ControlNet and VAE (faster convolutions on tensor cores).
- ``compile_blocks``: regional ``torch.compile``: each spatio-temporal transformer and res block is compiled
  in place (``nn.Module.compile``); identical blocks share one compiled graph, so compile time stays short.
- ``forward_chunk_size``: feed-forward layers run in chunks (diffusers' ``set_chunk_feed_forward``).
- ``cpu_offload``: diffusers' model CPU offload (one model on the GPU at a time).
- ``step_cache_interval``: DeepCache-style step cache (``StepCache``): a full UNet pass every ``interval``
  steps, in between only the outermost level is recomputed on top of cached deep features. Approximate.
- ``cfg_mode`` / ``decode_chunk_size``: pipeline call arguments (``call_kwargs()``), for the memory modes.

``OptimizationOptions.low_memory()`` is the preset for 16 GB cards; ``OptimizationOptions.fast()`` the one
for speed on a large GPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    XFormersAttnProcessor,
)
from torch import nn

ATTENTION_BACKENDS = ("sdpa", "eager", "xformers")
# modules whose attention / layout / compile settings follow the options; the first two are UNet-shaped
DENOISERS = ("unet", "motion_controlnet")
CHANNELS_LAST_MODULES = ("unet", "motion_controlnet", "vae")
RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class OptimizationOptions:
    """Flags for ``optimize``; all off by default except SDPA attention (diffusers' own default).

    Args:
        attention: ``"sdpa" | "eager" | "xformers"``.
        fused_qkv: fuse the q/k/v projections of every attention layer (SDPA only).
        channels_last: NHWC memory format for UNet, ControlNet and VAE.
        compile_blocks: regional ``torch.compile`` of the UNet's (and ControlNet's) repeated blocks.
        compile_mode: ``torch.compile`` mode, e.g. ``"max-autotune-no-cudagraphs"``; ``None``: default.
        forward_chunk_size: feed-forward chunking (1 = one frame / token row at a time); ``None``: off.
        cpu_offload: model CPU offload (needs an accelerator; ``offload_device`` overrides the detection).
        step_cache_interval: 1: off; ``n`` > 1: a full UNet pass every ``n`` denoising steps.
        step_cache_levels: outer UNet levels recomputed on cached steps (1: the highest resolution only).
        cfg_mode: ``"batched" | "sequential"`` passed to the pipeline call; ``None``: the caller's choice.
        decode_chunk_size: frames per VAE decode call passed to the pipeline; ``None``: the caller's choice.
    """

    attention: str = "sdpa"
    fused_qkv: bool = False
    channels_last: bool = False
    compile_blocks: bool = False
    compile_mode: str | None = None
    forward_chunk_size: int | None = None
    cpu_offload: bool = False
    offload_device: str | None = None
    step_cache_interval: int = 1
    step_cache_levels: int = 1
    cfg_mode: str | None = None
    decode_chunk_size: int | None = None

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        if self.fused_qkv and self.attention != "sdpa":
            raise ValueError("fused_qkv needs attention='sdpa' (FusedAttnProcessor2_0)")
        if self.forward_chunk_size is not None and self.forward_chunk_size < 1:
            raise ValueError(f"forward_chunk_size must be >= 1, got {self.forward_chunk_size}")
        if self.step_cache_interval < 1 or self.step_cache_levels < 1:
            raise ValueError("step_cache_interval and step_cache_levels must be >= 1")
        if self.cfg_mode not in (None, "batched", "sequential"):
            raise ValueError(f"cfg_mode must be None, 'batched' or 'sequential', got {self.cfg_mode!r}")
        if self.decode_chunk_size is not None and self.decode_chunk_size < 1:
            raise ValueError(f"decode_chunk_size must be >= 1, got {self.decode_chunk_size}")

    @classmethod
    def fast(cls, **overrides: Any) -> OptimizationOptions:
        """Speed on a large GPU: SDPA, fused QKV, channels_last, regional compile, batched CFG."""
        return dataclasses.replace(
            cls(fused_qkv=True, channels_last=True, compile_blocks=True, cfg_mode="batched"), **overrides
        )

    @classmethod
    def low_memory(cls, **overrides: Any) -> OptimizationOptions:
        """A 16 GB card: model CPU offload, feed-forward chunking, sequential CFG, 2-frame VAE decode."""
        return dataclasses.replace(
            cls(cpu_offload=True, forward_chunk_size=1, cfg_mode="sequential", decode_chunk_size=2),
            **overrides,
        )

    def call_kwargs(self) -> dict[str, Any]:
        """Pipeline ``__call__`` arguments these options set (merge over the caller's)."""
        kwargs: dict[str, Any] = {}
        if self.cfg_mode is not None:
            kwargs["cfg_mode"] = self.cfg_mode
        if self.decode_chunk_size is not None:
            kwargs["decode_chunk_size"] = self.decode_chunk_size
        return kwargs


def _modules(pipe: Any, names: tuple[str, ...]) -> Iterator[tuple[str, nn.Module]]:
    for name in names:
        module = getattr(pipe, name, None)
        if isinstance(module, nn.Module):
            yield name, module


def _attention_layers(module: nn.Module) -> list[Attention]:
    return [m for m in module.modules() if isinstance(m, Attention)]


def set_attention(module: nn.Module, backend: str) -> int:
    """Give every attention layer of ``module`` the ``backend`` processor; returns the number of layers."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    if backend == "xformers":
        try:
            import xformers.ops  # noqa: F401
        except ImportError as exc:
            raise ValueError("attention='xformers' needs the xformers package (the `gpu` extra)") from exc
    layers = _attention_layers(module)
    for layer in layers:
        if backend == "sdpa":
            layer.set_processor(AttnProcessor2_0())
        elif backend == "eager":
            layer.set_processor(AttnProcessor())
        else:
            layer.set_processor(XFormersAttnProcessor())
    return len(layers)


def fuse_qkv(module: nn.Module) -> int:
    """Fuse the projections of every attention layer of ``module``; returns the number fused.

    Self-attention gets one ``to_qkv`` matmul, cross-attention one ``to_kv``; the layers then run
    ``FusedAttnProcessor2_0``. Idempotent. Costs the fused copies' memory (~0.3 GB for SVD-xt in bf16).
    """
    fused = 0
    for layer in _attention_layers(module):
        if not getattr(layer, "fused_projections", False):
            layer.fuse_projections()
        layer.set_processor(FusedAttnProcessor2_0())
        fused += 1
    return fused


def to_channels_last(module: nn.Module) -> int:
    """NHWC weights for every 2D convolution of ``module`` (``module.to(memory_format=...)`` refuses the
    temporal Conv3d weights); activations follow the weights' layout. Returns the number converted."""
    count = 0
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
            count += 1
    return count


def compile_blocks(module: nn.Module, mode: str | None = None) -> int:
    """Regional ``torch.compile``: compile each spatio-temporal transformer / res block of a UNet-shaped
    ``module`` in place (its ``state_dict`` keys stay); returns the number of compiled blocks."""
    from diffusers.models.resnet import SpatioTemporalResBlock
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    # one graph per distinct block shape (width x resolution x rows); the 7 widths / resolutions of SVD-xt
    # times a few tile and CFG batch sizes pass dynamo's default limit of 8 and would fall back to eager
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    dynamo_config.accumulated_recompile_limit = max(
        dynamo_config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT
    )
    count = 0
    for block in module.modules():
        if isinstance(block, TransformerSpatioTemporalModel | SpatioTemporalResBlock):
            block.compile(mode=mode, dynamic=False)
            count += 1
    return count


def enable_forward_chunking(module: nn.Module, chunk_size: int) -> int:
    """Feed-forward layers in chunks of ``chunk_size`` rows, as diffusers' ``enable_forward_chunking`` but
    for any module (the ControlNet has no such method); returns the number of chunked blocks."""
    count = 0
    for block in module.modules():
        if hasattr(block, "set_chunk_feed_forward"):
            block.set_chunk_feed_forward(chunk_size=chunk_size, dim=0)
            count += 1
    return count


class StepCache:
    """DeepCache-style step cache for diffusers' ``UNetSpatioTemporalConditionModel``.

    Every ``interval`` denoising steps the UNet runs in full and the input of its outermost ``levels`` up
    blocks is stored; on the steps between, only ``conv_in``, the first ``levels`` down blocks and the last
    ``levels`` up blocks run, on top of the stored deep features. Steps are told apart by the timestep
    (within a denoising run it decreases; a larger one starts a new run and clears the cache); UNet calls
    within one step (tiles, sequential CFG halves) are matched by their order, and a call whose shape does
    not match its stored features runs in full. Forward hooks on ``conv_in`` and the up blocks (guidance
    features, ControlNet residuals) fire on both paths.

    Memory: one stored feature per UNet call of a step, ``(batch * frames, C, h, w)`` at the resolution of
    the first recomputed up block (SVD-xt, ``levels=1``: 640 channels at the latent size, ~11.8 MB per
    frame in bf16 at 576x1024).
    """

    def __init__(self, unet: nn.Module, interval: int = 2, levels: int = 1) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        if not 1 <= levels < len(unet.up_blocks):
            raise ValueError(f"levels must be in [1, {len(unet.up_blocks) - 1}], got {levels}")
        self.unet = unet
        self.interval = interval
        self.levels = levels
        self.full_calls = 0
        self.cached_calls = 0
        self._features: dict[int, torch.Tensor] = {}
        self._last_timestep: float | None = None
        self._step = -1
        self._call = 0
        self._capture_key: int | None = None
        self._hook: Any = None

    # --- attaching ----------------------------------------------------------------------------

    def attach(self) -> StepCache:
        if getattr(self.unet, "_step_cache", None) is not None:
            raise ValueError("this UNet already has a step cache")
        first_cached = self.unet.up_blocks[-self.levels]
        self._hook = first_cached.register_forward_pre_hook(self._capture, with_kwargs=True)
        self.unet._step_cache = self
        self.unet.forward = self.forward  # instance attribute: the class's forward is untouched
        return self

    def detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.unet.__dict__.get("forward") == self.forward:
            del self.unet.forward
        self.unet._step_cache = None
        self.reset()

    def reset(self) -> None:
        self._features.clear()
        self._last_timestep, self._step, self._call = None, -1, 0

    # --- running ------------------------------------------------------------------------------

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._capture_key is not None:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            self._features[self._capture_key] = hidden

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        return_dict: bool = True,
    ) -> Any:
        value = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        if self._last_timestep is None or value > self._last_timestep:
            self.reset()
        if value != self._last_timestep:
            self._step, self._call, self._last_timestep = self._step + 1, 0, value
        key, self._call = self._call, self._call + 1
        stored = self._features.get(key)
        reuse = (
            self._step % self.interval != 0
            and stored is not None
            and stored.shape[0] == sample.shape[0] * sample.shape[1]
        )
        return self.run(sample, timestep, encoder_hidden_states, added_time_ids, return_dict, key, reuse)

    def run(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        return_dict: bool,
        key: int,
        reuse: bool,
    ) -> Any:
        """One UNet call: in full (storing the deep features under ``key``) or shallow on them."""
        if not reuse:
            self.full_calls += 1
            self._capture_key = key
            try:
                return type(self.unet).forward(
                    self.unet, sample, timestep, encoder_hidden_states, added_time_ids, return_dict
                )
            finally:
                self._capture_key = None
        self.cached_calls += 1
        out = self._shallow(sample, timestep, encoder_hidden_states, added_time_ids, self._features[key])
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionOutput

        return UNetSpatioTemporalConditionOutput(sample=out)

    def _shallow(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        deep: torch.Tensor,
    ) -> torch.Tensor:
        """diffusers' forward with the deep levels replaced by ``deep`` (same embeddings and blocks)."""
        unet, levels = self.unet, self.levels
        batch, frames = sample.shape[:2]
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], dtype=torch.float32, device=sample.device)
        elif timestep.ndim == 0:
            timestep = timestep[None].to(sample.device)
        t_emb = unet.time_proj(timestep.expand(batch)).to(dtype=sample.dtype)
        emb = unet.time_embedding(t_emb)
        time_embeds = unet.add_time_proj(added_time_ids.flatten()).reshape((batch, -1)).to(emb.dtype)
        emb = (emb + unet.add_embedding(time_embeds)).repeat_interleave(frames, dim=0)
        context = encoder_hidden_states.repeat_interleave(frames, dim=0)
        hidden = unet.conv_in(sample.flatten(0, 1))
        indicator = torch.zeros(batch, frames, dtype=hidden.dtype, device=hidden.device)

        residuals: tuple[torch.Tensor, ...] = (hidden,)
        for block in unet.down_blocks[:levels]:
            kwargs = (
                {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            )
            hidden, res = block(hidden_states=hidden, temb=emb, image_only_indicator=indicator, **kwargs)
            residuals += res
        needed = sum(len(block.resnets) for block in unet.up_blocks[-levels:])
        residuals = residuals[:needed]  # the last down block's downsample output feeds a deep up block

        hidden = deep
        up_factor = 2**unet.num_upsamplers
        forward_size = any(s % up_factor != 0 for s in sample.shape[-2:])
        first = len(unet.up_blocks) - levels
        for index, block in enumerate(unet.up_blocks[first:], start=first):
            res = residuals[-len(block.resnets) :]
            residuals = residuals[: -len(block.resnets)]
            size = None
            if forward_size and index < len(unet.up_blocks) - 1:
                size = residuals[-1].shape[2:]
            kwargs = (
                {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            )
            hidden = block(
                hidden_states=hidden,
                temb=emb,
                res_hidden_states_tuple=res,
                upsample_size=size,
                image_only_indicator=indicator,
                **kwargs,
            )
        hidden = unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))
        return hidden.reshape(batch, frames, *hidden.shape[1:])


def optimize(pipe: Any, options: OptimizationOptions) -> Any:
    """Apply ``options`` to the built pipeline's modules in place and return the pipeline.

    Call it after moving the pipeline to its device and dtype (fused projections are built where the
    weights are) and once per pipeline. Order matters and is handled here: the step cache wraps the UNet's
    forward before CPU offload wraps it again. Pass ``options.call_kwargs()`` to the pipeline call.
    """
    for _, module in _modules(pipe, DENOISERS):
        set_attention(module, options.attention)
        if options.fused_qkv:
            fuse_qkv(module)
        if options.forward_chunk_size is not None:
            enable_forward_chunking(module, options.forward_chunk_size)
    if options.channels_last:
        for _, module in _modules(pipe, CHANNELS_LAST_MODULES):
            to_channels_last(module)
    if options.compile_blocks:
        for _, module in _modules(pipe, DENOISERS):
            compile_blocks(module, options.compile_mode)
    if options.step_cache_interval > 1:
        StepCache(pipe.unet, options.step_cache_interval, options.step_cache_levels).attach()
    if options.cpu_offload:
        device = options.offload_device
        if device is None and not torch.cuda.is_available():
            raise ValueError("cpu_offload needs a CUDA device (or an explicit offload_device)")
        pipe.enable_model_cpu_offload(device=device)
    return pipe
