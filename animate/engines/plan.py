"""The memory and time planner of the diffusion engine: what to run, and what it will cost, before it runs.

``make_plan(workload, hardware)`` chooses, for the free GPU memory, the resolution, tiles, steps and frame
count of one job, the fastest *memory level* whose estimated peak fits, and says what it expects: peak
GPU memory, host memory, seconds per denoising step and in total. ``animate plan`` and ``animate run
--dry-run`` print it; ``animate run`` and the server's workers render with it (``ANIMATE_DIFFUSION_SPEED``
other than ``default`` overrides its knobs); an out-of-memory error retries once at ``plan.lower()``.

Memory levels, fastest first (each keeps the previous one's savings):

====================  =====================================================================================
``fast``              batched CFG (one UNet call of 2 x tile frames), VAE decode 8 frames at a time
``sequential_cfg``    two UNet calls of one tile each (the activations halve), decode 4 frames at a time
``chunked``           + feed-forward layers one frame (row) at a time, decode 2 frames at a time
``model_offload``     + model CPU offload (CLIP and VAE leave the GPU while the UNet runs), decode 1 frame
``sequential_offload`` + sequential CPU offload (each layer's weights come to the GPU when it runs)
====================  =====================================================================================

The dtype is float16 on CUDA (the published checkpoints' own dtype; fp32 on the CPU) and attention is
PyTorch SDPA (flash / memory-efficient kernels: a materialised score matrix at 576x1024 needs ~42 GB).
The whole-length tensors (latents, the fused prediction and weight sums, the scheduler step's float32
temporaries: 96 bytes per latent pixel of every frame, below) stay on the GPU unless the level's peak does not
fit with them there: then they live on the host (``latents_on_host``, the pipeline's ``sequence_device="cpu"``)
and only a tile's window crosses PCIe each way per UNet call, before a leaner level is tried (host latents
cost a little time; the leaner levels cost more: smaller batches, offloaded weights).
Pose / guidance features are cached on the host between steps when they fit in a quarter of the free
host memory (exact: the same features, computed once), else recomputed per tile.

How the coefficients were derived (uncalibrated: no GPU measured them). The SVD-xt UNet (config
``../shared/research/manifests/svd_xt_unet_config.json``), DisPose's ControlNet and SVD's temporal VAE
decoder were built with their real shapes on PyTorch fake tensors and run in float16 under a dispatch mode
that adds up the bytes of every live (non-view) tensor and frees them when Python drops them: the peak of
that sum is the activation memory of one forward (``benchmarks/plan_calibrate.py --mode fake``, its output
in ``benchmarks/results/plan_fake.json``; rows per call 1 and 3). At the 72x128 latent (576x1024 pixels):

- UNet, per row (one frame of one CFG half): 289 MB, plus 38 MB per call; 72.3 MB per row at 36x64, so
  linear in the latent area. With feed-forward chunking: 118 MB per row plus 215 MB per call.
- ControlNet: 280 MB per row (its full-resolution flow branches included); its 12 + 1 residuals
  (30 MB per row) live while the UNet runs.
- VAE decode: 2.11 GB per decoded frame (``../shared/research/REFERENCE_MODELS.md`` says ~1.1 GiB).
- Weights: 1,524,623,082 UNet, 685,139,601 ControlNet parameters (the manifests), 97,742,847 VAE,
  632,076,800 CLIP ViT-H/14 image encoder (counted on the built modules), 859,520,964 for the SD 1.5
  UNet the point adapter's DIFT features load for a moment.

Each figure is kept as bytes per (base channel x latent pixel x byte of dtype), so the same model scales to
other configs (the tiny test pipelines) and resolutions. Time: 3.2 TFLOPs per UNet row at 576x1024
(REFERENCE_MODELS.md, torch FlopCounterMode; it matches MobileVD's 45.4 TFLOPs for 14 frames), 1.27 for
the ControlNet (FlopCounterMode on the fake modules, with the attention added by hand), 6.8 per decoded
frame, at 40% of the card's dense fp16 peak (MimicMotion's "< 5 s per step" on an A100 and its ~20 min for
a 530-frame video on an RTX 4090 both fit 40-47%). Sequential offload moves the denoisers' weights over
PCIe (16 GB/s assumed) on every UNet call. ``benchmarks/plan_calibrate.py`` measures the same figures on
a CUDA card and writes them as JSON (``Coefficients.from_json`` reads them).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 1024**3
LEVELS = ("fast", "sequential_cfg", "chunked", "model_offload", "sequential_offload")
OFFLOAD_LEVELS = ("model_offload", "sequential_offload")

# SVD-xt at 576x1024 in float16: the reference point of the coefficients (see the module docstring)
_REF_CHANNELS, _REF_LATENT, _REF_PIXELS, _HALF = 320, 72 * 128, 576 * 1024, 2
_UNIT = _REF_CHANNELS * _REF_LATENT * _HALF  # bytes of one base-channel feature map at the latent size
_VAE_UNIT = 128 * _REF_PIXELS * _HALF  # one VAE top-level feature map at the output size

#: Dense fp16/bf16 tensor-core peak (TFLOP/s, no sparsity) of cards by name fragment, longest match first.
DEVICE_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 4080": 97.0,
    "RTX 3090": 71.0,
    "RTX A6000": 155.0,
    "V100": 125.0,
    "T4": 65.0,
}
DEFAULT_GPU_TFLOPS = 100.0
CPU_TFLOPS = 0.2  # a few cores in fp32: only to give tiny CPU runs a number


def parse_bytes(text: str) -> int:
    """``"24GiB"``, ``"24GB"``, ``"80G"``, ``"512MiB"``, ``"1e9"`` -> bytes (G, GB and GiB all mean 2**30:
    cards are sold in GiB under the name GB)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if match is None:
        raise ValueError(f"not a memory size: {text!r} (e.g. 24GiB, 80GB, 512MiB)")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * 1024 ** " KMGT".index(unit or " "))


