"""Out of memory during the diffusion render: one retry at the next lower plan level, then ``out_of_memory``.

The OOM is injected into the UNet's forward of a tiny pipeline saved in the real on-disk layout: the
``k``-th UNet call raises ``torch.cuda.OutOfMemoryError`` (what the CUDA caching allocator raises).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import DANCE, HERO_RGBA
from diffusers import UNetSpatioTemporalConditionModel

from animate.cli import run as cli_run
from animate.engines.diffusion import DiffusionEngine, DiffusionOptions, is_out_of_memory
from animate.errors import AnimateError
from animate.settings import Settings
from animate.weights import CONVERTED_DIR

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS = 3


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from pipelines import AnimationPipeline
    from pipelines.testing import reinit_zero_layers, tiny_components

    components = tiny_components(with_guidance_encoders=False)
    reinit_zero_layers(components["pose_guider"])
    root = tmp_path_factory.mktemp("weights")
    AnimationPipeline(**components).save_pretrained(root / CONVERTED_DIR)
    return root


def _bundle(frames: int = 3):
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


class OomAt:
    """Wrap the UNet class's forward: the calls numbered in ``failing`` (1-based) raise an OOM."""

    def __init__(self, monkeypatch, failing, error=None):
        self.calls, self.failing = 0, set(failing)
        self.error = error or torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        original = UNetSpatioTemporalConditionModel.forward

        def forward(unet, *args, **kwargs):
            self.calls += 1
            if self.calls in self.failing:
                raise self.error
            return original(unet, *args, **kwargs)

        monkeypatch.setattr(UNetSpatioTemporalConditionModel, "forward", forward)


def _render(weights, **options) -> tuple[DiffusionEngine, np.ndarray]:
    engine = DiffusionEngine.from_settings(
        Settings(weights_dir=weights), DiffusionOptions(steps=STEPS, **options)
    )
    return engine, np.stack(list(engine.render(_bundle())))


def test_oom_errors_are_recognised():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory."))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert is_out_of_memory(
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    )
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only the allocators' error types


def test_oom_at_step_2_retries_at_the_next_lower_plan(tiny_weights, monkeypatch, caplog):
    # the expectation: a clean render that starts at the level below the planner's choice (on this CPU and
    # these tiny weights the planner picks "fast": batched CFG, one UNet call per step for the one tile)
    clean_engine, expected = _render(tiny_weights, memory_level="sequential_cfg")
    assert clean_engine.plan.level == "sequential_cfg" and clean_engine.plan.cfg == "sequential"

    oom = OomAt(monkeypatch, failing={2})
    with caplog.at_level(logging.WARNING, logger="animate.engines.diffusion"):
        engine, frames = _render(tiny_weights)
    assert engine.plan.level == "sequential_cfg"
    assert engine.parts["plan"].startswith("sequential_cfg (sequential CFG")
    # attempt 1: step 1 (one call), step 2 fails; attempt 2: both CFG halves apart, 2 calls per step
    assert oom.calls == 2 + 2 * STEPS
    assert "out of memory at fast (batched CFG" in caplog.text and "retrying at sequential_cfg" in caplog.text
    np.testing.assert_array_equal(frames, expected)


def test_oom_after_frames_were_handed_on_skips_them_on_the_retry(tiny_weights, monkeypatch):
    """A decode that streams frames to the writer can fail after some went out: the retry hands on only
    the frames not yet written, so the video has each frame once, in order."""
    engine = DiffusionEngine.from_settings(Settings(weights_dir=tiny_weights), DiffusionOptions(steps=1))
    levels = []

    def fake_render(bundle, plan, progress, should_cancel):
        levels.append(plan.level)
        for index in range(bundle.num_frames):
            if len(levels) == 1 and index == 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
            yield np.full((2, 2, 3), 10 * len(levels) + index, np.uint8)

    monkeypatch.setattr(engine, "_render", fake_render)
    frames = [int(f[0, 0, 0]) for f in engine.render(_bundle(frames=4))]
    assert levels == ["fast", "sequential_cfg"]
    assert frames == [10, 11, 22, 23]  # two from the first attempt, then the retry's third and fourth


def test_a_second_oom_is_out_of_memory_naming_both_plans(tiny_weights, monkeypatch):
    OomAt(monkeypatch, failing={2, 4})  # attempt 1 fails at step 2; attempt 2 at its second call
    with pytest.raises(AnimateError) as caught:
        _render(tiny_weights)
    error = caught.value
    assert error.code == "out_of_memory"
    assert "memory level sequential_cfg (sequential CFG" in error.message
    assert (
        "after fast (batched CFG" in error.message and "ANIMATE_DIFFUSION_SPEED=low_memory" in error.message
    )
    assert error.plan["level"] == "sequential_cfg"


def test_no_retry_below_the_leanest_level(tiny_weights, monkeypatch):
    OomAt(monkeypatch, failing={1})
    with pytest.raises(AnimateError) as caught:
        _render(tiny_weights, memory_level="chunked")  # the leanest on a CPU: offload needs a GPU
    assert caught.value.code == "out_of_memory" and "after" not in caught.value.message


