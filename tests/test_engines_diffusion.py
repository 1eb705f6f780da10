"""``animate.engines.diffusion``'s option resolution on a tiny in-memory pipeline: the defaults, tiles, plan and
speed settings it hands the pipeline call (recorded by a pass-through spy on ``AnimationPipeline.__call__``),
the uint8 conversion, the out-of-memory recognition and message, and the parts it reports. Expected values
are written out here from the published settings (MimicMotion 1.1: 25 steps, guidance 2.0, fps id 7, motion
bucket 127, tiles 72 / 6; DisPose: tiles 16 / 6)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from animate.engines.diffusion import (
    DiffusionEngine,
    DiffusionOptions,
    describe_speed,
    frames_to_uint8,
    is_out_of_memory,
    speed_options,
)
from animate.errors import AnimateError
from animate.settings import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_frames_to_uint8_rounds_or_truncates_and_clips() -> None:
    frames = np.array([-0.2, 0.0, 0.5, 254.9 / 255, 1.0, 1.3], np.float32)
    assert frames_to_uint8(frames).tolist() == [0, 0, 128, 255, 255, 255]  # 127.5 + 0.5 -> 128
    assert frames_to_uint8(frames, truncate=True).tolist() == [0, 0, 127, 254, 255, 255]
    assert frames_to_uint8(frames).dtype == np.uint8


def test_the_published_defaults() -> None:
    opts = DiffusionOptions()
    assert (opts.steps, opts.guidance_scale, opts.seed, opts.fps_id, opts.motion_bucket_id) == (
        25,
        2.0,
        0,
        7,
        127,
    )
    assert (opts.tile_size, opts.tile_overlap, opts.decode_chunk_size, opts.noise_aug_strength) == (
        None, None, 8, 0.0
    )  # fmt: skip
    assert (opts.residual_mode, opts.controlnet_cfg, opts.preset, opts.memory_level) == (
        None,
        "keep",
        None,
        None,
    )


def test_out_of_memory_recognition() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("anything"))
    assert is_out_of_memory(RuntimeError("CUDA Out Of Memory. Tried to allocate 2 GiB"))  # any case
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(MemoryError("out of memory"))  # not the allocators' RuntimeError
    assert not is_out_of_memory(ValueError("can't allocate memory"))


def test_speed_presets_and_their_description() -> None:
    plain = speed_options(Settings(), cuda=True)
    assert (plain.cpu_offload, plain.step_cache_interval, plain.cfg_mode) == (False, 1, None)
    assert describe_speed(plain) == "plain"
    low = speed_options(Settings(diffusion_speed="low_memory", diffusion_step_cache=3), cuda=True)
    assert (low.cpu_offload, low.forward_chunk_size, low.decode_chunk_size, low.step_cache_interval) == (
        True, 1, 2, 3
    )  # fmt: skip
    assert describe_speed(low) == (
        "cpu_offload, forward chunks of 1, step cache every 3, sequential CFG, decode 2 frames at a time"
    )
    # no GPU: no offload, the rest of the preset stays
    cpu = speed_options(Settings(diffusion_speed="low_memory"), cuda=False)
    assert (cpu.cpu_offload, cpu.forward_chunk_size, cpu.cfg_mode) == (False, 1, "sequential")
    fast = speed_options(Settings(diffusion_speed="fast"), cuda=False)
    assert describe_speed(fast) == "fused_qkv, channels_last, compile_blocks, batched CFG"


# --- an engine on a tiny pipeline ------------------------------------------------------------------------


def _pipeline(controlnet: bool = False, encoders: bool = False, pose_guider: bool = True):
    from pipelines import AnimationPipeline
    from pipelines.testing import tiny_components

    parts = tiny_components(with_guidance_encoders=encoders, with_motion_controlnet=controlnet)
    if not pose_guider:
        parts["pose_guider"] = None
    pipeline = AnimationPipeline(**parts)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def mimicmotion():
    return _pipeline()


def _bundle(frames: int = 3, size: int = 64):
    from animate.motion.bundle import GuidanceBundle

    rng = np.random.default_rng(0)
    keypoints = np.zeros((frames, 133, 3), np.float32)
    keypoints[:, :17, :2] = rng.uniform(8, size - 8, (frames, 17, 2))
    keypoints[:, :17, 2] = 1.0
    return GuidanceBundle(
        reference=rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
        reference_mask=np.full((size, size), 255, np.uint8),
        reference_keypoints=keypoints[0],
        keypoints=keypoints,
        fps=8.0,
        size=(size, size),
    )


def test_parts_name_what_is_loaded(mimicmotion) -> None:
    parts = DiffusionEngine(mimicmotion).parts
    assert parts == {
        "pose_guider": "on",
        "guidance_encoders": "off",
        "motion_controlnet": "off",
        "point_adapter": "off",
        "identity_adapter": "off",
        "parity": parts["parity"],
        "tiles": "72 / 6",
    }
    dispose = _pipeline(controlnet=True, encoders=True, pose_guider=False)
    mode = dispose.motion_controlnet.config.residual_mode
    parts = DiffusionEngine(dispose, parts={"weights": "here"}).parts
    types = ", ".join(dispose.guidance_encoders.config.guidance_types)
    assert (parts["pose_guider"], parts["guidance_encoders"], parts["weights"]) == ("off", types, "here")
    assert parts["motion_controlnet"] == f"on (residuals {mode})"
    assert parts["point_adapter"] == "off (no Stable Diffusion 1.5)"
    assert parts["tiles"] == "16 / 6"  # DisPose's own tiles
    from pathlib import Path

    assert DiffusionEngine.describe_parts(dispose, Path("sd15"))["point_adapter"] == "on (DIFT)"


def test_tiles_default_to_the_checkpoints_and_options_win(mimicmotion) -> None:
    engine = DiffusionEngine(mimicmotion)
    kwargs, truncate = engine._parity(DiffusionOptions())
    assert (kwargs["tile_size"], kwargs["tile_overlap"], truncate) == (72, 6, True)
    kwargs, _ = engine._parity(DiffusionOptions(tile_size=8, tile_overlap=0))
    assert (kwargs["tile_size"], kwargs["tile_overlap"]) == (8, 0)  # 0 is an overlap, not "the default"
    assert engine.parts["tiles"] == "8 / 0"
    with pytest.raises(AnimateError) as err:
        DiffusionEngine(mimicmotion, DiffusionOptions(preset="dispose"))
    assert err.value.code == "preset_unavailable" and err.value.message.endswith("(see weights/README.md)")


def test_plan_for_a_bundle_on_the_cpu(mimicmotion) -> None:
    from animate.engines.plan import ModelShapes

    engine = DiffusionEngine(mimicmotion, DiffusionOptions(steps=4, tile_size=3, tile_overlap=1))
    plan = engine.plan_for(_bundle(frames=5, size=64))
    assert engine.plan is plan
    assert (plan.width, plan.height, plan.frames, plan.steps, plan.tile_size, plan.tile_overlap) == (
        64, 64, 5, 4, 3, 1
    )  # fmt: skip
    assert plan.tiles == 1 + -(-(6 - 3) // 2)  # 6 rows in tiles of 3 with stride 2: 3 tiles
    assert plan.level == "fast" and plan.device == "cpu" and plan.gpus == 1
    assert plan.workload.shapes == ModelShapes.from_pipeline(mimicmotion)
    lowest = DiffusionEngine(mimicmotion, DiffusionOptions(memory_level="chunked")).plan_for(_bundle())
    assert lowest.level == "chunked"


def test_plan_kwargs_carry_the_plans_memory_settings(mimicmotion) -> None:
    from animate.engines.plan import Hardware, ModelShapes, Workload, estimate

    engine = DiffusionEngine(mimicmotion, DiffusionOptions(decode_chunk_size=3))
    cpu = Hardware(device="cpu", host_available=64 * 1024**3)
    work = Workload(64, 64, 3, 2, 4, 1, ModelShapes.from_pipeline(mimicmotion))
    fast = engine._plan_kwargs(estimate(work, cpu, "fast"))
    # decode: the plan's 8, capped by the option's 3; the features fit the host cache
    assert fast == {"cfg_mode": "batched", "decode_chunk_size": 3, "feature_cache": "host"}
    assert engine.parts["plan"] == "fast (batched CFG, decode 8, no offload)"
    chunked = engine._plan_kwargs(estimate(work, cpu, "chunked"))
    assert chunked["cfg_mode"] == "sequential" and chunked["decode_chunk_size"] == 2
    chunked_blocks = [b for b in mimicmotion.unet.modules() if hasattr(b, "set_chunk_feed_forward")]
    assert chunked_blocks and all(b._chunk_size == 1 for b in chunked_blocks)  # one row at a time
    engine._plan_kwargs(estimate(work, cpu, "fast"))
    assert all(b._chunk_size is None for b in chunked_blocks)  # back off for a plan without chunking
    host = dataclasses.replace(estimate(work, cpu, "fast"), latents_on_host=True)
    assert engine._plan_kwargs(host)["sequence_device"] == "cpu"
    # the speed setting's own arguments win over the plan's
    engine.call_kwargs = {"cfg_mode": "sequential", "decode_chunk_size": 1}
    assert engine._plan_kwargs(estimate(work, cpu, "fast"))["cfg_mode"] == "sequential"
    engine.options = dataclasses.replace(engine.options, tile_group="group")
    assert engine._plan_kwargs(estimate(work, cpu, "fast"))["tile_group"] == "group"


def test_out_of_memory_message_names_the_plans_and_the_remedies(mimicmotion) -> None:
    from animate.engines.plan import GIB, Hardware, ModelShapes, Workload, estimate

    engine = DiffusionEngine(mimicmotion)
    work = Workload(576, 1024, 72, shapes=ModelShapes.published())
    card = Hardware.detect(gpu_memory=24 * GIB)
    first, second = estimate(work, card, "fast"), estimate(work, card, "sequential_cfg")
    error = engine._out_of_memory(second, first)
    assert error.code == "out_of_memory" and error.plan == second.to_dict()
    assert error.message == (
        f"the GPU ran out of memory at memory level {second.describe()}, after {first.describe()} "
        f"(expected peak {second.gpu_peak / GIB:.1f} GiB); set ANIMATE_DIFFUSION_SPEED=low_memory, or lower "
        "--tile-size or --size, or spread the job over more GPUs with --gpus"
    )
    two = dataclasses.replace(first, gpus=2)
    assert engine._out_of_memory(two).message.endswith("or lower --tile-size or --size")
    cpu = estimate(Workload(64, 64, 3), Hardware(device="cpu", host_available=GIB), "fast")
    message = engine._out_of_memory(cpu).message
    assert message.startswith("the machine ran out of memory at memory level fast (batched CFG")
    assert f"(expected peak {cpu.host_memory / GIB:.1f} GiB)" in message


class CallSpy:
    """Records each ``AnimationPipeline.__call__``'s keyword arguments and calls through."""

    def __init__(self, monkeypatch) -> None:
        from pipelines import AnimationPipeline

        self.calls: list[dict] = []
        original = AnimationPipeline.__call__

        def spy(pipe, *args, **kwargs):
            self.calls.append(kwargs)
            return original(pipe, *args, **kwargs)

        monkeypatch.setattr(AnimationPipeline, "__call__", spy)


