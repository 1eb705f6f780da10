"""``sequence_device``: the whole-length latents and fusion sums kept on one device (the host when the GPU is
short), only each tile's window handed to the UNet; the same latents as the default.

Tiny components on the CPU (every conditioning path on, zero-init layers re-initialised), several tiles. The
execution device is the CPU here too, so "on the host" is shown by what the UNet is handed (tile windows
only) and by where the step's full-length tensors are (the callback's latents and fused prediction).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipelines import AnimationPipeline, tile_indices
from pipelines.distributed import TileGroup, init_tile_group
from pipelines.testing import reinit_zero_layers, tiny_components
from tests.test_pipeline_streaming import FRAMES, OVERLAP, SIZE, TILE, _call, _inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 2


@pytest.fixture(scope="module")
def pipe() -> AnimationPipeline:
    components = tiny_components(with_guidance_encoders=True, with_motion_controlnet=True)
    for name in ("pose_guider", "guidance_encoders", "motion_controlnet"):
        reinit_zero_layers(components[name])
    pipe = AnimationPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class StepRecord:
    """What the UNet is handed (frames per call) and the full-length tensors at each step's end."""

    def __init__(self, pipe: AnimationPipeline) -> None:
        self.unet_frames: list[int] = []
        self.steps: list[dict[str, tuple]] = []
        self.hook = pipe.unet.register_forward_pre_hook(
            lambda module, args: self.unet_frames.append(args[0].shape[1])
        )

    def callback(self, pipe, i, t, tensors):
        self.steps.append({k: (tuple(v.shape), v.device) for k, v in tensors.items()})
        return {}


@pytest.mark.parametrize("cfg_mode", ["batched", "sequential"])
def test_host_sequence_gives_the_latents_of_the_default(pipe, cfg_mode):
    inputs = _inputs()
    expected = _call(pipe, inputs, cfg_mode=cfg_mode, num_inference_steps=STEPS)
    record = StepRecord(pipe)
    try:
        host = _call(
            pipe,
            inputs,
            cfg_mode=cfg_mode,
            num_inference_steps=STEPS,
            sequence_device="cpu",
            callback_on_step_end=record.callback,
            callback_on_step_end_tensor_inputs=["latents", "noise_pred"],
        )
    finally:
        record.hook.remove()
    assert host.device.type == "cpu" and host.shape == expected.shape == (1, FRAMES, 4, SIZE // 2, SIZE // 2)
    assert (host - expected).abs().max() <= 1e-6
    # the UNet saw tile windows only: 3 tiles of 4 frames (reference included) per step, once (batched) or
    # twice (sequential CFG), never the 10-frame sequence
    tiles = tile_indices(FRAMES + 1, TILE, OVERLAP, anchor_first=True)
    assert [len(idx) for idx in tiles] == [TILE] * 3
    calls = 2 if cfg_mode == "sequential" else 1
    assert record.unet_frames == [TILE] * (len(tiles) * calls * STEPS)
    # the full-length latents and fused prediction live on the sequence device at every step
    full = (1, FRAMES + 1, 4, SIZE // 2, SIZE // 2)
    assert (
        record.steps
        == [{"latents": (full, torch.device("cpu")), "noise_pred": (full, torch.device("cpu"))}] * STEPS
    )


def test_decode_from_host_latents_matches_the_pipelines_frames(pipe):
    """``decode_stream`` reads host latents chunk by chunk (each chunk moved to the VAE's device)."""
    inputs = _inputs()
    whole = _call(pipe, inputs, output_type="np", decode_chunk_size=4)[0]
    direct = _call(pipe, inputs, output_type="np", decode_chunk_size=4, sequence_device="cpu")[0]
    np.testing.assert_array_equal(direct, whole)
    latents = _call(pipe, inputs, keep_reference=True, sequence_device="cpu")
    chunks = list(pipe.decode_stream(latents, 4, reference_first=True, output_type="np"))
    assert [len(chunk) for chunk in chunks] == [4, 4, 1]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)


# --- several processes: the fusion sums all-reduced from the host ---------------------------------------


def _small_pipeline() -> AnimationPipeline:
    components = tiny_components(with_guidance_encoders=False)
    reinit_zero_layers(components["pose_guider"])
    pipe = AnimationPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _small_latents(pipe: AnimationPipeline, group: TileGroup | None, **kwargs) -> torch.Tensor:
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((1, 3, 32, 32), dtype=np.float32))
    poses = torch.from_numpy(rng.random((9, 3, 32, 32), dtype=np.float32))
    return pipe(
        image,
        pose_images=poses,
        height=32,
        width=32,
        tile_size=4,
        tile_overlap=1,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        tile_group=group,
        **kwargs,
    ).frames


