"""pipelines.optimizations on micro models: option checks, what each path does to the modules (counted by
hand from the micro UNet's layout), and the step cache's schedule and exactness on its own features.

The micro UNet (``tests/test_pipeline_animation_fast.micro_components``): 2 down / 2 up spatio-temporal
levels of 1 and 2 res blocks, the mid block's spatial and temporal transformers (4 attention layers: self
and cross in each), no attention elsewhere.
"""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

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


# --- the step cache on a UNet shaped like SVD's outer levels ----------------------------------------------
# The micro UNet above has 2 levels without cross-attention, so a cached step there recomputes one up block
# without upsampler or context. This one has 3 levels, cross-attention in the outer two (as SVD-xt), 64
# channels (see micro_components: the time embedding must survive the GroupNorm), and is run at a latent
# size of 5 x 9 (down: 3 x 5, 2 x 3), where each upsampler must be given its skip's size (twice 3 x 5 is
# not 5 x 9): diffusers forwards it when a side is not a multiple of 4 (its 2 upsamplers).


def _cross_unet(levels: int = 3) -> torch.nn.Module:
    """``levels`` = 4: SVD-xt's layout (3 cross-attention levels over a plain one, 3 upsamplers)."""
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(0)
    return UNetSpatioTemporalConditionModel(
        sample_size=8,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * (levels - 1) + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * (levels - 1),
        block_out_channels=(64,) * levels,
        layers_per_block=1,
        cross_attention_dim=8,
        num_attention_heads=(1,) * levels,
        projection_class_embeddings_input_dim=12,
        addition_time_embed_dim=4,
        num_frames=2,
    ).eval()


@pytest.fixture(scope="module")
def cross_unet():
    return _cross_unet()


def _batch(size=(5, 9), seed=1, dtype=torch.float32):
    """Two videos of 2 frames with their own contexts and time ids (every per-video tensor differs)."""
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 2, 8, *size, generator=generator, dtype=torch.float64).to(dtype)
    context = torch.randn(2, 1, 8, generator=generator, dtype=torch.float64).to(dtype)
    ids = torch.tensor([[6.0, 127.0, 0.02], [11.0, 40.0, 0.3]], dtype=dtype)
    return sample, context, ids


def _deep_input(unet, levels, call):
    """Run ``call`` on the plain UNet, returning its output and the input of the first recomputed up block."""
    seen = {}

    def keep(module, args, kwargs):
        seen["deep"] = kwargs["hidden_states"]

    hook = unet.up_blocks[-levels].register_forward_pre_hook(keep, with_kwargs=True)
    try:
        out = call()
    finally:
        hook.remove()
    return out, seen["deep"]


def _with_deep(unet, levels, deep, call):
    """The reference for a cached step: diffusers' full forward, its deep levels' output replaced by ``deep``."""

    def swap(module, args, kwargs):
        return args, kwargs | {"hidden_states": deep}

    hook = unet.up_blocks[-levels].register_forward_pre_hook(swap, with_kwargs=True)
    try:
        return call()
    finally:
        hook.remove()


def _forward(unet, sample, t, context, ids):
    return type(unet).forward(unet, sample, t, context, ids, return_dict=False)[0]


def _check_cached_step(unet, levels, sample, context, ids, t0, t1, atol=1e-5):
    with torch.no_grad():
        full0, deep0 = _deep_input(unet, levels, lambda: _forward(unet, sample, t0, context, ids))
        expected1 = _with_deep(unet, levels, deep0, lambda: _forward(unet, sample, t1, context, ids))
        plain1 = _forward(unet, sample, t1, context, ids)
    cache = StepCache(unet, interval=2, levels=levels).attach()
    try:
        with torch.no_grad():
            got0 = unet(sample, t0, context, ids, return_dict=False)[0]
            got1 = unet(sample, t1, context, ids).sample
        assert (cache.full_calls, cache.cached_calls) == (1, 1)
        assert set(cache._features) == {0}  # one stored feature per call of a step, none from a cached call
    finally:
        cache.detach()
    torch.testing.assert_close(got0, full0, atol=0, rtol=0)
    assert (expected1 - plain1).abs().max() > 1e-3  # the stored features do act on the cached step
    torch.testing.assert_close(got1, expected1, atol=atol, rtol=0)


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("size", [(5, 9), (8, 8)])
def test_cached_step_is_the_full_forward_with_the_stored_deep_features(cross_unet, levels, size):
    sample, context, ids = _batch(size)
    _check_cached_step(cross_unet, levels, sample, context, ids, torch.tensor(900.0), torch.tensor(400.0))


