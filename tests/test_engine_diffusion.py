"""``animate run --engine diffusion`` with a tiny random pipeline saved in the real on-disk layout."""

from __future__ import annotations

import pytest
from conftest import DANCE, HERO_RGBA

from animate.cli import run as cli_run
from animate.engines import diffusion_unavailable_reason
from animate.media import open_video
from animate.settings import Settings
from animate.weights import CONVERTED_DIR


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
    assert [p.step for p in seen if p.stage == "render"][:3] == [1, 2, 3]
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
            should_cancel=lambda: bool(steps),
        )
    assert steps == [1]  # interrupted after the first denoising step
    assert not (tmp_path / "b.mp4").exists()
