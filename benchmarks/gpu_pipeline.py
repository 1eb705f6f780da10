"""Diffusion engine speed and memory: diffusers' SVD pipeline vs ours, guidance, tiling, CFG, optimisations.

Builds every component with random weights (no download): on CUDA at full size (diffusers' default
``UNetSpatioTemporalConditionModel`` config is SVD-xt's; SVD's VAE and CLIP ViT-H/14 vision configs;
MimicMotion's pose guider, Champ's guidance encoders, the motion ControlNet from the UNet when the package
has it), on CPU the tiny test components (``pipelines.testing``). Then, in one process with the same inputs
and seed, runs each configuration and reports:

- seconds per denoising step: median over the steps after the first of a timed run that follows a warm-up
  run (CUDA events on GPU, ``perf_counter`` on CPU), read at ``callback_on_step_end``;
- end-to-end seconds of the timed call, and its tail after the last step (VAE decode + postprocess);
- FLOPs per step (``torch.utils.flop_counter.FlopCounterMode``: FLOPs of a run with ``1 + k`` steps minus a
  run with 1 step, over ``k``), achieved TFLOP/s and the fraction of a measured matmul peak (bf16 8192^3
  on GPU, fp32 on CPU);
- peak memory of the timed call: ``torch.cuda.max_memory_allocated`` on GPU, the process' RSS high-water
  mark (reset through ``/proc/self/clear_refs``) on CPU;
- for optimisations and variants, the largest difference of the final latents from the plain run.

Writes ``<out>/gpu_pipeline_<cuda|cpu>_<full|tiny>[_<tag>].json`` (device name, driver, torch / diffusers
versions, every configuration, the VAE decode chunk curve) and prints a table.

    .venv/bin/python benchmarks/gpu_pipeline.py                      # CPU, tiny components, 1 thread
    python benchmarks/gpu_pipeline.py --device cuda                  # full size, bf16, 25 steps (~15 min)
    # the same in parts of < 10 min; a selected case's reference (for its output difference) runs too:
    python benchmarks/gpu_pipeline.py --device cuda --only 'svd_*,ours_*' --tag backbone
    python benchmarks/gpu_pipeline.py --device cuda --only 'video_*' --tag video
    python benchmarks/gpu_pipeline.py --device cuda --only 'opt_*' --tag opt
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import fnmatch
import gc
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipelines import AnimationPipeline
from pipelines.optimizations import OptimizationOptions, optimize
from pipelines.testing import reinit_zero_layers, svd_scheduler, tiny_components

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# stabilityai/stable-video-diffusion-img2vid-xt vae/config.json and image_encoder/config.json (CLIP ViT-H/14)
SVD_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 768,
    "scaling_factor": 0.18215,
    "force_upcast": True,
}
SVD_CLIP_CONFIG = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 16,
    "num_hidden_layers": 32,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 1024,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}


@dataclass
class Case:
    """One configuration: which pipeline, its call arguments, optional optimisations."""

    name: str
    group: str
    pipeline: str  # "svd" | "ours"
    frames: int
    call: dict[str, Any] = field(default_factory=dict)
    options: OptimizationOptions | None = None
    reference: str | None = None  # case whose final latents this one is compared with
    controlnet: bool = False
    skip: str | None = None
    note: str = ""


@dataclass
class Result:
    name: str
    group: str
    pipeline: str
    frames: int
    note: str = ""
    skipped: str | None = None
    error: str | None = None
    unet_calls_per_step: int | None = None
    step_s_median: float | None = None
    step_s_mean: float | None = None
    step_s_min: float | None = None
    steps_timed: int | None = None
    first_call_s: float | None = None
    end_to_end_s: float | None = None
    decode_s: float | None = None
    flops_per_step: float | None = None
    achieved_tflops: float | None = None
    fraction_of_peak: float | None = None
    peak_memory_mib: float | None = None
    reference: str | None = None
    max_abs_diff: float | None = None
    rel_l2_diff: float | None = None


# --- device helpers ------------------------------------------------------------------------------


class Clock:
    """Marks on the device's timeline: CUDA events on GPU, ``perf_counter`` on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        return end - start

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def release(device: torch.device) -> None:
    """Return freed GPU memory before the next measurement (on CPU a full collection costs ~0.5 s, skipped)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 10) -> float:
    """Best TFLOP/s of a square matmul, the peak the achieved figures are a fraction of."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    clock = Clock(device)
    for _ in range(3):
        a @ b
    clock.sync()
    best = 0.0
    for _ in range(repeats):
        start = clock.mark()
        a @ b
        end = clock.mark()
        best = max(best, 2 * size**3 / clock.seconds(start, end) / 1e12)
    return best


