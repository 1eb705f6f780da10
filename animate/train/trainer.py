"""``animate train run``: fine-tune the guidance paths of ``AnimationPipeline`` on prepared clips, on
``accelerate``.

One optimizer step = ``grad_accum`` micro-batches of ``batch`` clips on each of the ``world`` processes. The
loss is ``animate.train.forward.sample_loss`` (SVD's EDM objective through the pipeline's own conditioning
path) averaged over the clips of a micro-batch.

Data parallel without wrapping: every process holds the whole pipeline; the trainable parameters' gradients
are averaged over the processes (``accelerator.reduce``) before each optimizer step, so every rank applies
the same update and the weights stay identical. The sampler (``EpochSampler``) shuffles the dataset once
per epoch from ``(seed, epoch)``, cuts it to whole global batches and gives rank ``r`` the ``r``-th slice
of each, so an epoch sees each clip at most once across all ranks, and a run on ``n`` processes with
``batch`` clips each sees the same clips per step as one process with ``n * batch``. Each clip's random
draws (noise level, noise, dropout) come from ``(seed, epoch, index)`` alone, so those two runs compute the
same update (within float tolerance: the sum is ordered differently).

``fsdp=True`` (``--fsdp``, under a plain ``accelerate launch --multi_gpu``): the UNet is sharded over the
processes with FSDP2's in-place ``torch.distributed.fsdp.fully_shard`` (each down/mid/up block, then the
UNet), so each rank keeps ``1/world`` of the UNet's weights, of its trained weights' gradients and of their
AdamW state; the blocks are all-gathered for their forward and backward, and FSDP averages the UNet's
gradients (reduce-scatter). The other trained parts stay whole on every rank and are averaged as above. The
module classes and the pipeline's hooks are unchanged, so the forward is the same code. Checkpoints and
``final/`` hold full (gathered) tensors, the same files as a data-parallel run; a checkpoint resumes on any
process count. Not with ``--ema`` or ``fp16`` (use ``bf16``). accelerate's own FSDP plugin
(``distributed_type: FSDP``) is refused: it wraps one model given to ``accelerator.prepare`` and pairs each
optimizer with it in ``save_state``, while this trainer trains parameters spread over the pipeline's modules.

Checkpoints (``RUN_DIR/checkpoints/step-NNNNNNN``, ``accelerator.save_state``): the optimizer (and fp16
loss scaler), the trainable weights, the EMA, the learning-rate schedule and the position (step, epoch,
batches done in the epoch), plus ``adapter/``: the parts as ``final/`` holds them (usable with
``--adapter``); the last ``keep_checkpoints`` are kept. ``resume="latest"`` (or a path) restores
all of it and continues exactly where the run stopped. ``RUN_DIR/final`` holds the trained parts
(``pipelines.adapters`` layout; the EMA weights when EMA is on) for ``animate run --adapter``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from animate.errors import AnimateError
from animate.train.forward import ForwardOptions, sample_generator, sample_loss
from animate.train.objective import EDMObjective

log = logging.getLogger("animate.train")

TRAINABLE = ("pose_guider", "guidance", "motion_controlnet", "lora", "temporal", "identity")
#: Trainable sets that are whole pipeline modules: (the --train name, the pipeline attribute)
MODULE_PARTS = (
    ("pose_guider", "pose_guider"),
    ("guidance", "guidance_encoders"),
    ("motion_controlnet", "motion_controlnet"),
    ("identity", "identity_adapter"),
)
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
ADAPTER_SUBDIR = "adapter"  # inside each checkpoint: the parts as in final/
VALIDATION_DIR = "validation"
LOGS_DIR = "logs"
# parameters of the UNet's temporal layers (``temporal`` unfreezes them)
TEMPORAL_KEYS = ("temporal_transformer_blocks", "temporal_res_block", "time_mixer", "time_pos_embed")


class TrainError(AnimateError):
    """Bad training input or setup; ``code`` ``train_invalid`` unless given."""

    code = "train_invalid"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(code, message)


@dataclass
class TrainConfig:
    output_dir: Path
    base: Path | None = None  # weights dir (or an AnimationPipeline dir); None: a pipeline is passed in
    data_dir: Path | None = None
    train: tuple[str, ...] = ("pose_guider", "guidance")
    frames: int = 16
    size: tuple[int, int] | None = None  # (width, height); None: the shards'
    stride: int = 1
    steps: int = 20000
    lr: float = 1e-5
    batch: int = 1
    grad_accum: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    resume: str | None = None  # "latest" or a checkpoint folder
    validate_every: int = 500  # 0: never
    validation_steps: int = 10  # denoising steps of the validation video
    validation_guidance: float = 2.0
    checkpoint_every: int = 500  # 0: only at the end and on Ctrl-C
    keep_checkpoints: int = 3
    seed: int = 0
    lr_schedule: str = "constant_with_warmup"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    weight_decay: float = 1e-2
    adam_8bit: bool = False
    ema: bool = False
    ema_decay: float = 0.9999
    lora_rank: int = 16
    conditioning_dropout: float = 0.1
    face_loss_weight: float = 0.0  # identity: extra loss weight inside the face boxes
    noise_aug_strength: float = 0.02
    prepend_reference: bool = True
    num_workers: int = 0
    log_every: int = 1
    progress: bool = True
    fsdp: bool = False  # shard the UNet over the processes (FSDP2 fully_shard; module docstring)

    def validate(self) -> None:
        unknown = set(self.train) - set(TRAINABLE)
        if unknown or not self.train:
            raise TrainError(
                f"--train takes a comma list of {', '.join(TRAINABLE)}; got {','.join(self.train)}"
            )
        if self.mixed_precision not in MIXED_PRECISION:
            raise TrainError(
                f"--mixed-precision must be one of {MIXED_PRECISION}, got {self.mixed_precision}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainError(f"--lr-schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule}")
        for name in ("frames", "steps", "batch", "grad_accum", "keep_checkpoints", "lora_rank", "log_every"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.conditioning_dropout <= 1:
            raise TrainError(f"conditioning dropout must be in [0, 1], got {self.conditioning_dropout}")
        if self.face_loss_weight < 0:
            raise TrainError(f"face loss weight must be >= 0, got {self.face_loss_weight}")
        if self.lr <= 0:
            raise TrainError(f"--lr must be > 0, got {self.lr}")
        if self.fsdp and self.ema:
            raise TrainError("--ema is not supported with --fsdp yet (the EMA would need sharding too)")
        if self.fsdp and self.mixed_precision == "fp16":
            raise TrainError(
                "--fsdp runs with --mixed-precision bf16 or no (fp16 loss scaling is not sharded)"
            )


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)  # per optimizer step, mean over the global batch
    # (step, pixel L1, latent L1) of the validation clip against its ground truth
    validation: list[tuple[int, float, float]] = field(default_factory=list)
    final_dir: Path | None = None
    interrupted: bool = False
    seen: list[list[int]] = field(default_factory=list)  # this rank's dataset indices, per optimizer step
    main_process: bool = True  # False on the other ranks of a multi-process run


class EpochSampler(Sampler[int]):
    """This rank's indices of one epoch: a permutation from ``(seed, epoch)`` cut to whole global batches
    (``batch * world``); step ``k`` of the epoch gives rank ``r`` the positions ``k * batch * world + r *
    batch ...`` of it. ``start_batch`` skips the first micro-batches (resume)."""

    def __init__(self, size: int, batch: int, rank: int, world: int, seed: int) -> None:
        self.size, self.batch, self.rank, self.world, self.seed = size, batch, rank, world, seed
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.size // (self.batch * self.world)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def indices(self) -> list[int]:
        order = torch.randperm(
            self.size, generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        )
        global_batch = self.batch * self.world
        mine = []
        for step in range(self.start_batch, self.batches_per_epoch):
            first = step * global_batch + self.rank * self.batch
            mine += order[first : first + self.batch].tolist()
        return mine

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch


class _TrainState:
    """Position of the run, saved in every checkpoint."""

    def __init__(self) -> None:
        self.step = 0
        self.epoch = 0
        self.batches_done = 0  # micro-batches of the current epoch already used

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step, self.epoch, self.batches_done = state["step"], state["epoch"], state["batches_done"]


class _Weights:
    """The trainable parameters by name, for ``accelerator.save_state`` (the frozen base is not saved)."""

    def __init__(self, named: dict[str, torch.nn.Parameter]) -> None:
        self.named = named

    def state_dict(self) -> dict[str, torch.Tensor]:
        # full tensors (a sharded one is gathered: every rank calls this, in the same order)
        return {k: _full(p.detach()).cpu().clone() for k, p in self.named.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.named):
            raise TrainError("the checkpoint trains other parameters than this run (another --train?)")
        with torch.no_grad():
            for k, p in self.named.items():
                p.copy_(_shard_like(state[k], p))


def _is_sharded(tensor: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP shard (a collective: every rank must call it), else ``tensor``."""
    return tensor.full_tensor() if _is_sharded(tensor) else tensor


