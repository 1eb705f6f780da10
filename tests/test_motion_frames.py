"""Lazy frame sources and the on-disk frame cache: windows equal the whole stack they stand for."""

from __future__ import annotations

import numpy as np
import pytest

from animate.motion.bundle import GuidanceBundle, GuidanceConventions
from animate.motion.frames import (
    CacheDirectory,
    FrameCache,
    FrameSource,
    pose_image_source,
    skeleton_flow_source,
    trajectory_source,
)


def _stack(n: int = 11) -> np.ndarray:
    return np.arange(n * 4 * 5 * 2, dtype=np.float32).reshape(n, 4, 5, 2)


def _reads(stack: np.ndarray) -> tuple[FrameSource, list[tuple[int, int]]]:
    reads: list[tuple[int, int]] = []

    def read(start: int, stop: int) -> np.ndarray:
        reads.append((start, stop))
        return stack[start:stop]

    return FrameSource(len(stack), read, stack.shape[1:], stack.dtype), reads


def test_a_source_indexes_like_its_array():
    stack = _stack()
    source, reads = _reads(stack)
    assert len(source) == 11 and source.shape == stack.shape and source.ndim == 4
    np.testing.assert_array_equal(source[3:7], stack[3:7])
    assert reads == [(3, 7)]  # one window read, only the frames asked for
    np.testing.assert_array_equal(source[-1], stack[-1])
    np.testing.assert_array_equal(source[2, ..., 0], stack[2, ..., 0])
    np.testing.assert_array_equal(source[1:9:3, 0], stack[1:9:3, 0])
    np.testing.assert_array_equal(source[::-2], stack[::-2])
    np.testing.assert_array_equal(source[[4, 1, 4]], stack[[4, 1, 4]])
    np.testing.assert_array_equal(source[9:20], stack[9:])  # clipped as slicing clips
    assert source[7:3].shape == (0, 4, 5, 2)
    np.testing.assert_array_equal(np.asarray(source), stack)
    np.testing.assert_array_equal(np.stack(list(source)), stack)
    with pytest.raises(IndexError, match="frame 11 is outside a source of 11 frames"):
        source[11]


def test_a_source_checks_what_its_reader_returns():
    source = FrameSource(4, lambda a, b: np.zeros((b - a, 2)), (3,), np.float32)
    with pytest.raises(ValueError, match=r"frames 0..1 came as \(2, 2\), expected \(2, 3\)"):
        source[0:2]


def test_map_transforms_each_window():
    stack = _stack()
    source, _ = _reads(stack)
    doubled = source.map(lambda w: w[..., 0] * 2, (4, 5), np.float32)
    np.testing.assert_array_equal(doubled[2:5], stack[2:5, ..., 0] * 2)


def test_a_cache_round_trips_through_its_file(tmp_path):
    stack = _stack(7)
    cache = FrameCache(tmp_path / "flow.npy", 7, stack.shape[1:], np.float32)
    cache.append(stack[0])  # one frame
    cache.append(stack[1:5])  # several
    np.testing.assert_array_equal(cache[1:4], stack[1:4])  # readable while being written
    with pytest.raises(ValueError, match="frames up to 5 asked for, 5 written so far"):
        cache[5]
    cache.append(stack[5:])
    window = cache[2:6]
    window[0] = -1  # a writable copy, not a view of the file
    np.testing.assert_array_equal(cache[2:6], stack[2:6])
    with pytest.raises(ValueError, match="the cache holds 7 frames; 8 written"):
        cache.append(stack[:1])
    with pytest.raises(ValueError, match=r"frames of shape \(4, 5, 3\)"):
        cache.append(np.zeros((1, 4, 5, 3), np.float32))
    cache.close()
    np.testing.assert_array_equal(np.load(tmp_path / "flow.npy"), stack)  # a plain .npy file


def test_cache_directory_is_removed_by_cleanup_and_by_the_bundle(tmp_path):
    caches = CacheDirectory(parent=tmp_path)
    cache = caches.cache("mask", 2, (3, 3), np.uint8)
    cache.append(np.ones((2, 3, 3), np.uint8))
    assert (caches.path / "mask.npy").is_file()
    bundle = GuidanceBundle(
        reference=np.zeros((3, 3, 3), np.uint8),
        reference_mask=np.zeros((3, 3), np.uint8),
        reference_keypoints=np.zeros((133, 3), np.float32),
        keypoints=np.zeros((2, 133, 3), np.float32),
        fps=25.0,
        size=(3, 3),
        mask=cache,
        caches=caches,
    )
    bundle.validate()  # a source's shape counts as the array's
    bundle.close()
    assert not caches.path.exists()


