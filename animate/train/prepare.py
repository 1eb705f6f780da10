"""``animate train prepare``: a folder of videos -> one shard per clip (layout: ``animate.train.shard``).

Each video goes through the inference stack once: ``animate.media`` decodes it at a constant ``fps``,
``animate.pose`` estimates the whole-body pose (MediaPipe, main-person tracking, gap filling, smoothing, as
``estimate_video``), ``animate.body`` fits the driver's body (``fit_driving``: shape from a few frames and the
person masks, then every frame's pose) and renders it in the shard's camera (the video scaled to cover
``size`` and centre-cropped, ``Camera.cover``) to the depth / normal / semantic / mask maps the diffusion
engine reads, under the default ``GuidanceConventions``. The 2D keypoints are snapped onto the fitted body
(``snap_keypoints``), as the inference path does before drawing skeletons. ``animate.motion``'s ``DenseField``
gives the dense flow from each of a few reference frames to every frame (the self-supervised reference is a
frame of the clip itself: same person, same camera, so no retargeting or shape transfer is involved).

Resumable and deterministic: a clip is written into ``clips/.tmp-<id>-<pid>`` and renamed into place after
its ``DONE`` marker; a rerun skips finished clips and recorded skips, and restarts unfinished ones from
scratch, so a killed run rerun gives the same bytes as one run straight through. Workers are processes
(``spawn``); bad input (not a video, a damaged file, no person, too short) becomes a skip with a reason code
in ``summary.json``, never a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import queue
import re
import shutil
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from animate.errors import AnimateError
from animate.train.shard import (
    BODY_FILE,
    CLIPS_DIR,
    DONE_FILE,
    FORMAT_VERSION,
    META_FILE,
    SHARD_FILE,
    SKIPPED_DIR,
    SUMMARY_FILE,
    ShardWriter,
    dump_json,
    flow_size,
    member,
)

log = logging.getLogger("animate.train.prepare")

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
#: Reason codes of a skipped video (plus any ``animate.media`` error code, e.g. ``unsupported_format``).
SKIP_REASONS = (
    "no_person",  # the main person is missing from most frames
    "several_people",  # two or more people in many frames: the reference would be ambiguous
    "too_short",  # fewer frames than --min-frames at --fps
    "corrupt_media",  # the right kind of file, but damaged (also: nothing decodable)
    "no_body_fit",  # the poses have no 3D landmarks, so no body can be fitted
    "internal_error",  # a bug: reported with its message, not recorded, retried by the next run
    "unreadable",  # the file cannot be read (permissions, I/O error)
)
#: A clip has several people when this share of its frames shows two or more.
SEVERAL_PEOPLE_FRACTION = 0.3
OPTIONS_FILE = "options.json"  # the PrepareOptions a data folder was made with
_MEDIA_REASONS = {"empty_media": "corrupt_media", "no_person_detected": "no_person"}

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class PrepareOptions:
    size: tuple[int, int] = (576, 1024)  # (width, height) of the shards
    fps: float = 24.0  # every video is resampled to this rate
    max_frames: int | None = None  # keep at most this many frames of each video
    min_frames: int = 16  # shorter videos are skipped (too_short)
    references: int = 4  # frames per clip that may serve as the reference (dense flows from each)
    pose_side: int = 512  # long side the pose estimator sees the video at (as ``animate guidance``)
    body_model: str | None = None  # an SMPL-family .npz; None: Anny

    def to_json(self) -> dict:
        return {
            "size": list(self.size),
            "fps": self.fps,
            "max_frames": self.max_frames,
            "min_frames": self.min_frames,
            "references": self.references,
            "pose_side": self.pose_side,
            "body_model": Path(self.body_model).name if self.body_model else None,
        }


class ClipSkipped(AnimateError):
    """A video that cannot become a training clip; ``code`` is the reason."""


# ---- listing and identity -------------------------------------------------------------------------------


def list_videos(videos: Path) -> tuple[list[Path], list[Path]]:
    """(video files, other files) under ``videos`` (a folder, searched recursively, or one file), sorted."""
    if videos.is_file():
        return [videos], []
    if not videos.is_dir():
        raise AnimateError("file_not_found", f"{videos} is neither a folder nor a file")
    files = sorted(p for p in videos.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES], [
        p for p in files if p.suffix.lower() not in VIDEO_SUFFIXES
    ]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def clip_id(path: Path, sha256: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem).strip("._") or "video"
    return f"{stem[:60]}-{sha256[:12]}"


# ---- one clip -------------------------------------------------------------------------------------------


def _cover_crop(image: np.ndarray, width: int, height: int, interpolation: int) -> np.ndarray:
    """``image`` scaled to cover width x height and centre-cropped (the video decoder's rule)."""
    from animate.media import cover_size

    h, w = image.shape[:2]
    sw, sh = cover_size(w, h, width, height)
    scaled = cv2.resize(image, (sw, sh), interpolation=interpolation) if (sw, sh) != (w, h) else image
    x0, y0 = (sw - width) // 2, (sh - height) // 2
    return np.ascontiguousarray(scaled[y0 : y0 + height, x0 : x0 + width])


_BODIES: dict = {}


def _body(model: str | None):
    """The body model, loaded once per process."""
    from animate.body import load_body

    if model not in _BODIES:
        _BODIES[model] = load_body(model)
    return _BODIES[model]


def _estimate_poses(video, options: PrepareOptions, progress: Progress):
    """The main person's poses (``PoseSequence`` with world landmarks and person masks) in pixels of the
    estimation size (the video scaled to ``pose_side``, as ``animate guidance`` estimates). Raises
    ``ClipSkipped`` for too short, several people (two or more detections in ``SEVERAL_PEOPLE_FRACTION`` of
    the frames: never with MediaPipe, which finds one person, but with a multi-person estimator) and no
    person."""
    from animate.media.prefetch import prefetched
    from animate.pose import MediaPipeEstimator, PoseError, SequenceOptions, estimate_frames, finish_sequence
    from animate.pose.extract import estimation_size

    seq_options = SequenceOptions(max_side=options.pose_side, keep_masks=True)
    width, height = estimation_size(video.width, video.height, options.pose_side)
    expected = video.output_frame_count(options.fps, options.max_frames)
    with MediaPipeEstimator(static=False, whole_body=True, segmentation=True) as estimator:
        candidates = estimate_frames(
            prefetched(
                video.frames(fps=options.fps, max_frames=options.max_frames, size=(width, height)),
                depth=8,
                name="prepare-decode",
            ),
            estimator,
            width=width,
            height=height,
            total=expected,
            progress=lambda done, total: progress("pose", done, max(total, expected)),
            keep_masks=True,
        )
    if len(candidates) < options.min_frames:
        raise ClipSkipped(
            "too_short",
            f"{len(candidates)} frames at {options.fps:g} fps, at least {options.min_frames} needed",
        )
    crowded = sum(1 for people in candidates if sum(p.detected for p in people) >= 2)
    if crowded >= SEVERAL_PEOPLE_FRACTION * len(candidates):
        raise ClipSkipped("several_people", f"two or more people in {crowded} of {len(candidates)} frames")
    try:
        poses = finish_sequence(candidates, width, height, options.fps, seq_options)
    except PoseError as exc:
        raise ClipSkipped(_MEDIA_REASONS.get(exc.code, exc.code), exc.message) from exc
    return poses


def _reference_frames(detected: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` detected frames spread evenly over the clip (first and last included)."""
    frames = np.flatnonzero(detected)
    if len(frames) == 0:
        frames = np.arange(len(detected))
    picks = frames[np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)]
    return sorted({int(t) for t in picks})


def _write_clip(
    path: Path, sha256: str, source: str, tmp: Path, options: PrepareOptions, progress: Progress
) -> dict:
    """Decode, pose, fit, render and write one clip into ``tmp``; returns its meta."""
    import mediapipe
    import torch

    from animate import __version__
    from animate.body.fit import fit_threads
    from animate.body.transfer import fit_driving
    from animate.media import open_video
    from animate.motion.body_field import BodyMotion, DenseField, snap_keypoints
    from animate.motion.bundle import GuidanceConventions
    from animate.pose import SCHEMA_VERSION
    from animate.settings import Settings

    width, height = options.size
    video = open_video(path, Settings().media)
    expected = video.output_frame_count(options.fps, options.max_frames)
    if expected < options.min_frames:
        raise ClipSkipped(
            "too_short",
            f"about {expected} frames at {options.fps:g} fps, at least {options.min_frames} needed",
        )
    poses = _estimate_poses(video, options, progress)
    count = len(poses)
    if not any(p.world is not None for p in poses):
        raise ClipSkipped("no_body_fit", "the poses have no 3D landmarks to fit a body to")

    # body: the driver's own shape and poses, seen through the shard's camera
    body = _body(options.body_model)
    masks = np.stack(
        [p.mask if p.mask is not None else np.zeros((poses.height, poses.width), np.uint8) for p in poses]
    )
    progress("body", 0, 1)
    with fit_threads(1):
        track = fit_driving(body, poses, masks)
    progress("body", 1, 1)
    camera = track.camera.cover(width, height)
    references = _reference_frames(poses.detected, options.references)

    def single(t: int):
        valid = None if track.valid is None else track.valid[t : t + 1]
        return replace(
            track,
            root=track.root[t : t + 1],
            pose=track.pose[t : t + 1],
            transl=track.transl[t : t + 1],
            valid=valid,
        )

    motion = BodyMotion(body, single(references[0]), track, camera)
    scale = max(width / poses.width, height / poses.height)
    offset = np.array([(width - poses.width * scale) / 2, (height - poses.height * scale) / 2], np.float32)
    keypoints = poses.keypoints.astype(np.float32).copy()
    keypoints[..., :2] = keypoints[..., :2] * scale + offset
    keypoints = snap_keypoints(keypoints, motion.keypoints())
    person_masks = np.stack(
        [
            np.where(_cover_crop(masks[r], width, height, cv2.INTER_LINEAR) > 127, 255, 0).astype(np.uint8)
            for r in references
        ]
    )
    rules = GuidanceConventions()
    fw, fh = flow_size(width, height)
    from animate.face.crops import face_crop, face_embedding, faces_meta

    face_boxes = np.full((count, 4), np.nan, np.float32)  # per frame, NaN where no face is found
    face_embeddings = np.full((len(references), 128), np.nan, np.float32)  # per reference frame
    with ShardWriter(tmp / SHARD_FILE) as shard:
        written = 0
        for t, frame in enumerate(video.frames(fps=options.fps, max_frames=count, size=(width, height))):
            shard.add(member("frames", t), frame)
            crop, face_boxes[t] = face_crop(frame)  # identity: aligned crops, boxes for a face loss weight
            if crop is not None:
                shard.add(member("faces", t), crop)
            if t in references:
                face_embeddings[references.index(t)] = face_embedding(frame)
            written += 1
            progress("frames", t + 1, count)
        if written != count:  # the two decodes disagree: never write a clip whose frames do not match
            raise ClipSkipped("corrupt_media", f"decoded {written} frames the second time, {count} the first")
        fields = [
            (r, DenseField(BodyMotion(body, single(r), track, camera), person_masks[i]))
            for i, r in enumerate(references)
        ]
        renderer, _ = motion.renderer()
        with fit_threads(1), torch.no_grad():
            for t, vertices in enumerate(motion.iter_vertices()):
                render = renderer.render(vertices, camera)
                shard.add(member("depth", t), render.depth_map(rules.depth))
                shard.add(member("normal", t), render.normal_image)
                shard.add(member("semantic", t), render.semantic_image)
                shard.add(member("mask", t), render.mask_image)
                for r, field in fields:
                    flow = cv2.resize(field.flow(vertices), (fw, fh), interpolation=cv2.INTER_AREA)
                    shard.add(member("dense_flow", t, r), flow.astype(np.float16))
                progress("render", t + 1, count)
        shard.add("keypoints", keypoints)
        shard.add("references", np.array(references, np.int64))
        shard.add("person_masks", person_masks)
        shard.add("face_boxes", face_boxes)
        shard.add("face_embeddings", face_embeddings)
    (tmp / BODY_FILE).write_text(dump_json({"track": track.to_json(), "camera": camera.to_json()}))
    meta = {
        "format": FORMAT_VERSION,
        "source": source,
        "sha256": sha256,
        "fps": options.fps,
        "size": [width, height],
        "frames": count,
        "references": references,
        "flow_size": [fw, fh],
        "keypoints": "coco_wholebody_133",
        "conventions": rules.describe(),
        "source_video": {
            "width": video.width,
            "height": video.height,
            "fps": round(float(video.fps), 6),
            "frames": video.frame_count,
        },
        "detected": int(poses.detected.sum()),
        "options": options.to_json(),
        "versions": {
            "format": FORMAT_VERSION,
            "animate": __version__,
            "pose_schema": SCHEMA_VERSION,
            "mediapipe": mediapipe.__version__,
            "body_model": track.model,
        },
        "faces": faces_meta(int(np.isfinite(face_boxes[:, 0]).sum())),  # animate.face.crops
    }
    (tmp / META_FILE).write_text(dump_json(meta))
    (tmp / DONE_FILE).write_text("")
    return meta


def prepare_clip(
    path: Path,
    data_dir: Path,
    options: PrepareOptions,
    source: str | None = None,
    progress: Progress | None = None,
    sha256: str | None = None,
) -> dict:
    """Prepare one video into ``data_dir``; returns a summary entry. Never raises for bad input.

    ``{"status": "done" | "already_done" | "skipped", "clip", "source", ...}``; skips carry ``reason`` and
    ``message``, and are recorded in ``skipped/<clip>.json`` (except internal errors) so reruns skip them.
    """
    progress = progress or (lambda stage, done, total: None)
    source = source or path.name
    try:
        sha = sha256 or file_sha256(path)
    except OSError as exc:
        return {
            "status": "skipped",
            "clip": None,
            "source": source,
            "reason": "unreadable",
            "message": str(exc),
        }
    cid = clip_id(path, sha)
    clips, skipped = data_dir / CLIPS_DIR, data_dir / SKIPPED_DIR
    final, skip_file = clips / cid, skipped / f"{cid}.json"
    entry = {"clip": cid, "source": source}
    if (final / DONE_FILE).is_file():
        return {
            **entry,
            "status": "already_done",
            "frames": json.loads((final / META_FILE).read_text())["frames"],
        }
    if skip_file.is_file():
        recorded = json.loads(skip_file.read_text())
        return {**entry, "status": "skipped", "reason": recorded["reason"], "message": recorded["message"]}
    clips.mkdir(parents=True, exist_ok=True)
    for stale in clips.glob(f".tmp-{cid}-*"):  # a killed run's leftovers of this clip
        shutil.rmtree(stale, ignore_errors=True)
    tmp = clips / f".tmp-{cid}-{os.getpid()}"
    tmp.mkdir()
    try:
        meta = _write_clip(path, sha, source, tmp, options, progress)
    except AnimateError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = _MEDIA_REASONS.get(exc.code, exc.code)
        skipped.mkdir(parents=True, exist_ok=True)
        record = {"source": source, "sha256": sha, "reason": reason, "message": exc.message}
        part = skipped / f".{cid}.{os.getpid()}.json"
        part.write_text(dump_json(record))
        os.replace(part, skip_file)
        return {**entry, "status": "skipped", "reason": reason, "message": exc.message}
    except Exception as exc:  # a bug must not end the run: report it, do not record it
        shutil.rmtree(tmp, ignore_errors=True)
        log.error("preparing %s failed:\n%s", source, traceback.format_exc())
        return {
            **entry,
            "status": "skipped",
            "reason": "internal_error",
            "message": f"{type(exc).__name__}: {exc}",
        }
    if final.exists():  # another run finished it meanwhile: keep theirs (same bytes)
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.rename(tmp, final)
    return {**entry, "status": "done", "frames": meta["frames"]}


# ---- many clips -------------------------------------------------------------------------------------------


_EVENTS = None  # a worker process's queue to the parent's progress bars


def _worker_init(events) -> None:
    import signal

    import torch

    global _EVENTS
    _EVENTS = events
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends the workers
    torch.set_num_threads(1)


def _worker(path: str, data_dir: str, options: PrepareOptions, source: str, sha256: str | None) -> dict:
    def progress(stage: str, done: int, total: int) -> None:
        if _EVENTS is not None:
            _EVENTS.put((source, stage, done, total))

    return prepare_clip(Path(path), Path(data_dir), options, source, progress, sha256)


class _Bars:
    """One tqdm line for the whole run and one per video in progress."""

    def __init__(self, total: int, enabled: bool, slots: int) -> None:
        from tqdm import tqdm

        self.tqdm, self.enabled = tqdm, enabled
        self.overall = tqdm(total=total, desc="videos", unit="video", position=0, disable=not enabled)
        self.free = list(range(1, slots + 1))
        self.bars: dict[str, object] = {}

    def update(self, source: str, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self.bars.get(source)
        if bar is None:
            position = self.free.pop(0) if self.free else len(self.bars) + 1
            bar = self.tqdm(total=total, desc=source, position=position, leave=False, unit="frame")
            bar.position_slot = position
            self.bars[source] = bar
        if bar.total != total:
            bar.reset(total=total)
        bar.set_description_str(f"{source} {stage}", refresh=False)
        bar.n = done
        bar.refresh()

    def finish(self, entry: dict) -> None:
        bar = self.bars.pop(entry["source"], None)
        if bar is not None:
            self.free.append(bar.position_slot)
            self.free.sort()
            bar.close()
        status = entry["status"]
        if status == "already_done":
            self.write(f"skip {entry['source']}: already done ({entry['clip']})")
        elif status == "skipped":
            self.write(f"skip {entry['source']}: {entry['reason']} ({entry['message']})")
        self.overall.update(1)

    def write(self, text: str) -> None:
        """A line above the bars (stderr, as the bars), also without bars."""
        self.tqdm.write(text, file=sys.stderr) if self.enabled else print(text, file=sys.stderr)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.overall.close()


def prepare_videos(
    videos: str | Path,
    data_dir: str | Path,
    options: PrepareOptions | None = None,
    *,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Prepare every video under ``videos`` into ``data_dir``; writes and returns ``summary.json``'s content."""
    options = options or PrepareOptions()
    videos, data_dir = Path(videos), Path(data_dir)
    found, others = list_videos(videos)
    _claim(data_dir, options)
    root = videos if videos.is_dir() else videos.parent
    jobs, duplicates, seen = [], [], {}
    for path in found:  # the same bytes under two names are one clip
        source = path.relative_to(root).as_posix()
        try:
            sha = file_sha256(path)
        except OSError:
            sha = None  # prepare_clip reports it
        if sha is not None and sha in seen:
            duplicates.append({"source": source, "same_as": seen[sha]})
            continue
        if sha is not None:
            seen[sha] = source
        jobs.append((path, source, sha))
    bars = _Bars(len(jobs), progress, max(1, workers))
    entries: list[dict] = []
    try:
        if workers <= 1 or len(jobs) <= 1:
            for path, source, sha in jobs:
                entry = prepare_clip(
                    path, data_dir, options, source, lambda *a, s=source: bars.update(s, *a), sha
                )
                entries.append(entry)
                bars.finish(entry)
        else:
            entries = _run_pool(jobs, data_dir, options, workers, bars)
    finally:
        bars.close()
    summary = _summary(entries, others, root, options)
    summary["duplicates"] = duplicates
    part = data_dir / f".{SUMMARY_FILE}.{os.getpid()}"
    part.write_text(dump_json(summary))
    os.replace(part, data_dir / SUMMARY_FILE)
    return summary


def _claim(data_dir: Path, options: PrepareOptions) -> None:
    """Create ``data_dir`` (or reuse one prepared with the same options: its clips and skips stay valid)."""
    if data_dir.exists() and not data_dir.is_dir():
        raise AnimateError("bad_output", f"{data_dir} exists and is not a folder")
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / OPTIONS_FILE
    wanted = dump_json(options.to_json())
    if path.is_file():
        recorded = path.read_text(encoding="utf-8")
        if recorded != wanted:
            old, new = json.loads(recorded), options.to_json()
            changed = ", ".join(f"{k} {old.get(k)} -> {v}" for k, v in new.items() if old.get(k) != v)
            raise AnimateError(
                "options_changed",
                f"{data_dir} was prepared with other options ({changed}); use another folder or the same options",
            )
        return
    part = data_dir / f".{OPTIONS_FILE}.{os.getpid()}"
    part.write_text(wanted, encoding="utf-8")
    os.replace(part, path)


def _run_pool(jobs, data_dir: Path, options: PrepareOptions, workers: int, bars: _Bars) -> list[dict]:
    context = multiprocessing.get_context("spawn")  # MediaPipe and torch are not fork-safe
    entries: list[dict] = []
    events = context.Queue()
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(events,))
    try:
        pending = {
            pool.submit(_worker, str(path), str(data_dir), options, source, sha): source
            for path, source, sha in jobs
        }
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(events, bars)
            for future in done:
                source = pending.pop(future)
                try:
                    entry = future.result()
                except Exception as exc:  # a worker that died (out of memory, killed)
                    entry = {
                        "status": "skipped",
                        "clip": None,
                        "source": source,
                        "reason": "internal_error",
                        "message": f"the worker failed: {type(exc).__name__}: {exc}",
                    }
                entries.append(entry)
                bars.finish(entry)
        _drain(events, bars)
        pool.shutdown(wait=True)
    except BaseException:  # Ctrl-C: end the workers now; their unfinished clips are redone by the next run
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        events.close()
        events.cancel_join_thread()
    return entries


def _drain(events, bars: _Bars) -> None:
    with contextlib.suppress(queue.Empty, OSError, EOFError):
        while True:
            bars.update(*events.get_nowait())


def _summary(entries: list[dict], others: list[Path], root: Path, options: PrepareOptions) -> dict:
    done = [e for e in entries if e["status"] in ("done", "already_done")]
    skipped = [e for e in entries if e["status"] == "skipped"]
    reasons: dict[str, int] = {}
    for e in skipped:
        reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
    return {
        "format": FORMAT_VERSION,
        "options": options.to_json(),
        "done": sorted(
            ({"clip": e["clip"], "source": e["source"], "frames": e["frames"]} for e in done),
            key=lambda e: e["source"],
        ),
        "skipped": sorted(
            ({k: e[k] for k in ("clip", "source", "reason", "message")} for e in skipped),
            key=lambda e: e["source"],
        ),
        "skip_reasons": dict(sorted(reasons.items())),
        "ignored": [p.relative_to(root).as_posix() for p in others],
        "prepared_now": sum(e["status"] == "done" for e in entries),
        "already_done": sum(e["status"] == "already_done" for e in entries),
    }
