"""pipelines.optimizations on micro models: option checks, what each path does to the modules (counted by
hand from the micro UNet's layout), and the step cache's schedule and exactness on its own features.

The micro UNet (``tests/test_pipeline_animation_fast.micro_components``): 2 down / 2 up spatio-temporal
levels of 1 and 2 res blocks, the mid block's spatial and temporal transformers (4 attention layers: self
and cross in each), no attention elsewhere.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0

from pipelines import optimizations as opt
from pipelines.optimizations import OptimizationOptions, StepCache
from tests.test_pipeline_animation_fast import LATENT, make_pipe, micro_components

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def unet():
    return micro_components()["unet"]


def _inputs(batch: int = 1, frames: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, frames, 8, LATENT, LATENT, generator=generator)
    context = torch.randn(batch, 1, 8, generator=generator)
    return sample, context, torch.tensor([[6.0, 127.0, 0.02]] * batch)


def test_options_are_checked():
    for kwargs, message in [
        ({"attention": "flash"}, r"^attention must be one of \('sdpa', 'eager', 'xformers'\), got 'flash'$"),
        (
            {"attention": "eager", "fused_qkv": True},
            r"^fused_qkv needs attention='sdpa' \(FusedAttnProcessor2_0\)$",
        ),
        ({"forward_chunk_size": 0}, r"^forward_chunk_size must be >= 1, got 0$"),
        ({"step_cache_interval": 0}, r"^step_cache_interval and step_cache_levels must be >= 1$"),
        ({"step_cache_levels": 0}, r"^step_cache_interval and step_cache_levels must be >= 1$"),
        ({"cfg_mode": "parallel"}, r"^cfg_mode must be None, 'batched' or 'sequential', got 'parallel'$"),
        ({"decode_chunk_size": 0}, r"^decode_chunk_size must be >= 1, got 0$"),
    ]:
        with pytest.raises(ValueError, match=message):
            OptimizationOptions(**kwargs)
    for fine in [
        {"forward_chunk_size": 1},
        {"decode_chunk_size": 1},
        {"cfg_mode": "sequential"},
        {"fused_qkv": True},
    ]:
        OptimizationOptions(**fine)


def test_defaults_presets_and_call_kwargs():
    plain = OptimizationOptions()
    assert (plain.attention, plain.fused_qkv, plain.channels_last, plain.compile_blocks) == (
        "sdpa",
        False,
        False,
        False,
    )
    assert (
        plain.forward_chunk_size,
        plain.cpu_offload,
        plain.step_cache_interval,
        plain.step_cache_levels,
    ) == (None, False, 1, 1)
    assert plain.call_kwargs() == {}
    fast = OptimizationOptions.fast()
    assert (fast.fused_qkv, fast.channels_last, fast.compile_blocks, fast.cfg_mode) == (
        True,
        True,
        True,
        "batched",
    )
    assert fast.call_kwargs() == {"cfg_mode": "batched"} and not fast.cpu_offload
    assert OptimizationOptions.fast(compile_blocks=False).compile_blocks is False
    low = OptimizationOptions.low_memory()
    assert (low.cpu_offload, low.forward_chunk_size, low.cfg_mode, low.decode_chunk_size) == (
        True,
        1,
        "sequential",
        2,
    )
    assert low.call_kwargs() == {"cfg_mode": "sequential", "decode_chunk_size": 2}
    assert OptimizationOptions.low_memory(decode_chunk_size=4).call_kwargs()["decode_chunk_size"] == 4
    with pytest.raises(ValueError, match="fused_qkv"):
        OptimizationOptions.fast(attention="eager")


def test_attention_backends_set_every_layer(unet):
    assert opt.set_attention(unet, "eager") == 4
    assert all(type(a.processor) is AttnProcessor for a in opt._attention_layers(unet))
    assert opt.set_attention(unet, "sdpa") == 4
    assert all(type(a.processor) is AttnProcessor2_0 for a in opt._attention_layers(unet))
    with pytest.raises(
        ValueError, match=r"^attention must be one of \('sdpa', 'eager', 'xformers'\), got 'math'$"
    ):
        opt.set_attention(unet, "math")
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        with pytest.raises(
            ValueError, match=r"^attention='xformers' needs the xformers package \(the `gpu` extra\)$"
        ):
            opt.set_attention(unet, "xformers")


def test_sdpa_eager_and_fused_give_the_same_prediction(unet):
    sample, context, ids = _inputs()
    with torch.no_grad():
        opt.set_attention(unet, "eager")
        eager = unet(sample, 1.0, context, ids, return_dict=False)[0]
        opt.set_attention(unet, "sdpa")
        sdpa = unet(sample, 1.0, context, ids, return_dict=False)[0]
        assert opt.fuse_qkv(unet) == 4 and opt.fuse_qkv(unet) == 4  # idempotent
        fused = unet(sample, 1.0, context, ids, return_dict=False)[0]
    layers = opt._attention_layers(unet)
    assert all(type(a.processor) is FusedAttnProcessor2_0 and a.fused_projections for a in layers)
    assert sum(hasattr(a, "to_qkv") for a in layers) == 2 and sum(hasattr(a, "to_kv") for a in layers) == 2
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=0)


def test_channels_last_and_forward_chunking(unet):
    sample, context, ids = _inputs()
    with torch.no_grad():
        plain = unet(sample, 1.0, context, ids, return_dict=False)[0]
    convs = [m for m in unet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert opt.to_channels_last(unet) == len(convs) > 0
    assert all(
        c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs if c.kernel_size != (1, 1)
    )
    blocks = [m for m in unet.modules() if hasattr(m, "set_chunk_feed_forward")]
    assert (
        opt.enable_forward_chunking(unet, 1) == len(blocks) == 2
    )  # the mid block's spatial and temporal block
    assert all(b._chunk_size == 1 for b in blocks)
    with torch.no_grad():
        changed = unet(sample, 1.0, context, ids, return_dict=False)[0]
    torch.testing.assert_close(changed, plain, atol=1e-5, rtol=0)


def test_compile_blocks_wraps_every_res_and_transformer_block(unet):
    from diffusers.models.resnet import SpatioTemporalResBlock
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    blocks = [
        m for m in unet.modules() if isinstance(m, SpatioTemporalResBlock | TransformerSpatioTemporalModel)
    ]
    assert (
        opt.compile_blocks(unet, mode="reduce-overhead") == len(blocks) == 9
    )  # 1 + 1 + 2 mid + 1 + 1 + 2 + 2 - 1
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert torch._dynamo.config.recompile_limit >= opt.RECOMPILE_LIMIT
    assert torch._dynamo.config.accumulated_recompile_limit >= 4 * opt.RECOMPILE_LIMIT
    assert set(unet.state_dict()) == set(micro_components()["unet"].state_dict())  # keys stay


def test_step_cache_checks_its_settings_and_attaches_once(unet):
    with pytest.raises(ValueError, match=r"^interval must be >= 1, got 0$"):
        StepCache(unet, 0)
    with pytest.raises(ValueError, match=r"^levels must be in \[1, 1\], got 2$"):
        StepCache(unet, 2, 2)
    with pytest.raises(ValueError, match=r"^levels must be in \[1, 1\], got 0$"):
        StepCache(unet, 2, 0)
    cache = StepCache(unet, 3).attach()
    assert unet._step_cache is cache and unet.forward == cache.forward
    with pytest.raises(ValueError, match=r"^this UNet already has a step cache$"):
        StepCache(unet).attach()
    cache.detach()
    assert (
        unet._step_cache is None
        and "forward" not in unet.__dict__
        and not unet.up_blocks[-1]._forward_pre_hooks
    )
    StepCache(unet).attach().detach()  # attachable again


def test_step_cache_schedule_and_exactness_on_its_own_features(unet):
    sample, context, ids = _inputs()
    with torch.no_grad():
        full = {t: unet(sample, t, context, ids, return_dict=False)[0] for t in (3.0, 2.0, 1.0)}
    cache = StepCache(unet, interval=2).attach()
    try:
        with torch.no_grad():
            first = unet(sample, 3.0, context, ids, return_dict=False)[0]  # step 0: full, stores features
            second = unet(sample, 2.0, context, ids)  # step 1: shallow on step 0's deep features
            third = unet(sample, 1.0, context, ids, return_dict=False)[0]  # step 2: full again
        assert (cache.full_calls, cache.cached_calls) == (2, 1)
        torch.testing.assert_close(first, full[3.0], atol=0, rtol=0)
        torch.testing.assert_close(third, full[1.0], atol=0, rtol=0)
        assert second.sample.shape == first.shape
        assert (second.sample - full[2.0]).abs().max() > 0  # approximate: the deep levels are step 0's
        # the shallow path on the deep features of the same input and timestep is the full forward
        cache.reset()
        with torch.no_grad():
            unet(sample, torch.tensor(5.0), context, ids)
            cache._step = 1  # as if the next call were a cached step with the same timestep
            stored = cache._features[0]
            shallow = cache._shallow(sample, torch.tensor(5.0), context, ids, stored)
            reference = type(unet).forward(unet, sample, 5.0, context, ids, return_dict=False)[0]
        torch.testing.assert_close(shallow, reference, atol=1e-5, rtol=0)
    finally:
        cache.detach()


def test_step_cache_new_run_other_shapes_and_calls_within_a_step(unet):
    sample, context, ids = _inputs()
    two, context2, ids2 = _inputs(batch=2)
    cache = StepCache(unet, interval=2).attach()
    try:
        with torch.no_grad():
            unet(sample, 3.0, context, ids)  # step 0, call 0
            unet(two, 3.0, context2, ids2)  # step 0, call 1 (another tile / CFG half)
            unet(sample, 2.0, context, ids)  # step 1, call 0: cached
            unet(sample, 2.0, context, ids)  # step 1, call 1: stored for a batch of 2: full
            assert (cache.full_calls, cache.cached_calls) == (3, 1)
            unet(sample, 9.0, context, ids)  # a larger timestep: a new run, full
            assert (cache.full_calls, cache.cached_calls, cache._step) == (4, 1, 0)
            unet(sample, 8.0, context, ids)
            assert cache.cached_calls == 2
    finally:
        cache.detach()
    assert cache._features == {} and cache._last_timestep is None


def test_optimize_applies_the_options_to_unet_and_controlnet():
    pipe = make_pipe()
    components = micro_components()
    pipe = make_pipe(
        unet=components["unet"], motion_controlnet=components["motion_controlnet"], vae=components["vae"]
    )
    options = OptimizationOptions(
        attention="sdpa", fused_qkv=True, channels_last=True, forward_chunk_size=2, step_cache_interval=2
    )
    assert opt.optimize(pipe, options) is pipe
    for module in (pipe.unet, pipe.motion_controlnet):
        assert all(type(a.processor) is FusedAttnProcessor2_0 for a in opt._attention_layers(module))
        assert all(b._chunk_size == 2 for b in module.modules() if hasattr(b, "set_chunk_feed_forward"))
    for module in (pipe.unet, pipe.motion_controlnet, pipe.vae):
        convs = [c for c in module.modules() if isinstance(c, torch.nn.Conv2d) and c.kernel_size != (1, 1)]
        assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert isinstance(pipe.unet._step_cache, StepCache) and pipe.unet._step_cache.interval == 2
    pipe.unet._step_cache.detach()
    eager = make_pipe(unet=micro_components()["unet"], motion_controlnet=None)
    opt.optimize(eager, OptimizationOptions(attention="eager"))
    assert all(type(a.processor) is AttnProcessor for a in opt._attention_layers(eager.unet))
    assert getattr(eager.unet, "_step_cache", None) is None
    if not torch.cuda.is_available():
        with pytest.raises(
            ValueError, match=r"^cpu_offload needs a CUDA device \(or an explicit offload_device\)$"
        ):
            opt.optimize(make_pipe(), OptimizationOptions(cpu_offload=True))
    offloaded = opt.optimize(make_pipe(), OptimizationOptions(cpu_offload=True, offload_device="cpu"))
    assert offloaded._offload_device.type == "cpu"
