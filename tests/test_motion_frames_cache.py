"""Frame sources and the frame cache, the parts ``test_motion_frames.py`` leaves out: every indexing form
against the NumPy array it stands for, the exact windows a reader is asked for, the cache file's bytes and
its refusals, and where the cache folder lives and when it goes."""

from __future__ import annotations

import gc
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from animate.motion.frames import ITER_CHUNK, CacheDirectory, FrameCache, FrameSource


def _recorded(stack: np.ndarray, dtype=None) -> tuple[FrameSource, list[tuple[int, int]]]:
    reads: list[tuple[int, int]] = []

    def read(start: int, stop: int) -> np.ndarray:
        reads.append((start, stop))
        return stack[start:stop]

    return FrameSource(len(stack), read, stack.shape[1:], dtype or stack.dtype), reads


def _stack(n: int, shape=(3, 2), dtype=np.float32) -> np.ndarray:
    return (np.arange(n * int(np.prod(shape))).reshape(n, *shape) % 251).astype(dtype)


def test_lengths_shapes_and_sizes():
    source = FrameSource(0, lambda a, b: np.zeros((b - a, 2)), [2], "uint8")
    assert len(source) == 0 and source.shape == (0, 2) and source.ndim == 2
    assert source.frame_shape == (2,) and source.dtype == np.dtype(np.uint8)
    assert np.asarray(source).shape == (0, 2) and list(source) == []
    with pytest.raises(ValueError, match=r"^a frame source needs length >= 0, got -1$"):
        FrameSource(-1, lambda a, b: None, (2,), np.uint8)
    assert FrameSource(3, None, np.array([4, 5, 2]), np.float32).nbytes_per_frame == 4 * 5 * 2 * 4
    assert FrameSource(3, None, (7,), np.uint8).nbytes_per_frame == 7
    assert FrameSource(3, None, (), np.float64).nbytes_per_frame == 8
    assert repr(FrameSource(3, None, (4, 5), np.uint8)) == "FrameSource(shape=(3, 4, 5), dtype=uint8)"


def test_from_frames_makes_only_the_frames_asked_for():
    made: list[int] = []

    def make(t: int) -> np.ndarray:
        made.append(t)
        return np.full((2, 3), t * 1.5)

    source = FrameSource.from_frames(9, make, (2, 3), np.float32)
    window = source[4:7]
    assert made == [4, 5, 6] and window.dtype == np.float32
    np.testing.assert_array_equal(window, np.stack([np.full((2, 3), t * 1.5) for t in (4, 5, 6)]))
    np.testing.assert_array_equal(source[0], np.zeros((2, 3)))
    assert len(source) == 9 and source.shape == (9, 2, 3)


def test_windows_are_clipped_to_the_source_and_converted_to_its_dtype():
    stack = _stack(6).astype(np.float64)
    source, reads = _recorded(stack, np.float32)
    window = source.window(-3, 2)
    assert window.dtype == np.float32 and reads == [(0, 2)]
    np.testing.assert_array_equal(window, stack[:2])
    np.testing.assert_array_equal(source.window(4, 100), stack[4:])
    assert reads[-1] == (4, 6)
    for start, stop in ((3, 3), (5, 2), (6, 9), (-4, 0)):
        empty = source.window(start, stop)
        assert empty.shape == (0, 3, 2) and empty.dtype == np.float32
    assert len(reads) == 2  # an empty window reads nothing


@pytest.mark.parametrize(
    "key",
    [
        np.s_[8:2:-2], np.s_[::-1], np.s_[5::-3], np.s_[-3:], np.s_[:-8], np.s_[1:10:4], np.s_[-20:3],
        np.s_[2:9:-1], np.s_[-1:-6:-2], np.s_[::7],
    ],
)  # fmt: skip
def test_every_slice_equals_the_arrays(key):
    stack = _stack(11)
    source, reads = _recorded(stack)
    np.testing.assert_array_equal(source[key], stack[key])
    assert source[key].shape == stack[key].shape
    wanted = set(range(11)[key])
    read = set().union(*(range(start, stop) for start, stop in reads))
    assert wanted <= read <= set(range(11))


def test_a_slice_reads_one_window_spanning_just_its_frames():
    stack = _stack(11)
    source, reads = _recorded(stack)
    source[8:2:-2]  # frames 8, 6, 4
    assert reads == [(3, 9)]
    reads.clear()
    source[1:10:4]  # frames 1, 5, 9
    assert reads == [(1, 10)]


