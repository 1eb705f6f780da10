"""``/v1/jobs``: submit, poll, list, download, cancel, delete, events."""

from __future__ import annotations

import asyncio
import base64
import shutil
import uuid
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import ValidationError
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from server.deps import AppState, current_owner, get_state
from server.errors import ApiError, not_found
from server.files import disk_full
from server.models import FINISHED, Job
from server.probe import ProbeBusy, probe_inputs, run_sandboxed
from server.schemas import ErrorResponse, JobList, JobOptions, JobOut, job_out
from server.store import IdempotencyConflict, QueueFull, ReadBusy
from server.uploads import display_name, insufficient_storage, receive_form
from server.webhooks import PrivateTarget, check_target

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _error(description: str) -> dict:
    return {"model": ErrorResponse, "description": description}


# Every route answers these; FastAPI's own 422 schema is replaced, since our handler writes ErrorResponse.
ERRORS = {
    401: _error("Missing or invalid API key (`unauthorized`)."),
    422: _error("Invalid parameters (`invalid_request`, `invalid_cursor`)."),
    429: _error(
        "Rate limit (`rate_limited`), or too many wrong API keys from this address (`too_many_auth_failures`); "
        "with `Retry-After`."
    ),
}
NOT_FOUND = {404: _error("No such job (or not yours): `not_found`.")}
_FORM_SCHEMA = {
    "type": "object",
    "required": ["reference", "driving"],
    "properties": {
        "reference": {
            "type": "string",
            "format": "binary",
            "description": "Photo of a person (JPEG/PNG/WebP).",
        },
        "driving": {"type": "string", "format": "binary", "description": "Video of someone moving."},
        **{
            name: {
                k: v
                for k, v in prop.items()
                if k in ("type", "anyOf", "enum", "minimum", "maximum", "default", "description")
            }
            for name, prop in JobOptions.model_json_schema()["properties"].items()
        },
    },
    "additionalProperties": False,
}


# Open API 3.1: the schema of a text/event-stream response describes one event.
_EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["job", "deleted"]},
        "data": {"type": "string", "description": "`job`: the job as JSON (`JobOut`); `deleted`: `{}`."},
    },
}


def present(state: AppState, job: Job, queue_position: int | None) -> JobOut:
    artifacts = list(state.files.artifacts(job.id, job.output_dir)) if _lists_files(job) else []
    return job_out(job, queue_position, artifacts, state.retention)


def _json(model: JobOut | JobList, status_code: int = 200, headers: dict | None = None) -> Response:
    # Serialised once here; returning the model would make FastAPI validate and serialise it again.
    return Response(
        model.model_dump_json(), status_code=status_code, headers=headers, media_type="application/json"
    )


def _load(state: AppState, job_id: str, owner: str) -> Job:
    job = state.store.get(job_id, owner)
    if job is None:
        raise not_found()
    return job


def _probe(state: AppState, reference: Path, driving: Path) -> None:
    run_sandboxed(probe_inputs, (reference, driving, state.settings.media), state.probe_limits)


def _check_webhook(url: str, allow_private: bool) -> None:
    try:
        check_target(url, allow_private)
    except PrivateTarget as exc:
        raise ApiError(422, "invalid_webhook", str(exc)) from None


def _accepted(state: AppState, job: Job, replayed: bool = False) -> Response:
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return _json(present(state, job, state.store.queue_position(job)), 202, headers)


