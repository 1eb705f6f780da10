"""Status-poll latency under load: N concurrent pollers hit ``GET /v1/jobs/{id}`` while a job runs.

Starts ``animate serve`` (API + one worker, SQLite) in a temporary folder unless ``--url`` is given,
submits one long warp job, then runs the pollers for ``--seconds`` and prints a table.

    .venv/bin/python benchmarks/api_load.py --pollers 200 --seconds 30 --interval 1.0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

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


class Connection:
    """One keep-alive HTTP/1.1 connection per poller, as separate clients would have.

    A plain socket client: httpx's shared pool costs O(connections) per request, so with 200 pollers in
    one process the client, not the server, was what the numbers measured.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def poll(url: str, path: str, until: float, interval: float, out: dict, phase: float) -> None:
    address = urlsplit(url)
    connection = Connection(address.hostname or "127.0.0.1", address.port or 80)
    await asyncio.sleep(phase)  # independent clients are not in step with each other
    while time.monotonic() < until:
        start = time.perf_counter()
        try:
            status, body = await asyncio.wait_for(connection.get(path), timeout=30)
            out["latencies"].append(time.perf_counter() - start)
            if status != 200:
                out["errors"] += 1
            else:
                out["statuses"].add(json.loads(body)["status"])
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            out["errors"] += 1
            connection.close()
        if interval:
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - start)))
    connection.close()


async def load(url: str, job_id: str, pollers: int, seconds: float, interval: float) -> dict:
    out = {"latencies": [], "errors": 0, "statuses": set()}
    until = time.monotonic() + seconds
    path = f"/v1/jobs/{job_id}"
    phases = [interval * i / pollers for i in range(pollers)]
    await asyncio.gather(*(poll(url, path, until, interval, out, phase) for phase in phases))
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
    parser.add_argument(
        "--py-spy",
        metavar="FILE",
        help="Record the API process with py-spy while the pollers run (raw stacks, --gil) into FILE.",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        process = None
        url = args.url
        if url is None:
            process, url = start_server(Path(tmp))
        try:
            job_id = submit(url, args.frames)
            spy = None
            if args.py_spy and process is not None:
                spy = subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--gil",
                        "--nonblocking",
                        "-f",
                        "raw",
                        "-r",
                        "200",
                        "-d",
                        str(int(args.seconds)),
                        "-o",
                        args.py_spy,
                        "-p",
                        str(process.pid),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            out = asyncio.run(load(url, job_id, args.pollers, args.seconds, args.interval))
            if spy is not None:
                spy.wait(timeout=60)
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
