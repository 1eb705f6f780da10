"""Liveness, readiness and Prometheus metrics; never behind auth."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from server.deps import AppState, get_state
from server.models import utcnow
from server.schemas import HealthOut, ReadyOut

router = APIRouter(tags=["health"])

BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


@router.get("/healthz", response_model=HealthOut, summary="The API process is up")
@router.head("/healthz", response_model=HealthOut, summary="The API process is up (headers only)")
async def healthz() -> HealthOut:
    return HealthOut(status="ok")


def _live_workers(state: AppState) -> list:
    cutoff = utcnow() - timedelta(seconds=state.settings.server.stale_after_seconds)
    return [w for w in state.store.workers() if w.heartbeat_at >= cutoff]


@router.get(
    "/readyz",
    response_model=ReadyOut,
    summary="Database, queue and at least one live worker",
    responses={503: {"model": ReadyOut, "description": "Not ready: `checks` says what is missing."}},
)
def readyz(state: AppState = Depends(get_state)) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        state.store.ping()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        state.queue.depth()
        checks["queue"] = "ok"
    except Exception as exc:
        checks["queue"] = f"error: {type(exc).__name__}"
    try:
        live = len(_live_workers(state))
        checks["workers"] = "ok" if live else "no live worker"
    except Exception as exc:
        checks["workers"] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503
    )


def _histogram(lines: list[str], name: str, labels: str, values: list[float]) -> None:
    for bound in BUCKETS:
        lines.append(f'{name}_bucket{{{labels}le="{bound}"}} {sum(v <= bound for v in values)}')
    lines.append(f'{name}_bucket{{{labels}le="+Inf"}} {len(values)}')
    lines.append(f"{name}_sum{{{labels.rstrip(',')}}} {sum(values):.3f}")
    lines.append(f"{name}_count{{{labels.rstrip(',')}}} {len(values)}")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(state: AppState = Depends(get_state)) -> PlainTextResponse:
    lines = ["# HELP animate_jobs Jobs by status.", "# TYPE animate_jobs gauge"]
    for status, count in state.store.counts_by_status().items():
        lines.append(f'animate_jobs{{status="{status}"}} {count}')
    lines += ["# HELP animate_queue_depth Messages waiting in the queue.", "# TYPE animate_queue_depth gauge"]
    try:
        lines.append(f"animate_queue_depth {state.queue.depth()}")
    except Exception:
        lines.append("animate_queue_depth NaN")

    durations = state.store.finished_durations()
    lines += [
        "# HELP animate_job_duration_seconds Run time of finished jobs.",
        "# TYPE animate_job_duration_seconds histogram",
    ]
    for status in sorted({d[0] for d in durations}):
        _histogram(
            lines,
            "animate_job_duration_seconds",
            f'status="{status}",',
            [d[1] for d in durations if d[0] == status],
        )
    lines += [
        "# HELP animate_stage_duration_seconds Stage times of succeeded jobs.",
        "# TYPE animate_stage_duration_seconds histogram",
    ]
    stages: dict[str, list[float]] = {}
    for _status, _seconds, timings in durations:
        for stage, seconds in timings.items():
            stages.setdefault(stage, []).append(float(seconds))
    for stage, values in sorted(stages.items()):
        _histogram(lines, "animate_stage_duration_seconds", f'stage="{stage}",', values)

    now = utcnow()
    workers = state.store.workers()
    lines += [
        "# HELP animate_worker_heartbeat_age_seconds Seconds since each worker's last heartbeat.",
        "# TYPE animate_worker_heartbeat_age_seconds gauge",
    ]
    for w in workers:
        age = (now - w.heartbeat_at).total_seconds()
        lines.append(f'animate_worker_heartbeat_age_seconds{{worker="{w.id}"}} {age:.3f}')
    lines += [
        "# HELP animate_workers_live Workers with a fresh heartbeat.",
        "# TYPE animate_workers_live gauge",
    ]
    lines.append(f"animate_workers_live {len(_live_workers(state))}")
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