@dataclass(frozen=True)
class Coefficients:
    """The memory and time model's numbers; defaults: derived from the real shapes (module docstring)."""

    unet_row: float = 289.2e6 / _UNIT  # activations per UNet row, per (channel x latent pixel x byte)
    unet_call: float = 37.8e6 / _UNIT  # per UNet call, whatever its rows
    unet_row_chunked: float = 118.2e6 / _UNIT
    unet_call_chunked: float = 214.6e6 / _UNIT
    controlnet_row: float = 279.7e6 / _UNIT
    controlnet_residuals_row: float = 30.2e6 / _UNIT
    feature_row: float = 1.0  # one pose / guidance feature map (base channels at the latent size)
    vae_frame: float = 2114.0e6 / _VAE_UNIT  # VAE decode activations per frame
    # the whole-length tensors at their peak, the scheduler step (diffusers' Euler, v-prediction), per latent
    # element: latents 2 + fused prediction 2 + the step's float32 sample 4, predicted x0 4, derivative 4,
    # derivative x dt 4 and result 4 = 24 B (float16; float32 latents: the same 24, the upcast is a no-op),
    # x 4 channels = 96 B per latent pixel of every frame (tests/test_plan.py measures it)
    sequence_frame_bytes: float = 96.0
    # a tile's own copies on the compute device: its latents, scaled, the prediction, weighted (4 x 4 channels)
    window_frame_elements: float = 16.0
    host_bytes_per_s: float = 10e9  # host memory traffic of the scheduler step on the CPU
    overhead: float = 1.15  # allocator fragmentation and what the simulation misses
    context_bytes: float = 0.6 * GIB  # CUDA context, cuBLAS / cuDNN workspaces
    host_base_bytes: float = 2.5 * GIB  # the process itself: torch, MediaPipe, the body model
    unet_tflop_row: float = 3.2  # at 576x1024, SVD-xt widths
    controlnet_tflop_row: float = 1.27
    vae_tflop_frame: float = 6.8
    efficiency: float = 0.40  # achieved share of the card's dense fp16 peak
    pcie_bytes_per_s: float = 16e9
    calibrated: bool = False

    @classmethod
    def from_json(cls, path: str | Path) -> Coefficients:
        """Figures written by ``benchmarks/plan_calibrate.py`` (``{"coefficients": {...}}``)."""
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.get("coefficients", data).items() if k in known})


