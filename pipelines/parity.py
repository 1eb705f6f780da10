"""The published systems' sampling rules, by the weights that run and the preset asked for: one table.

``UPSTREAM_PARITY.md`` lists what MimicMotion's, DisPose's and Champ's own code does around their modules.
``AnimationPipeline`` has an explicit argument for each rule (defaults: ours); ``call_kwargs`` picks the values
that reproduce the published system the loaded parts belong to, and ``preset`` names one of them outright:

| system | tiles | rules |
|---|---|---|
| SVD-xt alone | 16 / 6 (ours) | none |
| MimicMotion 1.1 (UNet + pose guider) | 72 / 6 | reference decoded in chunk 0, tile-periodic noise, uint8 by truncation |
| DisPose (+ its ControlNet) | 16 / 6 | MimicMotion's; preset ``dispose`` adds diffusers 0.27's time context and its point rules |
| Champ's guidance encoders | | maps in ``[0, 1]``, features in both CFG halves |

Under a preset only that system's parts run (no Champ encoders; ``mimicmotion``: no ControlNet either).
"""

from __future__ import annotations

from typing import Any

PRESETS = ("mimicmotion", "dispose")
PRESET_PARTS = {"mimicmotion": ("pose_guider",), "dispose": ("pose_guider", "motion_controlnet")}
# (tile_size, tile_overlap) each system was published with; the tile counts the prepended reference frame
TILES = {
    "svd": (16, 6),  # no published tiling: ours
    "mimicmotion": (72, 6),  # a 72-frame model: its configs/test.yaml num_frames, frames_overlap
    "dispose": (16, 6),  # DisPose's configs/test.yaml
}


def system(pipeline: Any, preset: str | None = None) -> str:
    """The published system a call reproduces: the preset's, else the most specific loaded part's."""
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
        missing = [part for part in PRESET_PARTS[preset] if getattr(pipeline, part, None) is None]
        if missing:
            raise ValueError(f"preset {preset!r} needs {', '.join(missing)}, which the pipeline lacks")
        return preset
    if getattr(pipeline, "motion_controlnet", None) is not None:
        return "dispose"
    if getattr(pipeline, "pose_guider", None) is not None:
        return "mimicmotion"
    return "svd"


def default_tiles(pipeline: Any, preset: str | None = None) -> tuple[int, int]:
    """``(tile_size, tile_overlap)`` the system of ``system(pipeline, preset)`` was published with."""
    return TILES[system(pipeline, preset)]


def truncates_uint8(pipeline: Any, preset: str | None = None) -> bool:
    """MimicMotion and DisPose write ``(frames * 255).to(uint8)``: truncation, not rounding."""
    return system(pipeline, preset) in ("mimicmotion", "dispose")


def uses_champ_encoders(pipeline: Any, preset: str | None = None) -> bool:
    """Champ's guidance encoders run (not under a preset: MimicMotion and DisPose have none)."""
    return preset is None and getattr(pipeline, "guidance_encoders", None) is not None


def call_kwargs(pipeline: Any, preset: str | None = None) -> dict[str, Any]:
    """``AnimationPipeline.__call__`` arguments of the upstream rules for the loaded parts and ``preset``."""
    name = system(pipeline, preset)
    kwargs: dict[str, Any] = {}
    if name in ("mimicmotion", "dispose"):
        kwargs |= {"decode_reference": True, "periodic_noise": True}
    if uses_champ_encoders(pipeline, preset):
        kwargs |= {"guidance_range": "unit", "guidance_cfg": "both"}
    if preset == "dispose":  # upstream defects and a diffusers-version behaviour: only on request
        kwargs |= {"temporal_context": "diffusers_0.27", "point_rules": "dispose"}
    return kwargs


def describe(pipeline: Any, preset: str | None = None) -> str:
    """The active rules in a few words, for the engine's ``parts``."""
    name = system(pipeline, preset)
    rules = [f"{k}={v}" for k, v in call_kwargs(pipeline, preset).items()]
    if truncates_uint8(pipeline, preset):
        rules.append("uint8 truncation")
    return f"{name}: " + (", ".join(rules) or "none")
