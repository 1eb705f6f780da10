"""``animate run --engine diffusion`` with a tiny random pipeline saved in the real on-disk layout."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import DANCE, HERO_RGBA

from animate.cli import run as cli_run
from animate.engines import diffusion_unavailable_reason
from animate.media import open_video
from animate.settings import Settings
from animate.weights import CONVERTED_DIR, SD15_DIR, inspect_weights


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from pipelines import AnimationPipeline
    from pipelines.testing import reinit_zero_layers, tiny_components

    components = tiny_components(with_guidance_encoders=False)
    reinit_zero_layers(components["pose_guider"])  # so the skeletons actually steer the tiny model
    root = tmp_path_factory.mktemp("weights")
    AnimationPipeline(**components).save_pretrained(root / CONVERTED_DIR)
    return root


def test_engine_availability(tiny_weights, tmp_path):
    assert "does not exist" in diffusion_unavailable_reason(Settings(weights_dir=tmp_path / "none"))
    assert "no usable diffusion weights" in diffusion_unavailable_reason(Settings(weights_dir=tmp_path))
    # Explicitly asked for, tiny weights run on the CPU; auto wants a GPU as well.
    assert diffusion_unavailable_reason(Settings(weights_dir=tiny_weights), require_gpu=False) is None


def test_run_diffusion_engine_writes_mp4(tiny_weights, tmp_path, monkeypatch, capsys, data_dir):
    monkeypatch.setenv("ANIMATE_WEIGHTS_DIR", str(tiny_weights))
    out = tmp_path / "diffusion.mp4"
    argv = [
        "run", str(HERO_RGBA), str(DANCE), "-o", str(out), "--engine", "diffusion",
        "--size", "64x64", "--max-frames", "5", "--steps", "2", "--json",
    ]  # fmt: skip
    assert cli_run(argv) == 0, capsys.readouterr().err
    assert '"engine": "diffusion"' in capsys.readouterr().out
    info = open_video(out).info
    assert (info.codec, info.width, info.height, info.frame_count) == ("h264", 64, 64, 5)
    frames = list(open_video(out).frames())
    assert max(f.std() for f in frames) > 1  # decoded pictures, not an empty canvas


def test_diffusion_without_weights_is_a_clear_error(tmp_path, monkeypatch, capsys, data_dir):
    monkeypatch.setenv("ANIMATE_WEIGHTS_DIR", str(tmp_path))
    argv = ["run", str(HERO_RGBA), str(DANCE), "-o", str(tmp_path / "o.mp4"), "--engine", "diffusion"]
    assert cli_run(argv) == 2
    err = capsys.readouterr().err
    assert "[engine_unavailable]" in err and "Traceback" not in err


def test_diffusion_progress_per_step_and_cancel(tiny_weights, tmp_path, data_dir):
    from animate.animator import AnimationOptions, Animator, Canceled

    animator = Animator(Settings(weights_dir=tiny_weights))
    options = AnimationOptions(engine="diffusion", size=(64, 64), max_frames=3, steps=3)
    seen = []
    animator.run(HERO_RGBA, DANCE, tmp_path / "a.mp4", options, progress=seen.append)
    # the stage opens at step 0 (engine set-up), then one report per denoising step
    assert [p.step for p in seen if p.stage == "render"][:4] == [0, 1, 2, 3]
    # loading the weights is its own stage, right after decode (not counted as decoding)
    stages = list(dict.fromkeys(p.stage for p in seen))
    assert stages[:3] == ["decode", "load", "pose"], stages
    assert [p.step for p in seen if p.stage == "load"] == [0, 1]
    assert [p.fraction for p in seen].count(1.0) == 1

    steps = []

    def on_progress(p):
        if p.stage == "render":
            steps.append(p.step)

    with pytest.raises(Canceled):
        animator.run(
            HERO_RGBA,
            DANCE,
            tmp_path / "b.mp4",
            options,
            progress=on_progress,
            should_cancel=lambda: any(step >= 1 for step in steps),
        )
    assert steps == [0, 1]  # interrupted after the first denoising step
    assert not (tmp_path / "b.mp4").exists()


@pytest.fixture(scope="module")
def tiny_dispose_weights(tmp_path_factory):
    """UNet + pose guider + guidance encoders + motion ControlNet (re-initialised so each steers), converted;
    and a tiny SD 1.5 for the point adapter's DIFT features."""
    from pipelines import AnimationPipeline
    from pipelines.testing import TINY_POINT_CHANNELS, reinit_zero_layers, save_tiny_sd15, tiny_components

    components = tiny_components(with_guidance_encoders=True, with_motion_controlnet=True)
    for name in ("pose_guider", "guidance_encoders", "motion_controlnet"):
        reinit_zero_layers(components[name])
    root = tmp_path_factory.mktemp("weights")
    AnimationPipeline(**components).save_pretrained(root / CONVERTED_DIR)
    save_tiny_sd15(root / SD15_DIR, TINY_POINT_CHANNELS)
    return root