def test_cached_step_recomputes_three_of_four_levels():
    """SVD-xt's 4 levels, 3 recomputed: each up block takes its own 2 skips (of 6 kept), and at 6 x 12
    (down: 3 x 6, 2 x 3, 1 x 2) the upsamplers need the skips' sizes although 6 divides both sides."""
    unet = _cross_unet(levels=4)
    sample, context, ids = _batch((6, 12))
    _check_cached_step(unet, 3, sample, context, ids, torch.tensor(900.0), torch.tensor(400.0))


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(float, id="float"),
        pytest.param(int, id="int"),
        pytest.param(lambda t: torch.tensor([float(t)]), id="1d"),
        pytest.param(lambda t: torch.tensor([float(t)] * 2), id="per-video"),
    ],
)
def test_cached_step_takes_every_timestep_form_diffusers_takes(cross_unet, form):
    sample, context, ids = _batch()
    _check_cached_step(cross_unet, 2, sample, context, ids, form(900), form(400))


def test_cached_step_in_float64(cross_unet):
    unet = _cross_unet().double()
    sample, context, ids = _batch(dtype=torch.float64)
    _check_cached_step(unet, 1, sample, context, ids, torch.tensor(900.0), torch.tensor(400.0), atol=1e-10)


def test_full_calls_return_what_return_dict_asks(cross_unet):
    from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionOutput

    sample, context, ids = _batch()
    cache = StepCache(cross_unet, interval=3).attach()
    try:
        with torch.no_grad():
            full_tuple = cross_unet(sample, 900.0, context, ids, return_dict=False)
            cached_tuple = cross_unet(sample, 800.0, context, ids, return_dict=False)
            cached_output = cross_unet(sample, 700.0, context, ids)
            full_output = cross_unet(sample, 600.0, context, ids)  # step 3 of interval 3: full
        assert (cache.full_calls, cache.cached_calls) == (2, 2)
    finally:
        cache.detach()
    assert type(full_tuple) is tuple and type(cached_tuple) is tuple
    assert type(full_output) is UNetSpatioTemporalConditionOutput
    assert type(cached_output) is UNetSpatioTemporalConditionOutput


def test_capture_reads_the_up_blocks_input_by_keyword_or_position(unet):
    cache = StepCache(unet)
    block = unet.up_blocks[-1]
    first, second, third = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    cache._capture(block, (first,), {})  # no capture key: outside a full call, nothing is kept
    assert cache._features == {}
    cache._capture_key = 3
    cache._capture(block, (first, third), {})
    assert cache._features[3] is first
    cache._capture(block, (), {"hidden_states": second, "temb": third})
    assert cache._features == {3: second}


def test_optimize_reaches_a_third_level_and_pipelines_without_a_controlnet(cross_unet):
    """diffusers' own SVD pipeline has no ``motion_controlnet``: the paths act on what is there."""
    unet = _cross_unet()
    svd_like = SimpleNamespace(unet=unet, image_encoder=object())
    options = OptimizationOptions(channels_last=True, step_cache_interval=3, step_cache_levels=2)
    assert opt.optimize(svd_like, options) is svd_like
    cache = unet._step_cache
    try:
        assert (cache.interval, cache.levels) == (3, 2)
        assert unet.up_blocks[-2]._forward_pre_hooks and not unet.up_blocks[-1]._forward_pre_hooks
        sample, context, ids = _batch()
        with torch.no_grad():
            for t in (900.0, 800.0, 700.0, 600.0):
                unet(sample, t, context, ids)
        assert (cache.full_calls, cache.cached_calls) == (2, 2)  # steps 0 and 3 full
    finally:
        cache.detach()


def _record_compile(monkeypatch) -> list:
    """``nn.Module.compile`` calls ``torch.compile(self._call_impl, ...)``: record the block and the arguments
    and leave the block eager (inductor needs minutes on this CPU)."""
    calls = []

    def record(fn, **kwargs):
        calls.append((fn.__self__, kwargs))
        return fn

    monkeypatch.setattr(torch, "compile", record)
    return calls


