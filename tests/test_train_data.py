"""``animate.train.data.ClipDataset`` on small shards written here with known content.

The shards are written with ``animate.train.shard.ShardWriter`` (the format ``prepare`` writes): frame t is a
flat colour t * 10, the keypoints translate by a fixed step per frame, the dense flow from each reference is
a known constant. So every expectation is a hand-computed value, not the reader's own output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from animate.train.data import ClipDataset, collate
from animate.train.shard import (
    CLIPS_DIR,
    DONE_FILE,
    FORMAT_VERSION,
    MAP_NAMES,
    META_FILE,
    SHARD_FILE,
    ShardWriter,
    dump_json,
    flow_size,
    member,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

W, H, T = 32, 48, 12
REFERENCES = (2, 9)
STEP = np.array([2.0, 1.0], np.float32)  # keypoint motion per frame, pixels


def _keypoints(count: int) -> np.ndarray:
    """(count, 133, 3): the COCO body points of a small standing figure, moving by STEP each frame."""
    body = np.array(
        [
            [16, 8], [15, 7], [17, 7], [14, 8], [18, 8],  # nose, eyes, ears
            [12, 14], [20, 14], [10, 20], [22, 20], [9, 26], [23, 26],  # shoulders, elbows, wrists
            [13, 26], [19, 26], [13, 34], [19, 34], [13, 42], [19, 42],  # hips, knees, ankles
        ],
        np.float32,
    )  # fmt: skip
    out = np.zeros((count, 133, 3), np.float32)
    for t in range(count):
        out[t, :17, :2] = body - 8 + STEP * t  # starts up-left so the figure stays inside the frame
        out[t, :17, 2] = 0.9
    return out


def _flow_value(r: int, t: int) -> np.ndarray:
    return np.array([t - r, 0.5 * (t - r)], np.float32)


def write_clip(data_dir, name: str = "clip-a", frames: int = T, size=(W, H)) -> None:
    width, height = size
    clip = data_dir / CLIPS_DIR / name
    clip.mkdir(parents=True)
    fw, fh = flow_size(width, height)
    references = [r for r in REFERENCES if r < frames] or [0]
    with ShardWriter(clip / SHARD_FILE) as shard:
        for t in range(frames):
            shard.add(member("frames", t), np.full((height, width, 3), t * 10, np.uint8))
        for t in range(frames):
            shard.add(member("depth", t), np.full((height, width), 100 + t, np.uint8))
            shard.add(member("normal", t), np.full((height, width, 3), (128, 128, 255), np.uint8))
            shard.add(member("semantic", t), np.full((height, width, 3), (t, 2 * t, 3 * t), np.uint8))
            shard.add(member("mask", t), np.full((height, width), 255, np.uint8))
        for r in references:
            for t in range(frames):
                value = _flow_value(r, t)
                shard.add(member("dense_flow", t, r), np.broadcast_to(value, (fh, fw, 2)).astype(np.float16))
        shard.add("keypoints", _keypoints(frames))
        shard.add("references", np.array(references, np.int64))
        shard.add("person_masks", np.full((len(references), height, width), 255, np.uint8))
    meta = {"format": FORMAT_VERSION, "frames": frames, "size": [width, height], "references": references}
    (clip / META_FILE).write_text(dump_json(meta))
    (clip / DONE_FILE).write_text("")


@pytest.fixture
def data(tmp_path):
    write_clip(tmp_path, "clip-a")
    write_clip(tmp_path, "clip-b")
    return tmp_path


def test_sample_has_the_documented_keys_shapes_and_ranges(data):
    ds = ClipDataset(data, frames=4)
    assert len(ds) == 2
    s = ds[1]
    assert set(s) == {
        "reference",
        "reference_pose",
        "reference_guidance",
        "frames",
        "pose_images",
        "guidance_maps",
        "dense_flow",
        "trajectory_flow",
        "keypoints",
        "reference_keypoints",
        "index",
        "start",
        "reference_index",
    }
    assert s["reference"].shape == (3, H, W) and s["reference_pose"].shape == (3, H, W)
    assert s["frames"].shape == (4, 3, H, W) and s["pose_images"].shape == (4, 3, H, W)
    assert set(s["guidance_maps"]) == set(MAP_NAMES) == set(s["reference_guidance"])
    assert all(v.shape == (4, 3, H, W) for v in s["guidance_maps"].values())
    assert all(v.shape == (3, H, W) for v in s["reference_guidance"].values())
    assert s["dense_flow"].shape == (4, H, W, 2) and s["trajectory_flow"].shape == (4, H, W, 2)
    assert s["keypoints"].shape == (4, 133, 3) and s["reference_keypoints"].shape == (133, 3)
    assert int(s["index"]) == 1
    floats = [s["reference"], s["frames"], s["pose_images"], s["dense_flow"], *s["guidance_maps"].values()]
    assert all(v.dtype == torch.float32 for v in floats)
    assert s["frames"].min() >= -1 and s["frames"].max() <= 1
    assert s["pose_images"].min() >= 0 and s["pose_images"].max() <= 1


def test_frames_maps_and_reference_are_the_stored_frames_of_the_drawn_window(data):
    ds = ClipDataset(data, frames=3, stride=2)
    s = ds[0]
    start, ref = int(s["start"]), int(s["reference_index"])
    assert ref in REFERENCES and 0 <= start <= T - 5
    for k in range(3):
        t = start + 2 * k
        assert torch.allclose(s["frames"][k], torch.full((3, H, W), t * 10 / 127.5 - 1))
        assert torch.allclose(s["guidance_maps"]["depth"][k], torch.full((3, H, W), (100 + t) / 255))
        assert torch.allclose(s["guidance_maps"]["semantic"][k, 2], torch.full((H, W), 3 * t / 255))
        expected = _keypoints(T)[t]
        assert torch.allclose(s["keypoints"][k], torch.from_numpy(expected))
    assert torch.allclose(s["reference"], torch.full((3, H, W), ref * 10 / 127.5 - 1))
    assert torch.allclose(s["reference_guidance"]["depth"], torch.full((3, H, W), (100 + ref) / 255))
    # dense flow: the constant stored from reference r to frame t, upsampled from the 1/4 grid
    for k in range(3):
        t = start + 2 * k
        assert torch.allclose(s["dense_flow"][k], torch.from_numpy(_flow_value(ref, t)).expand(H, W, 2))


def test_sample_plan_depends_only_on_seed_epoch_and_index(data):
    ds = ClipDataset(data, frames=4, seed=7)
    span = 4
    plans = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        rng = np.random.default_rng((7, epoch, 1))
        start = int(rng.integers(0, T - span + 1))
        ref = REFERENCES[int(rng.integers(0, len(REFERENCES)))]
        s = ds[1]
        assert (int(s["start"]), int(s["reference_index"])) == (start, ref)
        plans.add((start, ref))
    assert len(plans) > 3  # epochs see different windows and references
    # a fresh dataset (a resumed run) at the same epoch sees the same sample, whatever it read before
    again = ClipDataset(data, frames=4, seed=7)
    again.set_epoch(11)
    assert torch.equal(again[1]["frames"], ds[1]["frames"])


def test_trajectory_flow_is_the_keypoint_motion_over_one_stride(data):
    ds = ClipDataset(data, frames=3, stride=3)
    starts = set()
    for epoch in range(20):
        ds.set_epoch(epoch)
        s = ds[0]
        start, flow = int(s["start"]), s["trajectory_flow"]
        starts.add(start)
        for k in range(3):
            if k == 0 and start < 3:  # nothing a stride before: the clip's first tile, zero as in inference
                assert flow[0].abs().max() == 0
            else:  # the frame a stride before exists (inside or before the window): every keypoint moved
                # by 3 steps, so the flow is 3 * STEP where the keypoints are densest (full displacement)
                peak = flow[k].norm(dim=-1).flatten().argmax()
                assert torch.allclose(flow[k].reshape(-1, 2)[peak], torch.from_numpy(STEP * 3), atol=1e-3)
    assert min(starts) < 3 <= max(starts)  # both cases were seen


def test_pose_images_draw_the_window_keypoints(data):
    s = ClipDataset(data, frames=2)[0]
    for k in range(2):
        image = s["pose_images"][k].sum(0)
        kp = s["keypoints"][k]
        # the left shoulder -> left elbow limb is drawn: its midpoint is coloured
        mid = ((kp[5, :2] + kp[7, :2]) / 2).round().long()
        assert image[mid[1], mid[0]] > 0
        # far from every keypoint the canvas stays black
        assert image[H - 1, 0] == 0 or kp[:17, 1].max() > H - 4
    assert s["reference_pose"].sum() > 0


def test_size_rescales_frames_keypoints_and_flow_vectors(data):
    s = ClipDataset(data, frames=2, size=(W // 2, H // 2))[0]
    start, ref = int(s["start"]), int(s["reference_index"])
    assert s["frames"].shape == (2, 3, H // 2, W // 2)
    assert torch.allclose(s["keypoints"][0, :17, :2], torch.from_numpy(_keypoints(T)[start, :17, :2] / 2))
    for k in range(2):  # at least one of the two frames is not the reference: a non-zero flow
        half = _flow_value(ref, start + k) / 2  # vectors in pixels of the new size
        assert torch.allclose(s["dense_flow"][k], torch.from_numpy(half).expand(H // 2, W // 2, 2))


def test_dataloader_workers_read_the_same_samples(data):
    ds = ClipDataset(data, frames=2)
    ds.set_epoch(3)
    expected = collate([ds[0], ds[1]])
    ds[0]  # the parent holds an open shard: forked workers must open their own
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    (batch,) = list(loader)
    assert torch.equal(batch["frames"], expected["frames"])
    assert torch.equal(batch["dense_flow"], expected["dense_flow"])


def test_short_clips_are_left_out_and_collate_stacks_a_batch(tmp_path):
    write_clip(tmp_path, "long")
    write_clip(tmp_path, "short", frames=3)
    ds = ClipDataset(tmp_path, frames=5)
    assert len(ds) == 1 and ds.skipped == ["short"]
    ds = ClipDataset(tmp_path, frames=3)
    batch = collate([ds[0], ds[1]])
    assert batch["frames"].shape == (2, 3, 3, H, W)
    assert batch["guidance_maps"]["normal"].shape == (2, 3, 3, H, W)
    assert batch["index"].tolist() == [0, 1]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    (only,) = list(loader)
    assert torch.equal(only["frames"], batch["frames"])


def test_open_shards_are_bounded(tmp_path, monkeypatch):
    import animate.train.data as data_module

    monkeypatch.setattr(data_module, "MAX_OPEN_SHARDS", 2)
    for name in ("a", "b", "c"):
        write_clip(tmp_path, name)
    ds = ClipDataset(tmp_path, frames=2)
    first = [ds[i]["frames"] for i in range(3)]
    assert len(ds._open) == 2
    assert all(torch.equal(ds[i]["frames"], first[i]) for i in range(3))  # a closed shard reopens


def test_several_sizes_need_an_explicit_size(tmp_path):
    write_clip(tmp_path, "a")
    write_clip(tmp_path, "b", size=(W * 2, H * 2))
    with pytest.raises(ValueError, match="several sizes"):
        ClipDataset(tmp_path, frames=2)
    assert ClipDataset(tmp_path, frames=2, size=(W, H))[1]["frames"].shape == (2, 3, H, W)