def test_run_with_the_motion_controlnet_writes_mp4(
    tiny_dispose_weights, tmp_path, monkeypatch, capsys, caplog
):
    features = inspect_weights(tiny_dispose_weights).features
    assert features["diffusion"] and features["dispose"] and features["dift"] and not features["cmp"]
    monkeypatch.setenv("ANIMATE_WEIGHTS_DIR", str(tiny_dispose_weights))
    out = tmp_path / "dispose.mp4"
    argv = [
        "run", str(HERO_RGBA), str(DANCE), "-o", str(out), "--engine", "diffusion",
        "--size", "64x64", "--max-frames", "4", "--steps", "2", "--json",
    ]  # fmt: skip
    # the CLI stops `animate` records at its own logger (warnings become note lines), so listen on the engine's
    engine_log = logging.getLogger("animate.engines.diffusion")
    engine_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="animate.engines.diffusion"):
            assert cli_run(argv) == 0, capsys.readouterr().err
    finally:
        engine_log.removeHandler(caplog.handler)
    result = json.loads(capsys.readouterr().out)  # stdout is the result alone (no banners, no bar)
    assert result["engine"] == "diffusion" and result["parts"]["motion_controlnet"] == "on (residuals once)"
    assert result["parts"]["point_adapter"] == "on (DIFT)"
    info = open_video(out).info
    assert (info.codec, info.width, info.height, info.frame_count) == ("h264", 64, 64, 4)
    assert max(f.std() for f in open_video(out).frames()) > 1
    parts = caplog.text
    assert "'motion_controlnet': 'on (residuals once)'" in parts and "'point_adapter': 'on (DIFT)'" in parts
    assert "'trajectory_flow': 'keypoints'" in parts and "'pose_guider': 'on'" in parts
    # the body stage fitted: its dense field and its depth / normal / semantic renders reached the pipeline
    assert "'dense_flow': 'bundle'" in parts and "'guidance_maps': 'depth, normal, semantic'" in parts


def _tiny_bundle(frames: int = 3):
    from animate.motion.bundle import GuidanceBundle

    rng = np.random.default_rng(0)
    keypoints = np.zeros((frames, 133, 3), np.float32)
    keypoints[:, :17, :2] = rng.uniform(8, 56, (frames, 17, 2))
    keypoints[:, :17, 2] = 1.0
    return GuidanceBundle(
        reference=rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
        reference_mask=np.full((64, 64), 255, np.uint8),
        reference_keypoints=keypoints[0],
        keypoints=keypoints,
        fps=8.0,
        size=(64, 64),
    )


def test_speed_settings_reach_the_pipeline_and_keep_the_frames(tiny_weights):
    """``ANIMATE_DIFFUSION_SPEED`` / ``ANIMATE_DIFFUSION_STEP_CACHE``: the low-memory path (offload left out
    on a CPU) renders the plain path's frames; the opt-in step cache is attached, reported and changes them."""
    from animate.engines.diffusion import DiffusionEngine, DiffusionOptions

    # SVD's temporal VAE decoder mixes the frames of one decode call: compare at low_memory's chunk of 2
    options = DiffusionOptions(steps=2, decode_chunk_size=2)
    frames = {}
    for name, settings in {
        "plain": Settings(weights_dir=tiny_weights),
        "low_memory": Settings(weights_dir=tiny_weights, diffusion_speed="low_memory"),
        "cached": Settings(weights_dir=tiny_weights, diffusion_step_cache=2),
    }.items():
        engine = DiffusionEngine.from_settings(settings, options)
        frames[name] = np.stack(list(engine.render(_tiny_bundle()))).astype(np.float32)
        if name == "plain":
            assert engine.parts["speed"] == "plain" and engine.call_kwargs == {}
        if name == "low_memory":
            assert engine.call_kwargs == {"cfg_mode": "sequential", "decode_chunk_size": 2}
            assert (
                "forward chunks of 1" in engine.parts["speed"] and "cpu_offload" not in engine.parts["speed"]
            )
        if name == "cached":
            assert engine.parts["speed"] == "step cache every 2"
            assert engine.pipeline.unet._step_cache.cached_calls > 0
    assert frames["plain"].shape == (3, 64, 64, 3)
    assert np.abs(frames["low_memory"] - frames["plain"]).max() <= 2  # uint8 rounding of a 1e-5 difference
    assert np.abs(frames["cached"] - frames["plain"]).mean() > 0
