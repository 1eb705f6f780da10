"""Per-frame guidance without holding every frame: lazy frame sequences and an on-disk frame cache.

A long video's guidance (skeletons, body renders, flows) is over 10 MB a frame at 576x1024, so the diffusion
path never stacks it for the whole length. A ``FrameSource`` makes frames when a window of them is asked
for (``source[a:b]``, ``source.window(a, b)``); a ``FrameCache`` holds frames made once in a file and reads
a window back with plain file reads (no memory map, so read frames never stay in the process' memory).
Both index like the ``(T, ...)`` arrays they stand for (``source[t]``, ``source[a:b]``, ``source[t, ..., 0]``),
iterate frame by frame, and ``np.asarray(source)`` still gives the whole stack for callers that want it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

#: frames read per window when a source is iterated
ITER_CHUNK = 16


class FrameSource:
    """``length`` frames of ``frame_shape`` and ``dtype``, made by ``read(start, stop)`` -> ``(stop - start,
    *frame_shape)`` when asked for. ``read`` must give the same frames for any split of a range (each frame
    depends on the range only through its own index), so windows agree with the whole stack."""

    def __init__(
        self,
        length: int,
        read: Callable[[int, int], np.ndarray],
        frame_shape: Sequence[int],
        dtype: np.dtype | type,
    ) -> None:
        if length < 0:
            raise ValueError(f"a frame source needs length >= 0, got {length}")
        self._length = int(length)
        self._read = read
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.dtype = np.dtype(dtype)

    @classmethod
    def from_frames(
        cls,
        length: int,
        make: Callable[[int], np.ndarray],
        frame_shape: Sequence[int],
        dtype: np.dtype | type,
    ) -> FrameSource:
        """A source whose frame ``t`` is ``make(t)``."""
        dtype = np.dtype(dtype)

        def read(start: int, stop: int) -> np.ndarray:
            out = np.empty((stop - start, *frame_shape), dtype)
            for i, t in enumerate(range(start, stop)):
                out[i] = make(t)
            return out

        return cls(length, read, frame_shape, dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._length, *self.frame_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.frame_shape)

    @property
    def nbytes_per_frame(self) -> int:
        return int(np.prod(self.frame_shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self._length

    def window(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start .. stop - 1`` as one array (the range clipped to the source, as slicing does)."""
        start, stop = max(0, start), min(self._length, stop)
        if stop <= start:
            return np.empty((0, *self.frame_shape), self.dtype)
        frames = np.asarray(self._read(start, stop), self.dtype)
        if frames.shape != (stop - start, *self.frame_shape):
            raise ValueError(
                f"frames {start}..{stop - 1} came as {frames.shape}, expected "
                f"{(stop - start, *self.frame_shape)}"
            )
        return frames

    def __getitem__(self, key):
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, slice):
            start, stop, step = key.indices(self._length)
            if step > 0:
                frames = self.window(start, stop)[::step]
            else:
                frames = self.window(stop + 1, start + 1)[::-1][::-step]
            return frames[(slice(None), *rest)] if rest else frames
        if isinstance(key, int | np.integer):
            t = int(key) + self._length if key < 0 else int(key)
            if not 0 <= t < self._length:
                raise IndexError(f"frame {key} is outside a source of {self._length} frames")
            frame = self.window(t, t + 1)[0]
            return frame[rest] if rest else frame
        indices = np.asarray(key)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        frames = np.stack([self[int(t)] for t in indices]) if len(indices) else self.window(0, 0)
        return frames[(slice(None), *rest)] if rest else frames

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, self._length, ITER_CHUNK):
            yield from self.window(start, start + ITER_CHUNK)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self.window(0, self._length)
        return frames if dtype is None else frames.astype(dtype)

    def map(
        self, transform: Callable[[np.ndarray], np.ndarray], frame_shape: Sequence[int], dtype
    ) -> FrameSource:
        """A source of ``transform(window)`` (applied per window; it must act frame by frame)."""
        return FrameSource(self._length, lambda a, b: transform(self.window(a, b)), frame_shape, dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"


class FrameCache(FrameSource):
    """Frames written once, in order, to a ``.npy`` file (``append``), then read back per window.

    Reads use ``os.pread`` on the file, not a memory map: the page cache keeps hot frames, the process keeps
    only the window it asked for. The file is a normal ``.npy`` once ``close`` has run (``np.load`` reads it).
    """

    def __init__(self, path: str | Path, length: int, frame_shape: Sequence[int], dtype) -> None:
        super().__init__(length, self._read_frames, frame_shape, dtype)
        self.path = Path(path)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        header["shape"] = self.shape
        with open(self.path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            self._offset = f.tell()
        self._file = open(self.path, "r+b")  # noqa: SIM115 (kept open for the cache's life)
        self._file.seek(self._offset)
        self._written = 0
        self._finalizer = weakref.finalize(self, self._file.close)

    @property
    def written(self) -> int:
        return self._written

    def append(self, frames: np.ndarray) -> None:
        """Write the next frames (one frame ``frame_shape`` or several ``(n, *frame_shape)``)."""
        frames = np.ascontiguousarray(frames, self.dtype)
        if frames.shape == self.frame_shape:
            frames = frames[None]
        if frames.shape[1:] != self.frame_shape:
            raise ValueError(f"frames of shape {frames.shape[1:]}, the cache holds {self.frame_shape}")
        if self._written + len(frames) > len(self):
            raise ValueError(f"the cache holds {len(self)} frames; {self._written + len(frames)} written")
        self._file.seek(self._offset + self._written * self.nbytes_per_frame)
        self._file.write(frames.tobytes())
        self._written += len(frames)

    def _read_frames(self, start: int, stop: int) -> np.ndarray:
        if stop > self._written:
            raise ValueError(f"frames up to {stop - 1} asked for, {self._written} written so far")
        self._file.flush()
        frames = np.empty((stop - start, *self.frame_shape), self.dtype)
        view = memoryview(frames).cast("B")
        done, offset = 0, self._offset + start * self.nbytes_per_frame
        while done < len(view):  # pread may return less than asked
            read = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if read == 0:
                raise OSError(f"{self.path} ends before frame {stop - 1}")
            done += read
        return frames

    def close(self) -> None:
        self._finalizer()


class CacheDirectory:
    """A temporary folder for ``FrameCache`` files, removed by ``cleanup`` or when no longer referenced."""

    def __init__(self, parent: str | Path | None = None, prefix: str = "animate-guidance-") -> None:
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self._caches: list[FrameCache] = []
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)

    def cache(self, name: str, length: int, frame_shape: Sequence[int], dtype) -> FrameCache:
        cache = FrameCache(self.path / f"{name}.npy", length, frame_shape, dtype)
        self._caches.append(cache)
        return cache

    def cleanup(self) -> None:
        for cache in self._caches:
            cache.close()
        self._finalizer()


# Guidance made on demand, a window at a time: each frame equals that frame of the whole-stack function.


def pose_image_source(
    keypoints: np.ndarray, size: tuple[int, int], draw: Callable[..., np.ndarray]
) -> FrameSource:
    """Skeleton images ``draw(Pose(keypoints[t]), width, height)``, uint8 (T, H, W, 3)."""
    from animate.pose import Pose

    width, height = size
    return FrameSource.from_frames(
        len(keypoints), lambda t: draw(Pose(keypoints[t]), width, height), (height, width, 3), np.uint8
    )


def trajectory_source(
    reference_keypoints: np.ndarray, keypoints: np.ndarray, size: tuple[int, int], rules
) -> FrameSource:
    """``conventional_trajectory(reference_keypoints, keypoints, size, rules)`` (T, H, W, 2) float32, a window
    at a time: frame t's flow needs only the keypoints of frames t - 1 and t (the reference's for t = 0 in
    DisPose's rule)."""
    from animate.motion.keypoint_flow import conventional_trajectory

    width, height = size

    def read(start: int, stop: int) -> np.ndarray:
        if rules.trajectory == "dispose":
            # the step into frame `start` starts at frame start - 1: pass it as the "reference"
            before = reference_keypoints if start == 0 else keypoints[start - 1]
            before = np.asarray(before, np.result_type(reference_keypoints, keypoints))
            return conventional_trajectory(before, keypoints[start:stop], size, rules)
        first = max(0, start - 1)  # the step into frame `start` needs frame start - 1
        return conventional_trajectory(reference_keypoints, keypoints[first:stop], size, rules)[
            start - first :
        ]

    return FrameSource(len(keypoints), read, (height, width, 2), np.float32)


def skeleton_flow_source(
    reference_keypoints: np.ndarray, keypoints: np.ndarray, reference_mask: np.ndarray
) -> FrameSource:
    """``skeleton_dense_flow`` (the 2D skeleton field's reference -> frame t flow), a window at a time."""
    from animate.motion.skeleton_field import skeleton_dense_flow

    height, width = reference_mask.shape
    return FrameSource(
        len(keypoints),
        lambda start, stop: skeleton_dense_flow(reference_keypoints, keypoints[start:stop], reference_mask),
        (height, width, 2),
        np.float32,
    )