def environment(device: torch.device) -> dict[str, Any]:
    import diffusers
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],  # other work on a shared machine
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "device_name": torch.cuda.get_device_name(device),
            "device_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            info["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
    else:
        name = platform.processor() or "cpu"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        info["device_name"] = name
        info["driver"] = None
    return info


# --- components ----------------------------------------------------------------------------------


def build_components(
    device: torch.device, dtype: torch.dtype, tiny: bool
) -> tuple[dict[str, Any], str | None]:
    """Random-weight components and, when absent, why the motion ControlNet cannot be built."""
    if tiny:
        components = tiny_components()
    else:
        from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        from controlnets import GuidanceFusion, PoseGuider

        with device:  # initialise on the device: a 1.5B-parameter UNet initialises in seconds there
            torch.manual_seed(0)
            components = {
                "unet": UNetSpatioTemporalConditionModel(),
                "vae": AutoencoderKLTemporalDecoder(**SVD_VAE_CONFIG),
                "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**SVD_CLIP_CONFIG)),
                "pose_guider": PoseGuider(),
                "guidance_encoders": GuidanceFusion(),
            }
        components |= {"scheduler": svd_scheduler(), "feature_extractor": CLIPImageProcessor()}
    reinit_zero_layers(components["pose_guider"])
    reinit_zero_layers(components["guidance_encoders"])
    reason = None
    try:
        from controlnets import MotionControlNet
    except ImportError:
        MotionControlNet, reason = None, "controlnets.MotionControlNet is not in this checkout yet"
    if MotionControlNet is not None:
        torch.manual_seed(0)
        if tiny:
            try:
                from pipelines.testing import tiny_motion_controlnet
            except ImportError:
                tiny_motion_controlnet, reason = None, "pipelines.testing has no tiny_motion_controlnet yet"
            if tiny_motion_controlnet is not None:
                components["motion_controlnet"] = tiny_motion_controlnet(components["unet"])
        else:
            components["motion_controlnet"] = MotionControlNet.from_unet(components["unet"])
        if "motion_controlnet" in components:
            reinit_zero_layers(components["motion_controlnet"])
    for name, module in components.items():
        if isinstance(module, torch.nn.Module):
            components[name] = module.to(device=device, dtype=dtype).eval()
    return components, reason


