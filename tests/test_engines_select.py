"""``animate.engines`` (``--engine`` and ``GET /v1/engines``): which renderer each name gives for each state of
the machine, against the rules written out in ``select_engine``'s docstring and the README.

The two engines' own checks (weights on disk, a GPU with room) are replaced by stand-ins that answer from a
table and record how they were asked (``require_gpu``), and their loaders by stand-ins that return a marker:
no weights are read and nothing is rendered. The real checks are ``test_engines_wan.py`` /
``test_engines_api.py``.
"""

from __future__ import annotations

import pytest

import animate.engines as engines
from animate.engines import EngineStatus
from animate.engines.diffusion import DiffusionEngine
from animate.engines.warp import WarpEngine
from animate.errors import AnimateError
from animate.settings import Settings

SETTINGS = Settings()
NO_GPU = "no CUDA GPU is available"


class Machine:
    """Stand-ins for both engines' checks and loaders: ``wan_weights`` / ``diffusion_weights`` (None when
    they are complete, else the problem), ``gpu`` (None: no GPU, else the reason auto refuses, "" when it
    has room). Every call is recorded as (what, require_gpu)."""

    def __init__(self, monkeypatch, wan_weights=None, diffusion_weights=None, wan_gpu="", diffusion_gpu=""):
        import animate.engines.wan as wan

        self.calls: list[tuple[str, object]] = []
        self.loaded: list[tuple[str, object, object]] = []
        machine = self

        def wan_reason(settings, require_gpu=None):
            assert settings is SETTINGS
            machine.calls.append(("wan", require_gpu))
            if wan_weights is not None:
                return wan_weights
            return (wan_gpu or None) if require_gpu else None

        def diffusion_reason(settings, require_gpu=None):
            assert settings is SETTINGS
            machine.calls.append(("diffusion", require_gpu))
            if diffusion_weights is not None:
                return diffusion_weights
            return (diffusion_gpu or None) if require_gpu else None

        def load(kind):
            def loader(settings, options=None):
                assert settings is SETTINGS
                machine.loaded.append((kind, settings, options))
                return kind

            return loader

        monkeypatch.setattr(wan, "unavailable_reason", wan_reason)

        def weights_problem(settings):
            assert settings is SETTINGS
            return wan_weights

        monkeypatch.setattr(wan, "weights_problem", weights_problem)
        monkeypatch.setattr(wan.WanEngine, "from_settings", staticmethod(load("wan engine")))
        monkeypatch.setattr(DiffusionEngine, "unavailable_reason", staticmethod(diffusion_reason))
        monkeypatch.setattr(DiffusionEngine, "from_settings", staticmethod(load("diffusion engine")))


def test_the_engine_names() -> None:
    assert engines.ENGINE_NAMES == ("auto", "warp", "diffusion", "wan")


def test_an_unknown_engine_name_is_the_users_error(monkeypatch) -> None:
    machine = Machine(monkeypatch)
    for name in ("Auto", "", "svd", "WAN"):
        with pytest.raises(AnimateError) as err:
            engines.select_engine(name, SETTINGS)
        assert (err.value.code, err.value.message) == (
            "invalid_option",
            f"engine must be one of auto, warp, diffusion, wan, got {name!r}",
        )
    assert machine.loaded == []


def test_the_reasons_default_to_what_auto_asks_for(monkeypatch) -> None:
    """``require_gpu`` defaults to True (``--engine auto``'s question) and is passed through as given."""
    machine = Machine(monkeypatch, wan_gpu=NO_GPU, diffusion_gpu=NO_GPU)
    assert engines.diffusion_unavailable_reason(SETTINGS) == NO_GPU
    assert engines.wan_unavailable_reason(SETTINGS) == NO_GPU
    assert engines.diffusion_unavailable_reason(SETTINGS, require_gpu=False) is None
    assert engines.wan_unavailable_reason(SETTINGS, require_gpu=False) is None
    assert machine.calls == [("diffusion", True), ("wan", True), ("diffusion", False), ("wan", False)]


def test_warp_is_always_warp(monkeypatch) -> None:
    """Everything available, and ``warp`` still gives the warp engine without asking the others."""
    machine = Machine(monkeypatch)
    engine = engines.select_engine("warp", SETTINGS, diffusion_options="d", wan_options="w")
    assert isinstance(engine, WarpEngine)
    assert machine.loaded == [] and machine.calls == []


# auto: wan when its weights are complete and a GPU has room, else diffusion with weights and a GPU, else warp
AUTO_CASES = [
    # (wan weights, wan gpu, diffusion weights, diffusion gpu) -> engine
    ((None, "", None, ""), "wan"),
    ((None, "the GPU has 12.0 GiB free", None, ""), "diffusion"),
    (("missing", "", None, ""), "diffusion"),
    (("missing", "", None, NO_GPU), "warp"),
    (("missing", "", "no weights", ""), "warp"),
    ((None, NO_GPU, "no weights", ""), "warp"),
]


