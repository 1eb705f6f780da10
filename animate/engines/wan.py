"""Engine ``wan``: Wan2.2-Animate-14B through diffusers' ``WanAnimatePipeline``, fed by our preprocessing.

Weights: ``weights/Wan2.2-Animate-14B-Diffusers/`` (user supplied, see weights/README.md), loaded in bf16 on a
GPU (fp32 on the CPU, where only tiny test components are practical). Inputs, in upstream's format
(``animate.engines.wan_inputs``): the reference letterboxed to the generation size and its CLIP tokens computed
upstream's way (the letterboxed image stretched to the encoder's size, ``hidden_states[-2]``); the driving clip
resampled to 30 fps; the pose video drawn by ``animate.pose.draw_wan`` from our keypoints (retargeted onto the
reference in animate mode; the driver's own, letterboxed, in replace mode); the face video cropped from the
driving frames (``animate.face.wan``); in replace mode the background and the 0/255 mask. The pipeline
generates in segments of ``segment_frames`` that share ``overlap_frames`` (1 or 5); the 30 fps result is
brought back to the driving rate (nearest in time), one output frame per driving frame.

Memory (GPU): bf16 weights are ~48 GB resident. With at least ``RESIDENT_GIB`` free everything stays on the
GPU; with at least ``MODEL_OFFLOAD_GIB`` the pipeline uses model CPU offload (one component on the GPU at a
time; the 34.6 GB transformer is the largest); with at least ``SEQUENTIAL_GIB`` sequential offload (slow);
below that the render stops with ``out_of_memory`` before loading anything. ``--engine auto`` picks this engine
only when the weights are complete and a GPU has ``MODEL_OFFLOAD_GIB`` free.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from animate.errors import AnimateError
from animate.motion.bundle import GuidanceBundle
from animate.settings import Settings
from animate.weights import WAN_DIR

log = logging.getLogger(__name__)

PROMPT = "People in the video are doing actions."  # upstream README's diffusers example
MAX_SEQUENCE_LENGTH = 512
GIB = 1024**3
RESIDENT_GIB, MODEL_OFFLOAD_GIB, SEQUENTIAL_GIB = 60, 40, 8


@dataclass(frozen=True)
class WanOptions:
    mode: str = "animate"  # animate | replace
    segment_frames: int = 77
    overlap_frames: int = 1  # 1 or 5
    steps: int = 20
    guidance_scale: float = 1.0
    seed: int = 0
    resolution: str = "720p"  # 480p | 720p: the generation size's area (when no size is given)
    prompt: str = PROMPT
    negative_prompt: str = ""

    def validate(self) -> None:
        from animate.engines.wan_inputs import MODES, RESOLUTIONS, check_segments

        if self.mode not in MODES:
            raise AnimateError("invalid_option", f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.resolution not in RESOLUTIONS:
            raise AnimateError("invalid_option", f"resolution must be one of {', '.join(RESOLUTIONS)}")
        check_segments(self.segment_frames, self.overlap_frames)


def memory_level(free_bytes: int) -> str:
    """``none`` | ``model`` | ``sequential`` offload for this much free GPU memory; ``out_of_memory`` below."""
    if free_bytes >= RESIDENT_GIB * GIB:
        return "none"
    if free_bytes >= MODEL_OFFLOAD_GIB * GIB:
        return "model"
    if free_bytes >= SEQUENTIAL_GIB * GIB:
        return "sequential"
    raise AnimateError(
        "out_of_memory",
        f"the wan engine needs at least {SEQUENTIAL_GIB} GiB of free GPU memory (sequential offload; "
        f"{MODEL_OFFLOAD_GIB} GiB for model offload, {RESIDENT_GIB} GiB without offload), "
        f"{free_bytes / GIB:.1f} GiB is free",
    )


def _free_gpu_bytes() -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info()
    return int(free)


def weights_problem(settings: Settings) -> str | None:
    """Why the weights cannot be used (naming the missing parts), or None."""
    from animate.weights import MISSING, OK, check_wan

    found = check_wan(Path(settings.weights_dir))
    if found.status == OK:
        return None
    if found.status == MISSING:
        return f"{WAN_DIR}/ is not in {settings.weights_dir} (see weights/README.md)"
    return f"{WAN_DIR}/ in {settings.weights_dir} is {found.detail} (see weights/README.md)"


def unavailable_reason(settings: Settings, require_gpu: bool = True) -> str | None:
    """Why the engine cannot run here, or None. ``require_gpu`` (``--engine auto``) also asks for
    ``MODEL_OFFLOAD_GIB`` of free GPU memory."""
    problem = weights_problem(settings)
    if problem is not None:
        return problem
    if require_gpu:
        free = _free_gpu_bytes()
        if free is None:
            return "no CUDA GPU is available"
        if free < MODEL_OFFLOAD_GIB * GIB:
            return f"the GPU has {free / GIB:.1f} GiB free, the wan engine wants {MODEL_OFFLOAD_GIB} GiB"
    return None


@dataclass(frozen=True)
class WanPlan:
    """What a wan render ran with (``AnimationResult.plan``): memory level, segments, steps."""

    offload: str  # none | model | sequential (GPU) or cpu
    dtype: str
    segments: int
    segment_frames: int
    overlap_frames: int
    steps: int
    generated_frames: int  # at 30 fps

    def to_dict(self) -> dict:
        return {"engine": "wan", **{k: getattr(self, k) for k in self.__dataclass_fields__}}


def dry_run_plan(settings: Settings, reference, driving, options) -> dict:
    """``animate run --engine wan --dry-run``: size, frames, segments and memory level, nothing loaded.
    ``options``: an ``AnimationOptions``."""
    from animate.engines.wan_inputs import generation_size, segment_length, segments, to_wan_rate
    from animate.media import load_image
    from animate.media.video import probe_video

    info = probe_video(driving, settings.media)
    image = load_image(reference, settings.media)
    source = (info.width, info.height) if options.mode == "replace" else (image.width, image.height)
    size = options.size or generation_size(*source, options.resolution)
    fps = float(options.fps or info.fps)
    frames = info.frame_count if options.fps is None else max(1, round(info.duration * fps))
    frames = min(frames, options.max_frames) if options.max_frames else frames
    count = len(to_wan_rate(frames, fps))
    length = segment_length(options.segment_frames)
    steps = options.wan_options().steps
    free = _free_gpu_bytes()
    try:
        level = "cpu" if free is None else memory_level(free)
    except AnimateError as exc:
        level = f"out_of_memory: {exc.message}"
    return {
        "engine": "wan",
        "weights": weights_problem(settings) or "ok",
        "mode": options.mode,
        "size": list(size),
        "frames": frames,
        "fps": fps,
        "generated_frames_30fps": count,
        "segments": len(segments(count, length, options.overlap_frames)),
        "segment_frames": length,
        "overlap_frames": options.overlap_frames,
        "steps": steps,
        "denoising_steps_total": len(segments(count, length, options.overlap_frames)) * steps,
        "memory": level,
        "gpu_free_gib": None if free is None else round(free / GIB, 1),
    }


class WanEngine:
    name = "wan"

    def __init__(self, pipeline, options: WanOptions, parts: dict[str, str] | None = None) -> None:
        self.pipeline = pipeline
        self.options = options
        self.parts = dict(parts or {})
        self.artifacts: dict[str, Path] = {}
        self.plan = None

    @classmethod
    def from_settings(cls, settings: Settings, options: WanOptions | None = None) -> WanEngine:
        import torch
        from diffusers import WanAnimatePipeline

        options = options or WanOptions()
        options.validate()
        problem = weights_problem(settings)
        if problem is not None:
            raise AnimateError("weights_missing", problem)
        free = _free_gpu_bytes()
        level = memory_level(free) if free is not None else "cpu"  # before loading 48 GB
        dtype = torch.bfloat16 if free is not None else torch.float32
        root = Path(settings.weights_dir) / WAN_DIR
        pipeline = WanAnimatePipeline.from_pretrained(root, dtype=dtype)
        if level == "none":
            pipeline.to("cuda")
        elif level == "model":
            pipeline.enable_model_cpu_offload()
        elif level == "sequential":
            pipeline.enable_sequential_cpu_offload()
        pipeline.set_progress_bar_config(disable=True)
        parts = {"weights": f"{WAN_DIR}/", "dtype": str(dtype).removeprefix("torch."), "offload": level}
        log.info("wan engine parts: %s", parts)
        return cls(pipeline, options, parts)

    # -- inputs -------------------------------------------------------------------------------------------
    def _prompt_embeds(self, text: str):
        """T5 embeddings as the pipeline makes them, without its ``ftfy`` text clean-up (plain prompts)."""
        import torch

        pipe = self.pipeline
        tokens = pipe.tokenizer(
            [text],
            padding="max_length",
            max_length=MAX_SEQUENCE_LENGTH,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = next(pipe.text_encoder.parameters()).device
        with torch.no_grad():
            hidden = pipe.text_encoder(
                tokens.input_ids.to(device), tokens.attention_mask.to(device)
            ).last_hidden_state
        length = int(tokens.attention_mask.gt(0).sum())
        out = torch.zeros_like(hidden)
        out[:, :length] = hidden[:, :length]
        return out

    def _image_embeds(self, reference: np.ndarray):
        """Upstream's CLIP tokens: the letterboxed reference stretched to the encoder's input size."""
        import torch

        from animate.engines.wan_inputs import clip_input

        pipe = self.pipeline
        processor = pipe.image_processor
        crop = processor.crop_size
        size = int(crop if isinstance(crop, int) else (getattr(crop, "height", None) or crop["height"]))
        pixels = torch.from_numpy(clip_input(reference, size, processor.image_mean, processor.image_std))
        device = next(pipe.image_encoder.parameters()).device
        with torch.no_grad():
            out = pipe.image_encoder(
                pixel_values=pixels.to(device, pipe.image_encoder.dtype), output_hidden_states=True
            )
        return out.hidden_states[-2]

    def inputs(self, bundle: GuidanceBundle) -> dict:
        """Everything the pipeline call takes, as lists of equal length at 30 fps, plus ``index`` (the 30 fps
        frame of each output frame)."""
        from PIL import Image

        from animate.engines import wan_inputs as wi
        from animate.face.wan import crop_face, face_boxes
        from animate.pose.draw_wan import draw_pose_wan

        extras = bundle.extras.get("wan") or {}
        mode = self.options.mode
        width, height = bundle.size
        if width % 16 or height % 16:
            raise AnimateError(
                "invalid_option", f"the wan engine needs sides that are multiples of 16, got {width}x{height}"
            )
        n = bundle.num_frames
        src = wi.to_wan_rate(n, bundle.fps)
        driving_kp = np.asarray(extras.get("driving_keypoints", bundle.keypoints), np.float32)
        drv_w, drv_h = extras.get("driving_size", bundle.size)
        frames = extras.get("driving_frames")  # a sequence, or a callable giving an iterator (read once)
        if frames is None:
            raise AnimateError("invalid_input", "the wan engine needs the driving frames")
        if mode == "replace":  # the driver's own pose, letterboxed like its frames
            pose_kp = wi.letterbox_keypoints(driving_kp, drv_w, drv_h, width, height)
        else:
            pose_kp = np.asarray(bundle.keypoints, np.float32)
        boxes = face_boxes(driving_kp, drv_w, drv_h)
        masks = extras.get("person_masks")
        wanted = set(int(i) for i in src)
        faces: dict[int, np.ndarray] = {}
        backgrounds: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for i, frame in enumerate(frames() if callable(frames) else frames):
            if i >= n:
                break
            if i not in wanted:
                continue
            faces[i] = crop_face(frame, boxes[i])
            if mode == "replace":
                if masks is not None and masks[i] is not None:
                    person = wi.letterbox(np.asarray(masks[i]), width, height, interpolation=0)
                else:
                    person = wi.keypoint_person_mask(pose_kp[i], width, height)
                m = wi.replace_mask(person)
                backgrounds[i] = (wi.background(wi.letterbox(frame, width, height), m), m)
        last = max(faces) if faces else None
        if last is None:
            raise AnimateError("invalid_input", "no driving frame could be read")
        pose, face, bg, mask = [], [], [], []
        for i in src:
            i = min(int(i), last)  # a decoder that yields fewer frames than probed: hold the last one
            pose.append(draw_pose_wan(pose_kp[int(i)], width, height))
            face.append(faces[i] if i in faces else faces[max(k for k in faces if k <= i)])
            if mode == "replace":
                b, m = backgrounds[max(k for k in backgrounds if k <= i)]
                bg.append(b)
                mask.append(m)
        out = {
            "pose": pose,
            "face": face,
            "index": wi.from_wan_rate(n, bundle.fps, len(src)),
            "pil": {
                "pose_video": [Image.fromarray(p) for p in pose],
                "face_video": [Image.fromarray(f) for f in face],
            },
        }
        if mode == "replace":
            out["background"], out["mask"] = bg, mask
            out["pil"]["background_video"] = [Image.fromarray(b) for b in bg]
            out["pil"]["mask_video"] = [Image.fromarray(m) for m in mask]
        return out

    # -- render -------------------------------------------------------------------------------------------
    def render(
        self,
        bundle: GuidanceBundle,
        progress: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Iterator[np.ndarray]:
        import torch
        from PIL import Image

        from animate.engines.wan_inputs import segment_length, segments

        opts = self.options
        width, height = bundle.size
        inputs = self.inputs(bundle)
        self._write_artifacts(bundle, inputs)
        count = len(inputs["pose"])
        length = segment_length(opts.segment_frames)
        planned = segments(count, length, opts.overlap_frames)
        if not planned:  # the pipeline would fail on an empty concatenation
            raise AnimateError(
                "invalid_input",
                f"the driving video gives {count} frames at 30 fps, no more than overlap_frames "
                f"{opts.overlap_frames}: use overlap_frames 1 or a longer video",
            )
        total = len(planned) * opts.steps
        self.parts["segments"] = f"{len(planned)} x {length} frames, overlap {opts.overlap_frames}"
        self.plan = WanPlan(
            offload=self.parts.get("offload", "none"),
            dtype=self.parts.get("dtype", "float32"),
            segments=len(planned),
            segment_frames=length,
            overlap_frames=opts.overlap_frames,
            steps=opts.steps,
            generated_frames=count,
        )
        done = [0]

        def on_step(pipe, step, timestep, kwargs):
            done[0] += 1
            if should_cancel is not None and should_cancel():
                pipe._interrupt = True
            if progress is not None:
                progress(done[0], total)
            return {}

        pipe = self.pipeline
        image_embeds = self._image_embeds(bundle.reference)
        pipe.encode_image = lambda image, device=None: image_embeds.to(device or image_embeds.device)
        prompt_embeds = self._prompt_embeds(opts.prompt)
        negative = self._prompt_embeds(opts.negative_prompt) if opts.guidance_scale > 1 else None
        generator = torch.Generator("cpu").manual_seed(opts.seed)
        result = pipe(
            image=Image.fromarray(bundle.reference),
            **inputs["pil"],
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative,
            height=height,
            width=width,
            segment_frame_length=length,
            prev_segment_conditioning_frames=opts.overlap_frames,
            num_inference_steps=opts.steps,
            guidance_scale=opts.guidance_scale,
            mode=opts.mode,
            generator=generator,
            output_type="np",
            max_sequence_length=MAX_SEQUENCE_LENGTH,
            callback_on_step_end=on_step,
        ).frames[0]
        if should_cancel is not None and should_cancel():
            from animate.animator import Canceled

            raise Canceled("canceled", "the job was canceled")
        video = (np.clip(np.asarray(result, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        for j in inputs["index"]:
            yield video[int(j)]

    def _write_artifacts(self, bundle: GuidanceBundle, inputs: dict) -> None:
        """pose / face (and mask) videos at 30 fps, as the pipeline receives them."""
        from animate.engines.wan_inputs import WAN_FPS
        from animate.media import write_video

        directory = (bundle.extras.get("wan") or {}).get("artifacts_dir")
        if directory is None:
            return
        directory = Path(directory)
        self.artifacts["wan_pose"] = write_video(directory / "wan_pose.mp4", inputs["pose"], WAN_FPS).path
        self.artifacts["wan_face"] = write_video(directory / "wan_face.mp4", inputs["face"], WAN_FPS).path
        if "mask" in inputs:
            masks = [np.repeat(m[..., None], 3, axis=2) for m in inputs["mask"]]
            self.artifacts["wan_mask"] = write_video(directory / "wan_mask.mp4", masks, WAN_FPS).path
