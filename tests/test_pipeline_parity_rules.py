"""pipelines.parity: which published system's rules a call gets, by the parts loaded and the preset asked for.

Only which parts are present matters, so the pipelines here are plain objects with those attributes; every
expectation is the table of UPSTREAM_PARITY.md written out by hand.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipelines import parity

MIMICMOTION_RULES = {"decode_reference": True, "periodic_noise": True}
CHAMP_RULES = {"guidance_range": "unit", "guidance_cfg": "both"}
DISPOSE_PRESET_RULES = {"temporal_context": "diffusers_0.27", "point_rules": "dispose"}


def parts(pose_guider=False, motion_controlnet=False, guidance_encoders=False) -> SimpleNamespace:
    """A pipeline with the named parts loaded (a loaded part is any object, a missing one None)."""
    return SimpleNamespace(
        pose_guider=object() if pose_guider else None,
        motion_controlnet=object() if motion_controlnet else None,
        guidance_encoders=object() if guidance_encoders else None,
    )


SVD = parts()
MIMICMOTION = parts(pose_guider=True)
DISPOSE = parts(pose_guider=True, motion_controlnet=True)
CHAMP = parts(pose_guider=True, guidance_encoders=True)
EVERYTHING = parts(pose_guider=True, motion_controlnet=True, guidance_encoders=True)


@pytest.mark.parametrize(
    ("pipeline", "preset", "name"),
    [
        (SVD, None, "svd"),
        (MIMICMOTION, None, "mimicmotion"),
        (DISPOSE, None, "dispose"),
        (parts(motion_controlnet=True), None, "dispose"),  # the ControlNet is the most specific part
        (CHAMP, None, "mimicmotion"),
        (parts(guidance_encoders=True), None, "svd"),
        (EVERYTHING, "mimicmotion", "mimicmotion"),
        (DISPOSE, "dispose", "dispose"),
        (EVERYTHING, "dispose", "dispose"),
    ],
)
def test_system_by_parts_and_preset(pipeline, preset, name):
    assert parity.system(pipeline, preset) == name


def test_a_missing_attribute_counts_as_a_missing_part():
    assert parity.system(SimpleNamespace()) == "svd"
    assert parity.system(SimpleNamespace(pose_guider=1)) == "mimicmotion"
    assert not parity.uses_champ_encoders(SimpleNamespace())
    with pytest.raises(
        ValueError, match=r"^preset 'mimicmotion' needs pose_guider, which the pipeline lacks$"
    ):
        parity.system(SimpleNamespace(), "mimicmotion")


def test_presets_need_their_parts_and_a_known_name():
    with pytest.raises(
        ValueError, match=r"^preset 'dispose' needs pose_guider, motion_controlnet, which the pipeline lacks$"
    ):
        parity.system(SVD, "dispose")
    with pytest.raises(
        ValueError, match=r"^preset 'dispose' needs motion_controlnet, which the pipeline lacks$"
    ):
        parity.system(CHAMP, "dispose")
    with pytest.raises(
        ValueError, match=r"^preset 'mimicmotion' needs pose_guider, which the pipeline lacks$"
    ):
        parity.system(parts(motion_controlnet=True), "mimicmotion")
    with pytest.raises(
        ValueError, match=r"^preset must be one of \('mimicmotion', 'dispose'\), got 'champ'$"
    ):
        parity.system(EVERYTHING, "champ")
    for function in (parity.default_tiles, parity.truncates_uint8, parity.call_kwargs, parity.describe):
        with pytest.raises(ValueError, match="needs motion_controlnet"):
            function(MIMICMOTION, "dispose")


def test_tiles_each_system_was_published_with():
    # MimicMotion 1.1 configs/test.yaml: 72 frames, overlap 6; DisPose's: 16, 6; SVD alone: ours, 16, 6
    assert parity.default_tiles(SVD) == (16, 6)
    assert parity.default_tiles(MIMICMOTION) == (72, 6)
    assert parity.default_tiles(CHAMP) == (72, 6)
    assert parity.default_tiles(DISPOSE) == (16, 6)
    assert parity.default_tiles(DISPOSE, "mimicmotion") == (72, 6)
    assert parity.default_tiles(EVERYTHING, "dispose") == (16, 6)


def test_uint8_truncation_for_mimicmotion_and_dispose_only():
    assert parity.truncates_uint8(SVD) is False
    assert parity.truncates_uint8(parts(guidance_encoders=True)) is False
    for pipeline, preset in ((MIMICMOTION, None), (DISPOSE, None), (CHAMP, None), (EVERYTHING, "dispose")):
        assert parity.truncates_uint8(pipeline, preset) is True


def test_champ_encoders_only_without_a_preset():
    assert parity.uses_champ_encoders(CHAMP) is True
    assert parity.uses_champ_encoders(parts(guidance_encoders=True)) is True
    assert parity.uses_champ_encoders(MIMICMOTION) is False
    assert parity.uses_champ_encoders(EVERYTHING, "mimicmotion") is False
    assert parity.uses_champ_encoders(EVERYTHING, "dispose") is False


@pytest.mark.parametrize(
    ("pipeline", "preset", "expected"),
    [
        (SVD, None, {}),
        (MIMICMOTION, None, MIMICMOTION_RULES),
        (DISPOSE, None, MIMICMOTION_RULES),  # DisPose's own defects only on request
        (CHAMP, None, MIMICMOTION_RULES | CHAMP_RULES),
        (parts(guidance_encoders=True), None, CHAMP_RULES),
        (EVERYTHING, None, MIMICMOTION_RULES | CHAMP_RULES),
        (EVERYTHING, "mimicmotion", MIMICMOTION_RULES),
        (EVERYTHING, "dispose", MIMICMOTION_RULES | DISPOSE_PRESET_RULES),
        (DISPOSE, "dispose", MIMICMOTION_RULES | DISPOSE_PRESET_RULES),
    ],
)
def test_call_kwargs_per_system(pipeline, preset, expected):
    assert parity.call_kwargs(pipeline, preset) == expected


def test_describe_names_the_system_and_its_rules():
    assert parity.describe(SVD) == "svd: none"
    assert (
        parity.describe(MIMICMOTION)
        == "mimicmotion: decode_reference=True, periodic_noise=True, uint8 truncation"
    )
    assert parity.describe(parts(guidance_encoders=True)) == "svd: guidance_range=unit, guidance_cfg=both"
    assert parity.describe(EVERYTHING, "mimicmotion") == (
        "mimicmotion: decode_reference=True, periodic_noise=True, uint8 truncation"
    )  # the preset's system, not the loaded parts' (dispose)
    assert parity.describe(DISPOSE, "dispose") == (
        "dispose: decode_reference=True, periodic_noise=True, temporal_context=diffusers_0.27, "
        "point_rules=dispose, uint8 truncation"
    )


def test_tables_name_the_presets_and_their_parts():
    assert parity.PRESETS == ("mimicmotion", "dispose")
    assert parity.PRESET_PARTS == {
        "mimicmotion": ("pose_guider",),
        "dispose": ("pose_guider", "motion_controlnet"),
    }
    assert parity.TILES == {"svd": (16, 6), "mimicmotion": (72, 6), "dispose": (16, 6)}
