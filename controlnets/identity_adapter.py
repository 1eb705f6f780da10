"""The identity adapter (VividPose's identity-aware appearance control, our design): face identity tokens
attended to by the UNet's spatial cross-attention, beside SVD's CLIP image token.

A face embedding (dlib 128-d or ArcFace 512-d) becomes ``num_tokens`` tokens (one Linear, then LayerNorm).
Every spatial cross-attention layer (``...transformer_blocks.<i>.attn2`` of the spatio-temporal UNet; the
temporal blocks are left alone) gets its own decoupled key / value projections of those tokens (the
IP-Adapter pattern): its queries (the layer's own ``to_q``) attend over the identity tokens, and the result,
through a per-layer output projection, is added to the layer's output (its attention over the CLIP token)::

    out = attn2(x, clip) + identity_scale * to_out_id(softmax(to_q(x) to_k_id(tokens)^T / sqrt(d)) to_v_id(tokens))

``to_out_id`` is zero-initialised, so a fresh adapter is an exact no-op. It is installed by forward hooks
(``IdentityInjector``), in the style of ``pipelines.injection``: the UNet stays diffusers' class and keeps
its attention processors.

Classifier-free guidance: the identity tokens go to the conditional half only (rows after ``skip_rows``),
as SVD's own CLIP image embedding is zeros in the unconditional half; guidance then pushes towards the
reference's identity. Batched (``skip_rows = B * F``) and sequential CFG (no identity in the unconditional
call) give the same prediction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def spatial_cross_attention_layers(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, Attention)`` of every spatial cross-attention layer: ``attn2`` of a ``transformer_blocks``
    entry (not ``temporal_transformer_blocks``), in module order."""
    found = []
    for name, module in unet.named_modules():
        parts = name.split(".")
        is_spatial = len(parts) >= 3 and parts[-1] == "attn2" and parts[-3] == "transformer_blocks"
        if is_spatial and getattr(module, "is_cross_attention", True):
            found.append((name, module))
    return found


def _key(name: str) -> str:
    return name.replace(".", "__")


