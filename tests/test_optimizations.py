"""Opt-in speed / memory paths (``pipelines.optimizations``) against the plain path, tiny configs on CPU.

Tolerances (float32): exact rewrites of the same products (fused QKV, feed-forward chunking, CPU offload,
the step cache's shallow path on the inputs it cached) within 1e-5 of the UNet output's scale; a different
kernel or memory layout (eager vs SDPA attention, channels_last) within 1e-4; whole pipelines (Euler steps
from sigma 700 amplify rounding) within 1e-4 relative L2 of the final latents. Measured here: eager 9e-7,
channels_last 2e-6, fused QKV 0, low-memory preset 4e-6, fast preset 8e-6. The step cache is an
approximation: its difference must be non-zero and below 5% relative L2 on 4 steps (measured: 0.24% with
interval 2; 9.9% with interval 3).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from pipelines import AnimationPipeline
from pipelines.optimizations import (
    OptimizationOptions,
    StepCache,
    compile_blocks,
    enable_forward_chunking,
    fuse_qkv,
    optimize,
    set_attention,
    to_channels_last,
)
from pipelines.testing import (
    TINY_POINT_CHANNELS,
    reinit_zero_layers,
    tiny_components,
    tiny_motion_controlnet,
    tiny_unet,
)

SIZE = 16  # pixels; latents 8x8 with the tiny VAE (downsampling 2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared two-core machine a second OpenMP thread waits far more than it helps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def components():
    parts = tiny_components()
    reinit_zero_layers(parts["pose_guider"])
    reinit_zero_layers(parts["guidance_encoders"])
    return parts


@pytest.fixture(scope="module")
def unet_inputs():
    gen = torch.Generator().manual_seed(0)
    return {
        "sample": torch.randn(2, 3, 8, 8, 8, generator=gen),
        "timestep": torch.tensor(1.5),
        "encoder_hidden_states": torch.randn(2, 1, 32, generator=gen),
        "added_time_ids": torch.tensor([[6.0, 127.0, 0.0]] * 2),
    }


def _unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_unet().eval()


@torch.no_grad()
def _forward(unet: torch.nn.Module, inputs: dict) -> torch.Tensor:
    return unet(**inputs, return_dict=False)[0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _run(
    components: dict,
    options: OptimizationOptions | None = None,
    steps: int = 2,
    prepare: Callable[[AnimationPipeline], object] | None = None,
    **call,
) -> tuple:
    """Final latents of a pipeline built from copies of ``components``, and the pipeline."""
    parts = {k: copy.deepcopy(v) for k, v in components.items()}
    pipe = AnimationPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    if prepare is not None:
        prepare(pipe)
    kwargs = {}
    if options is not None:
        optimize(pipe, options)
        kwargs = options.call_kwargs()
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 32, 32, generator=gen)  # CLIP's size; the VAE path resizes to SIZE
    poses = torch.rand(5, 3, SIZE, SIZE, generator=gen)
    latents = pipe(
        image,
        pose_images=poses,
        guidance_maps={"depth": poses.flip(0)},
        height=SIZE,
        width=SIZE,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        **(call | kwargs),
    ).frames
    return latents, pipe


def test_options_are_checked():
    with pytest.raises(ValueError, match="attention"):
        OptimizationOptions(attention="flash")
    with pytest.raises(ValueError, match="fused_qkv"):
        OptimizationOptions(attention="eager", fused_qkv=True)
    with pytest.raises(ValueError, match="step_cache"):
        OptimizationOptions(step_cache_interval=0)
    with pytest.raises(ValueError, match="cfg_mode"):
        OptimizationOptions(cfg_mode="parallel")
    low = OptimizationOptions.low_memory()
    assert low.cpu_offload and low.forward_chunk_size == 1
    assert low.call_kwargs() == {"cfg_mode": "sequential", "decode_chunk_size": 2}
    assert OptimizationOptions().call_kwargs() == {}
    assert OptimizationOptions.fast(compile_blocks=False).compile_blocks is False


def test_cpu_offload_needs_a_device_on_cpu(components):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    pipe = AnimationPipeline(**components)
    with pytest.raises(ValueError, match="CUDA"):
        optimize(pipe, OptimizationOptions(cpu_offload=True))


def test_sdpa_matches_eager_attention(unet_inputs):
    unet = _unet()
    assert set_attention(unet, "eager") == 24
    eager = _forward(unet, unet_inputs)
    set_attention(unet, "sdpa")
    sdpa = _forward(unet, unet_inputs)
    assert (sdpa - eager).abs().max() <= 1e-4 * eager.abs().max()


def test_fused_qkv_runs_fused_projections_and_matches(unet_inputs):
    unet = _unet()
    plain = _forward(unet, unet_inputs)
    assert fuse_qkv(unet) == 24
    calls = []
    for module in unet.modules():
        for name in ("to_qkv", "to_kv"):
            if hasattr(module, name):
                getattr(module, name).register_forward_hook(lambda *_: calls.append(1))
    fused = _forward(unet, unet_inputs)
    assert len(calls) == 24  # 12 self-attention to_qkv + 12 cross-attention to_kv
    assert (fused - plain).abs().max() <= 1e-5 * plain.abs().max()
    assert fuse_qkv(unet) == 24  # idempotent
    assert any(k.endswith("attn1.to_q.weight") for k in unet.state_dict())  # separate projections stay


def test_channels_last_and_forward_chunking_match(unet_inputs):
    unet = _unet()
    plain = _forward(unet, unet_inputs)
    assert to_channels_last(unet) > 0
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    nhwc = _forward(unet, unet_inputs)
    assert (nhwc - plain).abs().max() <= 1e-4 * plain.abs().max()
    unet = _unet()
    assert enable_forward_chunking(unet, 1) == 12  # 6 spatial + 6 temporal transformer blocks
    chunked = _forward(unet, unet_inputs)
    assert (chunked - plain).abs().max() <= 1e-5 * plain.abs().max()


def test_step_cache_shallow_path_is_exact_on_its_own_features(unet_inputs):
    """Deep features cached from the same inputs: the shallow path must give the full output."""
    unet = _unet()
    plain = _forward(unet, unet_inputs)
    cache = StepCache(unet, interval=2).attach()
    inputs = [unet_inputs[k] for k in ("sample", "timestep", "encoder_hidden_states", "added_time_ids")]
    with torch.no_grad():
        full = cache.run(*inputs, False, key=0, reuse=False)[0]
        shallow = cache.run(*inputs, False, key=0, reuse=True)[0]
    assert (full == plain).all()
    assert (shallow - plain).abs().max() <= 1e-5 * plain.abs().max()
    assert (cache.full_calls, cache.cached_calls) == (1, 1)
    cache.detach()
    assert "forward" not in unet.__dict__ and unet._step_cache is None
    with pytest.raises(ValueError, match="levels"):
        StepCache(unet, levels=2)


def test_step_cache_in_the_pipeline(components):
    """Tiles + sequential CFG (4 UNet calls per step): interval 1 is the plain path; interval 2 reuses
    deep features on every other step and stays close."""
    call = {
        "tile_size": 4,
        "tile_overlap": 2,
        "cfg_mode": "sequential",
    }  # 6 frames incl. the reference: 2 tiles
    plain, _ = _run(components, steps=4, **call)

    same, pipe = _run(components, steps=4, prepare=lambda p: StepCache(p.unet, interval=1).attach(), **call)
    assert pipe.unet._step_cache.cached_calls == 0
    assert (same - plain).abs().max() <= 1e-6 * plain.abs().max()

    cached, pipe = _run(components, OptimizationOptions(step_cache_interval=2), steps=4, **call)
    cache = pipe.unet._step_cache
    assert (cache.full_calls, cache.cached_calls) == (8, 8)  # steps 0 and 2 full, 1 and 3 cached
    assert 0 < _rel(cached, plain) < 0.05


def test_low_memory_and_offload_match_the_plain_pipeline(components):
    """Model CPU offload (accelerate hooks, here onto the CPU itself), FF chunking, sequential CFG, small
    decode chunks: same latents; the step cache still works under the offload hooks."""
    call = {"tile_size": 4, "tile_overlap": 2}
    plain, _ = _run(components, **call)
    low, pipe = _run(components, OptimizationOptions.low_memory(offload_device="cpu"), **call)
    assert pipe._all_hooks  # offload hooks in place
    assert _rel(low, plain) <= 1e-4
    options = OptimizationOptions.low_memory(offload_device="cpu", step_cache_interval=2)
    _, pipe = _run(components, options, steps=3, **call)
    assert pipe.unet._step_cache.cached_calls > 0


def test_with_the_motion_controlnet(components):
    """ControlNet residuals go in through up-block hooks, which fire on the step cache's shallow path too:
    interval 1 is the plain path; fused QKV / channels_last / FF chunking also apply to the ControlNet."""
    parts = dict(components)
    torch.manual_seed(0)
    parts["motion_controlnet"] = tiny_motion_controlnet(components["unet"]).eval()
    reinit_zero_layers(parts["motion_controlnet"])
    gen = torch.Generator().manual_seed(3)
    keypoints = torch.rand(5, 6, 3, generator=gen) * torch.tensor([SIZE, SIZE, 1.0])
    motion = {
        "dense_flow": torch.randn(5, 2, SIZE, SIZE, generator=gen) * 2,
        "trajectory_flow": torch.randn(5, 2, SIZE, SIZE, generator=gen) * 2,
        "point_features": torch.randn(1, TINY_POINT_CHANNELS, 1, 1, generator=gen),
        "keypoints": keypoints,
        "reference_keypoints": keypoints[0],
        "tile_size": 4,
        "tile_overlap": 2,
    }
    plain, _ = _run(parts, steps=3, **motion)
    without, _ = _run(parts, steps=3, **{k: v for k, v in motion.items() if k.startswith("tile")})
    assert _rel(plain, without) > 1e-3  # the ControlNet does change the result

    same, pipe = _run(parts, steps=3, prepare=lambda p: StepCache(p.unet, interval=1).attach(), **motion)
    assert (same - plain).abs().max() <= 1e-6 * plain.abs().max()
    cached, pipe = _run(parts, OptimizationOptions(step_cache_interval=2), steps=3, **motion)
    assert pipe.unet._step_cache.cached_calls == 2  # step 1 of 3, both tiles
    assert 0 < _rel(cached, plain) < 0.05

    options = OptimizationOptions(fused_qkv=True, channels_last=True, forward_chunk_size=1)
    fast, pipe = _run(parts, options, steps=3, **motion)
    assert any(hasattr(m, "to_qkv") for m in pipe.motion_controlnet.modules())
    assert _rel(fast, plain) <= 1e-4


def test_fast_preset_without_compile_matches(components):
    plain, _ = _run(components, tile_size=6, tile_overlap=0)
    fast, pipe = _run(components, OptimizationOptions.fast(compile_blocks=False), tile_size=6, tile_overlap=0)
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert _rel(fast, plain) <= 1e-4


@pytest.mark.slow
def test_compiled_blocks_match(unet_inputs):
    """Regional torch.compile (inductor; minutes on two CPU cores)."""
    unet = _unet()
    plain = _forward(unet, unet_inputs)
    assert compile_blocks(unet) > 0
    compiled = _forward(unet, unet_inputs)
    assert (compiled - plain).abs().max() <= 1e-4 * plain.abs().max()
    assert set(dict(unet.state_dict())) == set(dict(_unet().state_dict()))


@pytest.mark.gpu
def test_fast_options_match_on_cuda(components):
    """bf16 on CUDA: SDPA + fused QKV + channels_last + compile vs the plain bf16 path."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    parts = {
        k: (v.to("cuda", torch.bfloat16) if isinstance(v, torch.nn.Module) else v)
        for k, v in components.items()
    }
    plain, _ = _run(parts, tile_size=6, tile_overlap=0)
    fast, _ = _run(parts, OptimizationOptions.fast(), tile_size=6, tile_overlap=0)
    assert _rel(fast.float(), plain.float()) <= 2e-2
