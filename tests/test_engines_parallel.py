"""``animate.engines.parallel`` without spawning: the device checks, a failing rank's hand-off of its error to
rank 0 (run in this process as a one-rank gloo group), and the peer error rank 0 reports. The two-process
render itself is ``tests/test_multi_gpu_cli.py`` (slow)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from animate.engines import parallel
from animate.errors import AnimateError
from animate.settings import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from animate.weights import CONVERTED_DIR
    from pipelines import AnimationPipeline
    from pipelines.testing import tiny_components

    root = tmp_path_factory.mktemp("weights")
    AnimationPipeline(**tiny_components(with_guidance_encoders=False)).save_pretrained(root / CONVERTED_DIR)
    return root


def test_check_devices_backend_and_refusals(tiny_weights: Path, tmp_path: Path) -> None:
    settings = Settings(weights_dir=tiny_weights)
    assert parallel.check_devices(["cpu", "cpu"], settings, "diffusion") == "gloo"
    assert parallel.check_devices(["cpu"], settings, "auto") == "gloo"  # CPU ranks need no GPU
    with pytest.raises(AnimateError) as err:
        parallel.check_devices(["cpu", "cpu"], settings, "warp")
    assert (err.value.code, err.value.message) == (
        "invalid_option", "--gpus splits the diffusion engine's tiles: not with --engine warp"
    )  # fmt: skip
    missing = Settings(weights_dir=tmp_path / "none")
    with pytest.raises(AnimateError) as err:
        parallel.check_devices(["cpu", "cpu"], missing, "diffusion")
    assert err.value.code == "engine_unavailable"
    assert err.value.message == (
        f"--gpus needs the diffusion engine, which cannot run: the weights directory {tmp_path / 'none'} "
        "does not exist (see weights/README.md)"
    )


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the no-GPU answer")
def test_gpu_devices_without_cuda(tiny_weights: Path) -> None:
    with pytest.raises(AnimateError) as err:
        parallel.check_devices(["0", "1"], Settings(weights_dir=tiny_weights), "diffusion")
    assert err.value.code == "engine_unavailable" and err.value.message.endswith("no CUDA GPU is available")


def test_rank_error_names_the_first_failed_peer(tmp_path: Path) -> None:
    assert parallel._rank_error(str(tmp_path), 3) is None
    (tmp_path / "rank0.error.json").write_text(json.dumps({"code": "x", "message": "rank 0 is the caller"}))
    (tmp_path / "rank3.error.json").write_text(json.dumps({"code": "x", "message": "no such rank"}))
    assert parallel._rank_error(str(tmp_path), 3) is None
    (tmp_path / "rank2.error.json").write_text(json.dumps({"code": "out_of_memory", "message": "GPU full"}))
    error = parallel._rank_error(str(tmp_path), 3)
    assert (error.code, error.message) == ("out_of_memory", "process 2 of 3: GPU full")
    (tmp_path / "rank1.error.json").write_text(json.dumps({"code": "invalid_input", "message": "bad"}))
    assert parallel._rank_error(str(tmp_path), 3).message == "process 1 of 3: bad"


def _rank(tmp_path: Path, settings: Settings, reference, options) -> None:
    """``_rank_main`` in this process as the only rank of a gloo group (it leaves the group when done)."""
    init = f"file://{tmp_path}/rendezvous"
    parallel._rank_main(
        0, 1, "cpu", init, "gloo", settings, str(reference), str(tmp_path), options, str(tmp_path)
    )


def test_a_failing_rank_hands_its_error_on_and_exits(tmp_path: Path, monkeypatch) -> None:
    import torch.distributed as dist

    from animate.animator import AnimationOptions

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    settings = Settings(weights_dir=tmp_path / "none")
    with pytest.raises(SystemExit) as stop:
        _rank(tmp_path, settings, tmp_path / "absent.png", AnimationOptions(engine="warp"))
    assert stop.value.code == 1
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # a CPU rank hides the GPUs before CUDA starts
    assert not dist.is_initialized()  # the group is left
    data = json.loads((tmp_path / "rank0.error.json").read_text())
    assert data["code"] != "internal_error" and "absent.png" in data["message"]
    # an error that is not the user's is wrapped as internal_error with its type
    (tmp_path / "rendezvous").unlink(missing_ok=True)
    with pytest.raises(SystemExit):
        _rank(tmp_path, settings, tmp_path / "absent.png", "not options")
    data = json.loads((tmp_path / "rank0.error.json").read_text())
    assert data["code"] == "internal_error" and data["message"].startswith("AttributeError: ")
    assert not dist.is_initialized()


def test_run_split_refuses_before_spawning(tmp_path: Path) -> None:
    from animate.animator import AnimationOptions

    with pytest.raises(AnimateError) as err:
        parallel.run_split(
            Settings(weights_dir=tmp_path / "none"), ["cpu", "cpu"], "r.png", "d.mp4", tmp_path / "o.mp4",
            AnimationOptions(engine="diffusion"),
        )  # fmt: skip
    assert err.value.code == "engine_unavailable"
    with pytest.raises(AnimateError) as err:
        parallel.run_split(
            Settings(weights_dir=tmp_path), ["cpu"], "r.png", "d.mp4", tmp_path / "o.mp4",
            AnimationOptions(engine="diffusion", steps=0),
        )  # fmt: skip
    assert err.value.code == "invalid_option"  # the options are validated first
    assert not list(tmp_path.iterdir())


def test_one_cpu_process_runs_the_job_through_a_tile_group(tiny_weights: Path, tmp_path: Path) -> None:
    """``run_split`` with one device spawns nothing: rank 0 joins a one-rank gloo group, renders every tile
    and writes the video; the group is left and the note says how the tiles were split."""
    import torch.distributed as dist
    from conftest import DANCE, HERO_RGBA

    from animate.animator import AnimationOptions
    from animate.media import open_video

    options = AnimationOptions(engine="diffusion", body=False, size=(64, 64), max_frames=3, steps=1)
    out = tmp_path / "one.mp4"
    result = parallel.run_split(Settings(weights_dir=tiny_weights), ["cpu"], HERO_RGBA, DANCE, out, options)
    assert result.video == out and result.frames == 3 and result.engine == "diffusion"
    assert result.notes[-1] == "tiles split over 1 processes (cpu)"
    assert result.plan["gpus"] == 1  # the group's size reached the planner
    info = open_video(out).info
    assert (info.width, info.height, info.frame_count) == (64, 64, 3)
    assert not dist.is_initialized()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.mp4"]


def test_a_rank_renders_its_share_and_leaves_the_group(tiny_weights: Path, tmp_path: Path) -> None:
    """``_rank_main`` as the only rank: it prepares the same guidance and renders (nothing is written but the
    rendezvous file), then leaves the group without an error file."""
    import torch.distributed as dist
    from conftest import DANCE, HERO_RGBA

    from animate.animator import AnimationOptions

    options = AnimationOptions(engine="diffusion", body=False, size=(64, 64), max_frames=2, steps=1)
    workdir = tmp_path / "work"
    workdir.mkdir()
    parallel._rank_main(0, 1, "cpu", f"file://{workdir}/rendezvous", "gloo",
                        Settings(weights_dir=tiny_weights), str(HERO_RGBA), str(DANCE), options, str(workdir))  # fmt: skip
    assert not (workdir / "rank0.error.json").exists()
    assert not dist.is_initialized()
