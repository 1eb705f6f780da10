"""The diffusion engine: ``pipelines.AnimationPipeline`` (SVD backbone + pose guider + body guidance + DisPose).

The only module of ``animate`` that reaches into ``pipelines`` and ``controlnets`` (besides the weights
inspection). It turns a ``GuidanceBundle`` into the pipeline's inputs, reports progress per denoising step,
and honours cancellation by interrupting the pipeline.

Which parts run depends on the weights directory (``weights/README.md``) and is recorded in
``DiffusionEngine.parts`` and logged: the UNet (MimicMotion's fine-tune), the pose guider, the Champ
guidance encoders, DisPose's motion ControlNet with its dense flow (the bundle's: CMP's or the body
model's; else the 2D skeleton field) and trajectory flow, and its point adapter (on when Stable Diffusion
1.5 is there for the DIFT reference features).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from animate.motion.bundle import GuidanceBundle, GuidanceConventions
from animate.settings import Settings

log = logging.getLogger("animate.engines.diffusion")


@dataclass(frozen=True)
class DiffusionOptions:
    steps: int = 25
    guidance_scale: float = 2.0
    seed: int = 0
    # frames per UNet call (counting the shared reference frame) and overlap; None: the checkpoint's own
    # (pipelines.parity.TILES: 72 / 6 for MimicMotion 1.1, 16 / 6 for DisPose and for SVD alone)
    tile_size: int | None = None
    tile_overlap: int | None = None
    decode_chunk_size: int = 8
    noise_aug_strength: float = 0.0
    fps_id: int = 7  # SVD's fps conditioning as MimicMotion uses it
    motion_bucket_id: int = 127
    residual_mode: str | None = None  # the ControlNet's own config (DisPose.pth: "dispose")
    controlnet_cfg: str = "keep"  # the negative CFG half keeps flows and points, as DisPose
    preset: str | None = None  # "mimicmotion" | "dispose": that system's published run (animate.presets)
    conventions: GuidanceConventions | None = None  # None: the loaded networks' rules (for_networks)
    skeleton_twice: bool = False  # a `skeleton` encoder reads a skeleton too when the pose guider runs
    # a memory level of animate.engines.plan.LEVELS to start at; None: the planner's choice for the job
    memory_level: str | None = None
    gpu_memory: int | None = None  # plan for this much free GPU memory (bytes) instead of the detected
    tile_group: Any = None  # pipelines.distributed.TileGroup: this process' share of one job's tiles
    adapter: Path | None = None  # `animate train run`'s RUN_DIR/final: trained parts loaded over the base


def frames_to_uint8(frames: np.ndarray, truncate: bool = False) -> np.ndarray:
    """``[0, 1]`` float frames -> uint8, rounded; ``truncate``: as MimicMotion and DisPose write their videos,
    ``(frames * 255).to(uint8)`` (254.9 -> 254)."""
    scaled = np.clip(frames * 255.0, 0, 255)
    return (scaled if truncate else scaled + 0.5).astype(np.uint8)


def speed_options(settings: Settings, cuda: bool):
    """``pipelines.optimizations.OptimizationOptions`` for ``settings.diffusion_speed`` / ``diffusion_step_cache``.

    Model CPU offload needs a GPU: without one the low-memory preset keeps its other parts.
    """
    from pipelines.optimizations import OptimizationOptions

    presets = {
        "default": OptimizationOptions,
        "fast": OptimizationOptions.fast,
        "low_memory": OptimizationOptions.low_memory,
    }
    overrides: dict = {"step_cache_interval": settings.diffusion_step_cache}
    if not cuda:
        overrides["cpu_offload"] = False
    return presets[settings.diffusion_speed](**overrides)


def describe_speed(options) -> str:
    """The speed options that differ from the plain path, e.g. ``"fused_qkv, step cache every 2"``."""
    on = [
        name
        for name in ("fused_qkv", "channels_last", "compile_blocks", "cpu_offload")
        if getattr(options, name)
    ]
    if options.forward_chunk_size is not None:
        on.append(f"forward chunks of {options.forward_chunk_size}")
    if options.step_cache_interval > 1:
        on.append(f"step cache every {options.step_cache_interval}")
    if options.cfg_mode is not None:
        on.append(f"{options.cfg_mode} CFG")
    if options.decode_chunk_size is not None:
        on.append(f"decode {options.decode_chunk_size} frames at a time")
    return ", ".join(on) or "plain"


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or host allocator) out-of-memory error."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_memory() -> None:
    """Give the failed attempt's cached blocks back before the retry."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_trained_parts(pipeline, adapter: str | Path, dtype) -> str:
    """Load ``animate train run``'s parts (``RUN_DIR/final``, ``pipelines.adapters``) over the base weights;
    returns what was loaded in words. A folder that is not a training output is the user's error."""
    from animate.errors import AnimateError
    from pipelines.adapters import load_adapter
    from pipelines.checkpoints import CheckpointError

    try:
        parts = load_adapter(pipeline, adapter, dtype=dtype)
    except CheckpointError as exc:
        raise AnimateError("adapter_invalid", str(exc)) from exc
    return f"adapter {Path(adapter).name} ({', '.join(parts) or 'nothing'})"