@dataclass(frozen=True)
class ModelShapes:
    """What the planner needs to know about the networks: parameter counts and base widths."""

    unet_params: int = 1_524_623_082
    controlnet_params: int = 0  # DisPose's: 685_139_601
    image_encoder_params: int = 632_076_800
    vae_params: int = 97_742_847
    small_params: int = 205_557  # pose guider, guidance encoders
    dift_params: int = 0  # SD 1.5's UNet for the point adapter: 859_520_964, loaded for a moment
    channels: int = 320  # the UNet's block_out_channels[0]
    vae_channels: int = 128  # the VAE decoder's top-level width
    pose_guider: bool = True
    guidance_maps: int = 0  # Champ encoders in use

    @classmethod
    def published(cls, controlnet: bool = False, guidance_maps: int = 0, dift: bool = False) -> ModelShapes:
        """MimicMotion 1.1 (+ DisPose's ControlNet, + Champ's encoders, + SD 1.5 for DIFT)."""
        return cls(
            controlnet_params=685_139_601 if controlnet else 0,
            small_params=205_557 + 3_833_136 * guidance_maps,
            dift_params=859_520_964 if dift else 0,
            guidance_maps=guidance_maps,
        )

    @classmethod
    def from_pipeline(cls, pipeline: Any, dift: bool = False) -> ModelShapes:
        """The loaded pipeline's own counts and widths."""

        def count(name: str) -> int:
            module = getattr(pipeline, name, None)
            return sum(p.numel() for p in module.parameters()) if module is not None else 0

        encoders = getattr(pipeline, "guidance_encoders", None)
        types = getattr(getattr(encoders, "config", None), "guidance_types", None) or ()
        vae_widths = getattr(getattr(pipeline, "vae", None), "config", {}).get("block_out_channels") or [128]
        return cls(
            unet_params=count("unet"),
            controlnet_params=count("motion_controlnet"),
            image_encoder_params=count("image_encoder"),
            vae_params=count("vae"),
            small_params=count("pose_guider") + count("guidance_encoders"),
            dift_params=859_520_964 if dift else 0,
            channels=int(pipeline.unet.config.block_out_channels[0]),
            vae_channels=int(vae_widths[0]),
            pose_guider=getattr(pipeline, "pose_guider", None) is not None,
            guidance_maps=len(types),
        )

    @property
    def weights(self) -> int:
        return (
            self.unet_params
            + self.controlnet_params
            + self.image_encoder_params
            + self.vae_params
            + (self.small_params)
        )

    @property
    def denoisers(self) -> int:
        return self.unet_params + self.controlnet_params + self.small_params


@dataclass(frozen=True)
class Workload:
    """One job: output size, frames, tiles, steps. ``tiles`` counts the UNet calls of a step (one CFG half)."""

    width: int
    height: int
    frames: int
    steps: int = 25
    tile_size: int = 72
    tile_overlap: int = 6
    shapes: ModelShapes = field(default_factory=ModelShapes)

    @property
    def latent_pixels(self) -> int:
        return math.ceil(self.height / 8) * math.ceil(self.width / 8)

    @property
    def tiles(self) -> int:
        """Tiles over the output frames plus the prepended reference frame, as ``pipelines.tile_indices``."""
        length = self.frames + 1
        if length <= self.tile_size:
            return 1
        stride = self.tile_size - self.tile_overlap
        return 1 + math.ceil((length - self.tile_size) / stride)

    @property
    def rows_per_tile(self) -> int:
        return min(self.tile_size, self.frames + 1)


@dataclass(frozen=True)
class Hardware:
    """Where the job runs: ``device`` ``"cuda"`` or ``"cpu"``; memory in bytes; ``gpus`` per job."""

    device: str = "cpu"
    name: str = "cpu"
    gpu_free: int | None = None
    gpu_total: int | None = None
    host_available: int = 16 * GIB
    gpus: int = 1
    tflops: float = CPU_TFLOPS
    detected: bool = False

    @classmethod
    def detect(cls, gpu_memory: int | None = None, gpus: int = 1, cuda: bool = True) -> Hardware:
        """This machine (``torch.cuda.mem_get_info`` of the current device); ``gpu_memory``: plan for a
        card with that much free memory instead (no CUDA needed); ``cuda=False``: the CPU even so."""
        host = host_available()
        if gpu_memory is not None:
            return cls("cuda", f"a {gpu_memory / GIB:g} GiB card", gpu_memory, gpu_memory, host, gpus,
                       DEFAULT_GPU_TFLOPS)  # fmt: skip
        import torch

        if not cuda or not torch.cuda.is_available():
            return cls("cpu", "cpu", None, None, host, gpus, CPU_TFLOPS, detected=True)
        free, total = torch.cuda.mem_get_info()
        name = torch.cuda.get_device_name()
        return cls("cuda", name, int(free), int(total), host, gpus, device_tflops(name), detected=True)