def _shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` cut as ``like`` is sharded (every rank holds ``full``), else ``full``."""
    if not _is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(
        full.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None
    )


def _gather_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """``Optimizer.state_dict`` post-hook: sharded moments gathered, so a checkpoint holds full tensors."""
    state["state"] = {
        index: {k: _full(v).cpu() if _is_sharded(v) else v for k, v in state["state"][index].items()}
        for index in sorted(state["state"])
    }
    return state


def _shard_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """``Optimizer.load_state_dict`` pre-hook: full moments cut to this rank's shard of their parameter."""
    by_index = {}
    for group, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
        by_index |= dict(zip(saved["params"], group["params"], strict=True))
    state = dict(state)
    state["state"] = {
        index: {
            k: _shard_like(v, by_index[index]) if k != "step" and torch.is_tensor(v) else v
            for k, v in state["state"][index].items()
        }
        for index in sorted(state["state"])
    }
    return state


def shard_unet(unet: torch.nn.Module) -> None:
    """FSDP2 ``fully_shard`` in place: each down/mid/up block, then the UNet (its remaining parameters)."""
    from torch.distributed.fsdp import fully_shard

    for block in (
        *unet.down_blocks,
        *([unet.mid_block] if unet.mid_block is not None else []),
        *unet.up_blocks,
    ):
        fully_shard(block)
    fully_shard(unet)


def _fsdp_modules(module: torch.nn.Module) -> list[torch.nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def clip_grad_norm(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (L2, ``max_norm / (norm + 1e-6)`` clamped to 1) over parameters
    some of which are FSDP shards: a shard's norm is its whole tensor's (a collective)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = [
        _full(torch.linalg.vector_norm(g.float())) if _is_sharded(g) else torch.linalg.vector_norm(g.float())
        for g in grads
    ]
    total = torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    with torch.no_grad():
        for g in grads:
            g.mul_(scale.to(g.device, g.dtype))
    return total


def load_base_pipeline(base: str | Path, dtype: torch.dtype = torch.float32):
    """The pipeline to train on: an ``AnimationPipeline`` folder, or a weights folder (its converted
    ``animation-pipeline/``, else SVD-xt + MimicMotion + Champ + DisPose as the diffusion engine loads)."""
    from animate.weights import (
        CHAMP_DIR,
        CHAMP_FILES,
        CONVERTED_DIR,
        DISPOSE_FILE,
        MIMICMOTION_FILE,
        SVD_DIR,
    )
    from pipelines import AnimationPipeline, build_pipeline

    base = Path(base)
    for candidate in (base, base / CONVERTED_DIR):
        if (candidate / "model_index.json").is_file():
            return AnimationPipeline.from_pretrained(candidate, dtype=dtype)
    if not (base / SVD_DIR / "model_index.json").is_file():
        raise TrainError(
            f"{base} holds no base weights (an animation-pipeline/ folder or {SVD_DIR}/; see weights/README.md)"
        )
    champ = {k: base / CHAMP_DIR / f for k, f in CHAMP_FILES.items() if (base / CHAMP_DIR / f).is_file()}
    mimic = base / MIMICMOTION_FILE
    return build_pipeline(
        base / SVD_DIR,
        mimicmotion=mimic if mimic.is_file() else None,
        champ_files=champ,
        dtype=dtype,
        dispose=base / DISPOSE_FILE if (base / DISPOSE_FILE).is_file() else None,
    )


def _ensure_parts(pipe: Any, train: Sequence[str], guidance_types: Sequence[str]) -> None:
    """Fresh (zero-output) modules for trained parts the base lacks, sized to the UNet and VAE."""
    from controlnets import GuidanceFusion, MotionControlNet, PoseGuider

    stages = int(math.log2(pipe.vae_scale_factor)) + 1
    width = pipe.unet.config.block_out_channels[0]
    if "pose_guider" in train and pipe.pose_guider is None:
        pipe.register_modules(
            pose_guider=PoseGuider(block_out_channels=(16, 32, 64, 128)[:stages], out_channels=width)
        )
    if "guidance" in train and pipe.guidance_encoders is None:
        pipe.register_modules(
            guidance_encoders=GuidanceFusion(
                guidance_types=tuple(guidance_types),
                block_out_channels=(16, 32, 96, 256)[:stages],
                out_channels=width,
            )
        )
    if "motion_controlnet" in train and pipe.motion_controlnet is None:
        controlnet = MotionControlNet.from_unet(
            pipe.unet, residual_mode="once", conditioning_embedding_out_channels=(16, 32, 96, 256)[:stages]
        )
        pipe.register_modules(motion_controlnet=controlnet)
    if "identity" in train and getattr(pipe, "identity_adapter", None) is None:
        from controlnets import IdentityAdapter

        # dlib's 128-d embeddings, as prepare stores them and inference computes them
        pipe.register_modules(identity_adapter=IdentityAdapter.for_unet(pipe.unet, embedding_dim=128))


def trainable_parameters(pipe: Any, train: Sequence[str]) -> dict[str, torch.nn.Parameter]:
    """Freeze everything, then unfreeze the chosen parts; ``{qualified name: parameter}``."""
    for module in (pipe.vae, pipe.image_encoder, pipe.unet, pipe.pose_guider, pipe.guidance_encoders):
        if module is not None:
            module.requires_grad_(False).eval()
    for module in (pipe.motion_controlnet, getattr(pipe, "identity_adapter", None)):
        if module is not None:
            module.requires_grad_(False).eval()
    named: dict[str, torch.nn.Parameter] = {}
    for part, attr in MODULE_PARTS:
        if part in train:
            module = getattr(pipe, attr)
            module.requires_grad_(True).train()
            named |= {f"{attr}.{k}": p for k, p in module.named_parameters()}
    for k, p in pipe.unet.named_parameters():
        lora = "lora" in train and "lora_" in k
        temporal = "temporal" in train and any(key in k for key in TEMPORAL_KEYS) and "lora_" not in k
        if lora or temporal:
            p.requires_grad_(True)
            named[f"unet.{k}"] = p
    return named


def _optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.adam_8bit:
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, lr=config.lr, weight_decay=config.weight_decay)
        except ImportError:
            log.warning("--adam-8bit: bitsandbytes is not installed; using torch AdamW")
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def latest_checkpoint(run_dir: Path) -> Path | None:
    folders = sorted((run_dir / CHECKPOINTS_DIR).glob("step-*"))
    return folders[-1] if folders else None


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(F, H, W, 3)`` or ``(F, 3, H, W)`` in ``[0, 1]`` -> uint8 ``(F, H, W, 3)``."""
    array = frames.detach().cpu().float().numpy() if isinstance(frames, torch.Tensor) else frames
    if array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)
    return (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)


def validation_inputs(item: dict[str, Any], pipe: Any) -> dict[str, Any]:
    """``AnimationPipeline.__call__`` arguments for a dataset sample (no batch axis)."""
    from PIL import Image

    reference = _to_uint8(((item["reference"] + 1) / 2)[None])[0]
    known = set(getattr(pipe.guidance_encoders, "guidance_types", None) or ())
    maps = {k: v for k, v in (item.get("guidance_maps") or {}).items() if k in known}
    reference_maps = {k: v[None] for k, v in (item.get("reference_guidance") or {}).items() if k in known}
    kwargs: dict[str, Any] = {
        "image": Image.fromarray(reference),
        "pose_images": item.get("pose_images") if pipe.pose_guider is not None else None,
        "reference_pose_image": item["reference_pose"][None] if pipe.pose_guider is not None else None,
        "guidance_maps": maps or None,
        "reference_guidance_maps": reference_maps or None,
    }
    if pipe.motion_controlnet is not None:
        kwargs |= {"dense_flow": item.get("dense_flow"), "trajectory_flow": item.get("trajectory_flow")}
    if getattr(pipe, "identity_adapter", None) is not None and float(item.get("reference_has_face", 0)) > 0:
        kwargs["face_embedding"] = item["reference_face_embedding"]
    return kwargs


def render_validation(
    pipe: Any, item: dict[str, Any], config: TrainConfig, options: ForwardOptions
) -> tuple[np.ndarray, float, float]:
    """The pipeline's video for ``item`` (the training rules, one tile, a fixed seed): ``(F, H, W, 3)`` in
    ``[0, 1]``, its mean L1 distance to the clip's frames (in ``[0, 1]``) and the mean L1 distance of its
    latents to the frames' latents (what the denoiser is trained on, free of the VAE's reconstruction error)."""
    from animate.train.forward import encode_latents, pipeline_rules

    frames = item["frames"]
    num_frames, _, height, width = frames.shape
    latents = pipe(
        **validation_inputs(item, pipe),
        height=height,
        width=width,
        num_frames=num_frames,
        tile_size=num_frames + int(options.prepend_reference),
        tile_overlap=0,
        prepend_reference=options.prepend_reference,
        num_inference_steps=config.validation_steps,
        min_guidance_scale=config.validation_guidance,
        max_guidance_scale=config.validation_guidance,
        fps=options.fps_id,
        motion_bucket_id=options.motion_bucket_id,
        noise_aug_strength=options.noise_aug_strength,
        generator=torch.Generator(device=pipe.unet.device).manual_seed(config.seed),
        output_type="latent",
        **pipeline_rules(pipe),
    ).frames
    with torch.no_grad():
        video = pipe.decode_latents(latents.to(pipe.vae.dtype), num_frames, num_frames)
        result = pipe.video_processor.postprocess_video(video=video, output_type="np")[0]
        truth_latents = encode_latents(pipe, frames.to(pipe.unet.device))
    latent_l1 = float((latents[0].float() - truth_latents.to(latents.device)).abs().mean())
    truth = ((frames.float() + 1) / 2).permute(0, 2, 3, 1).numpy()
    return result, float(np.abs(result - truth).mean()), latent_l1


def write_validation_video(path: Path, item: dict[str, Any], result: np.ndarray, fps: float = 8.0) -> None:
    """reference | result | guidance (the pose images, else the first guidance map), side by side."""
    from animate.media.writer import write_video

    reference = _to_uint8(((item["reference"] + 1) / 2)[None])[0]
    guidance = item.get("pose_images")
    if guidance is None and item.get("guidance_maps"):
        guidance = next(iter(item["guidance_maps"].values()))
    result_u8 = _to_uint8(result)
    guide_u8 = _to_uint8(guidance) if guidance is not None else np.zeros_like(result_u8)
    rows = [np.concatenate([reference, r, g], axis=1) for r, g in zip(result_u8, guide_u8, strict=True)]
    write_video(path, rows, fps)


def _collate(samples: list[dict]) -> list[dict]:
    return samples  # per-clip dicts: the loss runs clip by clip (each clip has its own guidance)


class Trainer:
    """One training run (module docstring). ``pipeline``: train this one (tests) instead of loading
    ``config.base``; ``dataset``: instead of ``ClipDataset(config.data_dir, ...)``."""

    def __init__(
        self,
        config: TrainConfig,
        dataset: Dataset | None = None,
        pipeline: Any = None,
        accelerator: Any = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        config.validate()
        self.config = config
        self.run_dir = Path(config.output_dir)
        cpu = not torch.cuda.is_available()
        self.accelerator = accelerator or Accelerator(
            mixed_precision="no" if cpu and config.mixed_precision == "fp16" else config.mixed_precision,
            gradient_accumulation_steps=config.grad_accum,
            log_with="tensorboard",
            project_config=ProjectConfiguration(
                project_dir=str(self.run_dir), logging_dir=str(self.run_dir / LOGS_DIR)
            ),
            cpu=cpu,
        )
        acc = self.accelerator
        if acc.distributed_type.name in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
            raise TrainError(
                f"accelerate's {acc.distributed_type.name} launch is not supported by animate train: launch "
                "with --multi_gpu (data parallel), and add `animate train run --fsdp` to shard the UNet over "
                "the processes (animate/train/configs/fsdp_8gpu.yaml)"
            )
        if dataset is None:
            if config.data_dir is None:
                raise TrainError("no training data: pass --data DATA_DIR")
            from animate.train.data import ClipDataset

            dataset = ClipDataset(
                config.data_dir,
                frames=config.frames,
                size=config.size,
                seed=config.seed,
                stride=config.stride,
            )
        if len(dataset) < config.batch * acc.num_processes:
            raise TrainError(
                f"the data holds {len(dataset)} usable clips, fewer than one global batch "
                f"({config.batch} x {acc.num_processes} processes)"
            )
        self.dataset = dataset
        if pipeline is None:
            if config.base is None:
                raise TrainError("no base weights: pass --base WEIGHTS_DIR")
            pipeline = load_base_pipeline(config.base)
        self.pipe = pipeline
        self.pipe.set_progress_bar_config(disable=True)
        first = dataset[0]
        if "identity" in config.train and "reference_face_embedding" not in first:
            raise TrainError(
                "--train identity needs face data: prepare the clips again (animate train prepare stores faces)",
                "no_faces",
            )
        # fresh parts and LoRA A matrices are drawn from the run's seed: the same on every rank (each rank
        # builds its own copy, or its shard of one) and in a single-process run
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            _ensure_parts(self.pipe, config.train, tuple((first.get("guidance_maps") or {}).keys()))
            if "lora" in config.train:
                from pipelines.adapters import inject_lora

                self.lora_config = inject_lora(self.pipe.unet, config.lora_rank)
        self.pipe.to(acc.device)
        self.named = trainable_parameters(self.pipe, config.train)
        if not self.named:
            raise TrainError(f"nothing to train for --train {','.join(config.train)}")
        self._cast_frozen()
        if config.gradient_checkpointing:
            self.pipe.unet.enable_gradient_checkpointing()
        self.fsdp = config.fsdp and acc.num_processes > 1
        if config.fsdp and not self.fsdp:
            log.warning("--fsdp with one process: nothing to shard, training unsharded")
        if self.fsdp:
            shard_unet(self.pipe.unet)  # replaces the UNet's parameters by their shards (same names)
            sharded = dict(self.pipe.unet.named_parameters())
            self.named = {
                k: sharded[k.removeprefix("unet.")] if k.startswith("unet.") else p
                for k, p in self.named.items()
            }
        params = list(self.named.values())
        from diffusers.optimization import get_scheduler

        optimizer = _optimizer(params, config)
        if self.fsdp:
            optimizer.register_state_dict_post_hook(_gather_optimizer_state)
            optimizer.register_load_state_dict_pre_hook(_shard_optimizer_state)
        self.optimizer = acc.prepare(optimizer)
        self.lr_scheduler = get_scheduler(
            config.lr_schedule,
            self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer,
            num_warmup_steps=config.warmup_steps,
            num_training_steps=config.steps,
        )
        self.ema = None
        if config.ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(params, decay=config.ema_decay)
        self.state = _TrainState()
        self.weights = _Weights(self.named)
        for obj in (self.weights, self.lr_scheduler, self.state, *([self.ema] if self.ema else [])):
            acc.register_for_checkpointing(obj)
        self.sampler = EpochSampler(
            len(dataset), config.batch, acc.process_index, acc.num_processes, config.seed
        )
        if self.sampler.batches_per_epoch < config.grad_accum:
            raise TrainError(
                f"one optimizer step needs {config.grad_accum} micro-batches, an epoch has "
                f"{self.sampler.batches_per_epoch}"
            )
        self.objective = EDMObjective()
        self.forward_options = ForwardOptions(
            prepend_reference=config.prepend_reference,
            conditioning_dropout=config.conditioning_dropout,
            face_loss_weight=config.face_loss_weight,
            noise_aug_strength=config.noise_aug_strength,
        )

    def _cast_frozen(self) -> None:
        """Frozen modules in the mixed-precision dtype (memory), trained ones stay float32."""
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.accelerator.mixed_precision)
        if dtype is None:
            return
        if not (dtype == torch.float16 and getattr(self.pipe.vae.config, "force_upcast", False)):
            self.pipe.vae.to(dtype=dtype)  # SVD's VAE overflows in fp16 (force_upcast): it stays float32
        self.pipe.image_encoder.to(dtype=dtype)
        if not ({"lora", "temporal"} & set(self.config.train)):
            self.pipe.unet.to(dtype=dtype)

    # -- checkpoints -----------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        path = self.run_dir / CHECKPOINTS_DIR / f"step-{self.state.step:07d}"
        acc.save_state(str(path))
        gathered = self._unet_state() if self.fsdp else None  # every rank takes part
        if acc.is_main_process:
            self._write_parts(path / ADAPTER_SUBDIR, gathered)  # usable as --adapter as it is
        if acc.is_main_process:
            old = sorted((self.run_dir / CHECKPOINTS_DIR).glob("step-*"))[: -self.config.keep_checkpoints]
            for folder in old:
                shutil.rmtree(folder, ignore_errors=True)
        acc.wait_for_everyone()
        return path

    def resume(self, which: str) -> Path:
        path = latest_checkpoint(self.run_dir) if which == "latest" else Path(which)
        if path is None or not path.is_dir():
            raise TrainError(f"no checkpoint to resume from ({which}) in {self.run_dir / CHECKPOINTS_DIR}")
        self.accelerator.load_state(str(path))
        return path

    def save_final(self) -> Path:
        """The trained parts in ``pipelines.adapters``' layout in ``RUN_DIR/final`` (EMA weights when EMA is
        on)."""
        final = self.run_dir / FINAL_DIR
        gathered = self._unet_state() if self.fsdp else None  # every rank takes part
        if self.accelerator.is_main_process:
            self._write_parts(final, gathered)
        self.accelerator.wait_for_everyone()
        return final

    def _unet_state(self) -> dict[str, torch.Tensor]:
        """The trained UNet tensors, whole, on the CPU, under the UNet's parameter names (with ``--fsdp`` a
        collective: every rank calls it)."""
        return {
            k.removeprefix("unet."): _full(p.detach()).cpu().clone()
            for k, p in self.named.items()
            if k.startswith("unet.")
        }

    def _write_parts(self, folder: Path, gathered: dict[str, torch.Tensor] | None = None) -> None:
        """``folder`` (replaced) gets the trained parts, ``save_pretrained`` each, and ``adapter.json``;
        ``gathered``: the trained UNet tensors (``_unet_state``) when the UNet is sharded."""
        from pipelines.adapters import (
            ADAPTER_FILE,
            ADAPTER_FORMAT,
            LORA_DIR,
            LORA_WEIGHTS,
            TEMPORAL_DIR,
            TEMPORAL_WEIGHTS,
            save_lora,
        )

        params = list(self.named.values())
        if self.ema is not None:
            self.ema.store(params)
            self.ema.copy_to(params)
        try:
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            train = self.config.train
            for part, attr in MODULE_PARTS:
                if part in train:
                    getattr(self.pipe, attr).save_pretrained(folder / attr)
            unet_state = gathered if gathered is not None else self._unet_state()
            if "temporal" in train:
                self._save_temporal(folder / TEMPORAL_DIR / TEMPORAL_WEIGHTS, unet_state)
            if "lora" in train and gathered is None:
                save_lora(self.pipe.unet, self.lora_config, folder / LORA_DIR)
            elif "lora" in train:  # save_lora's files, from the gathered tensors
                from peft import get_peft_model_state_dict
                from safetensors.torch import save_file

                (folder / LORA_DIR).mkdir(parents=True)
                self.lora_config.save_pretrained(str(folder / LORA_DIR))
                lora = get_peft_model_state_dict(self.pipe.unet, state_dict=unet_state)
                save_file({k: v.contiguous() for k, v in lora.items()}, str(folder / LORA_DIR / LORA_WEIGHTS))
            info = {
                "format": ADAPTER_FORMAT,
                "parts": list(train),
                "steps": self.state.step,
                "ema": self.ema is not None,
                "base": str(self.config.base) if self.config.base is not None else None,
                "frames": self.config.frames,
                "prepend_reference": self.config.prepend_reference,
            }
            (folder / ADAPTER_FILE).write_text(json.dumps(info, indent=2))
        finally:
            if self.ema is not None:
                self.ema.restore(params)

    def _save_temporal(self, file: Path, unet_state: dict[str, torch.Tensor]) -> None:
        """The trained temporal tensors under the plain UNet's keys (peft's ``base_layer`` unwrapped)."""
        from safetensors.torch import save_file

        state = {
            k.replace(".base_layer.", "."): v.contiguous() for k, v in unet_state.items() if "lora_" not in k
        }
        file.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(file))

    # -- the loop --------------------------------------------------------------------------------------------

    def _batches(self) -> Iterator[tuple[int, list[dict]]]:
        """(epoch, micro-batch) from the run's position on, forever."""
        while True:
            epoch = self.state.epoch
            self.sampler.set_epoch(epoch, self.state.batches_done)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            loader = DataLoader(
                self.dataset,
                batch_size=self.config.batch,
                sampler=self.sampler,
                num_workers=self.config.num_workers,
                collate_fn=_collate,
                drop_last=True,
            )
            for batch in loader:
                yield epoch, batch
            self.state.epoch += 1
            self.state.batches_done = 0

    def _validate(self, step: int, result: TrainResult) -> None:
        acc = self.accelerator
        if acc.is_main_process or self.fsdp:  # a sharded UNet's forward needs every rank
            params = list(self.named.values())
            if self.ema is not None:
                self.ema.store(params)
                self.ema.copy_to(params)
            trained = [
                module
                for module in (
                    self.pipe.pose_guider,
                    self.pipe.guidance_encoders,
                    self.pipe.motion_controlnet,
                )
                if module is not None and module.training
            ]
            for module in trained:
                module.eval()
            try:
                item = self._validation_item()
                video, l1, latent_l1 = render_validation(self.pipe, item, self.config, self.forward_options)
            finally:
                if self.ema is not None:
                    self.ema.restore(params)
                for module in trained:
                    module.train()
        if acc.is_main_process:
            write_validation_video(self.run_dir / VALIDATION_DIR / f"step-{step:07d}.mp4", item, video)
            result.validation.append((step, l1, latent_l1))
            acc.log({"validation/l1": l1, "validation/latent_l1": latent_l1}, step=step)
        acc.wait_for_everyone()

    def _validation_item(self) -> dict[str, Any]:
        """Sample 0 of epoch 0: the same clip, reference and window at every validation."""
        if not hasattr(self.dataset, "set_epoch"):
            return self.dataset[0]
        self.dataset.set_epoch(0)
        try:
            return self.dataset[0]
        finally:
            self.dataset.set_epoch(self.state.epoch)

    def _write_rank_record(self, result: TrainResult) -> None:
        """``logs/rank-R.json``: the clips this process trained on per step and a checksum of its trained
        weights (every rank must end with the same), for auditing a multi-process run."""
        import hashlib

        digest = hashlib.sha256()
        for name in sorted(self.named):
            digest.update(name.encode())
            digest.update(_full(self.named[name].detach()).float().cpu().numpy().tobytes())
        record = {
            "rank": self.accelerator.process_index,
            "processes": self.accelerator.num_processes,
            "steps": self.state.step,
            "clips_per_step": result.seen,
            "weights_sha256": digest.hexdigest(),
        }
        path = self.run_dir / LOGS_DIR / f"rank-{self.accelerator.process_index}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))

    def _reduce_gradients(self) -> None:
        """Average the trainable gradients over the processes (one flat all-reduce)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return
        params = [p for p in self.named.values() if not _is_sharded(p)]  # FSDP averages its shards
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        flat = acc.reduce(flat, reduction="mean")
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n

    def run(self, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
        from tqdm.auto import tqdm

        config, acc = self.config, self.accelerator
        if config.resume:
            self.resume(config.resume)
        result = TrainResult(steps=self.state.step, main_process=acc.is_main_process)
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(_jsonable(asdict(config)), indent=2))
        acc.init_trackers("train", config={k: str(v) for k, v in asdict(config).items()})
        bar = tqdm(
            total=config.steps,
            initial=self.state.step,
            disable=not (config.progress and acc.is_local_main_process),
            desc="train",
        )
        params = list(self.named.values())
        micro, window_losses, seen = 0, [], []
        started, samples = time.perf_counter(), 0
        try:
            batches = self._batches()
            while self.state.step < config.steps:
                epoch, batch = next(batches)
                losses = []
                for item in batch:
                    generator = sample_generator(config.seed, epoch, int(item["index"]))
                    loss = sample_loss(
                        self.pipe, item, self.objective, generator, self.forward_options, acc.autocast()
                    )
                    acc.backward(loss / len(batch))
                    losses.append(loss.detach())
                    seen.append(int(item["index"]))
                window_losses.append(torch.stack(losses).mean())
                samples += len(batch)
                self.state.batches_done += 1
                micro += 1
                if micro % config.grad_accum:
                    continue
                self._reduce_gradients()
                if self.fsdp:
                    grad_norm = clip_grad_norm(params, config.max_grad_norm)
                else:
                    grad_norm = acc.clip_grad_norm_(params, config.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.step(params)
                self.state.step += 1
                step_loss = acc.reduce(torch.stack(window_losses).mean(), reduction="mean").item()
                window_losses = []
                result.losses.append(step_loss)
                result.seen.append(seen)
                seen = []
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}")
                if self.state.step % config.log_every == 0:
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    acc.log(
                        {
                            "train/loss": step_loss,
                            "train/lr": self.lr_scheduler.get_last_lr()[0],
                            "train/grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
                            "train/samples_per_second": samples * acc.num_processes / elapsed,
                            "train/memory_mb": _memory_mb(acc.device),
                        },
                        step=self.state.step,
                    )
                    started, samples = time.perf_counter(), 0
                if on_step is not None:
                    on_step(self.state.step, step_loss)
                if config.validate_every and self.state.step % config.validate_every == 0:
                    self._validate(self.state.step, result)
                if config.checkpoint_every and self.state.step % config.checkpoint_every == 0:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            # the position is at the last finished optimizer step: drop a half-accumulated step's gradients
            self.optimizer.zero_grad(set_to_none=True)
            self.state.batches_done -= micro % config.grad_accum
            log.warning("interrupted: saving a checkpoint at step %d", self.state.step)
            self.save_checkpoint()
            result.interrupted = True
            bar.close()
            acc.end_training()
            result.steps = self.state.step
            return result
        bar.close()
        if not config.checkpoint_every or self.state.step % config.checkpoint_every:
            self.save_checkpoint()
        self._write_rank_record(result)
        result.final_dir = self.save_final()
        for module in (
            self.pipe.pose_guider,
            self.pipe.guidance_encoders,
            self.pipe.motion_controlnet,
            getattr(self.pipe, "identity_adapter", None),
        ):
            if module is not None:
                module.eval()  # the trained pipeline is left ready for inference
        acc.end_training()
        result.steps = self.state.step
        return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def train(
    config: TrainConfig,
    dataset: Dataset | None = None,
    pipeline: Any = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Run ``config`` (module docstring); returns the per-step losses, validation L1s and ``final`` folder."""
    return Trainer(config, dataset=dataset, pipeline=pipeline).run(on_step)


__all__ = [
    "EpochSampler",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "Trainer",
    "load_base_pipeline",
    "train",
]