def test_integer_boolean_and_list_indices():
    stack = _stack(11)
    source, reads = _recorded(stack)
    np.testing.assert_array_equal(source[-11], stack[0])
    np.testing.assert_array_equal(source[np.int64(4)], stack[4])
    np.testing.assert_array_equal(source[np.int32(-2)], stack[9])
    assert reads[-1] == (9, 10)  # one frame read for one frame
    for bad in (11, -12, 40):
        with pytest.raises(IndexError, match=f"frame {bad} is outside a source of 11 frames"):
            source[bad]
    mask = np.zeros(11, bool)
    mask[[2, 7, 8]] = True
    np.testing.assert_array_equal(source[mask], stack[mask])
    np.testing.assert_array_equal(source[np.array([10, 0, -1])], stack[[10, 0, -1]])
    empty = source[[]]
    assert empty.shape == (0, 3, 2) and empty.dtype == np.float32
    np.testing.assert_array_equal(source[[3, 1], 2], stack[[3, 1], 2])
    np.testing.assert_array_equal(source[5, 1, 0], stack[5, 1, 0])
    np.testing.assert_array_equal(source[2:6, :, 1], stack[2:6, :, 1])


def test_iteration_reads_chunks_of_iter_chunk_frames():
    assert ITER_CHUNK == 16
    stack = _stack(40)
    source, reads = _recorded(stack)
    frames = list(source)
    assert reads == [(0, 16), (16, 32), (32, 40)]
    np.testing.assert_array_equal(np.stack(frames), stack)


def test_as_array_takes_a_dtype():
    stack = _stack(5)
    source, _ = _recorded(stack)
    as64 = np.asarray(source, np.float64)
    assert as64.dtype == np.float64
    np.testing.assert_array_equal(as64, stack)
    assert np.asarray(source).dtype == np.float32


def test_map_gives_a_source_of_the_new_shape_and_dtype():
    stack = _stack(6)
    source, reads = _recorded(stack)
    summed = source.map(lambda w: w.sum(axis=-1), [3], np.int16)
    assert summed.shape == (6, 3) and summed.dtype == np.int16 and len(summed) == 6
    window = summed[1:4]
    assert window.dtype == np.int16
    np.testing.assert_array_equal(window, stack[1:4].sum(-1))
    assert reads == [(1, 4)]


def _header_size(path: Path) -> int:
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int16])
def test_a_cache_file_is_the_header_then_the_frames_in_order(tmp_path, dtype):
    stack = _stack(5, (3, 7), dtype)
    cache = FrameCache(tmp_path / "c.npy", 5, (3, 7), dtype)
    assert cache.written == 0 and cache.shape == (5, 3, 7) and cache.dtype == np.dtype(dtype)
    for t in range(5):
        cache.append(stack[t].astype(np.float64))  # converted to the cache's dtype
        assert cache.written == t + 1
        np.testing.assert_array_equal(cache[: t + 1], stack[: t + 1])
    assert repr(cache) == f"FrameCache(shape=(5, 3, 7), dtype={np.dtype(dtype)})"
    cache.close()
    raw = (tmp_path / "c.npy").read_bytes()
    offset = _header_size(tmp_path / "c.npy")
    assert raw[offset:] == stack.tobytes()  # nothing between or after the frames
    loaded = np.load(tmp_path / "c.npy")
    assert loaded.dtype == np.dtype(dtype) and loaded.shape == (5, 3, 7)


def test_a_cache_reads_a_non_contiguous_input_and_exact_windows(tmp_path):
    stack = _stack(6, (4, 2))
    cache = FrameCache(tmp_path / "c.npy", 6, (4, 2), np.float32)
    cache.append(np.asfortranarray(stack[:3]))
    cache.append(stack[3:, ::1])
    for start, stop in ((0, 6), (5, 6), (2, 4), (0, 1)):
        np.testing.assert_array_equal(cache.window(start, stop), stack[start:stop])
    np.testing.assert_array_equal(cache[-1], stack[5])
    with pytest.raises(ValueError, match=r"frames of shape \(2, 4\), the cache holds \(4, 2\)"):
        cache.append(np.zeros((1, 2, 4)))


