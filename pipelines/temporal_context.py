"""Which CLIP token each row of a temporal transformer attends to: per video (diffusers today) or diffusers 0.27's.

diffusers' ``TransformerSpatioTemporalModel`` gives its temporal blocks a ``time_context``: one token per row of
the temporal attention, and the rows are ordered by video, then pixel (``row = video * pixels + pixel``). Since
about 0.28 the token of a row is its own video's. diffusers 0.27.0 (``transformer_temporal.py:314-317``) built
``time_context`` by broadcasting the tokens over ``(pixels, videos)`` instead, so row ``r`` got the token of
video ``r mod videos``: with one video per call nothing changes, with two (a batched classifier-free-guidance
call) pixel ``p`` of both halves gets the token of video ``p mod 2`` (when ``pixels`` is even). DisPose pins
0.27 and runs batched CFG, so its published videos carry that pairing (``UPSTREAM_PARITY.md`` D1).

``TemporalContext(modules, "diffusers_0.27")`` reproduces it with forward pre-hooks on every
``TemporalBasicTransformerBlock`` of ``modules`` (UNet and ControlNet), only inside ``with``. ``video_tokens``
lets a call that holds part of the batch (sequential CFG: one call per half) pair its rows as the whole
batched call would have: row ``r`` of a call whose first video is ``first`` is row ``first * pixels + r`` of
the batch of all ``len(video_tokens)`` videos.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers.models.attention import TemporalBasicTransformerBlock
from torch import nn

TEMPORAL_CONTEXTS = ("per_video", "diffusers_0.27")


def diffusers_027_time_context(
    video_tokens: torch.Tensor, pixels: int, first_video: int = 0, videos: int | None = None
) -> torch.Tensor:
    """diffusers 0.27's ``time_context`` rows for ``videos`` videos from ``first_video`` on, ``(videos *
    pixels, T, D)``: row ``r`` holds the tokens of video ``(first_video * pixels + r) mod len(video_tokens)``.

    ``video_tokens``: ``(N, T, D)``, each video's first-frame tokens in batch order."""
    total = video_tokens.shape[0]
    videos = total - first_video if videos is None else videos
    rows = torch.arange(videos * pixels, device=video_tokens.device) + first_video * pixels
    return video_tokens[rows % total]


class TemporalContext:
    """Forward pre-hooks that re-pair the temporal blocks' ``encoder_hidden_states`` the 0.27 way.

    ``mode="per_video"`` installs nothing (diffusers' own pairing). Within ``with``, ``call(tokens, first)``
    names the batch's video tokens and the first video of the next module calls (default: the call is the
    whole batch, its own tokens are used).
    """

    def __init__(self, modules: Iterable[nn.Module | None], mode: str = "per_video") -> None:
        if mode not in TEMPORAL_CONTEXTS:
            raise ValueError(f"temporal_context must be one of {TEMPORAL_CONTEXTS}, got {mode!r}")
        self.mode = mode
        self.blocks = [
            block
            for module in modules
            if module is not None
            for block in module.modules()
            if isinstance(block, TemporalBasicTransformerBlock)
        ]
        self._handles: list[Any] = []
        self._tokens: torch.Tensor | None = None
        self._first = 0

    def __enter__(self) -> TemporalContext:
        if self.mode == "diffusers_0.27":
            self._handles = [b.register_forward_pre_hook(self._repair, with_kwargs=True) for b in self.blocks]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextmanager
    def call(self, video_tokens: torch.Tensor | None, first_video: int = 0) -> Iterator[None]:
        """Module calls inside see rows from video ``first_video`` of the batch whose tokens are
        ``video_tokens`` ``(N, T, D)``."""
        self._tokens, self._first = video_tokens, first_video
        try:
            yield
        finally:
            self._tokens, self._first = None, 0

    def _repair(self, module: nn.Module, args: tuple, kwargs: dict):
        context = kwargs.get("encoder_hidden_states")
        if context is None:
            return None
        hidden_states = args[0] if args else kwargs["hidden_states"]
        num_frames = kwargs["num_frames"] if "num_frames" in kwargs else args[1]
        videos = hidden_states.shape[0] // num_frames
        pixels = hidden_states.shape[1]
        tokens = self._tokens
        if tokens is None:  # the call is the whole batch: its rows hold each video's token, video-major
            tokens = context.reshape(videos, pixels, *context.shape[1:])[:, 0]
        tokens = tokens.to(device=context.device, dtype=context.dtype)
        repaired = diffusers_027_time_context(tokens, pixels, self._first, videos)
        return args, {**kwargs, "encoder_hidden_states": repaired}
