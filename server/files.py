"""Where a job's files live: ``<data_dir>/jobs/<id>/`` holds its inputs and one folder per attempt.

An attempt renders into ``attempt-<n>/``; the job row names the folder of the attempt that won, so a
retried job never serves a half-written file from an attempt that died.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

_SUFFIX = re.compile(r"\.[a-z0-9]{1,5}")  # whole suffix (fullmatch): "$" would let a trailing newline in
ARTIFACT_NAMES = (
    "skeleton", "motion", "poses", "depth", "normal", "semantic", "dense_flow",
    "wan_pose", "wan_face", "wan_mask",  # the wan engine's inputs (30 fps)
)  # fmt: skip
_FULL = (errno.ENOSPC, errno.EDQUOT)
RESERVE_BYTES = 4 * 1024 * 1024


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a file or database write that found no space left."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if getattr(e, "errno", None) in _FULL or "database or disk is full" in str(e):
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]
    return False


class JobFiles:
    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.reserve = Path(data_dir) / "disk-reserve"

    def keep_reserve(self) -> None:
        """Hold ``RESERVE_BYTES`` of the disk in a file: a job that fills the disk can still be recorded."""
        if self.reserve.exists() or shutil.disk_usage(self.root).free < 2 * RESERVE_BYTES:
            return
        partial = self.reserve.with_name(f"{self.reserve.name}.{os.getpid()}")
        try:
            partial.write_bytes(os.urandom(RESERVE_BYTES))  # random: a compressing file system keeps it all
            os.replace(partial, self.reserve)
        except OSError:
            partial.unlink(missing_ok=True)

    def release_reserve(self) -> None:
        """The disk is full: give back the reserve (``keep_reserve`` takes it again once there is room)."""
        self.reserve.unlink(missing_ok=True)

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def input_name(self, kind: str, filename: str | None) -> str:
        suffix = Path(filename or "").suffix.lower()
        return kind + (suffix if _SUFFIX.fullmatch(suffix) else "")

    def attempt_dir(self, job_id: str, attempt: int) -> Path:
        return self.job_dir(job_id) / f"attempt-{attempt}"

    def video(self, job_id: str, output_dir: str) -> Path:
        return self.job_dir(job_id) / output_dir / "video.mp4"

    def artifacts(self, job_id: str, output_dir: str) -> dict[str, Path]:
        folder = self.job_dir(job_id) / output_dir / "artifacts"
        if not folder.is_dir():
            return {}
        return {p.stem: p for p in sorted(folder.iterdir()) if p.stem in ARTIFACT_NAMES and p.is_file()}

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def remove_attempts(self, job_id: str, keep: str | None) -> None:
        """Folders of attempts that lost (a worker that died mid-write)."""
        folder = self.job_dir(job_id)
        if folder.is_dir():
            for path in folder.glob("attempt-*"):
                if path.name != keep:
                    shutil.rmtree(path, ignore_errors=True)
