"""The diffusion engine applies the published systems' rules for the loaded weights and records them in ``parts``."""

from __future__ import annotations

import pytest

from animate.engines.diffusion import DiffusionEngine, DiffusionOptions
from animate.errors import AnimateError
from pipelines import AnimationPipeline
from pipelines.testing import tiny_components

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def engine(options: DiffusionOptions, **kwargs) -> DiffusionEngine:
    components = tiny_components(**kwargs)
    return DiffusionEngine(AnimationPipeline(**components), options)


def test_mimicmotion_weights_get_its_tiles_rules_and_truncation_unless_the_user_sets_tiles():
    mimicmotion = engine(DiffusionOptions(), with_guidance_encoders=False)  # UNet + pose guider
    kwargs, truncate = mimicmotion._parity(mimicmotion.options)
    assert kwargs == {"decode_reference": True, "periodic_noise": True, "tile_size": 72, "tile_overlap": 6}
    assert truncate
    assert mimicmotion.parts["tiles"] == "72 / 6"
    assert (
        mimicmotion.parts["parity"].startswith("mimicmotion: ")
        and "uint8 truncation" in mimicmotion.parts["parity"]
    )
    user = engine(DiffusionOptions(tile_size=24, tile_overlap=4), with_guidance_encoders=False)
    assert user._parity(user.options)[0] == kwargs | {"tile_size": 24, "tile_overlap": 4}


def test_svd_alone_keeps_our_defaults():
    components = tiny_components(with_guidance_encoders=False)
    components["pose_guider"] = None
    svd = DiffusionEngine(AnimationPipeline(**components), DiffusionOptions())
    kwargs, truncate = svd._parity(svd.options)
    assert kwargs == {"tile_size": 16, "tile_overlap": 6} and not truncate
    assert svd.parts["parity"] == "svd: none"


def test_dispose_preset_rules_and_a_preset_without_its_weights_is_a_clear_error():
    dispose = engine(DiffusionOptions(preset="dispose"), with_motion_controlnet=True)
    kwargs, truncate = dispose._parity(dispose.options)
    assert kwargs["temporal_context"] == "diffusers_0.27" and kwargs["point_rules"] == "dispose"
    assert (kwargs["tile_size"], kwargs["tile_overlap"], truncate) == (16, 6, True)
    assert "guidance_range" not in kwargs  # a preset runs no Champ encoders
    with pytest.raises(AnimateError) as error:  # at construction, before any preprocessing
        engine(DiffusionOptions(preset="dispose"), with_guidance_encoders=False)
    assert error.value.code == "preset_unavailable" and "motion_controlnet" in error.value.message


def test_champ_encoders_get_unit_maps_in_both_halves():
    champ = engine(DiffusionOptions())
    kwargs, _ = champ._parity(champ.options)
    assert kwargs["guidance_range"] == "unit" and kwargs["guidance_cfg"] == "both"


@pytest.mark.parametrize("twice", [False, True])
def test_the_skeleton_reaches_a_skeleton_encoder_too_only_when_asked(twice):
    from test_engine_diffusion import _tiny_bundle

    from controlnets import GuidanceFusion

    components = tiny_components()
    components["guidance_encoders"] = GuidanceFusion(
        guidance_types=("skeleton",), block_out_channels=(8, 16), out_channels=32,
        attention_num_heads=2, attention_norm_num_groups=8,
    )  # fmt: skip
    pipeline = AnimationPipeline(**components)
    pipeline.set_progress_bar_config(disable=True)
    skeleton = DiffusionEngine(pipeline, DiffusionOptions(steps=1, skeleton_twice=twice))
    calls = []
    encoder = pipeline.guidance_encoders.encoders["skeleton"]
    handle = encoder.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        frames = list(skeleton.render(_tiny_bundle(2)))
    finally:
        handle.remove()
    assert len(frames) == 2
    # the pose guider reads the skeleton; Champ's skeleton encoder reads it as well only when asked
    assert bool(calls) == twice
    assert skeleton.parts["guidance_maps"] == ("skeleton" if twice else "none")