def test_render_hands_the_options_to_the_pipeline(mimicmotion, monkeypatch) -> None:
    spy = CallSpy(monkeypatch)
    options = DiffusionOptions(steps=2, guidance_scale=3.5, seed=11, fps_id=5, motion_bucket_id=90,
                               noise_aug_strength=0.03, tile_size=3, tile_overlap=1, decode_chunk_size=2)  # fmt: skip
    engine = DiffusionEngine(mimicmotion, options)
    progress: list[tuple[int, int]] = []
    frames = list(engine.render(_bundle(frames=3), progress=lambda *p: progress.append(p)))
    assert len(frames) == 3 and {f.shape for f in frames} == {(64, 64, 3)}
    assert {f.dtype for f in frames} == {np.dtype(np.uint8)}
    (call,) = spy.calls
    assert (call["num_inference_steps"], call["min_guidance_scale"], call["max_guidance_scale"]) == (
        2,
        3.5,
        3.5,
    )
    assert (call["fps"], call["motion_bucket_id"], call["noise_aug_strength"]) == (5, 90, 0.03)
    assert (call["height"], call["width"], call["num_frames"]) == (64, 64, 3)
    assert (call["tile_size"], call["tile_overlap"]) == (3, 1)
    assert call["generator"].initial_seed() == 11
    assert call["output_type"] == "latent" and call["keep_reference"] is True
    # MimicMotion's rules (the pose guider alone): its decode and noise; the CPU plan's batched CFG
    assert call["decode_reference"] is True and call["periodic_noise"] is True
    assert call["cfg_mode"] == "batched" and call["decode_chunk_size"] == 2
    assert call["reference_pose_image"].shape == (1, 64, 64, 3) and call["guidance_maps"] is None
    assert progress == [(1, 2), (2, 2)]
    assert engine.parts["guidance_maps"] == "none"


