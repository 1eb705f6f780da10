"""Pydantic classes for the wire; ``job_out`` converts a ``models.Job`` row explicitly."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from animate.animator import AnimationOptions
from server.models import Job

Status = Literal["queued", "running", "succeeded", "failed", "canceled"]


class JobOptions(BaseModel):
    """The option fields of ``POST /v1/jobs``; anything else is refused."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["auto", "warp", "diffusion", "wan"] = "auto"
    width: int | None = Field(default=None, ge=64, le=4096)
    height: int | None = Field(default=None, ge=64, le=4096)
    fps: float | None = Field(default=None, ge=1, le=60)
    max_frames: int | None = Field(default=None, ge=1, le=36_000)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    steps: int | None = Field(default=None, ge=1, le=200, description="Default: 25 (diffusion), 20 (wan).")
    guidance_scale: float | None = Field(
        default=None, ge=0, le=50, description="Default: 2.0 (diffusion), 1.0 (wan)."
    )
    mode: Literal["animate", "replace"] = Field(
        default="animate",
        description="wan: animate (the photo performs the motion) or replace (the photo's person replaces "
        "the one in the video, background kept).",
    )
    segment_frames: int = Field(default=77, ge=5, le=241, description="wan: frames per generated segment.")
    overlap_frames: Literal[1, 5] = Field(default=1, description="wan: frames shared by segments.")
    resolution: Literal["480p", "720p"] = Field(
        default="720p", description="wan: the generation area when no width/height is given."
    )
    preset: Literal["mimicmotion", "dispose"] | None = Field(
        default=None,
        description="A published system's preprocessing, to reproduce its results (diffusion only; "
        "sets the size and fps itself).",
    )
    tile_size: int | None = Field(
        default=None,
        ge=2,
        le=1024,
        description="Frames per UNet call (default: the checkpoint's or preset's).",
    )
    tile_overlap: int | None = Field(
        default=None, ge=0, le=1023, description="Frames shared by neighbouring tiles, below tile_size."
    )
    identity: bool = Field(
        default=False,
        description="Require a face in the reference: without one the job fails with no_face_detected. "
        "The identity score is reported either way when the reference shows a face.",
    )
    webhook_url: str | None = Field(default=None, max_length=2048)

    @model_validator(mode="after")
    def _size_together(self) -> JobOptions:
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height go together")
        return self

    def animation_options(self) -> AnimationOptions:
        size = (self.width, self.height) if self.width is not None and self.height is not None else None
        return AnimationOptions(
            engine=self.engine,
            size=size,
            fps=self.fps,
            max_frames=self.max_frames,
            seed=self.seed,
            steps=self.steps,  # None: the engine's own default, known once `auto` has picked one
            guidance_scale=self.guidance_scale,
            mode=self.mode,
            segment_frames=self.segment_frames,
            overlap_frames=self.overlap_frames,
            resolution=self.resolution,
            preset=self.preset,
            tile_size=self.tile_size,
            tile_overlap=self.tile_overlap,
            identity=self.identity,
        )


class ProgressOut(BaseModel):
    stage: str | None
    fraction: float
    step: int
    total: int


class ErrorOut(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorOut


class IdentityOut(BaseModel):
    mean: float | None = Field(description="Mean cosine of the output's face embeddings to the reference's.")
    min: float | None
    face_share: float = Field(description="Share of the sampled output frames where a face was found.")
    frames: int = Field(description="Output frames sampled (every `every`-th).")
    every: int
    embedder: str = Field(description="dlib_resnet_v1 (default) or arcface_onnx:<file>.")


class ResultOut(BaseModel):
    engine: str
    frames: int
    fps: float
    width: int
    height: int
    timings: dict[str, float] = {}
    identity: IdentityOut | None = Field(
        default=None,
        description="How much the output's face is the reference's; null: no face in the reference.",
    )


class UrlsOut(BaseModel):
    self: str
    cancel: str
    video: str | None = None
    artifacts: dict[str, str] = {}


class JobOut(BaseModel):
    id: str
    status: Status
    progress: ProgressOut
    queue_position: int | None = Field(description="Jobs ahead of this one; null unless queued.")
    attempts: int
    error: ErrorOut | None
    options: dict
    inputs: dict[str, str | None] = Field(
        default_factory=dict,
        description="The uploads' own file names (`reference`, `driving`), sanitised, for display only.",
    )
    result: ResultOut | None
    plan: dict | None = Field(
        default=None,
        description="What the render ran with and expected to cost (memory level, dtype, CFG, offload, "
        "chunks, peak GPU / host memory in GiB, seconds): set when the job ends; for `out_of_memory`, the "
        "plan that failed.",
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None = Field(
        description="When the job's uploads and outputs are deleted (retention); null until it finishes."
    )
    expired: bool = Field(description="The files are gone: the video and artifacts answer 410 `expired`.")
    urls: UrlsOut


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next (older) page; null at the end."
    )


class EngineOut(BaseModel):
    name: str
    available: bool
    reason: str | None = Field(
        description="Why the engine cannot run here (null when it can), in user words."
    )
    note: str | None = Field(description="A caveat when it can, e.g. no GPU: it runs on the CPU, slowly.")


class EnginesOut(BaseModel):
    engines: list[EngineOut]
    auto: str = Field(description="The engine `engine=auto` picks on this server.")


class LimitsOut(BaseModel):
    reference_max_bytes: int = Field(description="Upload cap of the photo.")
    driving_max_bytes: int = Field(description="Upload cap of the video.")
    image_formats: list[str] = Field(description="Accepted photo formats, e.g. JPEG.")
    video_formats: list[str] = Field(description="Accepted video containers, e.g. MP4.")
    image_extensions: list[str] = Field(description="File name suffixes of the photo formats, e.g. `.jpg`.")
    video_extensions: list[str] = Field(
        description="File name suffixes of the video containers, e.g. `.mp4`."
    )
    max_video_seconds: float
    max_video_frames: int


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str] = Field(description="database, queue, workers: `ok` or what is wrong.")


def job_out(
    job: Job, queue_position: int | None, artifacts: list[str], retention: timedelta | None = None
) -> JobOut:
    base = f"/v1/jobs/{job.id}"
    expires = job.finished_at + retention if job.finished_at is not None and retention is not None else None
    has_video = job.status == "succeeded" and not job.files_deleted
    return JobOut(
        id=job.id,
        status=job.status,  # type: ignore[arg-type]
        progress=ProgressOut(
            stage=job.stage, fraction=round(job.fraction, 4), step=job.step, total=job.total
        ),
        queue_position=queue_position,
        attempts=job.attempts,
        error=ErrorOut(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        options=job.options,
        inputs=job.inputs or {},
        result=ResultOut(**job.result) if job.result else None,
        plan=job.plan,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        expires_at=expires,
        expired=job.files_deleted,
        urls=UrlsOut(
            self=base,
            cancel=f"{base}/cancel",
            video=f"{base}/video" if has_video else None,
            artifacts={name: f"{base}/artifacts/{name}" for name in artifacts} if has_video else {},
        ),
    )
