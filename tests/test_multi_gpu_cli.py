"""``animate plan``, ``animate run --dry-run`` and ``animate run --processes 2`` (two gloo CPU processes, the
tiles of each step split between them) on the real shared media and a tiny pipeline in the real layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DANCE, HERO_RGBA, WOMAN_JPG

from animate.cli import run as cli_run
from animate.cli.plan import parse_gpus
from animate.errors import AnimateError
from animate.media import open_video
from animate.weights import CONVERTED_DIR

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from pipelines import AnimationPipeline
    from pipelines.testing import reinit_zero_layers, tiny_components

    components = tiny_components(with_guidance_encoders=False)
    reinit_zero_layers(components["pose_guider"])  # so each tile's own poses steer it
    root = tmp_path_factory.mktemp("weights")
    AnimationPipeline(**components).save_pretrained(root / CONVERTED_DIR)
    return root


def test_parse_gpus():
    assert parse_gpus("0,1") == ["0", "1"] and parse_gpus(" 2, 3 ") == ["2", "3"]
    assert parse_gpus(None, processes=2) == ["cpu", "cpu"] and parse_gpus("cpu,cpu") == ["cpu", "cpu"]
    assert parse_gpus("0") == [] and parse_gpus(None) == [] and parse_gpus(None, processes=1) == []
    for bad, message in [("0,0", "twice"), ("0,cpu", "mixes"), ("a,b", "GPU indices")]:
        with pytest.raises(AnimateError, match=message):
            parse_gpus(bad)
    with pytest.raises(AnimateError, match="not together"):
        parse_gpus("0,1", processes=2)


def test_plan_prints_the_table_for_a_given_card(capsys, data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("ANIMATE_WEIGHTS_DIR", str(tmp_path / "none"))
    argv = ["plan", str(WOMAN_JPG), str(DANCE), "--gpu-memory", "24GiB", "--frames", "1024"]
    assert cli_run(argv) == 0
    out = capsys.readouterr().out
    # the reference is portrait: 576x1024; a 24 GiB card at 1024 frames plans the chunked level
    assert "576x1024, 1024 frames" in out and "memory level       chunked" in out
    assert "tiles              16 of 72 frames, overlap 6" in out and "GPU peak (each)" in out
    assert "planned for MimicMotion 1.1" in out
    assert cli_run([*argv, "--json", "--gpus", "0,1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gpus"] == 2 and data["level"] == "chunked" and data["engine"] == "diffusion"


def test_plan_without_weights_or_gpu_is_the_warp_engine(capsys, data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("ANIMATE_WEIGHTS_DIR", str(tmp_path / "none"))
    assert cli_run(["plan", str(WOMAN_JPG), str(DANCE), "--max-frames", "30", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["engine"] == "warp" and data["gpu_peak_gib"] is None and data["frames"] == 30
    assert data["notes"][0].startswith("diffusion not used: the weights directory")


def test_plan_bad_memory_size_is_a_clear_error(capsys, data_dir):
    assert cli_run(["plan", str(WOMAN_JPG), str(DANCE), "--gpu-memory", "lots"]) == 2
    assert "[invalid_option]" in capsys.readouterr().err


def test_dry_run_prints_the_plan_and_runs_nothing(tiny_weights, capsys, data_dir, monkeypatch, tmp_path):
    from animate.animator import Animator

    def refuse(*args, **kwargs):
        raise AssertionError("the dry run must not prepare or render")

    monkeypatch.setattr(Animator, "prepare", refuse)
    monkeypatch.setenv("ANIMATE_WEIGHTS_DIR", str(tiny_weights))
    out = tmp_path / "never.mp4"
    argv = ["run", str(HERO_RGBA), str(DANCE), "-o", str(out), "--engine", "diffusion", "--size", "64x64",
            "--max-frames", "5", "--dry-run", "--json"]  # fmt: skip
    assert cli_run(argv) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert plan["engine"] == "diffusion" and plan["device"] == "cpu" and plan["dtype"] == "float32"
    assert (plan["width"], plan["height"], plan["frames"], plan["tiles"]) == (64, 64, 5, 1)  # 6 <= 16 frames
    assert plan["level"] == "fast" and not out.exists()


def _frames(path) -> np.ndarray:
    return np.stack(list(open_video(path).frames())).astype(np.int16)


@pytest.mark.slow  # two processes each estimate the poses: ~40 s on a quiet machine
def test_two_processes_render_the_one_process_video(tiny_weights, capsys, data_dir, monkeypatch, tmp_path):
    """9 frames + the reference in tiles of 4 overlapping by 1: 3 tiles, rank 0 (this process) predicts two,
    rank 1 one; their fused predictions are summed over gloo. The video equals the one-process run's."""
    from diffusers import UNetSpatioTemporalConditionModel

    calls = []
    forward = UNetSpatioTemporalConditionModel.forward
    monkeypatch.setattr(
        UNetSpatioTemporalConditionModel, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k)
    )
    monkeypatch.setenv("ANIMATE_WEIGHTS_DIR", str(tiny_weights))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the spawned rank as the parent (one torch thread)
    common = ["--engine", "diffusion", "--no-body", "--size", "64x64", "--max-frames", "9", "--tile-size", "4",
              "--tile-overlap", "1", "--steps", "2", "--json"]  # fmt: skip
    one, two = tmp_path / "one.mp4", tmp_path / "two.mp4"
    assert cli_run(["run", str(HERO_RGBA), str(DANCE), "-o", str(one), *common]) == 0, capsys.readouterr().err
    single = json.loads(capsys.readouterr().out)
    assert len(calls) == 3 * 2  # batched CFG: one UNet call per tile and step
    calls.clear()
    assert cli_run(["run", str(HERO_RGBA), str(DANCE), "-o", str(two), *common, "--processes", "2"]) == 0
    split = json.loads(capsys.readouterr().out)
    assert len(calls) == 2 * 2  # this rank's share: tiles 0 and 2
    assert single["plan"]["gpus"] == 1 and split["plan"]["gpus"] == 2 and split["plan"]["tiles"] == 3
    assert "tiles split over 2 processes (cpu, cpu)" in split["notes"]
    expected, frames = _frames(one), _frames(two)
    assert frames.shape == expected.shape == (9, 64, 64, 3)
    assert expected.std() > 1  # a picture, not a blank canvas
    # the same latents up to float summation order, which a tiny random UNet amplifies over the steps on
    # some CPUs (8 levels at a few pixels on AMD EPYC); a wrong tile share changes whole frames
    diff = np.abs(frames - expected)
    assert diff.max() <= 16 and diff.mean() <= 0.25, (diff.max(), diff.mean())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.mp4", "two.mp4"]


def test_gpus_without_a_gpu_is_a_clear_error(tiny_weights, capsys, data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("ANIMATE_WEIGHTS_DIR", str(tiny_weights))
    argv = ["run", str(HERO_RGBA), str(DANCE), "-o", str(tmp_path / "o.mp4"), "--engine", "diffusion",
            "--gpus", "0,1"]  # fmt: skip
    assert cli_run(argv) == 2
    err = capsys.readouterr().err
    assert "[engine_unavailable]" in err and "no CUDA GPU" in err
    assert cli_run([*argv[:5], "--engine", "warp", "--processes", "2"]) == 2
    assert "not with --engine warp" in capsys.readouterr().err