def _rank_run(rank: int, world_size: int, init_method: str, out_path: str) -> None:
    torch.set_num_threads(1)
    group = init_tile_group(rank, world_size, init_method, backend="gloo")
    # labelled "nccl": the sums on the host go through the execution device 4 frames at a time, as with NCCL
    # (gloo reduces CPU tensors, so the chunked path runs here)
    chunked = TileGroup(group.rank, group.world_size, group.group, "nccl")
    pipe = _small_pipeline()
    results = {
        "gloo": _small_latents(pipe, group, sequence_device="cpu"),
        "chunked": _small_latents(pipe, chunked, sequence_device="cpu"),
    }
    torch.save(results, f"{out_path}.{rank}")
    dist.destroy_process_group()


def test_two_processes_with_host_sums_give_the_latents_of_one(tmp_path):
    out_path = str(tmp_path / "latents")
    ranks = mp.spawn(_rank_run, args=(2, f"file://{tmp_path / 'rendezvous'}", out_path), nprocs=2, join=False)
    expected = _small_latents(_small_pipeline(), None)
    while not ranks.join():
        pass
    for rank in range(2):
        results = torch.load(f"{out_path}.{rank}")
        for name, latents in results.items():
            assert latents.shape == expected.shape == (1, 9, 4, 16, 16)
            assert (latents - expected).abs().max() <= 1e-5, (rank, name)


def test_the_engine_applies_a_plan_with_host_latents(pipe, monkeypatch):
    """A plan with ``latents_on_host`` makes ``render`` call the pipeline with ``sequence_device="cpu"``; the
    frames are those of the same engine with the latents left alone."""
    import dataclasses
    import functools

    import animate.engines.plan as planner
    from animate.engines.diffusion import DiffusionEngine, DiffusionOptions
    from animate.motion.bundle import GuidanceBundle

    inputs = _inputs()
    keypoints = np.zeros((FRAMES, 133, 3), np.float32)
    keypoints[:, :17, :2] = np.random.default_rng(2).uniform(4, SIZE - 4, (FRAMES, 17, 2))
    keypoints[:, :17, 2] = 1.0
    bundle = GuidanceBundle(
        reference=np.asarray(inputs["image"]),
        reference_mask=np.full((SIZE, SIZE), 255, np.uint8),
        reference_keypoints=keypoints[0],
        keypoints=keypoints,
        fps=8.0,
        size=(SIZE, SIZE),
        dense_flow=inputs["dense_flow"],
        **inputs["guidance_maps"],
    )
    seen = []
    original = type(pipe).__call__

    @functools.wraps(original)  # the engine reads the pipeline's signature
    def call(self, *args, **kwargs):
        seen.append(kwargs.get("sequence_device"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", call)
    options = DiffusionOptions(steps=2, tile_size=TILE, tile_overlap=OVERLAP, decode_chunk_size=4)
    default = np.stack(list(DiffusionEngine(pipe, options).render(bundle)))
    make_plan = planner.make_plan
    monkeypatch.setattr(
        planner, "make_plan", lambda *a, **k: dataclasses.replace(make_plan(*a, **k), latents_on_host=True)
    )
    engine = DiffusionEngine(pipe, options)
    host = np.stack(list(engine.render(bundle)))
    assert seen == [None, "cpu"]
    assert engine.plan.latents_on_host and "latents on the host" in engine.parts["plan"]
    np.testing.assert_array_equal(host, default)
