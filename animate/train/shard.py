"""The on-disk format of a prepared clip, and deterministic writing of it.

A data folder (``animate train prepare ... -o DATA_DIR``) holds::

    DATA_DIR/summary.json                 done clips, skipped videos with a reason code (rewritten per run)
    DATA_DIR/options.json                 the prepare options (size, fps, ...); a rerun must use the same
    DATA_DIR/clips/<clip_id>/meta.json    source, sha256, fps, size, frame count, references, format version
    DATA_DIR/clips/<clip_id>/shard.npz    the arrays below (a zip of .npy members, read lazily per member)
    DATA_DIR/clips/<clip_id>/body.json    the fitted body track (``animate.body.fit.BodyTrack.to_json``)
    DATA_DIR/clips/<clip_id>/DONE         written last, before the folder is renamed into place
    DATA_DIR/skipped/<clip_id>.json       a video that cannot be used and why (kept, so reruns skip it)

``clip_id`` is ``<file stem>-<first 12 hex digits of the file's sha256>``. Members of ``shard.npz``
(``T`` frames of ``W x H``; ``R`` reference frames; flows on a ``w x h`` grid, ``FLOW_DOWNSCALE`` times smaller):

    frames/<t>            (H, W, 3) uint8 RGB, the video resampled to ``fps``, scaled to cover W x H, centre-cropped
    depth/<t>             (H, W) uint8 the fitted body's depth map (``GuidanceConventions().depth`` rule)
    normal/<t>            (H, W, 3) uint8 normal map
    semantic/<t>          (H, W, 3) uint8 body-part colours
    mask/<t>              (H, W) uint8 0/255 the rendered body
    dense_flow/<r>/<t>    (h, w, 2) float16 pixels of W x H: where each pixel of reference frame r lands in frame t
    keypoints             (T, 133, 3) float32 COCO-WholeBody x, y (pixels of W x H), score; snapped onto the body
    references            (R,) int64 the frames that may serve as the reference (dense flows exist from them)
    person_masks          (R, H, W) uint8 0/255 the segmented person in each reference frame

Identity (``animate.face.crops``; ``meta["faces"]`` says how they were made, ``None`` in older shards):

    faces/<t>             (112, 112, 3) uint8 the main face aligned to the ArcFace 5-point template (frames with a face)
    face_boxes            (T, 4) float32 the face box x0, y0, x1, y1 in pixels of W x H, NaN where no face was found
    face_embeddings       (R, 128) float32 dlib's embedding of each reference frame's face, NaN rows where none
 ``<t>`` and ``<r>`` are zero-padded to six digits. Pose images are not stored: the reader draws them from the
keypoints exactly as the inference path does. Writing is deterministic: members in a fixed order, a fixed
zip timestamp and compression level, JSON with sorted keys and no times, so the same input gives the same
bytes.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
FLOW_DOWNSCALE = 4
SHARD_FILE, META_FILE, BODY_FILE, DONE_FILE = "shard.npz", "meta.json", "body.json", "DONE"
CLIPS_DIR, SKIPPED_DIR, SUMMARY_FILE = "clips", "skipped", "summary.json"
MAP_NAMES = ("depth", "normal", "semantic", "mask")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip header can say: no run's clock leaks into the file
_COMPRESSLEVEL = 6


def member(stream: str, t: int, r: int | None = None) -> str:
    """The member name of one frame of a per-frame stream (``dense_flow`` needs the reference ``r``)."""
    return f"{stream}/{r:06d}/{t:06d}" if r is not None else f"{stream}/{t:06d}"


def flow_size(width: int, height: int) -> tuple[int, int]:
    """The grid the flows are stored on for a W x H shard."""
    return max(1, -(-width // FLOW_DOWNSCALE)), max(1, -(-height // FLOW_DOWNSCALE))


def dump_json(data: dict) -> str:
    """Canonical JSON: sorted keys, fixed separators, a final newline."""
    return json.dumps(data, sort_keys=True, indent=1, separators=(",", ": ")) + "\n"


class ShardWriter:
    """Writes ``shard.npz`` member by member (frames can stream in as they are decoded)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._zip = zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
        self._names: set[str] = set()

    def add(self, name: str, array: np.ndarray) -> None:
        if name in self._names:
            raise ValueError(f"member {name!r} written twice")
        self._names.add(name)
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
        info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        info.create_system = 3  # unix, whatever the host
        self._zip.writestr(
            info, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=_COMPRESSLEVEL
        )

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def clip_dirs(data_dir: str | Path) -> list[Path]:
    """The finished clips of a data folder, sorted by id (a clip counts once its DONE marker exists)."""
    root = Path(data_dir) / CLIPS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / DONE_FILE).is_file())


def read_meta(clip_dir: str | Path) -> dict:
    return json.loads((Path(clip_dir) / META_FILE).read_text(encoding="utf-8"))