def load_identity_adapter(pipeline, root: Path, report, dtype) -> str:
    """``weights/identity_adapter/`` into the pipeline when ``weights check`` found it valid and the
    pipeline has none yet (a trained adapter loaded with ``--adapter`` wins); returns what was added."""
    from animate.errors import AnimateError
    from animate.weights import IDENTITY_DIR, OK
    from controlnets import IdentityAdapter

    if getattr(pipeline, "identity_adapter", None) is not None or report.status("identity_adapter") != OK:
        return ""
    adapter = IdentityAdapter.from_pretrained(root / IDENTITY_DIR, torch_dtype=dtype)
    names = dict(pipeline.unet.named_modules())
    absent = [name for name in adapter.layer_names if name not in names]
    if absent:
        raise AnimateError(
            "weights_invalid", f"{IDENTITY_DIR}/ was made for another UNet (no layer {absent[0]})"
        )
    pipeline.register_modules(identity_adapter=adapter)
    return f" + {IDENTITY_DIR}/"


def face_embedding_for(pipeline, bundle: GuidanceBundle):
    """The reference's face embedding for the identity adapter (the animator's, else computed here), or
    None without an adapter. An active adapter is identity requested: no face is ``no_face_detected``."""
    from animate.errors import AnimateError
    from animate.face import NoFaceError, load_embedder, reference_embedding

    adapter = getattr(pipeline, "identity_adapter", None)
    if adapter is None:
        return None
    embedding = bundle.extras.get("face_embedding")
    if embedding is None and "face_embedding" not in bundle.extras:
        embedding = reference_embedding(bundle.reference, load_embedder(None))
    if embedding is None:
        raise NoFaceError(message="no face was found in the reference image (the identity adapter needs one)")
    if len(embedding) != adapter.config.embedding_dim:
        raise AnimateError(
            "weights_invalid",
            f"the identity adapter takes {adapter.config.embedding_dim}-d face embeddings, the face "
            f"embedder in use gives {len(embedding)}-d (`animate weights check` names it)",
        )
    return np.asarray(embedding, dtype=np.float32)


