"""Human image animation. The facade for other packages (``server``): ``Animator`` lives in ``animate.animator``;
the functions here import lazily, so ``import animate`` stays cheap."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from animate.engines import EngineStatus
    from animate.settings import Settings

__version__ = "0.1.0"


def available_engines(settings: Settings | None = None) -> list[EngineStatus]:
    """Every renderer with whether it can run on this machine (weights, GPU), and in user words why not."""
    from animate.engines import engine_statuses
    from animate.settings import Settings

    return engine_statuses(settings or Settings())


def auto_engine(settings: Settings | None = None) -> str:
    """The renderer ``engine=auto`` picks on this machine."""
    from animate.engines import auto_engine_name
    from animate.settings import Settings

    return auto_engine_name(settings or Settings())


def run_split(settings: Settings, devices: list[str], reference, driving, output, options=None, **kwargs):
    """``Animator.run`` with the tiles of each denoising step split over ``devices`` (GPU indices, or
    ``"cpu"`` processes): one process per device, this one first (``animate.engines.parallel``)."""
    from animate.engines.parallel import run_split as run

    return run(settings, devices, reference, driving, output, options, **kwargs)