def test_a_cache_refuses_reads_past_what_was_written(tmp_path):
    cache = FrameCache(tmp_path / "c.npy", 4, (2,), np.float32)
    with pytest.raises(ValueError, match="frames up to 0 asked for, 0 written so far"):
        cache[0]
    cache.append(np.ones((2, 2)))
    np.testing.assert_array_equal(cache[0:2], np.ones((2, 2)))
    with pytest.raises(ValueError, match="frames up to 2 asked for, 2 written so far"):
        cache[1:3]
    with pytest.raises(ValueError, match="the cache holds 4 frames; 5 written"):
        cache.append(np.ones((3, 2)))
    assert cache.written == 2  # a refused append writes nothing
    cache.append(np.full((2, 2), 3.0))
    np.testing.assert_array_equal(cache[:], [[1, 1], [1, 1], [3, 3], [3, 3]])


def test_a_cache_whose_file_was_cut_says_so(tmp_path):
    cache = FrameCache(tmp_path / "c.npy", 3, (5,), np.float32)
    cache.append(np.ones((3, 5)))
    cache._file.flush()
    os.truncate(tmp_path / "c.npy", _header_size(tmp_path / "c.npy") + 4 * 5 + 8)
    np.testing.assert_array_equal(cache[0], np.ones(5))
    with pytest.raises(OSError, match=r"c\.npy ends before frame 2"):
        cache[0:3]


def test_close_closes_the_file(tmp_path):
    cache = FrameCache(tmp_path / "c.npy", 1, (2,), np.uint8)
    cache.append(np.array([7, 9]))
    handle = cache._file
    cache.close()
    assert handle.closed
    cache.close()  # twice is harmless
    assert np.load(tmp_path / "c.npy").tolist() == [[7, 9]]


def test_cache_directory_places_and_removes_its_folder(tmp_path):
    parent = tmp_path / "a" / "b"
    caches = CacheDirectory(parent=parent)
    assert caches.path.parent == parent and caches.path.is_dir()
    assert caches.path.name.startswith("animate-guidance-")
    cache = caches.cache("flow", 2, (3,), np.float32)
    assert cache.path == caches.path / "flow.npy" and isinstance(cache, FrameCache)
    assert len(cache) == 2 and cache.frame_shape == (3,) and cache.dtype == np.float32
    other = caches.cache("mask", 1, (3,), np.uint8)
    caches.cleanup()
    assert not caches.path.exists()
    assert cache._file.closed and other._file.closed
    caches.cleanup()  # twice is harmless

    named = CacheDirectory(parent=tmp_path, prefix="x-")
    assert named.path.name.startswith("x-") and named.path.parent == tmp_path
    default = CacheDirectory()
    assert default.path.parent == Path(tempfile.gettempdir())
    default.cleanup()


def test_cache_directory_goes_with_its_last_reference(tmp_path):
    caches = CacheDirectory(parent=tmp_path)
    caches.cache("x", 1, (1,), np.uint8).append(np.zeros(1))
    path = caches.path
    del caches
    gc.collect()
    assert not path.exists()


def test_a_wrong_window_is_named_by_its_frames():
    source = FrameSource(9, lambda a, b: np.zeros((b - a + 1, 2)), (2,), np.float32)
    with pytest.raises(ValueError, match=r"^frames 4\.\.6 came as \(4, 2\), expected \(3, 2\)$"):
        source[4:7]


def test_cleanup_after_the_folder_is_gone_is_harmless(tmp_path):
    import shutil

    caches = CacheDirectory(parent=tmp_path)
    caches.cache("x", 1, (1,), np.uint8)
    shutil.rmtree(caches.path)
    caches.cleanup()  # someone else removed it (a tmp cleaner): no error


def test_guidance_sources_are_float32_windows():
    from animate.motion.bundle import GuidanceConventions
    from animate.motion.frames import skeleton_flow_source, trajectory_source

    reference = np.zeros((133, 3), np.float32)
    reference[:, :2] = 20
    reference[:, 2] = 0.9
    keypoints = np.repeat(reference[None], 3, 0)
    keypoints[:, :, 0] += np.arange(3)[:, None]
    mask = np.zeros((30, 40), np.uint8)
    for rules in (GuidanceConventions(), GuidanceConventions.for_networks(preset="dispose")):
        source = trajectory_source(reference, keypoints, (40, 30), rules)
        assert source.dtype == np.float32 and source.shape == (3, 30, 40, 2)
        assert source[1:3].dtype == np.float32
    flows = skeleton_flow_source(reference, keypoints, mask)
    assert flows.dtype == np.float32 and flows.shape == (3, 30, 40, 2)