def make_pipeline(components: dict[str, Any], kind: str, controlnet: bool) -> Any:
    from diffusers import StableVideoDiffusionPipeline

    core = {k: components[k] for k in ("vae", "image_encoder", "unet", "scheduler", "feature_extractor")}
    if kind == "svd":
        pipe = StableVideoDiffusionPipeline(**core)
    else:
        extra = {
            "pose_guider": components["pose_guider"],
            "guidance_encoders": components["guidance_encoders"],
        }
        if controlnet:
            extra["motion_controlnet"] = components["motion_controlnet"]
        pipe = AnimationPipeline(**core, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- cases ---------------------------------------------------------------------------------------


def build_cases(args: argparse.Namespace, controlnet_reason: str | None, device: torch.device) -> list[Case]:
    frames = args.frames
    small, large = min(frames), max(frames)
    cuda = device.type == "cuda"
    # one tile of all frames, no reference frame: exactly SVD's computation
    plain = {"prepend_reference": False, "tile_overlap": 0}
    guided = {"pose": True, "guidance": True}
    motion = {"motion": True}
    cases: list[Case] = []
    for n in frames:
        cases += [
            Case(f"svd_f{n}", "backbone", "svd", n, note="diffusers StableVideoDiffusionPipeline"),
            Case(f"ours_f{n}", "backbone", "ours", n, plain, reference=f"svd_f{n}", note="no guidance"),
            Case(
                f"ours_guided_f{n}",
                "guidance",
                "ours",
                n,
                plain | guided,
                note="pose + depth/normal/semantic",
            ),
            Case(
                f"ours_controlnet_f{n}",
                "guidance",
                "ours",
                n,
                plain | guided | motion,
                controlnet=True,
                skip=controlnet_reason,
                note="pose + guidance + motion ControlNet",
            ),
        ]
    cases.append(
        Case(
            f"ours_guided_f{large}_cfg_sequential",
            "cfg",
            "ours",
            large,
            plain | guided | {"cfg_mode": "sequential"},
            reference=f"ours_guided_f{large}",
            note="two UNet calls per step instead of one of twice the batch",
        )
    )
    with_controlnet = controlnet_reason is None
    video = {"prepend_reference": True} | guided | (motion if with_controlnet else {})
    tag = "pose + guidance" + (" + ControlNet" if with_controlnet else "")
    for tile, overlap in args.video_tiles:
        call = video | {"tile_size": tile, "tile_overlap": overlap}
        if tile >= args.video_frames:  # MimicMotion's two calls: one batched 2x72-frame call is ~2x memory
            call["cfg_mode"] = "sequential"
        cases.append(
            Case(
                f"video_f{args.video_frames}_tile{tile}o{overlap}",
                "video",
                "ours",
                args.video_frames,
                call,
                controlnet=with_controlnet,
                note=f"{tag}, tiles of {tile} incl. the reference, CFG {call.get('cfg_mode', 'batched')}",
            )
        )
    base = f"ours_guided_f{small}"
    opt_call = plain | guided

    def opt(name: str, options: OptimizationOptions, note: str, skip: str | None = None) -> Case:
        return Case(
            f"opt_{name}_f{small}",
            "optimisation",
            "ours",
            small,
            opt_call,
            options,
            base,
            skip=skip,
            note=note,
        )

    try:
        import xformers  # noqa: F401

        no_xformers = None if cuda else "xformers runs on CUDA only"
    except ImportError:
        no_xformers = "xformers is not installed (the `gpu` extra)"
    no_compile = None if cuda or args.compile else "torch.compile on CPU is slow to build: pass --compile"
    cases += [
        opt(
            "attention_eager",
            OptimizationOptions(attention="eager"),
            "materialised attention scores (vs SDPA)",
        ),
        opt(
            "attention_xformers", OptimizationOptions(attention="xformers"), "xformers attention", no_xformers
        ),
        opt("fused_qkv", OptimizationOptions(fused_qkv=True), "one q/k/v projection matmul"),
        opt("channels_last", OptimizationOptions(channels_last=True), "NHWC convolutions"),
        opt(
            "forward_chunking", OptimizationOptions(forward_chunk_size=1), "feed-forward one frame at a time"
        ),
        opt("step_cache", OptimizationOptions(step_cache_interval=2), "DeepCache: full UNet every 2nd step"),
        opt("compile", OptimizationOptions(compile_blocks=True), "regional torch.compile", no_compile),
        opt(
            "fast",
            OptimizationOptions.fast(compile_blocks=cuda or args.compile),
            "SDPA + fused QKV + channels_last" + (" + compile" if cuda or args.compile else ""),
        ),
    ]
    tile, overlap = args.video_tiles[0]
    low = OptimizationOptions.low_memory(cpu_offload=cuda)
    cases.append(
        Case(
            f"video_f{args.video_frames}_tile{tile}o{overlap}_low_memory",
            "memory",
            "ours",
            args.video_frames,
            video | {"tile_size": tile, "tile_overlap": overlap},
            low,
            reference=f"video_f{args.video_frames}_tile{tile}o{overlap}",
            controlnet=with_controlnet,
            note="offload + FF chunking + sequential CFG + 2-frame decode"
            if cuda
            else "FF chunking + sequential CFG + 2-frame decode (no offload on CPU)",
        )
    )
    if args.only:
        by_name = {c.name: c for c in cases}
        wanted = {c.name for c in cases if any(fnmatch.fnmatch(c.name, p) for p in args.only)}
        pending = list(wanted)
        while pending:  # the cases a selected one is compared with run too, before it
            reference = by_name[pending.pop()].reference
            if reference in by_name and reference not in wanted:
                wanted.add(reference)
                pending.append(reference)
        cases = [c for c in cases if c.name in wanted]
    return cases


# --- running -------------------------------------------------------------------------------------


class Runner:
    def __init__(self, args: argparse.Namespace, components: dict[str, Any], device: torch.device) -> None:
        self.args = args
        self.components = components
        self.device = device
        self.clock = Clock(device)
        size, n = (args.height, args.width), max([*args.frames, args.video_frames])
        gen = torch.Generator().manual_seed(0)
        # a tensor reference goes to CLIP as it is (both pipelines resize only PIL input): CLIP's own size;
        # the VAE path resizes it to height x width
        side = int(components["image_encoder"].config.image_size)
        self.image = torch.rand(1, 3, side, side, generator=gen)
        self.condition = torch.rand(n, 3, *size, generator=gen)  # pose images and every guidance map
        self.motion = self._motion_inputs(n, gen)
        self.final_latents: dict[str, torch.Tensor] = {}

    def _motion_inputs(self, frames: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Random flows (a few pixels), 18 keypoints per frame and reference features for the ControlNet."""
        controlnet = self.components.get("motion_controlnet")
        if controlnet is None:
            return {}
        height, width = self.args.height, self.args.width
        flow = torch.randn(frames, 2, height, width, generator=gen) * 2.0
        keypoints = torch.rand(frames, 18, 3, generator=gen) * torch.tensor([width, height, 1.0])
        keypoints[..., 2] = 1.0
        channels = controlnet.config.point_embedding_channels
        features = torch.randn(1, channels, max(1, height // 16), max(1, width // 16), generator=gen)
        return {
            "dense_flow": flow,
            "trajectory_flow": flow.flip(0),
            "keypoints": keypoints,
            "reference_keypoints": keypoints[0],
            "point_features": features,
        }

    def kwargs(self, case: Case, pipe: Any, steps: int, output_type: str, callback: Callable | None) -> dict:
        call = dict(case.call)
        kwargs: dict[str, Any] = {
            "height": self.args.height,
            "width": self.args.width,
            "num_frames": case.frames,
            "num_inference_steps": steps,
            "min_guidance_scale": self.args.guidance_scale,
            "max_guidance_scale": self.args.guidance_scale,
            "noise_aug_strength": 0.0,
            "decode_chunk_size": self.args.decode_chunk_size,
            "generator": torch.Generator(device=self.device).manual_seed(self.args.seed),
            "output_type": output_type,
        }
        if callback is not None:
            kwargs["callback_on_step_end"] = callback
        if case.pipeline == "ours":
            frames = self.condition[: case.frames]
            if call.pop("pose", False):
                kwargs["pose_images"] = frames
                kwargs["reference_pose_image"] = self.condition[:1]
            if call.pop("guidance", False):
                types = pipe.guidance_encoders.guidance_types
                kwargs["guidance_maps"] = dict.fromkeys(types, frames)
                kwargs["reference_guidance_maps"] = dict.fromkeys(types, self.condition[:1])
            if call.pop("motion", False):
                motion = self.motion
                for name in ("dense_flow", "trajectory_flow", "keypoints"):
                    kwargs[name] = motion[name][: case.frames]
                kwargs["reference_keypoints"] = motion["reference_keypoints"]
                kwargs["point_features"] = motion["point_features"]
            kwargs["tile_size"] = call.pop("tile_size", case.frames)
            kwargs |= call
            if case.options is not None:
                kwargs |= case.options.call_kwargs()
        return kwargs

    def unet_calls_per_step(self, case: Case, kwargs: dict) -> int:
        if case.pipeline == "svd":
            return 1
        from pipelines import tile_indices

        prepend = kwargs.get("prepend_reference", True)
        tiles = tile_indices(
            case.frames + int(prepend), kwargs["tile_size"], kwargs.get("tile_overlap", 6), prepend
        )
        return len(tiles) * (2 if kwargs.get("cfg_mode", "batched") == "sequential" else 1)

    def _park(self, device: torch.device | str) -> None:
        for module in self.components.values():
            if isinstance(module, torch.nn.Module):
                module.to(device)

    def pipeline(self, case: Case) -> Any:
        """Plain cases share the components; an optimised one gets copies, made on the CPU while the shared
        ones wait there, so its peak memory counts its own modules only (offload keeps them there)."""
        if case.options is None:
            return make_pipeline(self.components, case.pipeline, case.controlnet)
        self._park("cpu")
        copies = {
            k: copy.deepcopy(v) if isinstance(v, torch.nn.Module) else v for k, v in self.components.items()
        }
        if not case.options.cpu_offload:
            for module in copies.values():
                if isinstance(module, torch.nn.Module):
                    module.to(self.device)
        pipe = make_pipeline(copies, case.pipeline, case.controlnet)
        return optimize(pipe, case.options)

    def flops_per_step(self, case: Case, pipe: Any) -> float:
        extra = max(1, case.options.step_cache_interval if case.options else 1)
        counts = []
        for steps in (1, 1 + extra):
            with FlopCounterMode(display=False) as counter:
                pipe(self.image, **self.kwargs(case, pipe, steps, "latent", None))
            counts.append(counter.get_total_flops())
        return (counts[1] - counts[0]) / extra

    def run(self, case: Case, flops_cache: dict[str, float], peak: float) -> Result:
        result = Result(
            case.name, case.group, case.pipeline, case.frames, case.note, reference=case.reference
        )
        if case.skip:
            result.skipped = case.skip
            return result
        args, clock = self.args, self.clock
        pipe = None
        try:
            pipe = self.pipeline(case)
            if args.warmup_steps:
                start = clock.mark()
                pipe(self.image, **self.kwargs(case, pipe, args.warmup_steps, "latent", None))
                end = clock.mark()
                result.first_call_s = clock.seconds(start, end)

            marks: list[Any] = []
            final: dict[str, torch.Tensor] = {}

            def on_step_end(p: Any, i: int, t: Any, tensors: dict) -> dict:
                marks.append(clock.mark())
                if i == args.steps - 1:
                    final["latents"] = tensors["latents"].detach().float().cpu()
                return tensors

            kwargs = self.kwargs(case, pipe, args.steps, "pt", on_step_end)
            result.unet_calls_per_step = self.unet_calls_per_step(case, kwargs)
            release(self.device)
            reset_peak_memory(self.device)
            start = clock.mark()
            pipe(self.image, **kwargs)
            end = clock.mark()
            clock.sync()
            result.peak_memory_mib = peak_memory_mib(self.device)
            steps = [clock.seconds(a, b) for a, b in itertools.pairwise(marks)]
            result.steps_timed = len(steps)
            result.step_s_median = statistics.median(steps)
            result.step_s_mean = statistics.fmean(steps)
            result.step_s_min = min(steps)
            result.end_to_end_s = clock.seconds(start, end)
            result.decode_s = clock.seconds(marks[-1], end)

            # the optimisations other than the step cache compute the same products in another way: count
            # once per shape (compiled regions would also be counted through dynamo, not as they run)
            same_math = case.options is not None and case.options.step_cache_interval == 1
            key = f"{case.pipeline}|{case.frames}|{sorted(case.call.items())}|{case.controlnet}"
            if same_math and key in flops_cache and (case.options.compile_blocks or not args.recount_flops):
                result.flops_per_step = flops_cache[key]
            else:
                result.flops_per_step = self.flops_per_step(case, pipe)
                if case.options is None:
                    flops_cache[key] = result.flops_per_step
            result.achieved_tflops = result.flops_per_step / result.step_s_mean / 1e12
            result.fraction_of_peak = result.achieved_tflops / peak

            self.final_latents[case.name] = final["latents"]
            reference = self.final_latents.get(case.reference or "")
            if reference is not None:
                ours = final["latents"]
                diff = (ours - reference).abs()
                result.max_abs_diff = float(diff.max())
                result.rel_l2_diff = float((ours - reference).norm() / reference.norm().clamp_min(1e-12))
        except Exception as exc:  # one failing configuration (e.g. out of memory) must not end the run
            result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        finally:
            del pipe
            release(self.device)
            if case.options is not None:
                self._park(self.device)
        return result

    def vae_decode_curve(self, frames: int) -> list[dict[str, float]]:
        """Decode one video's latents with several chunk sizes: seconds and peak memory of each."""
        pipe = make_pipeline(self.components, "ours", False)
        latents = self.final_latents.get(f"ours_guided_f{frames}")
        if latents is None:
            return []
        latents = latents.to(self.device, pipe.vae.dtype)
        chunks = sorted({c for c in (1, 2, 4, 8, 14, frames) if c <= frames})
        rows = []
        for chunk in chunks:
            pipe.decode_latents(latents, frames, chunk)  # warm-up
            release(self.device)
            reset_peak_memory(self.device)
            start = self.clock.mark()
            pipe.decode_latents(latents, frames, chunk)
            end = self.clock.mark()
            seconds = self.clock.seconds(start, end)
            rows.append(
                {
                    "frames": frames,
                    "chunk": chunk,
                    "seconds": seconds,
                    "peak_memory_mib": peak_memory_mib(self.device),
                }
            )
        return rows


# --- output --------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[Result], peak: float) -> str:
    head = (
        f"| {'configuration':<38} | {'calls/step':>10} | {'ms/step':>9} | {'TFLOP/s':>8} | {'% peak':>6} "
        f"| {'e2e s':>7} | {'decode s':>8} | {'peak MiB':>8} | {'max Δ':>8} |"
    )
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in results:
        if r.skipped or r.error:
            lines.append(
                f"| {r.name:<38} | {'skipped: ' + r.skipped if r.skipped else 'error: ' + r.error} |"
            )
            continue
        lines.append(
            f"| {r.name:<38} | {r.unet_calls_per_step:>10} | {r.step_s_median * 1000:>9.1f} "
            f"| {r.achieved_tflops:>8.3g} | {100 * r.fraction_of_peak:>6.1f} | {r.end_to_end_s:>7.2f} "
            f"| {r.decode_s:>8.3f} | {r.peak_memory_mib:>8.0f} | {_fmt(r.max_abs_diff, '8.1e'):>8} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--tiny", dest="tiny", action="store_true", default=None, help="tiny components (default on CPU)"
    )
    size.add_argument(
        "--full", dest="tiny", action="store_false", help="full-size components (default on CUDA)"
    )
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--frames", type=lambda s: [int(x) for x in s.split(",")], default=[14, 25])
    parser.add_argument("--video-frames", type=int, default=72)
    parser.add_argument(
        "--video-tiles",
        type=lambda s: [tuple(int(v) for v in t.split("/")) for t in s.split(",")],
        default=[(16, 6), (72, 6)],
        help="tile/overlap pairs for the long video, e.g. 16/6,72/6",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed denoising steps (default: 25 CUDA, 6 CPU)"
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=2, help="steps of the untimed first call (0: none)"
    )
    parser.add_argument("--height", type=int, default=None, help="default: 576 full size, 32 tiny")
    parser.add_argument("--width", type=int, default=None, help="default: 1024 full size, 32 tiny")
    parser.add_argument("--guidance-scale", type=float, default=2.0)
    parser.add_argument("--decode-chunk-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: 1 on CPU, where OpenMP waits dominate)",
    )
    parser.add_argument("--compile", action="store_true", help="also run torch.compile configurations on CPU")
    parser.add_argument(
        "--recount-flops", action="store_true", help="count FLOPs for every variant, not once per shape"
    )
    parser.add_argument("--only", type=lambda s: s.split(","), default=None, help="fnmatch patterns of names")
    parser.add_argument("--tag", default="", help="suffix of the JSON file name (e.g. for --only subsets)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if args.tiny is None:
        args.tiny = not cuda
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    args.threads = args.threads or (None if cuda else 1)
    args.steps = args.steps or (25 if cuda else 6)
    args.height = args.height or (32 if args.tiny else 576)
    args.width = args.width or (32 if args.tiny else 1024)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is not timed)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak_tflops(device, peak_dtype, 8192 if device.type == "cuda" else 1024)

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    components, controlnet_reason = build_components(device, dtype, args.tiny)
    if controlnet_reason:
        print(f"ControlNet configurations skipped: {controlnet_reason}")
    cases = build_cases(args, controlnet_reason, device)
    runner = Runner(args, components, device)
    flops_cache: dict[str, float] = {}
    results = []
    for case in cases:
        result = runner.run(case, flops_cache, peak)
        results.append(result)
        state = (
            ("skipped" if result.skipped else None)
            or result.error
            or f"{result.step_s_median * 1000:.1f} ms/step"
        )
        print(f"  {case.name}: {state}", flush=True)
    curve = runner.vae_decode_curve(max(args.frames))

    scale = "tiny" if args.tiny else "full"
    env = environment(device) | {"load_average_at_start": load_at_start}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out",)}
    report = {
        "benchmark": "gpu_pipeline",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "benchmarks/gpu_pipeline.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "scale": scale,
        "environment": env,
        "settings": settings,
        "matmul_peak_tflops": peak,
        "matmul_peak_dtype": str(peak_dtype).removeprefix("torch."),
        "configurations": [dataclasses.asdict(r) for r in results],
        "vae_decode": curve,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu_pipeline_{device.type}_{scale}{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")

    print(
        f"\n{env['device_name']}, {scale} components, {args.dtype}, {args.height}x{args.width}, {args.steps} steps, "
        f"CFG {args.guidance_scale}, torch {torch.__version__}; matmul peak {peak:.3g} TFLOP/s ({report['matmul_peak_dtype']}); "
        f"{env['threads']} thread(s), load average {load_at_start[0]:g} -> {env['load_average'][0]:g} on {env['cpu_count']} CPUs"
    )
    print(table(results, peak))
    if curve:
        print("\nVAE decode, chunk size -> seconds, peak MiB")
        for row in curve:
            print(
                f"  {row['frames']} frames, chunk {row['chunk']:>2}: {row['seconds']:.3f} s, {row['peak_memory_mib']:.0f} MiB"
            )
    print(f"\nwrote {path}")
    return report


if __name__ == "__main__":
    main()
