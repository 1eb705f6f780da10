"""The one way in: ``Animator(settings).run(reference, driving, ...)`` -> an mp4 and its artifacts.

The CLI, the server's workers and the tests all call this facade. Stages, in order: decode, pose, body,
motion, render, encode (render and encode stream together, frame by frame). Progress is reported through
one callback type; cancellation is cooperative (``should_cancel`` is polled between frames).
``AnimationOptions.preset`` (``animate.presets``) swaps the decode and pose stages for a published system's
preprocessing (MimicMotion's or DisPose's) and skips the body stage, so its published results reproduce.

The body stage fits the 3D body to the reference (shape, pose, camera; on a helper thread while the
driving video's poses are estimated) and to the driving frames, and transfers the driving poses onto the
reference's shape in the reference's camera (``animate.body.transfer``). The transferred bodies drive the
warp engine and the dense motion field, and give the diffusion engine its depth / normal / semantic / mask
guidance. When the fit is not possible (no 3D landmarks) or does not match the reference person, the job
goes on with the 2D skeleton field and the reason is logged and kept in ``AnimationResult.notes``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from animate.engines import (
    ENGINE_NAMES,
    auto_engine_name,
    diffusion_unavailable_reason,
    select_engine,
    wan_unavailable_reason,
)
from animate.errors import AnimateError
from animate.media import ReferenceImage, VideoWriters, cover_size, load_image, open_video, write_video
from animate.motion.bundle import GuidanceBundle
from animate.motion.visualize import flow_to_color, motion_preview
from animate.presets import frame_stride, get_preset, preprocess_reference, sample_frames
from animate.settings import Settings

#: Share of the whole run each stage takes, for one overall ``fraction`` (rough CPU proportions).
STAGE_WEIGHTS = {
    "decode": 0.02, "load": 0.02, "pose": 0.33, "body": 0.2, "motion": 0.03, "previews": 0.06, "render": 0.29,
    "encode": 0.05,
}  # fmt: skip
STAGES = tuple(STAGE_WEIGHTS)
MAX_SIDE, SHORT_SIDE = 1024, 576
#: The reference body fit must cover at least this IoU of the reference person mask to be used.
MIN_REFERENCE_FIT_IOU = 0.5
PREVIEW = {"crf": 23, "preset": "veryfast"}  # guidance previews: for the eye, not the result
#: Previews are drawn at the output size divided by a whole number, so their longest side is at most this
#: (576x1024 -> 288x512): a quarter of the pixels to draw, render and encode, same frames and timing.
PREVIEW_MAX_SIDE = 512
BODY_PREVIEWS = ("depth", "normal", "semantic", "dense_flow")
CMP_CHUNK = 32  # frames of CMP input and output made at a time (memory flat in length)
MIN_FPS, MAX_FPS = 1.0, 60.0  # output rates; a driving video outside them is resampled into them

log = logging.getLogger("animate.animator")


@dataclass(frozen=True)
class Progress:
    stage: str  # one of STAGES
    fraction: float  # overall, 0..1, never decreasing; 1.0 is reported exactly once, at the end
    step: int  # within the stage
    total: int


ProgressCallback = Callable[[Progress], None]


class Canceled(AnimateError):
    code = "canceled"


@dataclass(frozen=True)
class AnimationOptions:
    engine: str = "auto"  # auto | warp | diffusion
    size: tuple[int, int] | None = None  # (width, height); default: the reference's aspect in 576x1024
    fps: float | None = None  # default: the driving video's
    max_frames: int | None = None
    seed: int = 0
    steps: int | None = None  # diffusion and wan; None: the engine's own (25 diffusion, 20 wan)
    guidance_scale: float | None = None  # diffusion and wan; None: the engine's own (2.0 diffusion, 1.0 wan)
    retarget: str = "bones"  # bones | global (MimicMotion's one scale + offset)
    audio: bool = True  # keep the driving video's audio
    body: bool = True  # fit the 3D body (else the warp engine moves pixels with the 2D skeleton field)
    # mimicmotion | dispose: that system's published preprocessing (``animate.presets``; diffusion only)
    preset: str | None = None
    tile_size: int | None = None  # diffusion: frames per UNet call (None: the checkpoint's or preset's)
    tile_overlap: int | None = None  # diffusion: frames shared by neighbouring tiles (None: likewise)
    adapter: Path | None = None  # diffusion: RUN_DIR/final of `animate train run`, over the base weights
    # wan (animate.engines.wan): animate | replace (the reference replaces the driver, background kept),
    # frames per generated segment, frames shared by segments (1 or 5), generation area without --size
    mode: str = "animate"
    segment_frames: int = 77
    overlap_frames: int = 1
    resolution: str = "720p"
    # identity requested: the reference must show a face (else no_face_detected); every run without it
    # still gets an identity score when the reference has a face (animate.face.score)
    identity: bool = False

    def validate(self) -> None:
        if self.engine not in ENGINE_NAMES:
            raise AnimateError("invalid_option", f"engine must be one of {', '.join(ENGINE_NAMES)}")
        if self.size is not None and (
            min(self.size) < 64 or max(self.size) > 4096 or self.size[0] % 2 or self.size[1] % 2
        ):
            raise AnimateError("invalid_option", f"size must be even and within 64..4096, got {self.size}")
        if self.fps is not None and not MIN_FPS <= self.fps <= MAX_FPS:
            raise AnimateError("invalid_option", f"fps must be within 1..60, got {self.fps}")
        if self.max_frames is not None and self.max_frames < 1:
            raise AnimateError("invalid_option", f"max_frames must be >= 1, got {self.max_frames}")
        if self.retarget not in ("bones", "global"):
            raise AnimateError("invalid_option", "retarget must be 'bones' or 'global'")
        if self.steps is not None and not 1 <= self.steps <= 200:
            raise AnimateError("invalid_option", f"steps must be within 1..200, got {self.steps}")
        if self.preset is not None:
            get_preset(self.preset)
            if self.engine == "warp":
                raise AnimateError(
                    "invalid_option", f"preset {self.preset!r} needs engine diffusion (or auto)"
                )
            if self.size is not None or self.fps is not None:
                raise AnimateError("invalid_option", f"preset {self.preset!r} sets the size and fps itself")
        self._validate_wan()
        if self.adapter is not None:
            if self.engine == "warp":
                raise AnimateError("invalid_option", "--adapter needs engine diffusion (or auto)")
            if not (Path(self.adapter) / "adapter.json").is_file():
                raise AnimateError(
                    "adapter_invalid", f"{self.adapter} is not a training output (pass RUN_DIR/final)"
                )
        if self.tile_size is not None and self.tile_size < 2:
            raise AnimateError("invalid_option", f"tile_size must be >= 2, got {self.tile_size}")
        preset = get_preset(self.preset) if self.preset else None
        tile = self.tile_size or getattr(preset, "tile_size", None)
        overlap = getattr(preset, "tile_overlap", None) if self.tile_overlap is None else self.tile_overlap
        if overlap is not None and (overlap < 0 or (tile is not None and overlap >= tile)):
            below = f" and below tile_size {tile}" if tile is not None else ""
            raise AnimateError("invalid_option", f"tile_overlap must be >= 0{below}, got {overlap}")

    def _validate_wan(self) -> None:
        from animate.engines.wan import WanOptions

        self.wan_options().validate()
        if self.mode != WanOptions.mode and self.engine in ("warp", "diffusion"):
            raise AnimateError("invalid_option", f"mode {self.mode!r} needs engine wan")
        if self.engine == "wan" and self.size is not None and (self.size[0] % 16 or self.size[1] % 16):
            raise AnimateError(
                "invalid_option", f"engine wan needs a size in multiples of 16, got {self.size}"
            )
        if self.engine == "wan" and self.preset is not None:
            raise AnimateError("invalid_option", "presets need engine diffusion")

    def wan_options(self):
        from animate.engines.wan import WanOptions

        return WanOptions(
            mode=self.mode,
            segment_frames=self.segment_frames,
            overlap_frames=self.overlap_frames,
            steps=20 if self.steps is None else self.steps,
            guidance_scale=1.0 if self.guidance_scale is None else self.guidance_scale,
            seed=self.seed,
            resolution=self.resolution,
        )


@dataclass
class AnimationResult:
    video: Path
    engine: str
    frames: int
    fps: float
    size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    artifacts: dict[str, Path] = field(default_factory=dict)
    motion: str = "skeleton"  # what moved the person: "body" (3D body fit) or "skeleton" (2D field)
    notes: list[str] = field(default_factory=list)  # e.g. why the body fit was not used
    parts: dict[str, str] = field(default_factory=dict)  # the engine's active parts (diffusion: weights used)
    plan: dict | None = None  # animate.engines.plan.Plan.to_dict(): what the render ran with
    identity: dict | None = None  # animate.face.IdentityScore.to_dict(); None: the reference shows no face

    def to_dict(self) -> dict:
        return {
            "video": str(self.video),
            "engine": self.engine,
            "frames": self.frames,
            "fps": self.fps,
            "width": self.size[0],
            "height": self.size[1],
            "motion": self.motion,
            "notes": list(self.notes),
            "parts": dict(self.parts),
            "plan": self.plan,
            "identity": self.identity,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "artifacts": {k: str(v) for k, v in self.artifacts.items()},
        }


def preview_divisor(size: tuple[int, int], max_side: int | None = None) -> int:
    """The smallest whole number that brings the longest side of ``size`` to ``max_side`` (default
    ``PREVIEW_MAX_SIDE``) or less."""
    return max(1, -(-max(size) // (max_side or PREVIEW_MAX_SIDE)))


def default_size(width: int, height: int) -> tuple[int, int]:
    """The reference's aspect inside 576x1024 (or 1024x576), sides multiples of 8."""
    box = (SHORT_SIDE, MAX_SIDE) if height >= width else (MAX_SIDE, SHORT_SIDE)
    scale = min(box[0] / width, box[1] / height)
    if min(width, height) * scale < SHORT_SIDE:  # short side 576 unless that breaks the long-side cap
        scale = min(SHORT_SIDE / min(width, height), MAX_SIDE / max(width, height))
    return max(64, round(width * scale / 8) * 8), max(64, round(height * scale / 8) * 8)