@pytest.mark.parametrize(("state", "expected"), AUTO_CASES)
def test_auto_by_the_rules(monkeypatch, state, expected) -> None:
    wan_weights, wan_gpu, diffusion_weights, diffusion_gpu = state
    machine = Machine(monkeypatch, wan_weights, diffusion_weights, wan_gpu, diffusion_gpu)
    engine = engines.select_engine("auto", SETTINGS, diffusion_options="d-opts", wan_options="w-opts")
    if expected == "warp":
        assert isinstance(engine, WarpEngine) and machine.loaded == []
    else:
        options = {"wan": "w-opts", "diffusion": "d-opts"}[expected]
        assert engine == f"{expected} engine"
        assert machine.loaded == [(f"{expected} engine", SETTINGS, options)]
    # every question auto asks is the GPU one
    assert machine.calls and all(require_gpu is True for _, require_gpu in machine.calls)
    assert engines.auto_engine_name(SETTINGS) == expected


def test_explicit_wan_needs_only_its_weights(monkeypatch) -> None:
    machine = Machine(monkeypatch, wan_gpu=NO_GPU, diffusion_weights="no weights")
    assert engines.select_engine("wan", SETTINGS, diffusion_options="d", wan_options="w") == "wan engine"
    assert machine.loaded == [("wan engine", SETTINGS, "w")]
    assert engines.select_engine("wan", SETTINGS) == "wan engine"
    assert machine.loaded[-1] == ("wan engine", SETTINGS, None)

    machine = Machine(monkeypatch, wan_weights="Wan2.2-Animate-14B-Diffusers/ is not in /w")
    with pytest.raises(AnimateError) as err:
        engines.select_engine("wan", SETTINGS)
    assert (err.value.code, err.value.message) == (
        "weights_missing",
        "the wan engine cannot run: Wan2.2-Animate-14B-Diffusers/ is not in /w",
    )
    assert machine.loaded == []


def test_explicit_diffusion_needs_weights_not_a_gpu(monkeypatch) -> None:
    machine = Machine(monkeypatch, diffusion_gpu=NO_GPU)  # wan could run too: not asked
    engine = engines.select_engine("diffusion", SETTINGS, diffusion_options="d", wan_options="w")
    assert engine == "diffusion engine" and machine.loaded == [("diffusion engine", SETTINGS, "d")]
    assert machine.calls == [("diffusion", False)]
    assert engines.select_engine("diffusion", SETTINGS) == "diffusion engine"
    assert machine.loaded[-1] == ("diffusion engine", SETTINGS, None)

    machine = Machine(monkeypatch, diffusion_weights="no usable diffusion weights in /w")
    with pytest.raises(AnimateError) as err:
        engines.select_engine("diffusion", SETTINGS)
    assert (err.value.code, err.value.message) == (
        "engine_unavailable",
        "the diffusion engine cannot run: no usable diffusion weights in /w",
    )
    assert machine.loaded == []


def test_statuses_say_why_not_and_when_it_is_slow(monkeypatch) -> None:
    Machine(monkeypatch, wan_weights="wan weights missing", diffusion_weights="no diffusion weights")
    assert engines.engine_statuses(SETTINGS) == [
        EngineStatus("warp", True, None, None),
        EngineStatus("diffusion", False, reason="no diffusion weights", note=None),
        EngineStatus("wan", False, reason="wan weights missing", note=None),
    ]
    # weights, no GPU: both run on the CPU, slowly
    machine = Machine(monkeypatch, wan_gpu=NO_GPU, diffusion_gpu=NO_GPU)
    assert engines.engine_statuses(SETTINGS) == [
        EngineStatus("warp", True),
        EngineStatus(
            "diffusion", True, reason=None, note="no CUDA GPU is available: runs on the CPU, slowly"
        ),
        EngineStatus("wan", True, reason=None, note="no CUDA GPU is available: runs on the CPU, slowly"),
    ]
    # first the weights (no GPU question), then the GPU
    assert machine.calls == [("diffusion", False), ("diffusion", True), ("wan", False), ("wan", True)]
    # a GPU with room for both: no caveat
    Machine(monkeypatch)
    assert engines.engine_statuses(SETTINGS) == [
        EngineStatus("warp", True),
        EngineStatus("diffusion", True),
        EngineStatus("wan", True),
    ]
    # wan's GPU too small, diffusion fine
    Machine(monkeypatch, wan_gpu="the GPU has 20.0 GiB free, the wan engine wants 40 GiB")
    statuses = engines.engine_statuses(SETTINGS)
    assert statuses[1] == EngineStatus("diffusion", True)
    assert statuses[2] == EngineStatus(
        "wan", True, note="the GPU has 20.0 GiB free, the wan engine wants 40 GiB: runs on the CPU, slowly"
    )


def test_engine_status_defaults() -> None:
    status = EngineStatus("warp", True)
    assert (status.reason, status.note) == (None, None)
