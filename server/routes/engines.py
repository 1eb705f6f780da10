"""``GET /v1/engines`` and ``GET /v1/limits``: what this server can render and which uploads it takes."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

import animate
from server.deps import AppState, current_owner, get_state
from server.routes.jobs import ERRORS
from server.schemas import EngineOut, EnginesOut, LimitsOut

router = APIRouter(prefix="/v1", tags=["server"])

ENGINES_TTL_SECONDS = 30.0  # weights put in place while the server runs show up this soon
# FFmpeg's container names (MediaLimits.video_containers) in user words, with their file name suffixes.
_CONTAINERS = {
    "mov,mp4,m4a,3gp,3g2,mj2": (("MP4", ".mp4"), ("MP4", ".m4v"), ("MOV", ".mov")),
    "matroska,webm": (("MKV", ".mkv"), ("WebM", ".webm")),
    "avi": (("AVI", ".avi"),),
}
_IMAGE_SUFFIXES = {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",), "WEBP": (".webp",)}
_IMAGE_WORDS = {"WEBP": "WebP"}


def _public(text: str | None, state: AppState) -> str | None:
    """The reason in words a visitor may read: the server's own paths stay on the server."""
    if text is None:
        return None
    for path in (str(state.settings.weights_dir.resolve()), str(state.settings.weights_dir)):
        text = text.replace(f"the weights directory {path}", path).replace(
            path, "the server's weights folder"
        )
    return text


def _engines(state: AppState) -> EnginesOut:
    statuses = animate.available_engines(state.settings)
    return EnginesOut(
        engines=[
            EngineOut(
                name=s.name,
                available=s.available,
                reason=_public(s.reason, state),
                note=_public(s.note, state),
            )
            for s in statuses
        ],
        auto=animate.auto_engine(state.settings),
    )


@router.get("/engines", response_model=EnginesOut, summary="Engines this server can run", responses=ERRORS)
async def engines(request: Request, state: AppState = Depends(get_state), _: str = Depends(current_owner)):
    """Each renderer with whether it can run here (its weights, a GPU) and, when not, why not.

    Checked on this API's machine with its weights folder (the workers share it), at most every 30 s.
    """
    cached = getattr(request.app.state, "engines", None)
    if cached is None or time.monotonic() - cached[0] > ENGINES_TTL_SECONDS:
        cached = (time.monotonic(), await run_in_threadpool(_engines, state))
        request.app.state.engines = cached
    return Response(cached[1].model_dump_json(), media_type="application/json")


@router.get("/limits", response_model=LimitsOut, summary="What uploads this server accepts", responses=ERRORS)
async def limits(state: AppState = Depends(get_state), _: str = Depends(current_owner)) -> LimitsOut:
    media = state.settings.media
    containers = [
        pair for name in media.video_containers for pair in _CONTAINERS.get(name, ((name.upper(), ""),))
    ]
    return LimitsOut(
        reference_max_bytes=min(state.settings.server.max_reference_bytes, media.max_file_bytes),
        driving_max_bytes=media.max_file_bytes,
        image_formats=[_IMAGE_WORDS.get(f, f) for f in media.image_formats],
        video_formats=list(dict.fromkeys(word for word, _ in containers)),
        image_extensions=[s for f in media.image_formats for s in _IMAGE_SUFFIXES.get(f, (f".{f.lower()}",))],
        video_extensions=[suffix for _, suffix in containers if suffix],
        max_video_seconds=media.max_video_seconds,
        max_video_frames=media.max_video_frames,
    )