class DiffusionEngine:
    name = "diffusion"

    def __init__(
        self,
        pipeline,
        options: DiffusionOptions | None = None,
        sd15_dir: str | Path | None = None,
        parts: dict[str, str] | None = None,
    ) -> None:
        """``sd15_dir``: Stable Diffusion 1.5 (diffusers layout) for the point adapter's DIFT features;
        ``parts``: what ``from_settings`` loaded (``describe_parts`` fills in what the pipeline shows)."""
        self.pipeline = pipeline
        self.options = options or DiffusionOptions()
        self.sd15_dir = Path(sd15_dir) if sd15_dir is not None else None
        self.parts = self.describe_parts(pipeline, self.sd15_dir) | dict(parts or {})
        self.call_kwargs: dict = {}  # pipeline-call arguments the speed options set (cfg_mode, decode chunk)
        self.speed = "default"  # settings.diffusion_speed: other than default, it overrides the plan's knobs
        self.plan = None  # animate.engines.plan.Plan of the last render
        self._offload = "none"  # what the pipeline's modules are set to now: none | model | sequential
        self._shapes = None  # animate.engines.plan.ModelShapes of the pipeline, counted once
        self._forward_chunk: int | None = None
        self._parity(self.options)  # a preset the weights cannot run fails here, before any preprocessing

    @staticmethod
    def describe_parts(pipeline, sd15_dir: Path | None) -> dict[str, str]:
        """The active parts, by name, as one word or a short phrase each."""
        controlnet = getattr(pipeline, "motion_controlnet", None)
        encoders = getattr(pipeline, "guidance_encoders", None)
        types = getattr(getattr(encoders, "config", None), "guidance_types", None) or ()
        parts = {
            "pose_guider": "on" if getattr(pipeline, "pose_guider", None) is not None else "off",
            "guidance_encoders": ", ".join(types) if types else "off",
            "motion_controlnet": "off",
            "point_adapter": "off",
        }
        identity = getattr(pipeline, "identity_adapter", None)
        parts["identity_adapter"] = (
            f"on ({identity.config.embedding_dim}-d face embedding, {identity.config.num_tokens} tokens)"
            if identity is not None
            else "off"
        )
        if controlnet is not None:
            parts["motion_controlnet"] = f"on (residuals {controlnet.config.residual_mode})"
            parts["point_adapter"] = "on (DIFT)" if sd15_dir is not None else "off (no Stable Diffusion 1.5)"
        return parts

    @staticmethod
    def unavailable_reason(settings: Settings, require_gpu: bool = True) -> str | None:
        """Why this engine cannot run, or None. ``require_gpu`` is what ``--engine auto`` asks for."""
        from animate.weights import inspect_weights

        if not settings.weights_dir.is_dir():
            return f"the weights directory {settings.weights_dir} does not exist (see weights/README.md)"
        if not inspect_weights(settings.weights_dir).features.get("diffusion"):
            return f"no usable diffusion weights in {settings.weights_dir} (`animate weights check` says why)"
        if require_gpu:
            import torch

            if not torch.cuda.is_available():
                return "no CUDA GPU is available"
        return None

    @classmethod
    def from_settings(cls, settings: Settings, options: DiffusionOptions | None = None) -> DiffusionEngine:
        import torch

        from animate.weights import (
            CHAMP_DIR,
            CHAMP_FILES,
            CONVERTED_DIR,
            DISPOSE_FILE,
            MIMICMOTION_FILE,
            OK,
            SD15_DIR,
            SVD_DIR,
            inspect_weights,
        )
        from pipelines import AnimationPipeline, build_pipeline, load_dispose
        from pipelines.checkpoints import unet_config_from_dir
        from pipelines.optimizations import optimize

        group = options.tile_group if options is not None else None
        # ranks joined over gloo compute on the CPU (tests, GPU-less machines) even where CUDA is there
        cuda = torch.cuda.is_available() and getattr(group, "backend", None) != "gloo"
        dtype = torch.float16 if cuda else torch.float32
        root = Path(settings.weights_dir)
        report = inspect_weights(root)
        features = report.features
        dispose_ok = report.status("dispose") == OK
        if features.get("fast_load"):
            pipeline = AnimationPipeline.from_pretrained(root / CONVERTED_DIR, dtype=dtype)
            source = f"{CONVERTED_DIR}/"
            if pipeline.motion_controlnet is None and dispose_ok and report.status("svd") == OK:
                # converted before DisPose.pth was added: the ControlNet straight from its file
                controlnet = load_dispose(
                    root / DISPOSE_FILE, unet_config_from_dir(root / SVD_DIR), dtype=dtype
                )
                pipeline.register_modules(motion_controlnet=controlnet)
                source += f" + {DISPOSE_FILE}"
        else:
            champ = {
                name: root / CHAMP_DIR / file
                for name, file in CHAMP_FILES.items()
                if features.get(f"guidance_{name}") and (root / CHAMP_DIR / file).is_file()
            }
            pipeline = build_pipeline(
                root / SVD_DIR,
                mimicmotion=root / MIMICMOTION_FILE,
                champ_files=champ,
                dtype=dtype,
                dispose=root / DISPOSE_FILE if dispose_ok else None,
            )
            source = f"{SVD_DIR}/ + {MIMICMOTION_FILE}" + (f" + {DISPOSE_FILE}" if dispose_ok else "")
        if options is not None and options.adapter is not None:
            source += " + " + load_trained_parts(pipeline, options.adapter, dtype)
        if getattr(options, "preset", None) is None:  # a preset runs its published system's parts only
            source += load_identity_adapter(pipeline, root, report, dtype)
        speed = speed_options(settings, cuda)
        if not speed.cpu_offload:  # offload places each module itself
            pipeline.to("cuda" if cuda else "cpu")
        optimize(pipeline, speed)
        pipeline.set_progress_bar_config(disable=True)
        sd15 = root / SD15_DIR if features.get("dift") and pipeline.motion_controlnet is not None else None
        engine = cls(
            pipeline, options, sd15_dir=sd15, parts={"weights": source, "speed": describe_speed(speed)}
        )
        engine.call_kwargs = speed.call_kwargs()
        engine.speed = settings.diffusion_speed
        engine._offload = "model" if speed.cpu_offload else "none"
        engine._forward_chunk = speed.forward_chunk_size
        log.info("diffusion engine parts: %s", engine.parts)
        return engine

    @property
    def guidance_conventions(self) -> GuidanceConventions:
        """The rules guidance is made by: ``options.conventions``, else the loaded networks' (DisPose's when
        DisPose.pth's ControlNet is loaded, Champ's for Champ's encoders; the ``dispose`` preset's)."""
        if self.options.conventions is not None:
            return self.options.conventions
        controlnet = getattr(self.pipeline, "motion_controlnet", None)
        encoders = getattr(self.pipeline, "guidance_encoders", None)
        return GuidanceConventions.for_networks(
            dispose=getattr(getattr(controlnet, "config", None), "residual_mode", None) == "dispose",
            champ=getattr(getattr(encoders, "config", None), "guidance_types", None) or (),
            preset=self.options.preset,
        )

    def _motion_inputs(self, bundle: GuidanceBundle, should_cancel: Callable[[], bool] | None) -> dict:
        """The ControlNet's pipeline arguments for ``bundle`` (empty without a ControlNet); a trajectory flow
        the bundle lacks is made from its keypoints by ``guidance_conventions`` (recorded in ``parts``)."""
        self.parts["guidance_rules"] = self.guidance_conventions.describe()
        if getattr(self.pipeline, "motion_controlnet", None) is None:
            return {}
        from animate.motion import frames
        from animate.pose.layout import openpose18

        opts = self.options
        dense, dense_source = bundle.dense_flow, "bundle"
        if dense is None:
            dense, dense_source = (  # a tile window at a time, when the pipeline reads it
                frames.skeleton_flow_source(
                    bundle.reference_keypoints, bundle.keypoints, bundle.reference_mask
                ),
                "2D skeleton field",
            )
        trajectory, trajectory_source = bundle.trajectory_flow, "bundle"
        if trajectory is None:
            trajectory = frames.trajectory_source(
                bundle.reference_keypoints, bundle.keypoints, bundle.size, self.guidance_conventions
            )
            trajectory_source = "keypoints"  # by the rules in parts["guidance_rules"]
        self.parts |= {"dense_flow": dense_source, "trajectory_flow": trajectory_source}
        inputs = {
            "dense_flow": dense,
            "trajectory_flow": trajectory,
            "residual_mode": opts.residual_mode,
            "controlnet_cfg": opts.controlnet_cfg,
        }
        if self.sd15_dir is None or (should_cancel is not None and should_cancel()):
            return inputs
        # DIFT's noise is seeded: DisPose draws it unseeded from the global CUDA RNG (only a statistical match)
        features = self._dift_features(bundle.reference)
        if features is not None:
            # DisPose's 18 OpenPose body points, from our COCO-WholeBody keypoints
            inputs |= {
                "point_features": features,
                "keypoints": np.stack([openpose18(k) for k in bundle.keypoints]),
                "reference_keypoints": openpose18(bundle.reference_keypoints),
            }
        return inputs

    def _dift_features(self, reference: np.ndarray):
        """DIFT features of the reference: the SD 1.5 UNet is loaded for this job and freed right after."""
        from controlnets.dift import DiftFeaturizer, DiftLoadError

        device = self.pipeline._execution_device
        dtype = self.pipeline.motion_controlnet.dtype
        unet_dir = self.sd15_dir / "unet"
        # the *.fp16.safetensors variants alone suffice (weights/README.md)
        only_fp16 = not (unet_dir / "diffusion_pytorch_model.safetensors").is_file() and any(
            unet_dir.glob("*.fp16.safetensors")
        )
        try:
            with DiftFeaturizer.from_pretrained(
                self.sd15_dir, device=device, torch_dtype=dtype, variant="fp16" if only_fp16 else None
            ) as dift:
                return dift(reference, seed=self.options.seed)
        except DiftLoadError as exc:
            self.parts["point_adapter"] = f"off ({exc})"
            log.warning("point adapter off: %s", exc)
            return None

    def _parity(self, opts: DiffusionOptions) -> tuple[dict, bool]:
        """The pipeline arguments of the upstream rules and tiles for the loaded parts and ``opts.preset``
        (``pipelines.parity``), and whether frames are truncated to uint8; recorded in ``parts``."""
        from animate.errors import AnimateError
        from pipelines import parity

        try:
            kwargs = parity.call_kwargs(self.pipeline, opts.preset)
        except ValueError as exc:
            raise AnimateError("preset_unavailable", f"{exc} (see weights/README.md)") from exc
        default_size, default_overlap = parity.default_tiles(self.pipeline, opts.preset)
        kwargs["tile_size"] = default_size if opts.tile_size is None else opts.tile_size
        kwargs["tile_overlap"] = default_overlap if opts.tile_overlap is None else opts.tile_overlap
        self.parts["parity"] = parity.describe(self.pipeline, opts.preset)
        self.parts["tiles"] = f"{kwargs['tile_size']} / {kwargs['tile_overlap']}"
        return kwargs, parity.truncates_uint8(self.pipeline, opts.preset)

    def plan_for(self, bundle: GuidanceBundle):
        """The ``animate.engines.plan.Plan`` for rendering ``bundle`` here (kept as ``self.plan``)."""
        import dataclasses

        from animate.engines.plan import Hardware, ModelShapes, Workload, load_coefficients, make_plan

        parity_kwargs, _ = self._parity(self.options)
        group = self.options.tile_group
        hardware = Hardware.detect(
            gpus=group.world_size if group is not None else 1, cuda=getattr(group, "backend", None) != "gloo"
        )
        if self.options.gpu_memory is not None and hardware.device == "cuda":
            hardware = dataclasses.replace(hardware, gpu_free=self.options.gpu_memory)
        elif hardware.device == "cuda":  # the weights already on the GPU are part of the plan's peak
            hardware = dataclasses.replace(hardware, gpu_free=hardware.gpu_free + self._bytes_on_gpu())
        if self._shapes is None:
            self._shapes = ModelShapes.from_pipeline(self.pipeline, dift=self.sd15_dir is not None)
        work = Workload(
            width=bundle.size[0],
            height=bundle.size[1],
            frames=bundle.num_frames,
            steps=self.options.steps,
            tile_size=parity_kwargs["tile_size"],
            tile_overlap=parity_kwargs["tile_overlap"],
            shapes=self._shapes,
        )
        self.plan = make_plan(
            work, hardware, load_coefficients(), speed=self.speed, lowest=self.options.memory_level
        )
        for note in self.plan.notes:
            if not self.plan.fits and "exceeds" in note:
                log.warning("plan %s: %s", self.plan.describe(), note)
        return self.plan

    def _bytes_on_gpu(self) -> int:
        """Bytes of the pipeline's weights now on a GPU (free memory does not count them)."""
        import torch

        modules = [m for m in self.pipeline.components.values() if isinstance(m, torch.nn.Module)]
        return sum(
            p.numel() * p.element_size() for m in modules for p in m.parameters() if p.device.type == "cuda"
        )

    def _plan_kwargs(self, plan) -> dict:
        """Pipeline-call arguments of ``plan`` (the speed setting's own win); applies its module settings."""
        import inspect

        import torch

        if plan.forward_chunk != self._forward_chunk:
            for name in ("unet", "motion_controlnet"):
                module = getattr(self.pipeline, name, None)
                for block in module.modules() if module is not None else ():
                    if hasattr(block, "set_chunk_feed_forward"):
                        block.set_chunk_feed_forward(plan.forward_chunk, dim=0)
            self._forward_chunk = plan.forward_chunk
        if plan.offload != self._offload and plan.gpu_peak is not None:  # offload: CUDA plans only
            device = f"cuda:{torch.cuda.current_device()}"
            if self._offload != "none":
                self.pipeline.remove_all_hooks()
            if plan.offload == "model":
                self.pipeline.enable_model_cpu_offload(device=device)
            elif plan.offload == "sequential":
                self.pipeline.enable_sequential_cpu_offload(device=device)
            else:
                self.pipeline.to(device)
            self._offload = plan.offload
        kwargs = {
            "cfg_mode": plan.cfg,
            "decode_chunk_size": min(plan.decode_chunk, self.options.decode_chunk_size),
        }
        parameters = inspect.signature(self.pipeline.__call__).parameters
        if "feature_cache" in parameters:
            kwargs["feature_cache"] = plan.feature_cache
        if plan.latents_on_host and "sequence_device" in parameters:  # the whole length on the host
            kwargs["sequence_device"] = "cpu"
        if self.options.tile_group is not None:
            kwargs["tile_group"] = self.options.tile_group
        self.parts["plan"] = plan.describe()
        return kwargs | self.call_kwargs

    def _out_of_memory(self, plan, first=None):
        """The ``out_of_memory`` error naming the plan(s) that failed and the settings to change."""
        from animate.engines.plan import GIB
        from animate.errors import AnimateError

        tried = plan.describe() + (f", after {first.describe()}" if first is not None else "")
        where = "the GPU" if plan.gpu_peak is not None else "the machine"
        expected = plan.gpu_peak if plan.gpu_peak is not None else plan.host_memory
        message = (
            f"{where} ran out of memory at memory level {tried} (expected peak {expected / GIB:.1f} GiB); "
            "set ANIMATE_DIFFUSION_SPEED=low_memory, or lower --tile-size or --size"
            + (", or spread the job over more GPUs with --gpus" if plan.gpus == 1 else "")
        )
        error = AnimateError("out_of_memory", message)
        error.plan = plan.to_dict()
        return error

    def render(
        self,
        bundle: GuidanceBundle,
        progress: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Iterator[np.ndarray]:
        """Frames of ``bundle`` at the planned memory level; a CUDA out-of-memory error retries once at the
        next lower level (frames already handed on are skipped), a second one raises ``out_of_memory``.
        Several processes (``options.tile_group``) do not retry: their steps must stay in lockstep."""
        plan = self.plan_for(bundle)
        yielded, failed = 0, False
        try:
            for frame in self._render(bundle, plan, progress, should_cancel):
                yielded += 1
                yield frame
            return
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            lower = plan.lower() if self.options.tile_group is None else None
            if lower is None:
                raise self._out_of_memory(plan) from exc
            failed = True
        if failed:  # outside the except block: the failed call's tensors are released with its traceback
            release_memory()
            log.warning("out of memory at %s; retrying at %s", plan.describe(), lower.describe())
            self.plan = lower
            try:
                for index, frame in enumerate(self._render(bundle, lower, progress, should_cancel)):
                    if index >= yielded:
                        yield frame
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                error = self._out_of_memory(lower, plan)
            else:
                return
            release_memory()
            raise error

    def _render(
        self,
        bundle: GuidanceBundle,
        plan,
        progress: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Iterator[np.ndarray]:
        import torch
        from PIL import Image

        from animate.motion.frames import pose_image_source
        from animate.pose import Pose, draw_pose, draw_pose_mimicmotion
        from animate.presets import reference_round_trip

        opts = self.options
        width, height = bundle.size
        draw = draw_pose_mimicmotion if opts.preset else draw_pose  # the preset: upstream's exact drawing
        pose_images = bundle.pose_images
        if pose_images is None:  # drawn a tile window at a time, when the pipeline reads them
            pose_images = pose_image_source(bundle.keypoints, bundle.size, draw)
        reference_pose = draw(Pose(bundle.reference_keypoints), width, height)[None]
        # the preset: upstream's reference goes through [-1, 1] and back to uint8 by truncation
        reference = reference_round_trip(bundle.reference) if opts.preset else bundle.reference
        maps = {
            name: value
            for name, value in (
                ("depth", bundle.depth),
                ("normal", bundle.normal),
                ("semantic", bundle.semantic),
            )
            if value is not None
        }
        from pipelines.parity import uses_champ_encoders

        parity_kwargs, truncate = self._parity(opts)
        # a preset runs only its published system's parts: no Champ encoders
        encoders = (
            self.pipeline.guidance_encoders if uses_champ_encoders(self.pipeline, opts.preset) else None
        )
        known = set(getattr(getattr(encoders, "config", None), "guidance_types", None) or ())
        maps = {name: value for name, value in maps.items() if name in known}
        if "skeleton" in known and (self.pipeline.pose_guider is None or opts.skeleton_twice):
            maps["skeleton"] = pose_images if bundle.skeleton is None else bundle.skeleton
        motion = {} if opts.preset == "mimicmotion" else self._motion_inputs(bundle, should_cancel)
        face_embedding = face_embedding_for(self.pipeline, bundle)
        identity = {} if face_embedding is None else {"face_embedding": face_embedding}
        self.parts["guidance_maps"] = ", ".join(maps) or "none"
        log.info("diffusion engine parts: %s", self.parts)
        total_steps = opts.steps

        def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
            if progress is not None:
                progress(step + 1, total_steps)
            if should_cancel is not None and should_cancel():
                pipe._interrupt = True
            return tensors

        if should_cancel is not None and should_cancel():
            return
        device = self.pipeline._execution_device
        call_kwargs = self._plan_kwargs(plan)  # the plan's memory settings; the speed setting's win
        result = self.pipeline(
            Image.fromarray(reference),
            pose_images=pose_images,
            guidance_maps=maps or None,
            reference_pose_image=reference_pose,
            height=height,
            width=width,
            num_frames=bundle.num_frames,
            num_inference_steps=opts.steps,
            min_guidance_scale=opts.guidance_scale,
            max_guidance_scale=opts.guidance_scale,
            fps=opts.fps_id,
            motion_bucket_id=opts.motion_bucket_id,
            noise_aug_strength=opts.noise_aug_strength,
            generator=torch.Generator(device=device).manual_seed(opts.seed),
            output_type="latent",
            keep_reference=True,  # decoded below, with or without it as the parity rules say
            callback_on_step_end=on_step_end,
            **motion,
            **identity,
            **parity_kwargs,
            **call_kwargs,
        )
        # decoded one VAE chunk at a time, each handed to the writer before the next is decoded
        chunks = self.pipeline.decode_stream(
            result.frames,
            call_kwargs.get("decode_chunk_size") or opts.decode_chunk_size,
            reference_first=parity_kwargs.get("prepend_reference", True),
            decode_reference=parity_kwargs.get("decode_reference", False),
        )
        for frames in chunks:
            if should_cancel is not None and should_cancel():
                return
            for frame in frames:
                yield frames_to_uint8(frame, truncate)