def test_render_defaults_and_cancel(mimicmotion, monkeypatch) -> None:
    spy = CallSpy(monkeypatch)
    engine = DiffusionEngine(mimicmotion, DiffusionOptions(steps=1))
    assert list(engine.render(_bundle(frames=2), should_cancel=lambda: True)) == []
    assert spy.calls == []  # canceled before the pipeline runs
    frames = list(engine.render(_bundle(frames=2)))
    (call,) = spy.calls
    assert (call["min_guidance_scale"], call["fps"], call["motion_bucket_id"], call["noise_aug_strength"]) == (
        2.0, 7, 127, 0.0
    )  # fmt: skip
    assert (call["tile_size"], call["tile_overlap"]) == (72, 6) and call["generator"].initial_seed() == 0
    assert len(frames) == 2


def test_controlnet_inputs_name_their_sources_and_pass_the_options(mimicmotion, monkeypatch) -> None:
    """With DisPose's ControlNet: the bundle's own flows go through unchanged; missing ones are made from the
    keypoints (the 2D skeleton field, the trajectory rules), and the options' residual mode and CFG rule are
    handed on; the parts say which source each flow came from."""
    spy = CallSpy(monkeypatch)
    pipeline = _pipeline(controlnet=True)
    options = DiffusionOptions(steps=1, residual_mode="dispose", controlnet_cfg="drop")
    engine = DiffusionEngine(pipeline, options)
    bundle = _bundle(frames=2)
    frames = list(engine.render(bundle))
    assert len(frames) == 2
    (call,) = spy.calls
    assert (call["residual_mode"], call["controlnet_cfg"]) == ("dispose", "drop")
    assert (engine.parts["dense_flow"], engine.parts["trajectory_flow"]) == ("2D skeleton field", "keypoints")
    assert engine.parts["guidance_rules"] == engine.guidance_conventions.describe()
    assert len(call["dense_flow"]) == len(call["trajectory_flow"]) == 2  # one flow per frame, read lazily
    assert "point_features" not in call  # no Stable Diffusion 1.5: no point adapter
    # flows the bundle carries are the ones used
    dense = np.zeros((2, 64, 64, 2), np.float32)
    trajectory = np.ones((2, 64, 64, 2), np.float32)
    bundle = dataclasses.replace(_bundle(frames=2), dense_flow=dense, trajectory_flow=trajectory)
    list(DiffusionEngine(pipeline, DiffusionOptions(steps=1)).render(bundle))
    assert spy.calls[1]["dense_flow"] is dense and spy.calls[1]["trajectory_flow"] is trajectory
    assert (spy.calls[1]["residual_mode"], spy.calls[1]["controlnet_cfg"]) == (None, "keep")
    # without a ControlNet no flow is made or passed
    assert DiffusionEngine(mimicmotion)._motion_inputs(_bundle(frames=2), None) == {}


def test_a_folder_that_is_not_a_training_output_is_the_users_error(mimicmotion, tmp_path) -> None:
    from animate.engines.diffusion import load_trained_parts

    with pytest.raises(AnimateError) as err:
        load_trained_parts(mimicmotion, tmp_path, torch.float32)
    assert err.value.code == "adapter_invalid"
