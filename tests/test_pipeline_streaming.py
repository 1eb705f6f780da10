"""Per-frame inputs read one tile window at a time (lazy sources), features per tile, decode per chunk.

Tiny components on the CPU with every conditioning path on (pose guider, three guidance encoders, the motion
ControlNet's flows and points; zero-init layers re-initialised) and several tiles.
"""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch

from animate.motion.frames import FrameSource
from pipelines import AnimationPipeline, tile_indices
from pipelines.testing import TINY_POINT_CHANNELS, reinit_zero_layers, tiny_components

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32
FRAMES, TILE, OVERLAP = 9, 4, 1  # with the reference frame: 10 frames, tiles at 1, 4, 7
KEYPOINTS = 6


@pytest.fixture(scope="module")
def pipe() -> AnimationPipeline:
    components = tiny_components(with_guidance_encoders=True, with_motion_controlnet=True)
    for name in ("pose_guider", "guidance_encoders", "motion_controlnet"):
        reinit_zero_layers(components[name])
    pipe = AnimationPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _inputs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    keypoints = rng.random((FRAMES, KEYPOINTS, 3), dtype=np.float32)
    keypoints[..., :2] *= SIZE
    keypoints[..., 2] = np.where(keypoints[..., 2] > 0.2, 1.0, 0.0)  # a few unseen points
    reference_keypoints = rng.random((KEYPOINTS, 3), dtype=np.float32) * [SIZE, SIZE, 1]
    reference_keypoints[:, 2] = 1.0
    return {
        "image": PIL.Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)),
        "pose_images": rng.integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8),
        "guidance_maps": {
            name: rng.integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
            for name in ("depth", "normal", "semantic")
        },
        "reference_pose_image": rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8),
        "dense_flow": (rng.standard_normal((FRAMES, SIZE, SIZE, 2)) * 3).astype(np.float32),
        "trajectory_flow": (rng.standard_normal((FRAMES, SIZE, SIZE, 2)) * 3).astype(np.float32),
        "point_features": torch.from_numpy(
            rng.standard_normal((1, TINY_POINT_CHANNELS, SIZE // 16, SIZE // 16)).astype(np.float32)
        ),
        "keypoints": keypoints,
        "reference_keypoints": reference_keypoints,
    }


class Recorder:
    """Lazy sources over arrays that record every window read and refuse to be materialised whole."""

    def __init__(self) -> None:
        self.windows: dict[str, list[tuple[int, int]]] = {}

    def source(self, name: str, frames: np.ndarray) -> FrameSource:
        self.windows[name] = []

        def read(start: int, stop: int) -> np.ndarray:
            self.windows[name].append((start, stop))
            return frames[start:stop].copy()

        source = FrameSource(len(frames), read, frames.shape[1:], frames.dtype)
        source.__class__ = _Unmaterialisable
        return source

    def wrap(self, inputs: dict) -> dict:
        out = dict(inputs)
        for name in ("pose_images", "dense_flow", "trajectory_flow", "keypoints"):
            out[name] = self.source(name, inputs[name])
        out["guidance_maps"] = {k: self.source(k, v) for k, v in inputs["guidance_maps"].items()}
        return out


class _Unmaterialisable(FrameSource):
    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the pipeline asked for every frame at once")

    def __iter__(self):
        raise AssertionError("the pipeline iterated over every frame")


def _call(pipe: AnimationPipeline, inputs: dict, **kwargs) -> torch.Tensor:
    return pipe(
        **inputs,
        height=SIZE,
        width=SIZE,
        tile_size=TILE,
        tile_overlap=OVERLAP,
        generator=torch.Generator().manual_seed(0),
        **{"num_inference_steps": 2, "output_type": "latent", **kwargs},
    ).frames


@pytest.mark.parametrize("guidance_cfg", ["cond", "both"])
def test_streamed_sources_give_the_latents_of_arrays_in_memory(pipe, guidance_cfg):
    inputs = _inputs()
    expected = _call(pipe, inputs, guidance_cfg=guidance_cfg, feature_cache="host")
    recorder = Recorder()
    streamed = _call(pipe, recorder.wrap(inputs), guidance_cfg=guidance_cfg, feature_cache="none")
    assert streamed.shape == (1, FRAMES, 4, SIZE // 2, SIZE // 2)
    assert (streamed - expected).abs().max() <= 1e-5
    # every path steers: in one step, changing one input in the last tile's frames only moves that tile
    one_step = _call(pipe, inputs, guidance_cfg=guidance_cfg, num_inference_steps=1)
    for name in ("pose_images", "depth", "dense_flow", "trajectory_flow", "keypoints"):
        changed = {**inputs, "guidance_maps": dict(inputs["guidance_maps"])}
        holder = changed["guidance_maps"] if name == "depth" else changed
        holder[name] = holder[name].copy()
        holder[name][-2:] = holder[name][-2:][..., ::-1, :] if name != "keypoints" else holder[name][:2]
        moved = _call(pipe, changed, guidance_cfg=guidance_cfg, num_inference_steps=1)
        diff = (moved - one_step).abs().amax(dim=(0, 2, 3, 4))
        # tiles hold frames (1-3), (4-6), (7-9) of 1..9: frames 1-6 never see frames 8-9's inputs
        assert diff[:6].max() == 0, name
        assert diff[-2:].max() > 1e-3, name


@pytest.mark.parametrize("feature_cache", ["none", "host"])
def test_no_input_is_read_beyond_one_tile_window(pipe, feature_cache):
    """Memory flat in length, independent of timing: the pipeline never holds more than one tile's frames of
    any per-frame input ("none": each tile's window every step; "host": each frame once)."""
    recorder = Recorder()
    steps = 3
    pipe(
        **recorder.wrap(_inputs()),
        height=SIZE,
        width=SIZE,
        tile_size=TILE,
        tile_overlap=OVERLAP,
        num_inference_steps=steps,
        feature_cache=feature_cache,
        output_type="latent",
    )
    tiles = tile_indices(FRAMES + 1, TILE, OVERLAP, anchor_first=True)
    windows = [(idx[1] - 1, idx[-1]) for idx in tiles]  # input frames of each tile, reference excluded
    assert windows == [(0, 3), (3, 6), (6, 9)]
    for name, reads in recorder.windows.items():
        assert reads, name
        assert max(stop - start for start, stop in reads) <= TILE - 1, name
        if feature_cache == "host" and name not in ("dense_flow", "trajectory_flow", "keypoints"):
            # encoded features are kept: every frame is read exactly once in the whole call
            assert sorted(reads) == windows, name
        else:
            assert reads == windows * steps, name


def test_feature_cache_is_checked(pipe):
    with pytest.raises(ValueError, match="`feature_cache` must be one of"):
        _call(pipe, _inputs(), feature_cache="gpu")


@pytest.mark.parametrize("decode_reference", [False, True])
def test_decode_stream_gives_the_frames_of_output_np_chunk_by_chunk(pipe, decode_reference):
    inputs = _inputs()
    common = {"decode_reference": decode_reference, "decode_chunk_size": 4}
    whole = _call(pipe, inputs, **{**common, "output_type": "np"})[0]
    latents = _call(pipe, inputs, **common, keep_reference=True)
    assert latents.shape[1] == FRAMES + 1  # the reference frame kept
    calls = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        stream = pipe.decode_stream(
            latents, 4, reference_first=True, decode_reference=decode_reference, output_type="np"
        )
        first = next(stream)
        assert len(calls) == 1  # decoded lazily: one VAE call for the first chunk
        chunks = [first, *stream]
    finally:
        hook.remove()
    decoded = FRAMES + int(decode_reference)  # frames that go through the VAE
    assert calls == [min(4, decoded - start) for start in range(0, decoded, 4)]
    assert len(chunks) == math.ceil(decoded / 4)
    frames = np.concatenate(chunks)
    assert frames.shape == whole.shape == (FRAMES, SIZE, SIZE, 3)
    np.testing.assert_array_equal(frames, whole)


def test_decode_stream_refuses_a_batch(pipe):
    with pytest.raises(ValueError, match="one video's latents"):
        next(pipe.decode_stream(torch.zeros(2, 3, 4, 16, 16)))


def test_the_engine_streams_guidance_in_and_frames_out(pipe, monkeypatch):
    """The diffusion engine hands the pipeline lazy sources and decodes chunk by chunk: its frames equal the
    pipeline's own ``output_type="np"`` frames for the same inputs materialised as arrays."""
    from animate.engines.diffusion import DiffusionEngine, DiffusionOptions, frames_to_uint8
    from animate.motion.bundle import GuidanceBundle

    inputs, recorder = _inputs(), Recorder()
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
        dense_flow=recorder.source("dense_flow", inputs["dense_flow"]),
        **{k: recorder.source(k, v) for k, v in inputs["guidance_maps"].items()},
    )
    calls, decoded = [], []
    original = type(pipe).__call__

    def call(self, *args, **kwargs):
        calls.append((args, dict(kwargs)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", call)
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda module, args: decoded.append(args[0].shape[0]))
    engine = DiffusionEngine(
        pipe, DiffusionOptions(steps=2, tile_size=TILE, tile_overlap=OVERLAP, decode_chunk_size=4)
    )
    try:
        frames = np.stack(list(engine.render(bundle)))
    finally:
        hook.remove()
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert set(recorder.windows) == {"dense_flow", "depth", "normal", "semantic"}
    for name, reads in recorder.windows.items():
        assert reads and max(stop - start for start, stop in reads) <= TILE - 1, name
    # chunks of at most 4 frames; the reference frame decoded with the first one under DisPose's rules
    parity_kwargs, truncate = engine._parity(engine.options)  # DisPose's rules for these parts
    with_reference = parity_kwargs.get("decode_reference", False)
    assert decoded and max(decoded) <= 4 and sum(decoded) == FRAMES + with_reference

    ((args, kwargs),) = calls
    assert kwargs["output_type"] == "latent" and kwargs["keep_reference"]
    assert isinstance(kwargs["pose_images"], FrameSource) and isinstance(
        kwargs["trajectory_flow"], FrameSource
    )

    def whole(frames):  # every frame as one array: the all-in-memory inputs
        return frames.window(0, len(frames)) if isinstance(frames, FrameSource) else np.asarray(frames)

    for name in ("pose_images", "dense_flow", "trajectory_flow"):
        kwargs[name] = whole(kwargs[name])
    kwargs["guidance_maps"] = {k: whole(v) for k, v in kwargs["guidance_maps"].items()}
    kwargs |= {"output_type": "np", "keep_reference": False, "feature_cache": "host"}
    kwargs |= {"generator": torch.Generator().manual_seed(0), "callback_on_step_end": None}
    expected = original(pipe, *args, **kwargs).frames[0]
    np.testing.assert_array_equal(frames, frames_to_uint8(expected, truncate))