def _walk(frames: int = 9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Whole-body keypoints that move a few pixels a frame, some unseen, inside a 96 x 80 frame."""
    rng = np.random.default_rng(seed)
    start = rng.uniform([20, 15], [76, 65], (133, 2))
    steps = rng.normal(0, 2, (frames, 133, 2)).cumsum(0)
    xy = start + steps
    score = np.where(rng.random((frames, 133)) < 0.15, 0.1, 0.9)
    keypoints = np.concatenate([xy, score[..., None]], -1).astype(np.float32)
    reference = np.concatenate([start + rng.normal(0, 3, (133, 2)), np.full((133, 1), 0.9)], -1)
    return reference.astype(np.float32), keypoints


@pytest.mark.parametrize("preset", [None, "dispose"])
def test_trajectory_windows_equal_the_whole_trajectory(preset):
    from animate.motion.keypoint_flow import conventional_trajectory

    reference, keypoints = _walk()
    size = (96, 80)
    rules = GuidanceConventions.for_networks(preset=preset)
    assert rules.trajectory == ("dispose" if preset else "density")
    whole = conventional_trajectory(reference, keypoints, size, rules)
    source = trajectory_source(reference, keypoints, size, rules)
    assert np.abs(whole).max() > 0.05  # the flows move (DisPose's unit-sum blur spreads them thin)
    for start, stop in ((0, 3), (3, 6), (5, 9), (8, 9), (0, 9)):
        np.testing.assert_array_equal(source[start:stop], whole[start:stop])


def test_skeleton_flow_and_pose_image_windows_equal_the_whole_stacks():
    from animate.motion.skeleton_field import skeleton_dense_flow
    from animate.pose import Pose, draw_pose

    reference, keypoints = _walk(frames=5)
    mask = np.zeros((80, 96), np.uint8)
    mask[10:70, 20:76] = 255
    whole = skeleton_dense_flow(reference, keypoints, mask)
    np.testing.assert_array_equal(skeleton_flow_source(reference, keypoints, mask)[2:5], whole[2:5])
    images = pose_image_source(keypoints, (96, 80), draw_pose)
    assert images.shape == (5, 80, 96, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[3], draw_pose(Pose(keypoints[3]), 96, 80))


def test_cmp_guidance_is_made_a_chunk_at_a_time(tmp_path, monkeypatch):
    """With CMP's checkpoint in the weights, its input and dense flow go to the disk cache in chunks, equal
    to one call on all frames (CMP's own batch split differs by float rounding only)."""
    import cv2
    from test_cmp import loaded_small_model

    import animate.animator as animator_module
    from animate.animator import Animator, _Reporter
    from animate.motion.cmp import CMP_CHECKPOINT, cmp_dense_flow
    from animate.motion.keypoint_flow import conventional_sparse_motion
    from animate.settings import Settings

    model = loaded_small_model(tmp_path / "small.pth.tar", seed=4, input_size=128)
    (tmp_path / CMP_CHECKPOINT).parent.mkdir(parents=True)
    (tmp_path / CMP_CHECKPOINT).write_bytes(b"")  # found in the weights; loading it gives the small model
    monkeypatch.setattr("animate.motion.cmp.load_cmp", lambda path: model)
    monkeypatch.setattr(animator_module, "CMP_CHUNK", 2)
    reference_keypoints, keypoints = _walk(frames=5)
    image = np.random.default_rng(1).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    person = np.zeros((80, 96), np.uint8)
    cv2.ellipse(person, (48, 40), (20, 35), 0, 0, 360, 255, -1)
    bundle = GuidanceBundle(
        reference=image,
        reference_mask=person,
        reference_keypoints=reference_keypoints,
        keypoints=keypoints,
        fps=25.0,
        size=(96, 80),
    )
    Animator(Settings(weights_dir=tmp_path))._fill_guidance(bundle, _Reporter(None, None))
    bundle.validate()
    assert all(isinstance(v, FrameCache) for v in (bundle.dense_flow, bundle.sparse_flow, bundle.sparse_mask))
    sparse_flow, sparse_mask = conventional_sparse_motion(
        reference_keypoints, keypoints, (96, 80), GuidanceConventions()
    )
    np.testing.assert_array_equal(np.asarray(bundle.sparse_flow), sparse_flow)
    np.testing.assert_array_equal(np.asarray(bundle.sparse_mask), sparse_mask)
    whole = cmp_dense_flow(image, person, sparse_flow, sparse_mask, model)
    assert np.abs(whole[1:]).max() > 0.1  # CMP moves the frames
    np.testing.assert_allclose(np.asarray(bundle.dense_flow), whole, atol=1e-4)
    bundle.close()