def host_available() -> int:
    """Free host memory in bytes: ``MemAvailable`` of ``/proc/meminfo`` (Linux), else free pages."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def device_tflops(name: str) -> float:
    for fragment in sorted(DEVICE_TFLOPS, key=len, reverse=True):
        if fragment.lower() in name.lower():
            return DEVICE_TFLOPS[fragment]
    return DEFAULT_GPU_TFLOPS


@dataclass(frozen=True)
class Knobs:
    """The settings a memory level (or an ``ANIMATE_DIFFUSION_SPEED`` preset) stands for."""

    cfg: str  # batched | sequential
    forward_chunk: int | None
    decode_chunk: int
    offload: str  # none | model | sequential


LEVEL_KNOBS = {
    "fast": Knobs("batched", None, 8, "none"),
    "sequential_cfg": Knobs("sequential", None, 4, "none"),
    "chunked": Knobs("sequential", 1, 2, "none"),
    "model_offload": Knobs("sequential", 1, 1, "model"),
    "sequential_offload": Knobs("sequential", 1, 1, "sequential"),
}


@dataclass(frozen=True)
class Plan:
    """What one job will run with and what it is expected to cost. Memory in bytes, time in seconds."""

    engine: str  # diffusion | warp
    device: str
    level: str | None = None
    dtype: str | None = None
    attention: str | None = None
    cfg: str | None = None
    offload: str | None = None
    forward_chunk: int | None = None
    decode_chunk: int | None = None
    feature_cache: str | None = None  # host | none
    latents_on_host: bool = False  # the whole-length latents and fusion sums on the host (sequence_device)
    width: int = 0
    height: int = 0
    frames: int = 0
    steps: int = 0
    tile_size: int | None = None
    tile_overlap: int | None = None
    tiles: int | None = None
    gpus: int = 1
    gpu_budget: int | None = None  # the memory the plan may use on each GPU
    gpu_peak: int | None = None
    host_memory: int | None = None
    seconds_per_step: float | None = None
    seconds_total: float | None = None
    fits: bool = True
    override: str | None = None  # "ANIMATE_DIFFUSION_SPEED=..." when the setting chose the knobs
    calibrated: bool = False
    notes: tuple[str, ...] = ()
    workload: Workload | None = field(default=None, repr=False, compare=False)
    hardware: Hardware | None = field(default=None, repr=False, compare=False)
    coefficients: Coefficients | None = field(default=None, repr=False, compare=False)

    def lower(self) -> Plan | None:
        """The same job at the next leaner memory level, or None at the leanest (or without a workload)."""
        if self.engine != "diffusion" or self.workload is None or self.level not in LEVELS:
            return None
        levels = available_levels(self.hardware)
        index = levels.index(self.level) if self.level in levels else len(levels)
        if index + 1 >= len(levels):
            return None
        if self.latents_on_host:  # stays lean: the next level keeps the latents on the host
            return estimate(
                self.workload, self.hardware, levels[index + 1], self.coefficients, latents_on_host=True
            )
        return _at_level(self.workload, self.hardware, levels[index + 1], self.coefficients)

    def describe(self) -> str:
        """One line: ``"chunked (sequential CFG, forward chunks of 1, decode 2, no offload)"``."""
        if self.engine != "diffusion":
            return f"{self.engine} on {self.device}"
        chunks = f", forward chunks of {self.forward_chunk}" if self.forward_chunk else ""
        host = ", latents on the host" if self.latents_on_host else ""
        return (
            f"{self.level or self.override} ({self.cfg} CFG{chunks}, decode {self.decode_chunk}, "
            f"{'no' if self.offload == 'none' else self.offload} offload{host})"
        )

    def to_dict(self) -> dict[str, Any]:
        def gib(value: int | None) -> float | None:
            return None if value is None else round(value / GIB, 2)

        def seconds(value: float | None) -> float | None:
            return None if value is None else round(value, 2)

        return {
            "engine": self.engine,
            "device": self.device,
            "level": self.level,
            "dtype": self.dtype,
            "attention": self.attention,
            "cfg": self.cfg,
            "offload": self.offload,
            "forward_chunk": self.forward_chunk,
            "decode_chunk": self.decode_chunk,
            "feature_cache": self.feature_cache,
            "latents_on_host": self.latents_on_host,
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "steps": self.steps,
            "tile_size": self.tile_size,
            "tile_overlap": self.tile_overlap,
            "tiles": self.tiles,
            "gpus": self.gpus,
            "gpu_budget_gib": gib(self.gpu_budget),
            "gpu_peak_gib": gib(self.gpu_peak),
            "host_memory_gib": gib(self.host_memory),
            "seconds_per_step": seconds(self.seconds_per_step),
            "seconds_total": seconds(self.seconds_total),
            "fits": self.fits,
            "override": self.override,
            "calibrated": self.calibrated,
            "notes": list(self.notes),
        }


def available_levels(hardware: Hardware | None) -> tuple[str, ...]:
    """Offload needs a GPU to offload from."""
    if hardware is not None and hardware.device == "cuda":
        return LEVELS
    return tuple(level for level in LEVELS if level not in OFFLOAD_LEVELS)


def gpu_budget(hardware: Hardware) -> int | None:
    """What a plan may use of the free GPU memory: 92% of it (the rest: the allocator's slack)."""
    return None if hardware.gpu_free is None else int(0.92 * hardware.gpu_free)


def _memory(
    work: Workload, hw: Hardware, knobs: Knobs, k: Coefficients, latents_on_host: bool = False
) -> tuple[int, int, int]:
    """(peak on the compute device, host memory, feature cache bytes on the host)."""
    shapes = work.shapes
    dtype_bytes = 2 if hw.device == "cuda" else 4
    unit = shapes.channels * work.latent_pixels * dtype_bytes
    rows = work.rows_per_tile * (2 if knobs.cfg == "batched" else 1)
    chunked = knobs.forward_chunk is not None
    unet = (k.unet_row_chunked if chunked else k.unet_row) * rows + (
        k.unet_call_chunked if chunked else k.unet_call
    )
    features = k.feature_row * rows * (int(shapes.pose_guider) + int(shapes.guidance_maps > 0))
    activations = unet + features
    if shapes.controlnet_params:
        controlnet = k.controlnet_row * (0.5 if chunked else 1.0) * rows + k.unet_call
        activations = max(activations + k.controlnet_residuals_row * rows, controlnet + features)
    activations *= unit
    sequence = k.sequence_frame_bytes * work.latent_pixels * (work.frames + 1)
    window = k.window_frame_elements * dtype_bytes * work.latent_pixels * work.rows_per_tile
    host_sequence = 0.0
    if latents_on_host:  # the device holds a tile's window, the host the whole length
        host_sequence, sequence = sequence, 0.0
    decode = k.vae_frame * shapes.vae_channels * work.width * work.height * dtype_bytes * knobs.decode_chunk
    weight_bytes = shapes.weights * dtype_bytes
    if knobs.offload == "none":
        resident = weight_bytes
    elif knobs.offload == "model":  # the denoisers stay while they alternate; CLIP and VAE leave
        resident = shapes.denoisers * dtype_bytes + shapes.vae_params * dtype_bytes
    else:  # one layer at a time: the widest feed-forward of the UNet
        resident = 8 * (shapes.channels * 4) ** 2 * dtype_bytes
    dift = shapes.dift_params * dtype_bytes  # SD 1.5's UNet, before denoising and freed after
    peak = k.overhead * (resident + sequence + window + max(activations, decode, dift))
    if hw.device == "cuda":
        peak += k.context_bytes
    # host: the process, offloaded weights, the cached features, a tile's guidance windows (~12 bytes of
    # pose image / maps / flows per output pixel per frame) and the decoded chunk in float32
    cache = 0
    per_frame_feature = shapes.channels * work.latent_pixels * dtype_bytes
    cache_bytes = (
        per_frame_feature * (work.frames + 1) * (int(shapes.pose_guider) + int(shapes.guidance_maps > 0))
    )
    if cache_bytes <= 0.25 * hw.host_available:
        cache = cache_bytes
    host = k.host_base_bytes + cache + 12 * work.width * work.height * work.rows_per_tile + host_sequence
    host += 12 * work.width * work.height * knobs.decode_chunk
    if knobs.offload != "none" or hw.device == "cpu":
        host += weight_bytes
    return int(peak), int(host), int(cache)


def _seconds(
    work: Workload, hw: Hardware, knobs: Knobs, k: Coefficients, latents_on_host: bool = False
) -> tuple[float, float]:
    """(seconds per denoising step, seconds for all steps plus the VAE decode)."""
    shapes = work.shapes
    scale = (work.latent_pixels / _REF_LATENT) * (shapes.channels / _REF_CHANNELS) ** 2
    per_row = k.unet_tflop_row + (k.controlnet_tflop_row if shapes.controlnet_params else 0.0)
    throughput = hw.tflops * k.efficiency
    tiles_per_gpu = math.ceil(work.tiles / max(1, hw.gpus))
    rows = tiles_per_gpu * work.rows_per_tile * 2  # both CFG halves, batched or not
    step = rows * per_row * scale / throughput
    if knobs.offload == "sequential":
        calls = tiles_per_gpu * (1 if knobs.cfg == "batched" else 2)
        step += calls * shapes.denoisers * 2 / k.pcie_bytes_per_s
    if hw.gpus > 1:  # the all-reduce of the fused predictions and weights
        step += 2 * 4 * 4 * work.latent_pixels * (work.frames + 1) / 10e9
    if latents_on_host:  # each tile's latents over and its prediction back; the scheduler step on the CPU
        window = 4 * 2 * work.latent_pixels * work.rows_per_tile  # one float16 copy of a tile's latents
        step += tiles_per_gpu * 2 * window / k.pcie_bytes_per_s
        step += k.sequence_frame_bytes * work.latent_pixels * (work.frames + 1) / k.host_bytes_per_s
    vae_scale = (work.width * work.height / _REF_PIXELS) * (shapes.vae_channels / 128) ** 2
    decode = work.frames * k.vae_tflop_frame * vae_scale / (throughput / 2)  # memory-bound: half the rate
    return step, work.steps * step + decode


def estimate(
    work: Workload,
    hw: Hardware,
    level: str,
    coefficients: Coefficients | None = None,
    override: Knobs | None = None,
    override_name: str | None = None,
    latents_on_host: bool = False,
) -> Plan:
    """The plan of ``work`` on ``hw`` at memory ``level`` (or with ``override``'s knobs); ``latents_on_host``:
    the whole-length latents and fusion sums on the host (a GPU only: on the CPU they are there anyway)."""
    k = coefficients or Coefficients()
    knobs = override or LEVEL_KNOBS[level]
    latents_on_host = latents_on_host and hw.device == "cuda"
    peak, host, cache = _memory(work, hw, knobs, k, latents_on_host)
    step, total = _seconds(work, hw, knobs, k, latents_on_host)
    budget = gpu_budget(hw) if hw.device == "cuda" else int(0.8 * hw.host_available)
    notes = []
    if peak > budget:
        where = "GPU" if hw.device == "cuda" else "host"
        notes.append(
            f"expected peak {peak / GIB:.1f} GiB exceeds the {budget / GIB:.1f} GiB {where} budget: "
            "lower --tile-size or --size, or use more GPUs"
        )
    if hw.device == "cpu":
        notes.append("no CUDA GPU: the diffusion engine runs on the CPU (tiny test weights only in practice)")
    return Plan(
        engine="diffusion",
        device=hw.name if hw.device == "cpu" else f"cuda ({hw.name})",
        level=None if override is not None else level,
        dtype="float16" if hw.device == "cuda" else "float32",
        attention="sdpa",
        cfg=knobs.cfg,
        offload=knobs.offload,
        forward_chunk=knobs.forward_chunk,
        decode_chunk=knobs.decode_chunk,
        feature_cache="host" if cache else "none",
        latents_on_host=latents_on_host,
        width=work.width,
        height=work.height,
        frames=work.frames,
        steps=work.steps,
        tile_size=work.tile_size,
        tile_overlap=work.tile_overlap,
        tiles=work.tiles,
        gpus=hw.gpus,
        gpu_budget=budget if hw.device == "cuda" else None,
        gpu_peak=peak if hw.device == "cuda" else None,
        host_memory=host if hw.device == "cuda" else max(host, peak),
        seconds_per_step=step,
        seconds_total=total,
        fits=peak <= budget,
        override=override_name,
        calibrated=k.calibrated,
        notes=tuple(notes),
        workload=work,
        hardware=hw,
        coefficients=k,
    )


def make_plan(
    work: Workload,
    hw: Hardware,
    coefficients: Coefficients | None = None,
    speed: str = "default",
    lowest: str | None = None,
) -> Plan:
    """The fastest level whose expected peak fits (the leanest, marked ``fits=False``, when none does).

    ``speed``: ``ANIMATE_DIFFUSION_SPEED``; other than ``default`` its preset's knobs are used as they are.
    ``lowest``: start the search at this level (a retry after an out-of-memory error).
    """
    if speed != "default":
        knobs = speed_knobs(speed, hw)
        return estimate(work, hw, "fast", coefficients, knobs, f"ANIMATE_DIFFUSION_SPEED={speed}")
    levels = available_levels(hw)
    if lowest is not None:
        levels = levels[levels.index(lowest) :]
    plans = (_at_level(work, hw, level, coefficients) for level in levels)
    last = None
    for plan in plans:
        if plan.fits:
            return plan
        last = plan
    return last


def _at_level(work: Workload, hw: Hardware, level: str, coefficients: Coefficients | None) -> Plan:
    """The plan at ``level``: the latents on the GPU if that fits, else on the host where the host has room
    for them (80% of its free memory; leaner, marked as not fitting when even that does not fit)."""
    plan = estimate(work, hw, level, coefficients)
    if plan.fits or hw.device != "cuda":
        return plan
    host = estimate(work, hw, level, coefficients, latents_on_host=True)
    return host if host.host_memory <= 0.8 * hw.host_available else plan


def speed_knobs(speed: str, hw: Hardware) -> Knobs:
    """The knobs of an ``ANIMATE_DIFFUSION_SPEED`` preset (``animate.engines.diffusion.speed_options``)."""
    if speed == "fast":
        return Knobs("batched", None, 8, "none")
    if speed == "low_memory":
        return Knobs("sequential", 1, 2, "model" if hw.device == "cuda" else "none")
    return LEVEL_KNOBS["fast"]


def warp_plan(width: int, height: int, frames: int, host_available: int | None = None) -> Plan:
    """The warp engine runs on the CPU with no weights: nothing to choose, no GPU numbers."""
    return Plan(
        engine="warp",
        device="cpu",
        width=width,
        height=height,
        frames=frames,
        notes=("the warp engine runs on the CPU; memory is flat in length (frames are streamed)",),
    )


def format_table(plan: Plan) -> str:
    """The plan as aligned ``name  value`` lines for the terminal."""
    d = plan.to_dict()
    rows = [
        ("engine", f"{plan.engine} on {plan.device}"),
        ("size", f"{plan.width}x{plan.height}, {plan.frames} frames"),
    ]
    if plan.engine == "diffusion":
        rows += [
            ("memory level", plan.level or f"{plan.override}"),
            ("dtype / attention", f"{plan.dtype} / {plan.attention}"),
            ("CFG", plan.cfg),
            ("offload", plan.offload),
            ("forward chunking", str(plan.forward_chunk) if plan.forward_chunk else "off"),
            ("VAE decode chunk", f"{plan.decode_chunk} frames"),
            ("feature cache", plan.feature_cache),
            ("sequence latents", "host (tile windows on the GPU)" if plan.latents_on_host else plan.device),
            ("tiles", f"{plan.tiles} of {plan.tile_size} frames, overlap {plan.tile_overlap}"),
            ("steps", str(plan.steps)),
            ("GPUs", str(plan.gpus)),
        ]
        if d["gpu_peak_gib"] is not None:
            rows.append(
                ("GPU peak (each)", f"{d['gpu_peak_gib']:.1f} GiB of {d['gpu_budget_gib']:.1f} GiB usable")
            )
        rows += [
            ("host memory", f"{d['host_memory_gib']:.1f} GiB"),
            ("time per step", f"{plan.seconds_per_step:.2f} s"),
            ("time in total", f"{plan.seconds_total / 60:.1f} min (denoising + VAE decode)"),
            ("fits", "yes" if plan.fits else "no"),
            ("calibrated", "yes" if plan.calibrated else "no (coefficients from module shapes; "
             "benchmarks/plan_calibrate.py measures them)"),
        ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)


def calibration_path() -> Path | None:
    """``ANIMATE_PLAN_CALIBRATION``: a JSON of measured coefficients (``benchmarks/plan_calibrate.py``)."""
    value = os.environ.get("ANIMATE_PLAN_CALIBRATION")
    return Path(value) if value else None


def load_coefficients() -> Coefficients:
    path = calibration_path()
    return Coefficients.from_json(path) if path is not None and path.is_file() else Coefficients()


def _safetensors_params(directory: Path) -> int:
    """Parameters of a diffusers component folder, from its safetensors headers (no tensor is read)."""
    total = 0
    for path in sorted(directory.glob("*.safetensors")):
        with path.open("rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def shapes_from_weights(root: str | Path) -> ModelShapes:
    """The networks ``root`` holds, without loading them: a converted folder's own configs and safetensors
    headers, else the published shapes of what ``inspect_weights`` finds."""
    from animate.weights import CONVERTED_DIR, inspect_weights

    report = inspect_weights(root)
    features = report.features
    maps = sum(1 for name, on in features.items() if name.startswith("guidance_") and on)
    converted = Path(root) / CONVERTED_DIR
    if not features.get("fast_load"):
        return ModelShapes.published(controlnet=features.get("dispose", False), guidance_maps=maps,
                                     dift=features.get("dift", False))  # fmt: skip
    index = json.loads((converted / "model_index.json").read_text())
    encoders = converted / "guidance_encoders" / "config.json"
    types = json.loads(encoders.read_text()).get("guidance_types", ()) if encoders.is_file() else ()
    controlnet = (index.get("motion_controlnet") or [None])[0] is not None
    dift = features.get("dift", False) and controlnet
    return ModelShapes(
        unet_params=_safetensors_params(converted / "unet"),
        controlnet_params=_safetensors_params(converted / "motion_controlnet") if controlnet else 0,
        image_encoder_params=_safetensors_params(converted / "image_encoder"),
        vae_params=_safetensors_params(converted / "vae"),
        small_params=_safetensors_params(converted / "pose_guider")
        + _safetensors_params(converted / "guidance_encoders"),
        dift_params=859_520_964 if dift else 0,
        channels=json.loads((converted / "unet" / "config.json").read_text())["block_out_channels"][0],
        vae_channels=json.loads((converted / "vae" / "config.json").read_text())["block_out_channels"][0],
        pose_guider=(index.get("pose_guider") or [None])[0] is not None,
        guidance_maps=len(types),
    )


def plan_job(
    settings: Any,
    reference: str | Path,
    driving: str | Path,
    options: Any,
    *,
    gpu_memory: int | None = None,
    gpus: int = 1,
    frames: int | None = None,
) -> Plan:
    """The plan of ``animate run REFERENCE DRIVING`` with ``options`` (``AnimationOptions``), from the
    inputs' headers and the weights folder only: nothing heavy is loaded. ``gpu_memory``: plan the
    diffusion engine for a card with that much free memory (weights or no GPU here); ``frames``: plan for
    that many output frames instead of the driving video's."""
    from animate.animator import MAX_FPS, MIN_FPS, default_size
    from animate.engines import diffusion_unavailable_reason
    from animate.errors import AnimateError
    from animate.media import load_image, open_video
    from animate.presets import get_preset, preprocess_reference, sample_frames
    from pipelines.parity import TILES

    image = load_image(reference, settings.media)
    video = open_video(driving, settings.media)
    preset = get_preset(options.preset) if options.preset else None
    if preset is None:
        width, height = options.size or default_size(image.width, image.height)
        fps = float(options.fps or min(max(video.fps, MIN_FPS), MAX_FPS))
        resample = options.fps or (None if fps == video.fps else fps)
        count = video.output_frame_count(resample, options.max_frames)
    else:
        rgb, _ = preprocess_reference(image.rgb, preset, image.mask)
        height, width = rgb.shape[:2]
        count = sample_frames(video, preset, options.max_frames)[1]
    count = frames or count
    host = Hardware.detect(gpu_memory=None).host_available if gpu_memory is None else None
    if options.engine == "warp":
        return warp_plan(width, height, count, host)
    reason = (
        None if gpu_memory is not None else diffusion_unavailable_reason(settings, options.engine == "auto")
    )
    if reason is not None:
        if options.engine == "diffusion":
            raise AnimateError("engine_unavailable", f"the diffusion engine cannot run: {reason}")
        plan = warp_plan(width, height, count, host)
        return dataclasses.replace(plan, notes=(f"diffusion not used: {reason}", *plan.notes))
    notes: list[str] = []
    from animate.weights import inspect_weights

    weights = Path(settings.weights_dir)
    if weights.is_dir() and inspect_weights(weights).features.get("diffusion"):
        shapes = shapes_from_weights(weights)
    else:
        shapes = ModelShapes.published()
        notes.append("no weights here: planned for MimicMotion 1.1 (SVD-xt + pose guider)")
    system = preset.name if preset else ("dispose" if shapes.controlnet_params else "mimicmotion")
    if not shapes.pose_guider and not shapes.controlnet_params:
        system = "svd"
    tile_size, tile_overlap = TILES[system]
    if preset is not None:
        tile_size, tile_overlap = preset.tile_size, preset.tile_overlap
    work = Workload(
        width=width,
        height=height,
        frames=count,
        steps=25 if options.steps is None else options.steps,
        tile_size=options.tile_size or tile_size,
        tile_overlap=tile_overlap if options.tile_overlap is None else options.tile_overlap,
        shapes=shapes,
    )
    plan = make_plan(
        work, Hardware.detect(gpu_memory, gpus), load_coefficients(), speed=settings.diffusion_speed
    )
    return dataclasses.replace(plan, notes=(*notes, *plan.notes))
