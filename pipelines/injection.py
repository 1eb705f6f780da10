"""Adding guidance features to a stock diffusers ``UNetSpatioTemporalConditionModel`` with hooks.

Why hooks and not a UNet subclass: diffusers' spatio-temporal UNet has no argument for features after
``conv_in`` (nor for ControlNet residuals), so a subclass would have to copy its ``forward``. A forward
hook on ``unet.conv_in`` adds the features without touching diffusers' code; the UNet stays the stock
class, so SVD-xt and MimicMotion ``unet.*`` weights, ``save_pretrained``, CPU offload and ``torch.compile``
see exactly diffusers' module. The hooks live only inside ``with UNetInjector(unet):``.

Room for the ControlNet (issue 7): skip-connection residuals go in through forward pre-hooks on the up
blocks (they receive ``res_hidden_states_tuple`` as a keyword), the mid residual through a forward hook on
``mid_block``; the same per-call state pattern as ``conv_in_residual`` below.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class UNetInjector:
    """Per-call features added to the output of ``unet.conv_in``.

    ``residual`` rows align with the UNet's flattened ``batch * frames`` axis after ``skip_rows`` rows that
    get nothing (the unconditional half of a batched classifier-free-guidance call).
    """

    def __init__(self, unet: nn.Module) -> None:
        self.unet = unet
        self._handle: Any = None
        self._residual: torch.Tensor | None = None
        self._skip_rows = 0
        self.calls_with_residual = 0

    def __enter__(self) -> UNetInjector:
        self._handle = self.unet.conv_in.register_forward_hook(self._after_conv_in)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._residual = None

    @contextmanager
    def conv_in_residual(self, residual: torch.Tensor | None, skip_rows: int = 0) -> Iterator[None]:
        self._residual, self._skip_rows = residual, skip_rows
        try:
            yield
        finally:
            self._residual, self._skip_rows = None, 0

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
        residual = residual.to(device=output.device, dtype=output.dtype)
        if self._skip_rows == 0:
            return output + residual
        return torch.cat([output[: self._skip_rows], output[self._skip_rows :] + residual])