def test_other_errors_are_not_retried(tiny_weights, monkeypatch):
    oom = OomAt(monkeypatch, failing={1}, error=RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        _render(tiny_weights)
    assert oom.calls == 1


def test_cli_run_oom_twice_fails_with_the_code_and_leaves_no_file(
    tiny_weights, tmp_path, monkeypatch, capsys, data_dir
):
    monkeypatch.setenv("ANIMATE_WEIGHTS_DIR", str(tiny_weights))
    OomAt(monkeypatch, failing=set(range(2, 100)))
    out = tmp_path / "out" / "video.mp4"
    argv = [
        "run", str(HERO_RGBA), str(DANCE), "-o", str(out), "--engine", "diffusion", "--no-body",
        "--size", "64x64", "--max-frames", "3", "--steps", "2",
    ]  # fmt: skip
    assert cli_run(argv) == 2
    err = capsys.readouterr().err
    assert "[out_of_memory]" in err and "Traceback" not in err
    assert "memory level sequential_cfg" in err and "ANIMATE_DIFFUSION_SPEED" in err
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temporary .part file either


@pytest.fixture()
def job_server(tiny_weights, tmp_path, data_dir, monkeypatch):
    """The API in-process and a ``JobRunner`` that runs its jobs in this process (body fit off: fast)."""
    import dataclasses

    from fastapi.testclient import TestClient

    from server import create_app
    from server.files import JobFiles
    from server.queue import JobQueue
    from server.schemas import JobOptions
    from server.store import JobStore
    from server.worker import JobRunner, database_url

    options = JobOptions.animation_options
    monkeypatch.setattr(
        JobOptions, "animation_options", lambda self: dataclasses.replace(options(self), body=False)
    )
    settings = Settings(data_dir=tmp_path / "data", weights_dir=tiny_weights, media={"max_video_seconds": 60})
    with TestClient(create_app(settings)) as client:
        store = JobStore(database_url(settings))
        queue = JobQueue(settings, execute=lambda job_id: None)
        try:
            yield client, JobRunner(settings, store, JobFiles(settings.data_dir), queue)
        finally:
            queue.close()
            store.close()


def _submit(client) -> str:
    parts = {
        "reference": ("hero.png", HERO_RGBA.read_bytes(), "image/png"),
        "driving": ("dance.mp4", DANCE.read_bytes(), "video/mp4"),
    }
    data = {"engine": "diffusion", "width": "64", "height": "64", "max_frames": "3", "steps": "2"}
    response = client.post("/v1/jobs", files=parts, data=data)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_job_oom_twice_fails_out_of_memory_with_the_failed_plan(job_server, monkeypatch):
    client, runner = job_server
    OomAt(monkeypatch, failing=set(range(2, 100)))
    job_id = _submit(client)
    runner.run(job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["code"] == "out_of_memory"
    assert "memory level sequential_cfg" in job["error"]["message"]
    assert job["plan"]["level"] == "sequential_cfg" and job["urls"]["video"] is None
    assert client.get(f"/v1/jobs/{job_id}/video").status_code == 409


def test_job_record_carries_the_plan(job_server):
    client, runner = job_server
    job_id = _submit(client)
    runner.run(job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    assert job["plan"]["engine"] == "diffusion" and job["plan"]["level"] == "fast"
    assert (job["plan"]["width"], job["plan"]["frames"]) == (64, 3) and "plan" not in job["result"]


@pytest.mark.slow  # two processes each estimate the poses
def test_a_per_job_worker_spreads_the_job_over_two_processes(job_server, monkeypatch):
    """``animate worker --gpus cpu,cpu --per-job``: the runner's job runs over two gloo CPU processes."""
    client, runner = job_server
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runner.devices = ["cpu", "cpu"]
    job_id = _submit(client)
    runner.run(job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    assert job["plan"]["gpus"] == 2 and job["result"]["frames"] == 3
    assert client.get(f"/v1/jobs/{job_id}/video").status_code == 200


def test_the_plan_column_is_added_to_an_older_database(tmp_path):
    from sqlalchemy import inspect as inspect_db
    from sqlalchemy import text

    from server.store import JobStore, make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    JobStore(url).close()
    old = make_engine(url)
    with old.begin() as connection:  # the table as the release before the planner made it
        connection.execute(text('ALTER TABLE jobs DROP COLUMN "plan"'))
    assert "plan" not in {c["name"] for c in inspect_db(old).get_columns("jobs")}
    old.dispose()
    JobStore(url).close()
    assert "plan" in {c["name"] for c in inspect_db(make_engine(url)).get_columns("jobs")}


def test_a_planned_level_sets_the_modules(tiny_weights):
    """``chunked``: feed-forward chunks of one row in every UNet transformer block, sequential CFG."""
    engine, _ = _render(tiny_weights, memory_level="chunked")
    blocks = [b for b in engine.pipeline.unet.modules() if hasattr(b, "set_chunk_feed_forward")]
    assert blocks and all(b._chunk_size == 1 for b in blocks)
    assert engine.plan.cfg == "sequential" and engine.parts["plan"].startswith("chunked (sequential CFG")
    engine.options = DiffusionOptions(steps=1)
    list(engine.render(_bundle()))  # the planner's own choice again: chunking off
    assert engine.plan.level == "fast" and all(b._chunk_size is None for b in blocks)