def fit_reference(image: ReferenceImage, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """The reference (and its alpha mask) scaled to cover ``size`` and centre-cropped."""
    width, height = size
    scaled = cover_size(image.width, image.height, width, height)
    shrink = scaled[0] < image.width
    interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    x0, y0 = (scaled[0] - width) // 2, (scaled[1] - height) // 2
    rgb = cv2.resize(image.rgb, scaled, interpolation=interp)[y0 : y0 + height, x0 : x0 + width]
    mask = None
    if image.mask is not None:
        mask = cv2.resize(image.mask, scaled, interpolation=cv2.INTER_LINEAR)[
            y0 : y0 + height, x0 : x0 + width
        ]
    return np.ascontiguousarray(rgb), mask


class _Reporter:
    """Turns per-stage steps into one monotonic overall fraction; 1.0 is sent once, by ``finish``."""

    def __init__(self, callback: ProgressCallback | None, should_cancel: Callable[[], bool] | None) -> None:
        self.callback = callback
        self.should_cancel = should_cancel
        self.last = 0.0

    def __call__(self, stage: str, step: int, total: int) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise Canceled("canceled", "the job was canceled")
        done = sum(STAGE_WEIGHTS[s] for s in STAGES[: STAGES.index(stage)])
        fraction = done + STAGE_WEIGHTS[stage] * (step / total if total else 1.0)
        self.last = max(self.last, min(fraction, 0.999))
        if self.callback is not None:
            self.callback(Progress(stage, self.last, step, total))

    def finish(self, total: int) -> None:
        self.last = 1.0
        if self.callback is not None:
            self.callback(Progress("encode", 1.0, total, total))


@dataclass
class Prepared:
    """What ``Animator.prepare`` computed: the engine's input and the records kept for artifacts."""

    bundle: GuidanceBundle
    targets: object  # PoseSequence: the retargeted driving poses in output pixels
    engine: object  # the selected Engine
    has_audio: bool
    timings: dict[str, float]
    artifacts: dict[str, Path]
    notes: list[str] = field(default_factory=list)


class Animator:
    """Holds the settings and the models loaded for them; reuse one instance across jobs."""

    def __init__(self, settings: Settings | None = None, tile_group=None) -> None:
        """``tile_group``: this process' share of one job spread over several GPUs (``pipelines.distributed``,
        started by ``animate.engines.parallel``); the diffusion engine predicts only its tiles."""
        self.settings = settings or Settings()
        self.tile_group = tile_group

    @staticmethod
    def _diffusion_options(options: AnimationOptions, tile_group=None):
        from animate.engines.diffusion import DiffusionOptions

        tiles = {"tile_size": options.tile_size, "tile_overlap": options.tile_overlap}
        if options.preset:  # the published run's tiles (its test.yaml) unless the user set them
            preset = get_preset(options.preset)
            tiles = {
                "tile_size": options.tile_size or preset.tile_size,
                "tile_overlap": preset.tile_overlap if options.tile_overlap is None else options.tile_overlap,
            }
        return DiffusionOptions(
            steps=25 if options.steps is None else options.steps,
            guidance_scale=2.0 if options.guidance_scale is None else options.guidance_scale,
            seed=options.seed,
            preset=options.preset,
            adapter=options.adapter,
            tile_group=tile_group,
            **{name: value for name, value in tiles.items() if value is not None},
        )

    def prepare(
        self,
        reference: str | Path,
        driving: str | Path,
        options: AnimationOptions | None = None,
        *,
        artifacts_dir: str | Path | None = None,
        progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Prepared:
        """Stages decode, pose, body and motion: everything an engine needs, in one ``GuidanceBundle``."""
        from animate.motion.body_field import snap_keypoints
        from animate.pose import MediaPipeEstimator, estimate_image, estimate_video, global_fit, retarget
        from animate.pose.extract import SequenceOptions

        options = options or AnimationOptions()
        options.validate()
        report = progress if isinstance(progress, _Reporter) else _Reporter(progress, should_cancel)
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = timings.get(stage, 0.0) + now - clock
            clock = now

        # 1. decode: validate both inputs before any heavy work
        report("decode", 0, 1)
        media = self.settings.media
        image = load_image(reference, media)
        video = open_video(driving, media)
        # loading a model's weights is its own stage ("load"), not decode; the warp engine loads nothing
        loads = options.engine != "warp" and (
            options.engine != "auto" or auto_engine_name(self.settings) != "warp"
        )
        if loads:
            report("decode", 1, 1)
            lap("decode")
            report("load", 0, 1)
        engine = select_engine(
            options.engine,
            self.settings,
            self._diffusion_options(options, self.tile_group),
            wan_options=options.wan_options(),
        )
        preset = get_preset(options.preset) if options.preset else None
        wan = engine.name == "wan"
        if options.mode == "replace" and not wan:
            reason = wan_unavailable_reason(self.settings)
            raise AnimateError("engine_unavailable", f"mode replace needs the wan engine: {reason}")
        if wan:  # upstream's generation size and letterboxed reference (animate.engines.wan_inputs)
            from animate.engines.wan_inputs import generation_size, letterbox

            source = (video.width, video.height) if options.mode == "replace" else (image.width, image.height)
            size = options.size or generation_size(*source, options.resolution)
            fps = float(options.fps or min(max(video.fps, MIN_FPS), MAX_FPS))
            ref_rgb = letterbox(image.rgb, *size)
            ref_alpha = None if image.mask is None else letterbox(image.mask, *size)
        elif preset is None:
            size = options.size or default_size(image.width, image.height)
            fps = float(options.fps or min(max(video.fps, MIN_FPS), MAX_FPS))  # 1000 fps claims: 60
            ref_rgb, ref_alpha = fit_reference(image, size)
        else:
            if engine.name == "warp":  # auto fell back: a warp video would reproduce nothing
                reason = diffusion_unavailable_reason(self.settings)
                raise AnimateError(
                    "invalid_option", f"preset {preset.name!r} needs the diffusion engine: {reason}"
                )
            ref_rgb, ref_alpha = preprocess_reference(image.rgb, preset, image.mask)
            size, fps = (ref_rgb.shape[1], ref_rgb.shape[0]), preset.fps
        fit_body = options.body and preset is None and not wan  # upstream has no body model
        if fit_body and self.settings.body_model is not None:
            # a model file the user named must exist and load: their error, not a reason to fall back
            from animate.body import load_body

            load_body(self.settings.body_model)
        report("load" if loads else "decode", 1, 1)
        lap("load" if loads else "decode")

        # 2. pose: reference (static, with segmentation) and driving video, then retarget onto the reference.
        # The reference body fit needs only the reference: it runs on a helper thread meanwhile.
        report("pose", 0, 1)  # the stage starts now (its frame count comes with the driving video's poses)
        ref_pose = estimate_image(ref_rgb if ref_alpha is None else ReferenceImage(ref_rgb, ref_alpha, "PNG"))
        if wan:
            from animate.face.wan import face_seen

            ref_pose = _wan_reference_pose(image, size, ref_pose)

            if not face_seen(ref_pose.keypoints):
                raise AnimateError(
                    "no_face_in_reference", "the wan engine needs a visible face in the reference image"
                )
        person = ref_alpha if ref_alpha is not None else ref_pose.mask
        if person is None:
            raise AnimateError("no_person_detected", "the reference person could not be segmented")
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reference-body")
        try:
            # Settings may name a user's SMPL-family model file (``body_model``); Anny otherwise.
            model_path = self.settings.body_model
            notes: list[str] = []
            if fit_body and engine.name == "warp":
                from animate.engines.warp import partial_reference

                if partial_reference(ref_pose.keypoints, size):  # its body would be guessed below the cut
                    fit_body = False
                    notes.append("3D body not used: the reference shows no ankle (a partial body)")
            reference_fit = (
                pool.submit(_fit_reference_body, ref_pose, person, size, model_path) if fit_body else None
            )
            if preset is not None:
                ref_pose, driving_poses = self._preset_poses(
                    preset, ref_rgb, ref_pose, video, options, report
                )
                targets = global_fit(driving_poses, ref_pose, size[0], size[1])
                notes += _preset_notes(preset, video, self.settings)
            else:
                resample = options.fps or (None if fps == video.fps else fps)
                expected = video.output_frame_count(resample, options.max_frames)
                # The warp engine on the body path uses only the driver's body (Anny's hands are not posed,
                # the face texture rides on the head): BlazePose alone is ~2.5x faster than Holistic.
                body_only = fit_body and engine.name == "warp"
                masks = wan and options.mode == "replace"  # the person to replace
                with MediaPipeEstimator(
                    static=False, whole_body=not body_only, segmentation=masks
                ) as estimator:
                    driving_poses = estimate_video(
                        video,
                        estimator,
                        fps=resample,
                        max_frames=options.max_frames,
                        options=SequenceOptions(keep_masks=True) if masks else None,
                        progress=lambda done, total: report("pose", done, max(total, expected)),
                    )
                fit = global_fit if options.retarget == "global" else retarget
                targets = fit(driving_poses, ref_pose, size[0], size[1])
            lap("pose")

            # 3. body: the driving poses on the reference's body, or the reason there is none
            report("body", 0, 1)
            motion = None
            if reference_fit is not None:
                motion, reason = _fit_body(reference_fit, driving_poses)
                if motion is None:
                    log.warning("3D body not used, falling back to the 2D skeleton field: %s", reason)
                    notes.append(f"3D body not used: {reason}")
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        if motion is not None:
            targets = targets.with_keypoints(snap_keypoints(targets.keypoints, motion.keypoints()))
        report("body", 1, 1)
        lap("body")

        # 4. motion: keypoint guidance; the body's guidance maps and dense field when an engine needs them
        # in full (diffusion). The warp engine streams from the bodies frame by frame.
        bundle = GuidanceBundle(
            reference=ref_rgb,
            reference_mask=np.where(person > 127, 255, 0).astype(np.uint8),
            reference_keypoints=ref_pose.keypoints,
            keypoints=targets.keypoints,
            fps=fps,
            size=size,
            body=motion,
        )
        if preset is not None:
            bundle.extras["preset"] = preset.name
        if wan:  # the engine reads the driving frames (face crops, background) and the driver's own poses
            bundle.extras["wan"] = {
                "driving_keypoints": driving_poses.keypoints,
                "driving_size": (video.width, video.height),
                "driving_frames": lambda: video.frames(fps=resample, max_frames=options.max_frames),
                "person_masks": [p.mask for p in driving_poses] if options.mode == "replace" else None,
                "artifacts_dir": artifacts_dir,
            }
        if engine.name not in ("warp", "wan"):
            self._fill_guidance(bundle, report, engine)
        bundle.validate()
        report("motion", 1, 1)
        lap("motion")
        artifacts: dict[str, Path] = {}
        if artifacts_dir is not None:  # previews: a stage of their own, drawn at a reduced size
            artifacts = self._write_artifacts(Path(artifacts_dir), bundle, targets, report)
            lap("previews")
        # the preset's 15 fps timing matches the driving video's only when fps / stride is 15
        in_time = preset is None or abs(video.fps / frame_stride(video.fps, preset) - preset.fps) < 0.01
        has_audio = video.info.has_audio and in_time
        return Prepared(bundle, targets, engine, has_audio, timings, artifacts, notes)

    def _preset_poses(self, preset, ref_rgb: np.ndarray, ref_pose, video, options: AnimationOptions, report):
        """(reference pose, driving poses) as upstream gets them: DWPose (when its files are in the weights,
        else MediaPipe) on the preprocessed reference and on driving frames 0, s, 2s, ... at their full size;
        no smoothing. The driving poses stay in the video's pixels."""
        from animate.media.prefetch import prefetched
        from animate.pose import MediaPipeEstimator, SequenceOptions, estimate_frames, finish_sequence
        from animate.pose.dwpose import DWPoseEstimator

        frames, expected = sample_frames(video, preset, options.max_frames)
        if DWPoseEstimator.available(self.settings.weights_dir):
            estimator = DWPoseEstimator.from_weights(self.settings.weights_dir)
            people = estimator.detect(ref_rgb)
            ref_pose = people[0] if people else ref_pose  # upstream fits on the first person found
        else:
            estimator = MediaPipeEstimator(static=False, whole_body=True, segmentation=False)
        with estimator:
            candidates = estimate_frames(
                prefetched(frames, depth=8, name="pose-decode"),
                estimator,
                width=video.width,
                height=video.height,
                total=expected,
                progress=lambda done, total: report("pose", done, max(total, expected)),
            )
        # the shortest gap filling there is (one frame), no smoothing
        sequence = finish_sequence(
            candidates,
            video.width,
            video.height,
            preset.fps,
            SequenceOptions(smoothing=None, max_gap_seconds=0),
        )
        return ref_pose, sequence

    def run(
        self,
        reference: str | Path,
        driving: str | Path,
        output: str | Path,
        options: AnimationOptions | None = None,
        *,
        artifacts_dir: str | Path | None = None,
        progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> AnimationResult:
        """All stages: the mp4 at ``output`` (written atomically) and, optionally, guidance previews."""
        from animate.face.score import start_meter

        options = options or AnimationOptions()
        report = _Reporter(progress, should_cancel)
        options.validate()  # option errors come first, as from prepare
        # the reference's face at full resolution, before the heavy stages (identity requested: fail here)
        meter, face_embedding, identity_note = start_meter(
            load_image(reference, self.settings.media).rgb, self.settings.weights_dir, options.identity
        )
        prepared = self.prepare(reference, driving, options, artifacts_dir=artifacts_dir, progress=report)
        bundle, engine = prepared.bundle, prepared.engine
        bundle.extras["face_embedding"] = face_embedding  # the diffusion engine's identity adapter
        if meter is not None:
            meter.for_length(bundle.num_frames)
        start = time.perf_counter()

        # 4-5. render + encode, streamed frame by frame
        def frames() -> Iterator[np.ndarray]:
            report("render", 0, bundle.num_frames)  # the stage starts with the engine's own set-up
            for frame in engine.render(
                bundle,
                progress=lambda done, n: report("render", done, n),
                should_cancel=report.should_cancel,
            ):
                if meter is not None:  # identity score on every k-th output frame
                    meter.update(frame)
                yield frame
            report("render", bundle.num_frames, bundle.num_frames)  # raises Canceled if asked to stop

        try:
            written = write_video(
                output,
                frames(),
                bundle.fps,
                crf=self.settings.output_crf,
                preset=self.settings.output_preset,
                audio_from=driving if options.audio and prepared.has_audio else None,
            )
        finally:
            bundle.close()  # the guidance caches on disk
        timings = {**prepared.timings, "render": time.perf_counter() - start}
        report("encode", 1, 1)
        report.finish(bundle.num_frames)
        return AnimationResult(
            video=written.path,
            engine=engine.name,
            frames=written.frame_count,
            fps=written.fps,
            size=(written.width, written.height),
            timings=timings,
            artifacts={**prepared.artifacts, **(getattr(engine, "artifacts", None) or {})},
            # the warp engine moves a partial reference with the 2D field even when a body was fitted
            motion=getattr(engine, "motion", None) or ("body" if bundle.body is not None else "skeleton"),
            notes=prepared.notes + ([identity_note] if identity_note else []),
            parts=dict(getattr(engine, "parts", None) or {}),
            plan=_engine_plan(engine, written),
            identity=meter.result().to_dict() if meter is not None else None,
        )

    def _write_artifacts(self, directory: Path, bundle: GuidanceBundle, targets, report: _Reporter) -> dict:
        """Guidance previews a person can check by eye: skeletons, motion colours and, with a body, the body's
        guidance maps; ``poses.json`` (output pixels) and ``body.json``. One pass over the frames writes every
        preview (one encoder thread each), every frame at the output size divided by ``preview_divisor``."""
        from animate.motion.keypoint_flow import trajectory_flow
        from animate.pose import draw_pose, draw_pose_mimicmotion

        directory.mkdir(parents=True, exist_ok=True)
        k = preview_divisor(bundle.size)
        width, height = bundle.width // k, bundle.height // k
        if bundle.extras.get("preset"):
            draw = draw_pose_mimicmotion
        else:  # strokes of 2 px drawn on a 2x canvas (not DWPose's 2160 px one: 16x the pixels at this size)
            draw = functools.partial(draw_pose, canvas_short_side=2 * min(width, height))
        frames = bundle.num_frames
        report("previews", 0, frames)
        targets.save(directory / "poses.json")
        out: dict[str, Path] = {"poses": directory / "poses.json"}

        def motion_frames() -> Iterator[np.ndarray]:
            # Trajectory flow in chunks, so memory stays bounded for long videos.
            chunk = 32
            for start in range(0, frames, chunk):
                lo = max(0, start - 1)
                points = bundle.keypoints[lo : start + chunk] * np.array([1 / k, 1 / k, 1], np.float32)
                flows = trajectory_flow(points, (width, height))
                for flow, frame_points in zip(flows[start - lo :], points[start - lo :], strict=True):
                    # with the skeleton: still frames (frame 0) are not blank white
                    yield motion_preview(flow, frame_points, max_magnitude=max(4.0, 0.01 * height))

        streams = [
            ({"skeleton": draw(pose.transformed((1 / k, 1 / k)), width, height)} for pose in targets),
            ({"motion": image} for image in motion_frames()),
        ]
        names = ["skeleton", "motion"]
        if bundle.body is not None:
            streams.append(self._body_previews(directory, bundle, k))
            names += BODY_PREVIEWS
            out["body"] = directory / "body.json"
        with VideoWriters(directory, names, bundle.fps, **PREVIEW) as writers:
            for t in range(frames):
                item: dict[str, np.ndarray] = {}
                for stream in streams:
                    item.update(next(stream))
                writers.put(item)
                report("previews", t + 1, frames)
        return {**out, **{name: directory / f"{name}.mp4" for name in names}}

    @staticmethod
    def _body_previews(directory: Path, bundle: GuidanceBundle, divisor: int = 1) -> Iterator[dict]:
        """Writes the fitted bodies (``body.json``), then yields per frame the ``BODY_PREVIEWS`` images: from
        one render, the guidance maps the diffusion engine reads (depth, normal, semantic) and the dense field
        as colours, at the output size / ``divisor``."""
        import json

        from animate.motion.body_field import BodyMotion, DenseField

        motion = bundle.body
        (directory / "body.json").write_text(
            json.dumps(
                {"reference": motion.reference.to_json(), "transferred": motion.track.to_json()},
                separators=(",", ":"),
            )
        )
        person = bundle.reference_mask
        if (
            divisor > 1
        ):  # the same bodies seen by a camera with fewer pixels: render and field at preview size
            size = (bundle.width // divisor, bundle.height // divisor)
            motion = BodyMotion(motion.body, motion.reference, motion.track, motion.camera.resized(*size))
            person = cv2.resize(person, size, interpolation=cv2.INTER_NEAREST)
        dense = DenseField(motion, person)
        scale = max(4.0, 0.1 * motion.size[1])
        renderer, camera = motion.renderer()
        for vertices in motion.iter_vertices():
            frame = renderer.render(vertices, camera)
            flow = dense.flow(vertices)
            yield {
                "depth": np.repeat(frame.depth_image[..., None], 3, axis=2),
                "normal": frame.normal_image,
                "semantic": frame.semantic_image,
                "dense_flow": flow_to_color(flow, max_magnitude=scale),
            }

    def _fill_guidance(self, bundle: GuidanceBundle, report: _Reporter, engine=None) -> None:
        """The per-frame stacks a diffusion engine reads: the rendered body's depth / normal /
        semantic / mask and the dense field (CMP's when its checkpoint is in the weights, as DisPose's
        ControlNet was trained on it; else the body's). Without a body fit only CMP can give the field.
        ``engine.guidance_conventions`` (the loaded networks' rules) say which keypoints and CMP input rules
        make the dense field, which convention the depth map follows, and whether a `skeleton` encoder gets
        its own image (Champ's: the rendered body's joints in DWPose's annotator style).

        The body's stacks are rendered once, frame by frame, into ``FrameCache`` files in a temporary folder
        (``bundle.caches``; removed by ``bundle.close()``), so memory stays flat in length: the engine reads
        them back a tile window at a time. Depth is kept as one channel and repeated on reading."""
        from animate.motion.body_field import DenseField
        from animate.motion.bundle import GuidanceConventions
        from animate.motion.cmp import cmp_dense_flow, find_cmp_checkpoint, load_cmp
        from animate.motion.keypoint_flow import conventional_sparse_motion

        rules = getattr(engine, "guidance_conventions", None) or GuidanceConventions()
        total = bundle.num_frames
        from animate.motion.frames import CacheDirectory

        width, height = bundle.size
        image = (height, width)
        if bundle.caches is None:
            bundle.caches = CacheDirectory()
        checkpoint = find_cmp_checkpoint(self.settings.weights_dir)
        if checkpoint is not None:
            model, dense_cache, sparse_caches = load_cmp(checkpoint), None, None
            for start in range(0, total, CMP_CHUNK):  # CMP's input and output a chunk of frames at a time
                sparse_flow, sparse_mask = conventional_sparse_motion(
                    bundle.reference_keypoints,
                    bundle.keypoints[start : start + CMP_CHUNK],
                    bundle.size,
                    rules,
                )
                dense = cmp_dense_flow(
                    bundle.reference,
                    bundle.reference_mask,
                    sparse_flow,
                    sparse_mask,
                    model,
                    io=rules.cmp_io,
                    callback=lambda done, n, start=start: report("motion", start + done, 2 * total),
                )
                if dense_cache is None:
                    dense_cache = bundle.caches.cache("dense_flow", total, (*image, 2), np.float32)
                    if rules.cmp_io == "resample":  # DisPose's sparse input lies on CMP's grid, not ours
                        sparse_caches = (
                            bundle.caches.cache("sparse_flow", total, sparse_flow.shape[1:], np.float32),
                            bundle.caches.cache(
                                "sparse_mask", total, sparse_mask.shape[1:], sparse_mask.dtype
                            ),
                        )
                dense_cache.append(dense)
                if sparse_caches is not None:
                    sparse_caches[0].append(sparse_flow)
                    sparse_caches[1].append(sparse_mask)
            bundle.dense_flow = dense_cache
            if sparse_caches is not None:
                bundle.sparse_flow, bundle.sparse_mask = sparse_caches
        motion = bundle.body
        if motion is None:
            return
        caches = {
            "depth": bundle.caches.cache("depth", total, image, np.uint8),
            "normal": bundle.caches.cache("normal", total, (*image, 3), np.uint8),
            "semantic": bundle.caches.cache("semantic", total, (*image, 3), np.uint8),
            "mask": bundle.caches.cache("mask", total, image, np.uint8),
        }
        skeletons = None
        if rules.skeleton == "dwpose":
            from animate.motion.body_field import snap_keypoints
            from animate.pose.draw_dwpose import draw_pose_dwpose

            skeletons = snap_keypoints(bundle.keypoints, motion.keypoints())
            caches["skeleton"] = bundle.caches.cache("skeleton", total, (*image, 3), np.uint8)
        dense = DenseField(motion, bundle.reference_mask) if bundle.dense_flow is None else None
        if dense is not None:
            caches["dense_flow"] = bundle.caches.cache("dense_flow", total, (*image, 2), np.float32)
        renderer, camera = motion.renderer()
        for t, vertices in enumerate(motion.iter_vertices()):
            frame = renderer.render(vertices, camera)
            caches["depth"].append(frame.depth_map(rules.depth))
            caches["normal"].append(frame.normal_image)
            caches["semantic"].append(frame.semantic_image)
            caches["mask"].append(frame.mask_image)
            if skeletons is not None:
                caches["skeleton"].append(draw_pose_dwpose(skeletons[t], width, height))
            if dense is not None:
                caches["dense_flow"].append(dense.flow(vertices))
            report("motion", total + t + 1 if checkpoint else t + 1, 2 * total if checkpoint else total)
        depth = caches.pop("depth")
        bundle.depth = depth.map(
            lambda frames: np.repeat(frames[..., None], 3, axis=-1), (*image, 3), np.uint8
        )
        for name, cache in caches.items():
            setattr(bundle, name, cache)


def _wan_reference_pose(image: ReferenceImage, size: tuple[int, int], pose):
    """A small generation size (tests, 480p of a wide photo) can leave the face too small to find: the
    reference is estimated at 720p's area as well and that pose, scaled to ``size``, is kept when it sees
    more face points."""
    from animate.engines.wan_inputs import generation_size, letterbox
    from animate.pose import estimate_image
    from animate.pose.layout import FACE

    big = generation_size(image.width, image.height, "720p")
    if big[0] * big[1] <= size[0] * size[1]:
        return pose
    rgb = letterbox(image.rgb, *big)
    alpha = None if image.mask is None else letterbox(image.mask, *big)
    large = estimate_image(rgb if alpha is None else ReferenceImage(rgb, alpha, "PNG"))
    if (large.keypoints[FACE, 2] > 0).sum() <= (pose.keypoints[FACE, 2] > 0).sum():
        return pose
    scaled = large.transformed((size[0] / big[0], size[1] / big[1]))
    mask = large.mask if large.mask is not None else None
    if mask is not None:
        scaled.mask = cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR)
    elif pose.mask is not None:
        scaled.mask = pose.mask
    return scaled


def _engine_plan(engine, written) -> dict:
    """The plan the engine rendered with (``animate.engines.plan``); the warp engine's has no GPU numbers."""
    from animate.engines.plan import warp_plan

    plan = getattr(engine, "plan", None)
    if plan is not None:
        return plan.to_dict()
    return warp_plan(written.width, written.height, written.frame_count).to_dict()


def _preset_notes(preset, video, settings: Settings) -> list[str]:
    """What the preset did to the timing, and what keeps it from upstream's exact preprocessing."""
    from animate.pose.dwpose import DWPoseEstimator

    stride = frame_stride(video.fps, preset)
    notes = [f"preset {preset.name}: one driving frame in {stride}, written at {preset.fps:g} fps"]
    if video.info.has_audio and abs(video.fps / stride - preset.fps) >= 0.01:
        notes.append("audio dropped: the preset's frame timing differs from the driving video's")
    if not DWPoseEstimator.available(settings.weights_dir):
        notes.append("keypoints from MediaPipe (DWPose's files are not in the weights): pose images differ")
    return notes


def _fit_reference_body(pose, person: np.ndarray, size: tuple[int, int], model_path: Path | None = None):
    """(the reference body alone as a ``BodyMotion``, the IoU of its render with the person mask).

    model_path: a user's SMPL-family ``.npz`` (``animate.body.load_body``); None: Anny.
    """
    from animate.body import load_body
    from animate.body.transfer import fit_reference
    from animate.motion.body_field import BodyMotion

    body = load_body(model_path)
    track = fit_reference(body, pose, size[0], size[1], person)
    motion = BodyMotion(body, track, track, track.camera)
    rendered, inside = motion.reference_render.mask, person > 127
    union = (rendered | inside).sum()
    return motion, float((rendered & inside).sum() / union) if union else 0.0


def _fit_body(reference_fit: Future, driving_poses) -> tuple[object | None, str | None]:
    """(``BodyMotion``, None), or (None, why there is none). Never raises for a fit that fails."""
    from animate.body.transfer import fit_driving, transfer

    try:
        reference, iou = reference_fit.result()
        if iou < MIN_REFERENCE_FIT_IOU:
            return None, f"the body fitted to the reference covers only {iou:.0%} of the person (IoU)"
        if not any(pose.world is not None for pose in driving_poses):
            return None, "the driving video's poses have no 3D landmarks"
        driving = fit_driving(reference.body, driving_poses)
        return reference.with_track(transfer(reference.body, driving, reference.reference)), None
    except AnimateError as exc:
        return None, exc.message
    except Exception as exc:  # a failed fit must not fail the job: the 2D field still animates it
        log.exception("3D body fit failed")
        return None, f"the body fit failed ({type(exc).__name__}: {exc})"
