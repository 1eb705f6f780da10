"""One settings object for the whole service, read from ``ANIMATE_*`` environment variables.

Nested groups use ``__``: ``ANIMATE_MEDIA__MAX_VIDEO_SECONDS=30``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MediaLimits(BaseModel):
    """What the service accepts from strangers. Every limit is checked before any heavy decoding."""

    max_file_bytes: int = Field(default=512 * 1024 * 1024, gt=0, description="Upload size cap, both kinds.")
    max_image_pixels: int = Field(default=40_000_000, gt=0, description="Decoded image area cap (bombs).")
    min_image_side: int = Field(default=32, gt=0, description="A smaller reference holds no usable person.")
    max_video_seconds: float = Field(default=600.0, gt=0)
    max_video_pixels: int = Field(default=3840 * 2160, gt=0, description="Width x height of one frame.")
    max_video_frames: int = Field(default=36_000, gt=0)
    min_video_side: int = Field(default=16, gt=0)
    video_containers: tuple[str, ...] = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi")
    video_codecs: tuple[str, ...] = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg", "prores")
    image_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")


class ServerSettings(BaseModel):
    """The job server: API, queue and workers (``ANIMATE_SERVER__*``)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the job table; default: SQLite in data_dir."
    )
    queue_url: str | None = Field(
        default=None,
        description="Huey storage: redis://... or postgresql://...; default: SQLite in data_dir.",
    )
    queue_name: str = "animate"
    max_reference_bytes: int = Field(default=32 * 1024 * 1024, gt=0, description="Upload cap, reference.")
    heartbeat_seconds: float = Field(
        default=1.0, gt=0, description="Running jobs and workers beat this often."
    )
    stale_after_seconds: float = Field(
        default=30.0, gt=0, description="A running job silent this long is lost."
    )
    maintenance_seconds: float = Field(default=2.0, gt=0, description="Stale-job and cleanup sweep period.")
    max_attempts: int = Field(default=3, ge=1, description="Runs of one job before it fails worker_lost.")
    retention_hours: float = Field(
        default=72.0,
        gt=0,
        description="Finished jobs' uploads and outputs are kept this long, then deleted (the row stays).",
    )
    probe_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Wall-time cap of the sandboxed upload probe."
    )
    probe_cpu_seconds: int = Field(default=20, ge=1, description="CPU-time cap of the upload probe.")
    probe_memory_bytes: int = Field(
        default=2 * 1024**3, gt=0, description="Address space the upload probe may add to its own."
    )
    probe_slots: int | None = Field(
        default=None,
        ge=1,
        description="Upload probes at once; default: one per core, all within half the machine's memory.",
    )
    probe_wait_seconds: float = Field(
        default=30.0,
        ge=0,
        description="An upload waits this long for a probe slot, then gets 503 probe_busy.",
    )
    api_keys: list[str] = Field(default_factory=list, description="Bearer keys; empty: no auth.")
    rate_limit_per_minute: int = Field(default=120, ge=1, description="Requests per key per minute.")
    auth_failures_per_minute: int = Field(
        default=30, ge=1, description="Wrong keys one client address may send per minute, then 429."
    )
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Request line and headers together, or 431 (animate serve)."
    )
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="A connection must send its request headers within this (408)."
    )
    upload_idle_seconds: float = Field(
        default=30.0, gt=0, description="An upload that sends nothing this long is dropped (408)."
    )
    upload_timeout_seconds: float = Field(
        default=900.0, gt=0, description="Longest time an upload's body may take (408)."
    )
    max_queued_per_key: int = Field(default=20, ge=1, description="Queued jobs one key may hold.")
    allow_private_webhooks: bool = False
    webhook_secret: str = Field(default="", description="HMAC key; default: generated into data_dir.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ANIMATE_", env_nested_delimiter="__", extra="ignore")

    weights_dir: Path = Field(default=Path("weights"), description="Where user-supplied weights live.")
    body_model: Path | None = Field(
        default=None,
        description="A user's SMPL / SMPL-H / SMPL-X .npz model file for the body stage; default: Anny.",
    )
    data_dir: Path = Field(default=Path("data"), description="Uploads, outputs, job database.")
    media: MediaLimits = Field(default_factory=MediaLimits)
    server: ServerSettings = Field(default_factory=ServerSettings)
    diffusion_speed: Literal["default", "fast", "low_memory"] = Field(
        default="default",
        description=(
            "Diffusion engine speed paths (pipelines/optimizations.py): fast = fused QKV, channels_last, "
            "regional torch.compile, batched CFG (large GPUs); low_memory = model CPU offload, feed-forward "
            "chunking, sequential CFG, 2-frame VAE decode (16 GB cards)."
        ),
    )
    diffusion_step_cache: int = Field(
        default=1,
        ge=1,
        description="Opt-in DeepCache-style step cache: a full UNet pass every N steps (1 = off; outputs differ).",
    )
    output_crf: int = Field(default=18, ge=0, le=51, description="H.264 quality of rendered videos.")
    output_preset: str = "medium"
