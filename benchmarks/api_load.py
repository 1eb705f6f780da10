"""Status-poll latency under load: N concurrent pollers hit ``GET /v1/jobs/{id}`` while a job runs.

Starts ``animate serve`` (API + one worker, SQLite) in a temporary folder unless ``--url`` is given,
submits one long warp job, then runs the pollers for ``--seconds`` and prints a table.

    .venv/bin/python benchmarks/api_load.py --pollers 200 --seconds 30 --interval 1.0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SERVE = "import typer; from animate.cli.serve import serve; typer.run(serve)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "ANIMATE_DATA_DIR": str(folder / "data")}
    log = open(folder / "serve.log", "wb")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, "--port", str(port), "--workers", "1"], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the server did not become ready; see " + str(folder / "serve.log"))
        time.sleep(0.3)


def submit(url: str, frames: int) -> str:
    reference = DATA / "reference" / "woman_street_mimicmotion.jpg"
    driving = DATA / "driving" / "dance_musepose.mp4"
    with reference.open("rb") as ref, driving.open("rb") as drv:
        response = httpx.post(
            f"{url}/v1/jobs",
            files={"reference": (reference.name, ref), "driving": (driving.name, drv)},
            data={"max_frames": str(frames), "engine": "warp"},
            timeout=60,
        )
    response.raise_for_status()
    return response.json()["id"]


async def poll(client: httpx.AsyncClient, path: str, until: float, interval: float, out: dict) -> None:
    while time.monotonic() < until:
        start = time.perf_counter()
        try:
            response = await client.get(path)
            out["latencies"].append(time.perf_counter() - start)
            if response.status_code != 200:
                out["errors"] += 1
            else:
                out["statuses"].add(response.json()["status"])
        except httpx.HTTPError:
            out["errors"] += 1
        if interval:
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - start)))


async def load(url: str, job_id: str, pollers: int, seconds: float, interval: float) -> dict:
    out = {"latencies": [], "errors": 0, "statuses": set()}
    limits = httpx.Limits(max_connections=pollers, max_keepalive_connections=pollers)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        until = time.monotonic() + seconds
        await asyncio.gather(
            *(poll(client, f"/v1/jobs/{job_id}", until, interval, out) for _ in range(pollers))
        )
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="An API already running (default: start one).")
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0, help="Seconds between one poller's requests.")
    parser.add_argument("--frames", type=int, default=240, help="Length of the job that runs meanwhile.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        process = None
        url = args.url
        if url is None:
            process, url = start_server(Path(tmp))
        try:
            job_id = submit(url, args.frames)
            out = asyncio.run(load(url, job_id, args.pollers, args.seconds, args.interval))
            final = httpx.get(f"{url}/v1/jobs/{job_id}").json()
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
    lat = [v * 1000 for v in out["latencies"]]
    print(
        "| pollers | interval s | seconds | requests | req/s | errors | p50 ms | p90 ms | p99 ms | max ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.pollers} | {args.interval} | {args.seconds:.0f} | {len(lat)} | {len(lat) / args.seconds:.0f} "
        f"| {out['errors']} | {statistics.median(lat):.1f} | {percentile(lat, 0.9):.1f} "
        f"| {percentile(lat, 0.99):.1f} | {max(lat):.1f} |"
    )
    print(
        f"job statuses seen while polling: {sorted(out['statuses'])}; job at the end: {final['status']} "
        f"{final['progress']['fraction']:.2f}"
    )


if __name__ == "__main__":
    main()