def _replay(state: AppState, existing: Job, digest: str) -> Response:
    if existing.request_digest != digest:
        raise ApiError(
            422, "idempotency_key_reused", "this Idempotency-Key was used with a different request"
        )
    return _accepted(state, existing, replayed=True)


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit a job",
    responses={
        **ERRORS,
        202: {
            "description": "Accepted: the job, queued.",
            "headers": {
                "Location": {"description": "The job's URL.", "schema": {"type": "string"}},
                "Idempotent-Replayed": {
                    "description": "`true` when an earlier job with this Idempotency-Key and body is returned.",
                    "schema": {"type": "string", "enum": ["true"]},
                },
            },
        },
        408: _error(
            "The upload went idle for `upload_idle_seconds` or took longer than `upload_timeout_seconds` "
            "(`upload_timeout`); the connection is closed."
        ),
        413: _error(
            "An upload is over its size cap, or the body over the form's (`too_large`, also for data after "
            "the closing boundary); the rest of the body is not read, the connection is closed."
        ),
        415: _error("Not multipart/form-data (`unsupported_media_type`)."),
        422: _error(
            "Bad input, `error.code` says which: `malformed_multipart` (e.g. no closing boundary), "
            "`missing_file`, `unknown_field`, `duplicate_field`, "
            "`invalid_option`, `idempotency_key_reused`, `invalid_webhook`, a media code "
            "(`unsupported_format`, `too_large`, `too_long`, `empty_media`, `corrupt_media`, "
            "`no_video_stream`, ...), or `probe_timeout` / `probe_failed` when reading the file hit a limit."
        ),
        429: _error(
            "Rate limit (`rate_limited`), this key's queued-job cap (`queued_limit`), or too many wrong API "
            "keys from this address (`too_many_auth_failures`)."
        ),
        503: _error(
            "The queue is unreachable (`queue_unavailable`), or every upload check stayed busy for "
            "`probe_wait_seconds` (`probe_busy`, with `Retry-After`)."
        ),
        507: _error("The server is out of disk space (`insufficient_storage`); nothing was kept."),
    },
    openapi_extra={
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _FORM_SCHEMA}}}
    },
)
async def submit(
    request: Request,
    state: AppState = Depends(get_state),
    owner: str = Depends(current_owner),
    idempotency_key: str | None = Header(default=None, max_length=255),
) -> Response:
    """Upload `reference` and `driving` plus options; answers 202 with the job and its `Location`.

    The files are streamed to disk under their caps, then probed in a sandboxed process (time and
    memory limits) before the job is queued.
    """
    cap = _queued_cap(state)  # checked early, before reading the body, and again atomically at the insert
    if cap is not None and await run_in_threadpool(state.store.count_queued, owner) >= cap:
        raise _queued_limit()
    job_id = uuid.uuid4().hex
    folder = state.files.job_dir(job_id)
    folder.mkdir(parents=True)
    try:
        caps = {
            "reference": state.settings.server.max_reference_bytes,
            "driving": state.settings.media.max_file_bytes,
        }
        form = await receive_form(
            request,
            folder,
            caps,
            set(JobOptions.model_fields),
            lambda kind, name: state.files.input_name(kind, name),
            idle_seconds=state.settings.server.upload_idle_seconds,
            total_seconds=state.settings.server.upload_timeout_seconds,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        async with state.probes.slot():
            return await run_in_threadpool(_admit, state, job_id, owner, idempotency_key, form)
    except ProbeBusy as exc:
        await run_in_threadpool(shutil.rmtree, folder, True)
        raise ApiError(503, "probe_busy", str(exc), {"Retry-After": "5"}) from None


def _queued_cap(state: AppState) -> int | None:
    """Each API key's cap on queued jobs (none without keys: every caller is the same owner)."""
    return state.settings.server.max_queued_per_key if state.settings.server.api_keys else None


def _queued_limit() -> ApiError:
    return ApiError(429, "queued_limit", "this key has too many queued jobs", {"Retry-After": "10"})


def _admit(state: AppState, job_id: str, owner: str, idempotency_key: str | None, form) -> Response:
    """Check the received form, probe the files, record and enqueue the job (blocking: in a thread)."""
    folder = state.files.job_dir(job_id)
    try:
        for kind in ("reference", "driving"):
            if kind not in form.files:
                raise ApiError(422, "missing_file", f"the '{kind}' file is required")
        try:
            options = JobOptions.model_validate(form.fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "options"
            raise ApiError(422, "invalid_option", f"{where}: {first['msg']}") from None
        options.animation_options().validate()

        if idempotency_key is not None:
            existing = state.store.find_idempotent(owner, idempotency_key)
            if existing is not None:
                shutil.rmtree(folder, ignore_errors=True)
                return _replay(state, existing, form.digest)
        if options.webhook_url:
            _check_webhook(options.webhook_url, state.settings.server.allow_private_webhooks)
        _probe(state, form.files["reference"].path, form.files["driving"].path)

        job = Job(
            id=job_id,
            owner=owner,
            status="queued",
            options=options.model_dump(exclude={"webhook_url"}),
            reference_name=form.files["reference"].path.name,
            driving_name=form.files["driving"].path.name,
            inputs={field: display_name(form.files[field].filename) for field in ("reference", "driving")},
            idempotency_key=idempotency_key,
            request_digest=form.digest,
            webhook_url=options.webhook_url,
        )
        try:
            state.store.create(job, _queued_cap(state))
        except QueueFull:
            raise _queued_limit() from None
        except IdempotencyConflict:
            shutil.rmtree(folder, ignore_errors=True)
            existing = state.store.find_idempotent(owner, idempotency_key or "")
            if existing is None:
                raise
            return _replay(state, existing, form.digest)
    except BaseException as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, Exception) and disk_full(exc):  # the job table's file: SQLite on a full disk
            raise insufficient_storage() from None
        raise
    try:
        state.queue.enqueue(job_id)
    except Exception as exc:
        state.store.finish_unqueued(job_id, "queue_unavailable")
        raise ApiError(503, "queue_unavailable", "the job queue is unreachable; try again") from exc
    return _accepted(state, job)


@router.get("", response_model=JobList, summary="List jobs, newest first", responses=ERRORS)
async def list_jobs(
    status: Literal["queued", "running", "succeeded", "failed", "canceled"] | None = None,
    limit: int = Query(default=20, ge=1, le=100),
    cursor: str | None = Query(default=None, max_length=64),
    state: AppState = Depends(get_state),
    owner: str = Depends(current_owner),
) -> Response:
    before = _cursor_seq(cursor) if cursor is not None else None
    return _json(await run_in_threadpool(_page, state, owner, status, before, limit))


def _cursor_seq(cursor: str) -> int:
    """The job sequence number a cursor holds: ASCII digits of a 64-bit signed integer, nothing else."""
    try:
        text = base64.urlsafe_b64decode(cursor.encode() + b"==").decode("ascii")
    except ValueError:
        text = ""
    if not (text.isdigit() and int(text) < 2**63):
        raise ApiError(422, "invalid_cursor", "the cursor is not one this API gave out")
    return int(text)


def _page(state: AppState, owner: str, status: str | None, before: int | None, limit: int) -> JobList:
    rows = state.store.list(owner, status, before, limit + 1)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = (
        base64.urlsafe_b64encode(str(page[-1][0].seq).encode()).decode().rstrip("=") if more else None
    )
    return JobList(jobs=[present(state, job, position) for job, position in page], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut, summary="Poll a job", responses={**ERRORS, **NOT_FOUND})
async def get_job(
    job_id: str, state: AppState = Depends(get_state), owner: str = Depends(current_owner)
) -> Response:
    """The job's status, progress and queue position. One indexed read; it never waits on a worker."""
    if state.store.inline_reads:
        try:
            found = state.store.poll_inline(job_id, owner)
        except ReadBusy:
            pass
        else:
            if found is None:
                raise not_found()
            if not _lists_files(found[0]):
                return _json(present(state, *found))
    return _json(await run_in_threadpool(_poll, state, job_id, owner))


def _lists_files(job: Job) -> bool:
    """Presenting this job reads its artifact folder (file system I/O: not on the event loop)."""
    return job.status == "succeeded" and bool(job.output_dir) and not job.files_deleted


def _poll(state: AppState, job_id: str, owner: str) -> JobOut:
    found = state.store.get_with_position(job_id, owner)
    if found is None:
        raise not_found()
    return present(state, *found)


def _output(state: AppState, job: Job):
    if job.status != "succeeded" or not job.output_dir:
        raise ApiError(409, "not_ready", f"the job is {job.status}; outputs exist once it has succeeded")
    if job.files_deleted:
        raise ApiError(410, "expired", "this job's files were deleted after the retention period")
    return job.output_dir


OUTPUT_ERRORS = {
    **ERRORS,
    **NOT_FOUND,
    409: _error("The job has not succeeded (`not_ready`)."),
    410: _error("The files were deleted after the retention period (`expired`)."),
}
RANGE_ERRORS = {
    400: _error("A malformed `Range` header (`invalid_range`)."),
    416: {
        **_error("The range starts past the end (`range_not_satisfiable`)."),
        "headers": {"Content-Range": {"description": "`bytes */SIZE`", "schema": {"type": "string"}}},
    },
}


@router.get(
    "/{job_id}/video",
    summary="Download the mp4 (HTTP Range supported)",
    response_class=FileResponse,
    responses={
        **OUTPUT_ERRORS,
        200: {"content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}},
        206: {
            "description": "The requested byte range",
            "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}},
        },
        **RANGE_ERRORS,
    },
)
@router.head(
    "/{job_id}/video",
    summary="The mp4's headers (Content-Length, Accept-Ranges), no body",
    response_class=FileResponse,
    responses={**OUTPUT_ERRORS, **RANGE_ERRORS, 200: {"description": "Headers only."}},
)
def get_video(
    job_id: str, request: Request, state: AppState = Depends(get_state), owner: str = Depends(current_owner)
):
    job = _load(state, job_id, owner)
    path = state.files.video(job.id, _output(state, job))
    if not path.is_file():
        raise ApiError(410, "expired", "this job's video is gone")
    return _file(request, path, "video/mp4", filename=f"{job.id}.mp4")


def _file(request: Request, path: Path, media_type: str, filename: str | None = None) -> FileResponse:
    """``FileResponse`` whose Range errors are API errors (JSON, with a code), not Starlette's plain text."""
    stat = path.stat()
    response = FileResponse(
        path, media_type=media_type, filename=filename, stat_result=stat, content_disposition_type="inline"
    )
    wanted, if_range = request.headers.get("range"), request.headers.get("if-range")
    # Starlette's own parser and If-Range rule, so these checks agree with what it then serves.
    if wanted is not None and (if_range is None or response._should_use_range(if_range)):
        try:
            FileResponse._parse_range_header(wanted, stat.st_size)
        except MalformedRangeHeader as exc:
            raise ApiError(400, "invalid_range", exc.content) from None
        except RangeNotSatisfiable:
            raise ApiError(
                416,
                "range_not_satisfiable",
                f"the file has {stat.st_size} bytes",
                {"Content-Range": f"bytes */{stat.st_size}"},
            ) from None
    return response


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download a guidance preview",
    response_class=FileResponse,
    responses={
        **OUTPUT_ERRORS,
        **RANGE_ERRORS,
        404: _error("No such job, or no such artifact for it (`not_found`)."),
        200: {
            "description": "skeleton, motion, depth, normal, semantic, dense_flow, wan_pose, wan_face, "
            "wan_mask: mp4; poses: JSON",
            "content": {
                "video/mp4": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"type": "object"}},
            },
        },
    },
)
def get_artifact(
    job_id: str,
    name: str,
    request: Request,
    state: AppState = Depends(get_state),
    owner: str = Depends(current_owner),
):
    job = _load(state, job_id, owner)
    path = state.files.artifacts(job.id, _output(state, job)).get(name)
    if path is None:
        raise not_found("artifact")
    return _file(request, path, "video/mp4" if path.suffix == ".mp4" else "application/json")


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a job",
    responses={**ERRORS, **NOT_FOUND, 409: _error("The job already succeeded or failed (`job_finished`).")},
)
def cancel_job(
    job_id: str, state: AppState = Depends(get_state), owner: str = Depends(current_owner)
) -> Response:
    """A queued job is canceled at once; a running one stops within a few seconds (poll it)."""
    job = _load(state, job_id, owner)
    if job.status in ("succeeded", "failed"):
        raise ApiError(409, "job_finished", f"the job already {job.status}")
    job = state.store.cancel(job_id) or job
    return _json(present(state, job, state.store.queue_position(job)))


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Delete a finished job and its files",
    responses={
        **ERRORS,
        **NOT_FOUND,
        204: {"description": "Deleted: the job row and all its files."},
        409: _error("The job is still queued or running (`job_active`): cancel it first."),
    },
)
def delete_job(
    job_id: str, state: AppState = Depends(get_state), owner: str = Depends(current_owner)
) -> Response:
    job = _load(state, job_id, owner)
    if job.status not in FINISHED or not state.store.delete(job_id):
        raise ApiError(409, "job_active", "cancel the job first; it is still queued or running")
    state.files.remove(job_id)
    return Response(status_code=204)


@router.get(
    "/{job_id}/events",
    summary="Server-sent events: the job on every change, until it finishes",
    response_class=StreamingResponse,
    responses={
        **ERRORS,
        **NOT_FOUND,
        200: {
            "description": "`event: job` with the job as `data` on each change; `event: deleted` if it goes.",
            "content": {"text/event-stream": {"schema": _EVENT_SCHEMA}},
        },
    },
)
async def job_events(
    job_id: str, request: Request, state: AppState = Depends(get_state), owner: str = Depends(current_owner)
) -> StreamingResponse:
    await run_in_threadpool(_load, state, job_id, owner)

    async def stream():
        last = None
        while not await request.is_disconnected():
            found = await run_in_threadpool(state.store.get_with_position, job_id, owner)
            if found is None:
                yield "event: deleted\ndata: {}\n\n"
                return
            job = found[0]
            body = (await run_in_threadpool(present, state, *found)).model_dump_json()
            if body != last:
                last = body
                yield f"event: job\ndata: {body}\n\n"
            if job.status in FINISHED:
                return
            await asyncio.sleep(0.5)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