class IdentityLayer(nn.Module):
    """Decoupled key / value projections of the identity tokens for one attention layer, and its
    zero-initialised output projection."""

    def __init__(self, token_dim: int, inner_dim: int, query_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_k = nn.Linear(token_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(token_dim, inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, query_dim)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, query: torch.Tensor, tokens: torch.Tensor, scale: float) -> torch.Tensor:
        """``query`` (R, L, inner) already projected by the layer's ``to_q``; ``tokens`` (R, N, token_dim)."""
        rows, length, inner = query.shape
        head_dim = inner // self.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(rows, -1, self.heads, head_dim).transpose(1, 2)

        key, value = heads(self.to_k(tokens)), heads(self.to_v(tokens))
        mixed = F.scaled_dot_product_attention(heads(query), key, value, scale=scale)
        return self.to_out(mixed.transpose(1, 2).reshape(rows, length, inner))


class IdentityAdapter(ModelMixin, ConfigMixin):
    """Face embedding -> identity tokens -> per-layer decoupled cross-attention (see the module doc).

    ``attention_layers``: ``[[name, query_dim, inner_dim, heads], ...]`` for the UNet's spatial cross-attention
    layers; ``IdentityAdapter.for_unet(unet, ...)`` reads them from a UNet.
    """

    @register_to_config
    def __init__(
        self,
        embedding_dim: int = 128,
        num_tokens: int = 4,
        token_dim: int = 1024,
        attention_layers: tuple[tuple[str, int, int, int], ...] | list = (),
    ) -> None:
        super().__init__()
        if not attention_layers:
            raise ValueError("an identity adapter needs at least one attention layer")
        self.proj = nn.Linear(embedding_dim, num_tokens * token_dim)
        self.norm = nn.LayerNorm(token_dim)
        self.layers = nn.ModuleDict(
            {
                _key(name): IdentityLayer(token_dim, inner, query, heads)
                for name, query, inner, heads in attention_layers
            }
        )

    @classmethod
    def for_unet(
        cls, unet: nn.Module, embedding_dim: int = 128, num_tokens: int = 4, token_dim: int | None = None
    ) -> IdentityAdapter:
        attention_layers = [
            [name, attn.to_q.in_features, attn.to_q.out_features, attn.heads]
            for name, attn in spatial_cross_attention_layers(unet)
        ]
        if token_dim is None:
            token_dim = int(getattr(unet.config, "cross_attention_dim", 1024))
        return cls(
            embedding_dim=embedding_dim,
            num_tokens=num_tokens,
            token_dim=token_dim,
            attention_layers=attention_layers,
        )

    @property
    def layer_names(self) -> list[str]:
        return [entry[0] for entry in self.config.attention_layers]

    def tokens(self, face_embedding: torch.Tensor) -> torch.Tensor:
        """``(B, embedding_dim)`` -> ``(B, num_tokens, token_dim)``."""
        if face_embedding.ndim != 2 or face_embedding.shape[1] != self.config.embedding_dim:
            raise ValueError(
                f"face embedding must be (B, {self.config.embedding_dim}), got {tuple(face_embedding.shape)}"
            )
        weight = self.proj.weight
        projected = self.proj(face_embedding.to(device=weight.device, dtype=weight.dtype))
        return self.norm(projected.view(len(face_embedding), self.config.num_tokens, self.config.token_dim))

    def reinitialize_output(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Give every zero-initialised output projection random weights (tests, benchmarks)."""
        with torch.no_grad():
            for layer in self.layers.values():
                weight = torch.randn(layer.to_out.weight.shape, generator=generator) * std
                layer.to_out.weight.copy_(weight.to(layer.to_out.weight))


class IdentityInjector:
    """Forward hooks on the UNet's spatial cross-attention layers that add the adapter's identity attention.

    ``with IdentityInjector(unet, adapter) as injector:`` installs them; ``with injector.identity(tokens,
    scale, skip_rows):`` sets the per-call inputs: ``tokens`` ``(B, N, D)``, one row per video, spread over
    the ``frames`` rows of each video that follow the first ``skip_rows`` rows (which get nothing).
    Outside ``identity`` (or with ``scale == 0``) the hooks return the layer's output unchanged.
    """

    def __init__(self, unet: nn.Module, adapter: IdentityAdapter) -> None:
        self.unet = unet
        self.adapter = adapter
        modules = dict(unet.named_modules())
        missing = [name for name in adapter.layer_names if name not in modules]
        if missing:
            raise ValueError(f"identity adapter layers not in this UNet: {missing[:3]}")
        self._targets = [(name, modules[name]) for name in adapter.layer_names]
        self._handles: list[Any] = []
        self._tokens: torch.Tensor | None = None
        self._scale = 0.0
        self._skip_rows = 0
        self.calls = 0

    def __enter__(self) -> IdentityInjector:
        for name, module in self._targets:
            self._handles.append(module.register_forward_hook(self._hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._tokens = None

    @contextmanager
    def identity(self, tokens: torch.Tensor | None, scale: float = 1.0, skip_rows: int = 0) -> Iterator[None]:
        self._tokens, self._scale, self._skip_rows = tokens, float(scale), skip_rows
        try:
            yield
        finally:
            self._tokens, self._scale, self._skip_rows = None, 0.0, 0

    def _hook(self, name: str):
        layer = self.adapter.layers[_key(name)]

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor):
            tokens = self._tokens
            if tokens is None or self._scale == 0.0:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            skip = self._skip_rows
            rows = hidden.shape[0] - skip
            if rows <= 0 or rows % len(tokens):
                raise ValueError(
                    f"{len(tokens)} identity token rows do not divide the {rows} UNet rows after {skip} skipped"
                )
            dtype = layer.to_k.weight.dtype
            per_row = tokens.to(device=hidden.device, dtype=dtype).repeat_interleave(rows // len(tokens), 0)
            query = module.to_q(hidden[skip:]).to(dtype)
            added = layer(query, per_row, module.scale).to(output.dtype)
            self.calls += 1
            tail = output[skip:] + self._scale * added
            return tail if skip == 0 else torch.cat([output[:skip], tail])

        return hook
