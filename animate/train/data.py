"""``ClipDataset``: training samples from a prepared data folder, in the formats ``AnimationPipeline`` takes.

One sample per clip per epoch. Sample ``i`` of epoch ``e`` draws, from ``np.random.default_rng((seed, e, i))``
only (so a resumed run sees the same samples), a reference frame ``r`` among the clip's reference frames and a
window start ``s``; the window is frames ``s, s + stride, ..., s + (F - 1) * stride``.

``dataset[i]`` is a dict of torch tensors, exactly (``F`` = ``frames``; ``H x W`` = ``size`` or the shard's):

    "reference"           (3, H, W) float32 in [-1, 1]    frame r of clip i
    "reference_pose"      (3, H, W) float32 in [0, 1]     frame r's skeleton
    "reference_guidance"  {"depth", "normal", "semantic", "mask": (3, H, W) float32 in [0, 1]}  frame r's maps
    "frames"              (F, 3, H, W) float32 in [-1, 1] the target frames
    "pose_images"         (F, 3, H, W) float32 in [0, 1]  skeletons drawn by ``animate.pose.draw_pose``, as the
                                                          diffusion engine draws them
    "guidance_maps"       {"depth", "normal", "semantic", "mask": (F, 3, H, W) float32 in [0, 1]} the fitted
                                                          body's renders (depth and mask grey in 3 channels)
    "dense_flow"          (F, H, W, 2) float32 pixels: where each pixel of frame r lands in each frame
                                                          (reference -> frame; zero at t = r on the body)
    "trajectory_flow"     (F, H, W, 2) float32 pixels: keypoint flow from the frame ``stride`` before to each
                                                          frame (zero for a window at the clip's start), made
                                                          from the keypoints by the inference code
                                                          (``conventional_trajectory`` under ``conventions``)
    "keypoints"           (F, 133, 3) float32 COCO-WholeBody x, y in pixels of W x H, score
    "reference_keypoints" (133, 3) float32
    "index"               int64 scalar tensor: i
    "start"               int64 scalar tensor: s
    "reference_index"     int64 scalar tensor: r

Shards with faces (``meta["faces"]``, ``animate.face.crops``) add, for the identity adapter:

    "reference_face_embedding" (128,) float32 dlib's embedding of frame r's face (zeros when it has none)
    "reference_has_face"  float32 scalar tensor: 1 when frame r shows a face, else 0
    "face_boxes"          (F, 4) float32 each target frame's face box x0, y0, x1, y1 in pixels of W x H (NaN: none)

These are ``AnimationPipeline.__call__``'s inputs: ``image`` <- (reference + 1) / 2, ``pose_images``,
``guidance_maps`` (the encoders' types), ``reference_pose_image``, ``reference_guidance_maps``,
``dense_flow``, ``trajectory_flow``, ``keypoints`` / ``reference_keypoints`` (``openpose18`` for DisPose's
point adapter). ``collate`` stacks a list of samples into a batch (a leading batch axis everywhere, dicts
kept). Dense flows are stored at 1/4 resolution (float16) and upsampled bilinearly here; the trajectory flow
is computed, not stored, so it is exact at any ``stride`` and follows the rules the inference path uses.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from animate.motion.bundle import GuidanceConventions
from animate.train.shard import MAP_NAMES, SHARD_FILE, clip_dirs, member, read_meta

__all__ = ["ClipDataset", "collate"]

MAX_OPEN_SHARDS = 32  # shard files a dataset (each DataLoader worker) keeps open at once


class ClipDataset(Dataset):
    """Clips of ``data_dir`` (``animate train prepare``'s output) as training samples.

    frames: window length F. size: (width, height) to resize to, or None for the shards' size (all clips must
    then share one size). stride: frame step inside a window. Clips shorter than ``(frames - 1) * stride + 1``
    are left out (``skipped`` lists them). conventions: the guidance rules (default: ours, as inference).
    """

    def __init__(
        self,
        data_dir: str | Path,
        frames: int = 16,
        size: tuple[int, int] | None = None,
        seed: int = 0,
        stride: int = 1,
        conventions: GuidanceConventions | None = None,
    ) -> None:
        if frames < 1 or stride < 1:
            raise ValueError(f"frames and stride must be >= 1, got {frames}, {stride}")
        self.data_dir = Path(data_dir)
        self.num_frames, self.stride, self.seed, self.epoch = int(frames), int(stride), int(seed), 0
        self.conventions = conventions or GuidanceConventions()
        span = (self.num_frames - 1) * self.stride + 1
        self.clips: list[Path] = []
        self.metas: list[dict] = []
        self.skipped: list[str] = []
        for clip in clip_dirs(self.data_dir):
            meta = read_meta(clip)
            if meta["frames"] >= span:
                self.clips.append(clip)
                self.metas.append(meta)
            else:
                self.skipped.append(clip.name)
        sizes = {tuple(m["size"]) for m in self.metas}
        if size is None and len(sizes) > 1:
            raise ValueError(f"clips of several sizes {sorted(sizes)}: pass size=(width, height)")
        self.size = tuple(size) if size is not None else (sizes.pop() if sizes else None)
        self._open: dict[int, np.lib.npyio.NpzFile] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        """Samples of another epoch (call before iterating; DataLoader workers copy the dataset)."""
        self.epoch = int(epoch)

    def _shard(self, i: int) -> np.lib.npyio.NpzFile:
        if self._pid != os.getpid():  # a forked DataLoader worker: open our own handles
            self._open, self._pid = {}, os.getpid()
        if i not in self._open:
            if len(self._open) >= MAX_OPEN_SHARDS:  # thousands of clips must not exhaust file descriptors
                oldest = next(iter(self._open))
                self._open.pop(oldest).close()
            self._open[i] = np.load(self.clips[i] / SHARD_FILE, allow_pickle=False)
        return self._open[i]

    def sample_plan(self, i: int) -> tuple[int, int]:
        """(start, reference frame) of sample ``i`` in the current epoch."""
        meta = self.metas[i]
        rng = np.random.default_rng((self.seed, self.epoch, i))
        span = (self.num_frames - 1) * self.stride + 1
        start = int(rng.integers(0, meta["frames"] - span + 1))
        reference = int(meta["references"][int(rng.integers(0, len(meta["references"])))])
        return start, reference

    def __getitem__(self, i: int) -> dict:
        from animate.pose import Pose, draw_pose

        if not 0 <= i < len(self):
            raise IndexError(i)
        shard, meta = self._shard(i), self.metas[i]
        start, ref = self.sample_plan(i)
        idx = [start + k * self.stride for k in range(self.num_frames)]
        src_w, src_h = meta["size"]
        width, height = self.size
        sx, sy = width / src_w, height / src_h
        resize = (width, height) != (src_w, src_h)

        def image(name: str, t: int, nearest: bool = False) -> np.ndarray:
            array = shard[member(name, t)]
            if resize:
                interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR)
                array = cv2.resize(array, (width, height), interpolation=interp)
            return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array

        def maps(t: int) -> dict[str, np.ndarray]:
            return {name: image(name, t, nearest=name in ("semantic", "mask")) for name in MAP_NAMES}

        keypoints = shard["keypoints"].astype(np.float32) * np.array([sx, sy, 1.0], np.float32)
        window_kp = keypoints[idx]

        def flow(t: int) -> np.ndarray:
            small = shard[member("dense_flow", t, ref)].astype(np.float32)
            up = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
            return up * np.array([sx, sy], np.float32)

        trajectory = self._trajectory(keypoints, ref, start, idx, (width, height))
        window_maps = [maps(t) for t in idx]
        ref_maps = maps(ref)
        return {
            "reference": _signed(image("frames", ref)),
            "reference_pose": _unit(draw_pose(Pose(keypoints[ref]), width, height)),
            "reference_guidance": {name: _unit(ref_maps[name]) for name in MAP_NAMES},
            "frames": _signed(np.stack([image("frames", t) for t in idx])),
            "pose_images": _unit(np.stack([draw_pose(Pose(k), width, height) for k in window_kp])),
            "guidance_maps": {name: _unit(np.stack([m[name] for m in window_maps])) for name in MAP_NAMES},
            "dense_flow": torch.from_numpy(np.stack([flow(t) for t in idx])),
            "trajectory_flow": torch.from_numpy(np.ascontiguousarray(trajectory, np.float32)),
            "keypoints": torch.from_numpy(np.ascontiguousarray(window_kp)),
            "reference_keypoints": torch.from_numpy(np.ascontiguousarray(keypoints[ref])),
            "index": torch.tensor(i, dtype=torch.int64),
            "start": torch.tensor(start, dtype=torch.int64),
            "reference_index": torch.tensor(ref, dtype=torch.int64),
            **(self._faces(shard, meta, ref, idx, sx, sy) if meta.get("faces") else {}),
        }

    @staticmethod
    def _faces(shard, meta: dict, ref: int, idx: list[int], sx: float, sy: float) -> dict:
        embedding = shard["face_embeddings"][meta["references"].index(ref)].astype(np.float32)
        found = bool(np.isfinite(embedding).all())
        boxes = shard["face_boxes"][idx].astype(np.float32) * np.array([sx, sy, sx, sy], np.float32)
        return {
            "reference_face_embedding": torch.from_numpy(embedding if found else np.zeros_like(embedding)),
            "reference_has_face": torch.tensor(float(found)),
            "face_boxes": torch.from_numpy(np.ascontiguousarray(boxes)),
        }

    def _trajectory(self, keypoints: np.ndarray, ref: int, start: int, idx: list[int], size) -> np.ndarray:
        """The window's trajectory flow as inference makes it for a tile at this place of a video: under our
        rules (``density``) frame k's flow is idx[k-1] -> idx[k] and the first frame's is the motion from the
        frame ``stride`` before it (zero at the very start of the clip, like the first tile of a video);
        under DisPose's (``dispose``) the first flow comes from the reference, as its training clips had."""
        from animate.motion.keypoint_flow import conventional_trajectory

        rules = self.conventions
        if rules.trajectory == "dispose" or start < self.stride:
            return conventional_trajectory(keypoints[ref], keypoints[idx], size, rules)
        frames = keypoints[[start - self.stride, *idx]]
        return conventional_trajectory(keypoints[ref], frames, size, rules)[1:]

    def __getstate__(self) -> dict:  # open zip handles do not travel to spawned workers
        return {**self.__dict__, "_open": {}}


def _channels_first(array: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W), contiguous (transposed while still one byte a value)."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, -3))).float()


def _unit(array: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [0, 1]."""
    return _channels_first(array).div_(255.0)


def _signed(array: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1]."""
    return _channels_first(array).div_(127.5).sub_(1.0)


def collate(samples: list[dict]) -> dict:
    """Stack samples into a batch: every tensor gains a leading batch axis; nested dicts are stacked per key."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    first = samples[0]
    out = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = collate([s[key] for s in samples])
        else:
            out[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
    return out
