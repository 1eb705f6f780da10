"""Adding guidance features and ControlNet residuals to a stock diffusers ``UNetSpatioTemporalConditionModel``.

Why hooks and not a UNet subclass: diffusers' spatio-temporal UNet has no argument for features after
``conv_in`` nor for ControlNet residuals, so a subclass would have to copy its ``forward``. Hooks add them
without touching diffusers' code; the UNet stays the stock class, so SVD-xt and MimicMotion ``unet.*``
weights, ``save_pretrained``, CPU offload and ``torch.compile`` see exactly diffusers' module. The hooks live
only inside ``with UNetInjector(unet):``.

- ``conv_in_residual``: a forward hook on ``unet.conv_in`` adds the pose / guidance features.
- ``controlnet_residuals``: forward pre-hooks on the up blocks add the skip-connection residuals to the
  ``res_hidden_states_tuple`` they receive; a forward hook on ``mid_block`` adds the mid residual.
  Mode ``"once"`` adds each residual once (diffusers' ControlNets). Mode ``"dispose"`` reproduces DisPose's
  UNet, which adds the residuals to every skip collected so far after each down block: a skip from down
  block ``b`` of ``n`` receives its residual ``n - b`` times (``conv_in``'s skip counts as block 0). The
  additions are done one by one in that order, so the rounding equals DisPose's too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from controlnets.motion_controlnet import RESIDUAL_MODES


def skip_origins(unet: nn.Module) -> list[int]:
    """The down block each skip connection comes from, in the UNet's order (``conv_in``'s is block 0)."""
    origins = [0]
    for index, block in enumerate(unet.down_blocks):
        downsamplers = getattr(block, "downsamplers", None)
        origins += [index] * (len(block.resnets) + (len(downsamplers) if downsamplers is not None else 0))
    return origins


def skip_multiplicities(unet: nn.Module, mode: str) -> list[int]:
    """How many times each skip connection receives its residual: 1 (``"once"``) or, for ``"dispose"``,
    the number of down blocks from its own on (4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1 for SVD)."""
    if mode not in RESIDUAL_MODES:
        raise ValueError(f"residual mode must be one of {RESIDUAL_MODES}, got {mode!r}")
    origins = skip_origins(unet)
    if mode == "once":
        return [1] * len(origins)
    blocks = len(unet.down_blocks)
    return [blocks - origin for origin in origins]


def _add_rows(tensor: torch.Tensor, residual: torch.Tensor, skip_rows: int, times: int) -> torch.Tensor:
    """``tensor`` with ``residual`` added ``times`` times, one addition after the other, to the rows after
    ``skip_rows``."""
    residual = residual.to(device=tensor.device, dtype=tensor.dtype)
    head, tail = tensor[:skip_rows], tensor[skip_rows:]
    for _ in range(times):
        tail = tail + residual
    return tail if skip_rows == 0 else torch.cat([head, tail])


class UNetInjector:
    """Per-call features added to the output of ``unet.conv_in`` and ControlNet residuals added to the skip
    connections and the mid block.

    Residual rows align with the UNet's flattened ``batch * frames`` axis after ``skip_rows`` rows that get
    nothing (e.g. the unconditional half of a batched classifier-free-guidance call).
    """

    def __init__(self, unet: nn.Module) -> None:
        self.unet = unet
        self._handles: list[Any] = []
        self._residual: torch.Tensor | None = None
        self._skip_rows = 0
        self._down: Sequence[torch.Tensor] | None = None
        self._mid: torch.Tensor | None = None
        self._controlnet_skip_rows = 0
        self._multiplicities: list[int] = []
        self.calls_with_residual = 0
        self.calls_with_controlnet = 0
        # skip indices each up block receives: up block k takes the last len(resnets) of what is left
        self._up_skips: list[list[int]] = []
        remaining = len(skip_origins(unet))
        for block in unet.up_blocks:
            count = len(block.resnets)
            self._up_skips.append(list(range(remaining - count, remaining)))
            remaining -= count

    def __enter__(self) -> UNetInjector:
        self._handles = [self.unet.conv_in.register_forward_hook(self._after_conv_in)]
        for index, block in enumerate(self.unet.up_blocks):
            hook = self._before_up_block(index)
            self._handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
        self._handles.append(self.unet.mid_block.register_forward_hook(self._after_mid_block))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._residual = self._down = self._mid = None

    @contextmanager
    def conv_in_residual(self, residual: torch.Tensor | None, skip_rows: int = 0) -> Iterator[None]:
        self._residual, self._skip_rows = residual, skip_rows
        try:
            yield
        finally:
            self._residual, self._skip_rows = None, 0

    @contextmanager
    def controlnet_residuals(
        self,
        down: Sequence[torch.Tensor] | None,
        mid: torch.Tensor | None,
        mode: str = "once",
        skip_rows: int = 0,
    ) -> Iterator[None]:
        """Within the block, UNet calls get ``down`` (one per skip connection) and ``mid`` added."""
        multiplicities = skip_multiplicities(self.unet, mode)
        if down is not None and len(down) != len(multiplicities):
            raise ValueError(
                f"{len(down)} down residuals for a UNet with {len(multiplicities)} skip connections"
            )
        self._down, self._mid = down, mid
        self._controlnet_skip_rows, self._multiplicities = skip_rows, multiplicities
        try:
            yield
        finally:
            self._down, self._mid, self._controlnet_skip_rows = None, None, 0

    def _after_conv_in(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
        residual = self._residual
        if residual is None:
            return None
        expected = output.shape[0] - self._skip_rows
        if residual.shape[0] != expected or residual.shape[1:] != output.shape[1:]:
            raise ValueError(
                f"guidance features {tuple(residual.shape)} do not fit the UNet's conv_in output "
                f"{tuple(output.shape)} (after skipping {self._skip_rows} rows)"
            )
        self.calls_with_residual += 1
        return _add_rows(output, residual, self._skip_rows, 1)

    def _check(self, name: str, residual: torch.Tensor, target: torch.Tensor) -> None:
        expected = (target.shape[0] - self._controlnet_skip_rows, *target.shape[1:])
        if tuple(residual.shape) != tuple(expected):
            raise ValueError(
                f"ControlNet residual {name} {tuple(residual.shape)} does not fit the UNet's {tuple(target.shape)} "
                f"(after skipping {self._controlnet_skip_rows} rows)"
            )

    def _before_up_block(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            if self._down is None:
                return None
            skips = kwargs["res_hidden_states_tuple"]
            updated = []
            for skip_index, skip in zip(self._up_skips[index], skips, strict=True):
                residual = self._down[skip_index]
                self._check(f"down {skip_index}", residual, skip)
                times = self._multiplicities[skip_index]
                updated.append(_add_rows(skip, residual, self._controlnet_skip_rows, times))
            return args, {**kwargs, "res_hidden_states_tuple": tuple(updated)}

        return hook

    def _after_mid_block(self, module: nn.Module, inputs: tuple, output: torch.Tensor):
        if self._mid is None:
            return None
        self._check("mid", self._mid, output)
        self.calls_with_controlnet += 1
        return _add_rows(output, self._mid, self._controlnet_skip_rows, 1)
