"""``animate train prepare`` on the shared real videos: shards, skips with reasons, resuming, determinism.

Small on purpose (64x96 shards, 12 frames): the point is the data path, not the image quality. Expectations
are independent of our code: frames against a plain PyAV decode resized with OpenCV, flows against the
geometry of the rendered body masks, skips against what the input files really are.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from animate.train.data import ClipDataset
from animate.train.prepare import PrepareOptions, prepare_clip, prepare_videos
from animate.train.shard import CLIPS_DIR, DONE_FILE, SKIPPED_DIR, SUMMARY_FILE
from tests.conftest import DANCE, SKELETON_ONLY, TALKING_HEAD

pytestmark = pytest.mark.usefixtures("one_torch_thread")

W, H, FRAMES = 64, 96, 12
OPTIONS = PrepareOptions(size=(W, H), fps=24.0, max_frames=FRAMES, min_frames=8)
ANIMATE = [sys.executable, "-c", "from animate.cli import main; main()"]
CLI_ARGS = ["--size", f"{W}x{H}", "--fps", "24", "--max-frames", str(FRAMES), "--min-frames", "8"]


def _short_video(path: Path, frames: int = 5) -> None:
    """A real 5-frame clip: the talking head's first frames, re-encoded."""
    from animate.media import open_video, write_video

    video = open_video(TALKING_HEAD)
    write_video(path, list(video.frames(max_frames=frames)), 30.0)


def _videos(root: Path, *, bad: bool = True) -> Path:
    root.mkdir(parents=True)
    os.symlink(DANCE, root / "dance.mp4")
    os.symlink(TALKING_HEAD, root / "talking_head.mp4")
    if bad:
        (root / "truncated.mp4").write_bytes(DANCE.read_bytes()[:200_000])  # a download cut short
        (root / "notes.mp4").write_text("these are my notes, not a video\n")
        os.symlink(SKELETON_ONLY, root / "skeleton_only.mp4")  # a drawn skeleton: nobody there
        _short_video(root / "short.mp4")
        (root / "readme.txt").write_text("not a video at all\n")
    return root


def _tree_bytes(data_dir: Path) -> dict[str, bytes]:
    """Every file of every finished clip, by relative path."""
    out = {}
    for path in sorted((data_dir / CLIPS_DIR).rglob("*")):
        if path.is_file():
            out[path.relative_to(data_dir).as_posix()] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare")
    videos = _videos(root / "videos")
    data = root / "data"
    summary = prepare_videos(videos, data, OPTIONS, progress=False)
    return videos, data, summary