def _compilable(module) -> list:
    from diffusers.models.resnet import SpatioTemporalResBlock
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    return [
        m for m in module.modules() if isinstance(m, SpatioTemporalResBlock | TransformerSpatioTemporalModel)
    ]


def test_compile_blocks_asks_for_static_shapes_in_the_given_mode_and_raises_the_limits(unet, monkeypatch):
    calls = _record_compile(monkeypatch)
    config = torch._dynamo.config
    with config.patch(recompile_limit=8, accumulated_recompile_limit=8):  # dynamo's defaults before ours
        assert opt.compile_blocks(unet, mode="max-autotune-no-cudagraphs") == 9
        assert (config.recompile_limit, config.accumulated_recompile_limit) == (64, 256)
    assert [block for block, _ in calls] == _compilable(unet)
    assert all(kwargs == {"mode": "max-autotune-no-cudagraphs", "dynamic": False} for _, kwargs in calls)
    calls.clear()
    with config.patch(recompile_limit=100, accumulated_recompile_limit=1000):  # a higher setting is kept
        assert opt.compile_blocks(unet) == 9
        assert (config.recompile_limit, config.accumulated_recompile_limit) == (100, 1000)
    assert all(kwargs == {"mode": None, "dynamic": False} for _, kwargs in calls)


def test_optimize_compiles_the_unet_and_the_controlnet_in_the_options_mode(monkeypatch):
    calls = _record_compile(monkeypatch)
    components = micro_components()
    pipe = make_pipe(unet=components["unet"], motion_controlnet=components["motion_controlnet"])
    opt.optimize(pipe, OptimizationOptions(compile_blocks=True, compile_mode="reduce-overhead"))
    expected = _compilable(pipe.unet) + _compilable(pipe.motion_controlnet)
    assert [block for block, _ in calls] == expected and len(expected) > 9
    assert all(kwargs == {"mode": "reduce-overhead", "dynamic": False} for _, kwargs in calls)


def test_forward_chunks_are_frames_not_tokens(unet):
    """Chunk size 1 runs a spatial feed-forward once per frame of the batch (rows of dim 0), not once per
    token: the micro UNet's mid block sees 2 frames of 4 x 4 tokens."""
    from diffusers.models.attention import BasicTransformerBlock

    spatial = [m for m in unet.modules() if type(m) is BasicTransformerBlock]
    assert len(spatial) == 1
    calls = []
    spatial[0].ff.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    opt.enable_forward_chunking(unet, 1)
    sample, context, ids = _inputs(frames=2)
    with torch.no_grad():
        unet(sample, 1.0, context, ids)
    assert calls == [torch.Size([1, (LATENT // 2) ** 2, 64])] * 2


def test_fusing_twice_keeps_the_fused_projections(unet):
    opt.fuse_qkv(unet)
    fused = [(a.to_qkv if hasattr(a, "to_qkv") else a.to_kv) for a in opt._attention_layers(unet)]
    opt.fuse_qkv(unet)  # idempotent: no second copy of the weights is built
    again = [(a.to_qkv if hasattr(a, "to_qkv") else a.to_kv) for a in opt._attention_layers(unet)]
    assert all(a is b for a, b in zip(fused, again, strict=True))


def test_xformers_backend_sets_xformers_processors(unet, monkeypatch):
    from diffusers.models.attention_processor import XFormersAttnProcessor

    package, ops = ModuleType("xformers"), ModuleType("xformers.ops")
    package.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", package)  # the import check only: nothing runs here
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    assert opt.set_attention(unet, "xformers") == 4
    assert all(type(a.processor) is XFormersAttnProcessor for a in opt._attention_layers(unet))


def test_step_cache_defaults_interval_one_and_detaching_when_not_attached(unet):
    assert (StepCache(unet).interval, StepCache(unet).levels) == (2, 1)
    every = StepCache(unet, interval=1).attach()  # 1: a full pass every step (the cache is off)
    sample, context, ids = _inputs()
    try:
        with torch.no_grad():
            for t in (3.0, 2.0, 1.0):
                unet(sample, t, context, ids)
        assert (every.full_calls, every.cached_calls) == (3, 0)
    finally:
        every.detach()
    every.detach()  # twice, and a cache never attached: nothing to undo
    StepCache(unet).detach()
    assert "forward" not in unet.__dict__ and not unet.up_blocks[-1]._forward_pre_hooks
