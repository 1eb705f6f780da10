"""Renderers: each turns a ``GuidanceBundle`` into frames. ``select_engine`` implements ``--engine auto``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from animate.errors import AnimateError
from animate.motion.bundle import GuidanceBundle
from animate.settings import Settings

ENGINE_NAMES = ("auto", "warp", "diffusion", "wan")


class Engine(Protocol):
    name: str

    def render(
        self,
        bundle: GuidanceBundle,
        progress: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Iterator[np.ndarray]: ...


def diffusion_unavailable_reason(settings: Settings, require_gpu: bool = True) -> str | None:
    """Why the diffusion engine cannot run here, or None when it can."""
    from animate.engines.diffusion import DiffusionEngine

    return DiffusionEngine.unavailable_reason(settings, require_gpu=require_gpu)


@dataclass(frozen=True)
class EngineStatus:
    """Whether an engine can run on this machine, in user words: ``reason`` says why not, ``note`` adds a caveat."""

    name: str
    available: bool
    reason: str | None = None
    note: str | None = None


def engine_statuses(settings: Settings) -> list[EngineStatus]:
    """Every renderer (not ``auto``) with whether it can run here, from the same checks ``select_engine`` makes."""
    statuses = [EngineStatus("warp", True)]  # CPU, no weights: it always runs
    reason = diffusion_unavailable_reason(settings, require_gpu=False)
    if reason is not None:
        statuses.append(EngineStatus("diffusion", False, reason=reason))
    else:
        slow = diffusion_unavailable_reason(settings, require_gpu=True)
        statuses.append(
            EngineStatus("diffusion", True, note=f"{slow}: runs on the CPU, slowly" if slow else None)
        )
    reason = wan_unavailable_reason(settings, require_gpu=False)
    if reason is not None:
        statuses.append(EngineStatus("wan", False, reason=reason))
    else:
        slow = wan_unavailable_reason(settings, require_gpu=True)
        statuses.append(EngineStatus("wan", True, note=f"{slow}: runs on the CPU, slowly" if slow else None))
    return statuses


def wan_unavailable_reason(settings: Settings, require_gpu: bool = True) -> str | None:
    """Why the wan engine cannot run here, or None (``require_gpu``: what ``--engine auto`` asks for)."""
    from animate.engines.wan import unavailable_reason

    return unavailable_reason(settings, require_gpu=require_gpu)


def auto_engine_name(settings: Settings) -> str:
    """The engine ``--engine auto`` picks here."""
    if wan_unavailable_reason(settings, require_gpu=True) is None:
        return "wan"
    return "warp" if diffusion_unavailable_reason(settings, require_gpu=True) else "diffusion"


def select_engine(
    name: str,
    settings: Settings,
    diffusion_options: object | None = None,
    wan_options: object | None = None,
) -> Engine:
    """``auto`` takes wan when its weights are complete and a GPU has room for it (``animate.engines.wan``:
    40 GiB free, model offload), else diffusion when its weights and a GPU are present, else warp.

    An explicit ``diffusion`` or ``wan`` needs the weights but runs on the CPU too (slowly; tests use tiny
    weights); ``wan`` on a GPU without room stops with ``out_of_memory``.
    """
    if name not in ENGINE_NAMES:
        raise AnimateError("invalid_option", f"engine must be one of {', '.join(ENGINE_NAMES)}, got {name!r}")
    if name == "wan" or (name == "auto" and wan_unavailable_reason(settings, require_gpu=True) is None):
        from animate.engines.wan import WanEngine, weights_problem

        problem = weights_problem(settings)
        if problem is not None:
            raise AnimateError("weights_missing", f"the wan engine cannot run: {problem}")
        return WanEngine.from_settings(settings, wan_options)
    if name != "warp":
        reason = diffusion_unavailable_reason(settings, require_gpu=name == "auto")
        if reason is None:
            from animate.engines.diffusion import DiffusionEngine

            return DiffusionEngine.from_settings(settings, diffusion_options)
        if name == "diffusion":
            raise AnimateError("engine_unavailable", f"the diffusion engine cannot run: {reason}")
    from animate.engines.warp import WarpEngine

    return WarpEngine()