def test_real_videos_become_clips_and_bad_ones_are_skipped_with_reasons(prepared):
    videos, data, summary = prepared
    assert [d["source"] for d in summary["done"]] == ["dance.mp4", "talking_head.mp4"]
    assert all(d["frames"] == FRAMES for d in summary["done"])
    reasons = {s["source"]: s["reason"] for s in summary["skipped"]}
    assert reasons == {
        "truncated.mp4": "corrupt_media",
        "notes.mp4": "unsupported_format",
        "skeleton_only.mp4": "no_person",
        "short.mp4": "too_short",
    }
    assert summary["ignored"] == ["readme.txt"]
    assert json.loads((data / SUMMARY_FILE).read_text()) == summary
    for clip in summary["done"]:
        meta = json.loads((data / CLIPS_DIR / clip["clip"] / "meta.json").read_text())
        source = videos / clip["source"]
        assert meta["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert meta["size"] == [W, H] and meta["frames"] == FRAMES and meta["fps"] == 24.0
        assert meta["versions"]["format"] == meta["format"] == 1
        assert not list((data / CLIPS_DIR).glob(".tmp-*"))


def test_a_second_run_skips_everything_and_changes_no_byte(prepared, capsys):
    videos, data, _ = prepared
    before = _tree_bytes(data)
    capsys.readouterr()
    started = time.perf_counter()
    summary = prepare_videos(videos, data, OPTIONS, progress=True)
    elapsed = time.perf_counter() - started
    said = capsys.readouterr().err
    assert "skip dance.mp4: already done" in said and "skip skeleton_only.mp4: no_person" in said
    assert summary["prepared_now"] == 0 and summary["already_done"] == 2
    assert {s["source"]: s["reason"] for s in summary["skipped"]}["skeleton_only.mp4"] == "no_person"
    assert _tree_bytes(data) == before
    assert elapsed < 10  # no pose work: recorded skips and DONE markers only (a loose bound, not a benchmark)


def test_frames_are_the_video_resampled_and_cover_cropped(prepared):
    _, data, summary = prepared
    clip = data / CLIPS_DIR / summary["done"][0]["clip"]  # the dance: 24 fps already, so frame k is frame k
    shard = np.load(clip / "shard.npz")
    with av.open(str(DANCE)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in itertools.islice(container.decode(video=0), FRAMES)]
    for k in (0, 5, FRAMES - 1):
        frame = decoded[k]  # 1080 x 1920 scaled by 64 / 1080 to cover 64 x 96, then the centre rows
        h, w = frame.shape[:2]
        scale = max(W / w, H / h)
        sw, sh = int(np.ceil(w * scale - 1e-6)), int(np.ceil(h * scale - 1e-6))
        small = cv2.resize(frame, (sw, sh), interpolation=cv2.INTER_AREA)
        x0, y0 = (sw - W) // 2, (sh - H) // 2
        expected = small[y0 : y0 + H, x0 : x0 + W].astype(np.float32)
        got = shard[f"frames/{k:06d}"].astype(np.float32)
        assert got.shape == (H, W, 3)
        assert np.abs(got - expected).mean() < 4.0  # two area resamplers, one YUV->RGB each


def test_reader_tensors_agree_with_the_body_geometry(prepared):
    _, data, _ = prepared
    ds = ClipDataset(data, frames=8)
    assert len(ds) == 2
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            start, ref = int(s["start"]), int(s["reference_index"])
            masks = s["guidance_maps"]["mask"][:, 0] > 0.5  # (F, H, W) rendered body
            ref_mask = s["reference_guidance"]["mask"][0] > 0.5
            assert ref_mask.sum() > 50
            flows = s["dense_flow"]
            ys, xs = torch.nonzero(ref_mask, as_tuple=True)
            for k in range(8):
                t = start + k
                flow = flows[k, ys, xs]
                if t == ref:  # reference -> itself: no motion
                    assert flow.abs().max() < 0.05
                # each reference body pixel moves onto the body of frame t
                x = (xs + flow[:, 0]).round().long().clamp(0, W - 1)
                y = (ys + flow[:, 1]).round().long().clamp(0, H - 1)
                assert masks[k][y, x].float().mean() > 0.8
            # depth is drawn where the body is and nowhere else
            depth = s["guidance_maps"]["depth"][:, 0] > 0
            assert (depth == masks).float().mean() > 0.99
            # shoulders and hips that are seen lie on the rendered body of their frame (snapped)
            kp = s["keypoints"]
            for k in range(8):
                for j in (5, 6, 11, 12):
                    x, y, score = kp[k, j].tolist()
                    if score >= 0.3 and 0 <= x < W and 0 <= y < H:
                        near = masks[k][max(0, int(y) - 1) : int(y) + 2, max(0, int(x) - 1) : int(x) + 2]
                        assert near.any()
            # a drawn skeleton: coloured pixels in each pose image
            assert all(s["pose_images"][k].sum() > 0 for k in range(8))


def test_face_and_hand_keypoints_lie_on_the_body(prepared):
    """Only the 23 body and feet points are snapped onto the fitted body; the face and hands keep their own
    layout, carried from the pose estimator's pixels into the shard's. On the talking head (a big face) the
    seen face points fall on the rendered head and its surroundings."""
    _, data, summary = prepared
    clip = data / CLIPS_DIR / summary["done"][1]["clip"]
    shard = np.load(clip / "shard.npz")
    kp = shard["keypoints"]
    inside = total = 0
    for t in range(FRAMES):
        body = cv2.dilate(shard[f"mask/{t:06d}"], np.ones((5, 5), np.uint8)) > 0
        for x, y, score in kp[t, 23:]:  # face (68) and hands (2 x 21)
            if score >= 0.3:
                total += 1
                xi, yi = round(float(x)), round(float(y))
                inside += 0 <= xi < W and 0 <= yi < H and body[yi, xi]
    assert total > 30 * FRAMES  # the face is seen
    assert inside / total > 0.9


def test_body_points_are_the_stored_body_seen_through_the_stored_camera(prepared):
    """body.json (the fitted track and the clip's camera) and the keypoints agree: the 23 body and feet
    points are the track's joints projected by the camera, as the inference path snaps them."""
    from dataclasses import replace

    from animate.body import load_body
    from animate.body.camera import Camera
    from animate.body.fit import BodyTrack
    from animate.motion.body_field import BodyMotion

    _, data, summary = prepared
    clip = data / CLIPS_DIR / summary["done"][0]["clip"]
    stored = json.loads((clip / "body.json").read_text())
    track, camera = BodyTrack.from_json(stored["track"]), Camera.from_json(stored["camera"])
    assert (camera.width, camera.height) == (W, H)
    first = replace(track, root=track.root[:1], pose=track.pose[:1], transl=track.transl[:1], valid=None)
    joints = BodyMotion(load_body(), first, track, camera).keypoints()
    kp = np.load(clip / "shard.npz")["keypoints"]
    assert np.abs(kp[:, :23, :2] - joints).max() < 0.05  # body.json keeps 5 decimals


def test_a_real_sample_is_what_the_pipeline_takes(prepared):
    """A sample of a prepared clip goes into ``AnimationPipeline`` as it is (every guidance input given),
    so training sees the inference formats: one step of the tiny pipeline runs and returns the window."""
    import PIL.Image

    from pipelines import AnimationPipeline
    from pipelines.testing import tiny_components

    _, data, _ = prepared
    s = ClipDataset(data, frames=2, size=(32, 48))[0]
    pipe = AnimationPipeline(**tiny_components(with_motion_controlnet=True))
    known = set(pipe.guidance_encoders.config.guidance_types)
    # the reference as the diffusion engine hands it over: a PIL image of the uint8 frame
    reference = ((s["reference"].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    out = pipe(
        PIL.Image.fromarray(reference),
        pose_images=s["pose_images"],
        guidance_maps={k: v for k, v in s["guidance_maps"].items() if k in known},
        reference_pose_image=s["reference_pose"][None],
        reference_guidance_maps={k: v[None] for k, v in s["reference_guidance"].items() if k in known},
        dense_flow=s["dense_flow"],
        trajectory_flow=s["trajectory_flow"],
        height=48,
        width=32,
        num_inference_steps=1,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).frames
    assert out.shape == (1, 2, 48, 32, 3) and np.isfinite(out).all()


def _cli(videos: Path, data: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*ANIMATE, "train", "prepare", str(videos), "-o", str(data), *CLI_ARGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )


def test_killed_mid_run_and_rerun_gives_the_same_bytes(prepared, tmp_path):
    _, reference_data, summary = prepared
    videos = _videos(tmp_path / "videos", bad=False)
    data = tmp_path / "data"
    first = data / CLIPS_DIR / summary["done"][0]["clip"]
    second = data / CLIPS_DIR / summary["done"][1]["clip"]
    proc = _cli(videos, data)
    try:
        deadline = time.monotonic() + 300
        while not (first / DONE_FILE).is_file():
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (second / DONE_FILE).exists()  # killed while the second clip was under way
    # the rerun (in this process: one import of the stack is enough) finishes the second clip only
    got = prepare_videos(videos, data, OPTIONS, progress=False)
    assert got["prepared_now"] == 1 and got["already_done"] == 1
    assert json.loads((data / SUMMARY_FILE).read_text()) == got
    assert not list((data / CLIPS_DIR).glob(".tmp-*"))
    assert _tree_bytes(data) == _tree_bytes(reference_data)  # byte for byte what one uninterrupted run wrote


@pytest.mark.slow  # two spawned worker processes each import the whole stack
def test_two_workers_write_the_same_clips(prepared, tmp_path):
    _, reference_data, _ = prepared
    videos = _videos(tmp_path / "videos", bad=False)
    summary = prepare_videos(videos, tmp_path / "data", OPTIONS, workers=2, progress=False)
    assert summary["prepared_now"] == 2
    assert _tree_bytes(tmp_path / "data") == _tree_bytes(reference_data)


def test_several_people_and_internal_errors_are_skips_not_crashes(tmp_path, monkeypatch):
    import animate.pose
    from animate.pose import MediaPipeEstimator

    class TwoPeople(MediaPipeEstimator):
        """The real estimator, plus a second person (the first, shifted) in every frame."""

        def detect(self, rgb):
            people = super().detect(rgb)
            return people + [p.transformed((1.0, 1.0), (rgb.shape[1] / 3, 0.0)) for p in people]

    monkeypatch.setattr(animate.pose, "MediaPipeEstimator", TwoPeople)
    entry = prepare_clip(DANCE, tmp_path / "a", OPTIONS)
    assert (entry["status"], entry["reason"]) == ("skipped", "several_people")
    assert (tmp_path / "a" / SKIPPED_DIR / f"{entry['clip']}.json").is_file()  # recorded: reruns skip it
    monkeypatch.undo()

    import animate.body.transfer

    def broken(*args, **kwargs):
        raise RuntimeError("a planted bug")

    monkeypatch.setattr(animate.body.transfer, "fit_driving", broken)
    entry = prepare_clip(DANCE, tmp_path / "b", OPTIONS)
    assert (entry["status"], entry["reason"]) == ("skipped", "internal_error")
    assert "a planted bug" in entry["message"]
    assert not (tmp_path / "b" / SKIPPED_DIR).exists()  # not recorded: the next run tries again
    assert not list((tmp_path / "b" / CLIPS_DIR).iterdir())  # and no half-written clip is left


def test_bad_folders_and_changed_options_are_clear_cli_errors(prepared, tmp_path, capsys):
    from animate.cli import run

    videos, data, _ = prepared
    assert run(["train", "prepare", str(tmp_path / "nope"), "-o", str(tmp_path / "out")]) == 2
    assert "[file_not_found]" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert run(["train", "prepare", str(videos), "-o", str(tmp_path / "file")]) == 2
    assert "[bad_output]" in capsys.readouterr().err
    # the same folder with another size would mix clip sizes: refused before any work, nothing changed
    before = _tree_bytes(data)
    args = ["train", "prepare", str(videos), "-o", str(data), *CLI_ARGS]
    assert run([*args[:5], "--size", "96x128", *args[7:]]) == 2
    err = capsys.readouterr().err
    assert "[options_changed]" in err and "size [64, 96] -> [96, 128]" in err
    assert _tree_bytes(data) == before


def test_a_folder_without_usable_videos_fails_with_the_summary_written(tmp_path, capsys):
    from animate.cli import run

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "notes.mp4").write_text("not a video\n")
    (videos / "b.txt").write_text("")
    assert run(["train", "prepare", str(videos), "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "none of the 1 videos can be used" in err and "[no_clips]" in err
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert summary["skipped"][0]["reason"] == "unsupported_format" and summary["ignored"] == ["b.txt"]
    (videos / "notes.mp4").unlink()
    assert run(["train", "prepare", str(videos), "-o", str(tmp_path / "out2"), "--no-progress"]) == 2
    assert "no video files found" in capsys.readouterr().err


def test_data_dir_can_be_removed_and_rebuilt(prepared, tmp_path):
    """Nothing outside DATA_DIR is written: copying a data folder elsewhere keeps it readable."""
    _, data, _ = prepared
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    assert len(ClipDataset(copy, frames=4)) == 2


def test_faces_are_stored_for_the_identity_adapter(prepared):
    """The talking head shows its face in every frame: aligned crops, boxes inside the frame, and the
    reference frames' embeddings are one person by dlib's measure; the dancer's face is another person."""
    from animate.face import distance

    _, data, summary = prepared
    clips = {d["source"]: data / CLIPS_DIR / d["clip"] for d in summary["done"]}
    head = clips["talking_head.mp4"]
    meta = json.loads((head / "meta.json").read_text())
    assert meta["faces"]["embedder"] == "dlib_resnet_v1" and meta["faces"]["crop_size"] == 112
    with np.load(head / "shard.npz") as shard:
        boxes, embeddings = shard["face_boxes"], shard["face_embeddings"]
        crops = [name for name in shard.files if name.startswith("faces/")]
        assert meta["faces"]["frames_with_face"] == len(crops) == np.isfinite(boxes[:, 0]).sum() >= FRAMES - 2
        assert shard[crops[0]].shape == (112, 112, 3) and shard[crops[0]].dtype == np.uint8
    found = boxes[np.isfinite(boxes[:, 0])]
    assert (found[:, 0] >= -8).all() and (found[:, 2] <= W + 8).all() and (found[:, 2] > found[:, 0]).all()
    assert embeddings.shape == (len(meta["references"]), 128) and np.isfinite(embeddings).all()
    assert max(distance(a, b) for a in embeddings for b in embeddings) < 0.6
    sample = ClipDataset(data, frames=4)[sorted(clips).index("talking_head.mp4")]
    ref = meta["references"].index(int(sample["reference_index"]))
    assert torch.equal(sample["reference_face_embedding"], torch.from_numpy(embeddings[ref]))
    assert float(sample["reference_has_face"]) == 1.0 and sample["face_boxes"].shape == (4, 4)
