"""The ``wan`` engine with tiny random components in the real Diffusers layout (no download): weights check,
engine selection and errors, segment joins, progress, cancel, replace-mode inputs, and ``animate run`` end to
end on the shared photo + dance in both modes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from animate.errors import AnimateError
from animate.settings import Settings
from tests._wan_tiny import WAN_DIR, save_tiny_wan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PHOTO = Path("../shared/data/reference/woman_street_mimicmotion.jpg")
DANCE = Path("../shared/data/driving/dance_musepose.mp4")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    save_tiny_wan(root)
    return root


def _copy(tiny_weights: Path, tmp_path: Path) -> Path:
    root = tmp_path / "weights"
    shutil.copytree(tiny_weights, root)
    return root


def test_weights_check_recognises_complete_and_incomplete_folders(tiny_weights: Path, tmp_path: Path) -> None:
    from animate.weights import INVALID, MISSING, OK, check_wan, inspect_weights

    assert check_wan(tiny_weights).status == OK
    assert inspect_weights(tiny_weights).features["wan"] is True
    assert check_wan(tmp_path).status == MISSING

    root = _copy(tiny_weights, tmp_path)
    folder = root / WAN_DIR
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(folder / "image_encoder")
    found = check_wan(root)
    assert found.status == INVALID
    assert "transformer/" in found.detail and "image_encoder/ missing" in found.detail
    assert "vae" not in found.detail and inspect_weights(root).features["wan"] is False

    # a sharded transformer (as the real 15-shard one) with one shard absent
    (folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "part-00001.safetensors", "b": "part-00002.safetensors"}})
    )
    (folder / "transformer" / "part-00001.safetensors").write_bytes(b"x")
    shutil.copytree(tiny_weights / WAN_DIR / "image_encoder", folder / "image_encoder")
    found = check_wan(root)
    assert found.status == INVALID and "1 of 2 shards missing (part-00002" in found.detail
    (folder / "transformer" / "part-00002.safetensors").write_bytes(b"x")
    assert check_wan(root).status == OK


def test_engine_errors_name_what_is_missing(tiny_weights: Path, tmp_path: Path) -> None:
    from animate.engines import engine_statuses, select_engine

    with pytest.raises(AnimateError) as err:
        select_engine("wan", Settings(weights_dir=tmp_path))
    assert err.value.code == "weights_missing" and WAN_DIR in err.value.message
    root = _copy(tiny_weights, tmp_path)
    shutil.rmtree(root / WAN_DIR / "vae")
    with pytest.raises(AnimateError) as err:
        select_engine("wan", Settings(weights_dir=root))
    assert err.value.code == "weights_missing" and "vae/ missing" in err.value.message
    status = {s.name: s for s in engine_statuses(Settings(weights_dir=root))}["wan"]
    assert not status.available and "vae/ missing" in status.reason
    ok = {s.name: s for s in engine_statuses(Settings(weights_dir=tiny_weights))}["wan"]
    assert ok.available and "GPU" in ok.note  # runs on the CPU, slowly


def test_memory_levels_and_no_room_error() -> None:
    from animate.engines.wan import GIB, memory_level

    assert memory_level(80 * GIB) == "none"
    assert memory_level(45 * GIB) == "model"
    assert memory_level(60 * GIB) == "none" and memory_level(60 * GIB - 1) == "model"  # the documented edges
    assert memory_level(40 * GIB) == "model" and memory_level(40 * GIB - 1) == "sequential"
    assert memory_level(8 * GIB) == "sequential"
    assert memory_level(16 * GIB) == "sequential"
    with pytest.raises(AnimateError) as err:
        memory_level(6 * GIB)
    assert err.value.code == "out_of_memory" and "6.0 GiB is free" in err.value.message


def _bundle(frames: int, fps: float = 30.0, size: int = 32, seed: int = 0):
    from animate.motion.bundle import GuidanceBundle
    from tests.test_wan_draw import figure

    rng = np.random.default_rng(seed)
    kp, _ = figure(size, size)
    kp[23:91] = (size / 2, size / 2, 1.0)
    kp[23:91, 0] += np.linspace(-4, 4, 68)
    kp[23:91, 1] += np.linspace(-4, 4, 68)[::-1]
    driving = rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
    keypoints = np.repeat(kp[None], frames, axis=0)
    keypoints[:, :, 0] += np.arange(frames)[:, None] * 0.2 * (keypoints[:, :, 2] > 0)
    bundle = GuidanceBundle(
        reference=rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
        reference_mask=np.full((size, size), 255, np.uint8),
        reference_keypoints=kp,
        keypoints=keypoints,
        fps=fps,
        size=(size, size),
    )
    bundle.extras["wan"] = {
        "driving_keypoints": keypoints,
        "driving_size": (size, size),
        "driving_frames": list(driving),
        "person_masks": None,
    }
    return bundle


@pytest.mark.parametrize(("overlap", "segment", "frames"), [(1, 9, 17), (5, 13, 21)])
def test_two_segments_join_into_one_frame_per_driving_frame(
    tiny_weights: Path, overlap: int, segment: int, frames: int
) -> None:
    """At 30 fps the clip is exactly two segments (17 = 1 + 2 x 8; 21 = 5 + 2 x 8): the progress counts
    2 x steps, the pipeline returns one frame per conditioning frame and the engine one per driving frame."""
    from animate.engines.wan import WanEngine, WanOptions

    engine = WanEngine.from_settings(
        Settings(weights_dir=tiny_weights),
        WanOptions(segment_frames=segment, overlap_frames=overlap, steps=2),
    )
    seen: list[tuple[int, int]] = []
    bundle = _bundle(frames)
    inputs = engine.inputs(bundle)
    assert len(inputs["pose"]) == len(inputs["face"]) == frames
    assert {f.shape for f in inputs["face"]} == {(512, 512, 3)}
    out = list(engine.render(bundle, progress=lambda done, total: seen.append((done, total))))
    assert len(out) == frames and {f.shape for f in out} == {(32, 32, 3)}
    assert seen[-1] == (4, 4) and [d for d, _ in seen] == [1, 2, 3, 4]
    assert engine.parts["segments"] == f"2 x {segment} frames, overlap {overlap}"
    assert engine.plan.to_dict()["segments"] == 2 and engine.plan.generated_frames == frames


def test_auto_picks_wan_only_with_weights_and_gpu_room(
    tiny_weights: Path, tmp_path: Path, monkeypatch
) -> None:
    import animate.engines.wan as wan
    from animate.engines import auto_engine_name

    settings = Settings(weights_dir=tiny_weights)
    monkeypatch.setattr(wan, "_free_gpu_bytes", lambda: None)
    assert auto_engine_name(settings) != "wan"
    monkeypatch.setattr(wan, "_free_gpu_bytes", lambda: 39 * wan.GIB)
    assert auto_engine_name(settings) != "wan"
    monkeypatch.setattr(wan, "_free_gpu_bytes", lambda: 41 * wan.GIB)
    assert auto_engine_name(settings) == "wan"
    assert auto_engine_name(Settings(weights_dir=tmp_path)) != "wan"  # room, no weights


def test_job_options_carry_the_wan_fields_and_defaults() -> None:
    from pydantic import ValidationError

    from animate.animator import Animator
    from server.schemas import JobOptions

    wan = JobOptions(engine="wan", mode="replace", segment_frames=13, overlap_frames=5).animation_options()
    assert (wan.steps, wan.guidance_scale, wan.mode, wan.segment_frames, wan.overlap_frames) == (
        None, None, "replace", 13, 5,
    )  # fmt: skip
    # unset steps / scale are each engine's own, decided once the engine is known (`auto` included)
    for engine in ("wan", "auto", "diffusion"):
        unset = JobOptions(engine=engine).animation_options()
        assert (unset.wan_options().steps, unset.wan_options().guidance_scale) == (20, 1.0)
        assert (Animator._diffusion_options(unset).steps, Animator._diffusion_options(unset).guidance_scale) == (
            25, 2.0,
        )  # fmt: skip
    chosen = JobOptions(engine="auto", steps=7, guidance_scale=3.0).animation_options()
    assert (chosen.wan_options().steps, chosen.wan_options().guidance_scale) == (7, 3.0)
    assert Animator._diffusion_options(chosen).steps == 7
    with pytest.raises(ValidationError):
        JobOptions(engine="wan", overlap_frames=2)
    with pytest.raises(AnimateError) as err:
        JobOptions(engine="warp", mode="replace").animation_options().validate()
    assert err.value.code == "invalid_option"


def test_a_24_fps_clip_is_generated_at_30_and_brought_back(tiny_weights: Path) -> None:
    from animate.engines.wan import WanEngine, WanOptions

    engine = WanEngine.from_settings(
        Settings(weights_dir=tiny_weights), WanOptions(segment_frames=9, steps=1)
    )
    bundle = _bundle(8, fps=24.0)
    assert len(engine.inputs(bundle)["pose"]) == 10
    assert len(list(engine.render(bundle))) == 8


def test_cancel_stops_the_render(tiny_weights: Path) -> None:
    from animate.animator import Canceled
    from animate.engines.wan import WanEngine, WanOptions

    engine = WanEngine.from_settings(
        Settings(weights_dir=tiny_weights), WanOptions(segment_frames=9, steps=2)
    )
    with pytest.raises(Canceled):
        list(engine.render(_bundle(9), should_cancel=lambda: True))


def test_replace_inputs_mask_and_background(tiny_weights: Path) -> None:
    """Replace mode: the mask is exact 0/255, covers the driver's person, and the background is black there
    and the driving frame elsewhere; all lists have the same length."""
    from animate.engines.wan import WanEngine, WanOptions

    engine = WanEngine.from_settings(
        Settings(weights_dir=tiny_weights), WanOptions(mode="replace", segment_frames=9, steps=1)
    )
    bundle = _bundle(9)
    person = np.zeros((32, 32), np.uint8)
    person[12:20, 14:18] = 255
    bundle.extras["wan"]["person_masks"] = [person] * 9
    inputs = engine.inputs(bundle)
    assert len(inputs["mask"]) == len(inputs["background"]) == len(inputs["pose"]) == 9
    mask, bg = inputs["mask"][0], inputs["background"][0]
    assert set(np.unique(mask)) == {0, 255}
    assert (mask[3:28, 5:27] == 255).all()  # the 8x4 box grown by 9 on each side
    assert not mask[:, :5].any() and not mask[:3].any()
    frame = bundle.extras["wan"]["driving_frames"][0]
    assert not bg[mask > 0].any() and (bg[mask == 0] == frame[mask == 0]).all()
    assert len(list(engine.render(bundle))) == 9


def _run_cli(tmp_path: Path, weights: Path, capsys, *args: str) -> tuple[int, dict]:
    """``animate ARGS --engine wan --json`` in this process (the console script's error handling)."""
    from animate.cli import run as cli

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ANIMATE_WEIGHTS_DIR", str(weights))
        env.setenv("ANIMATE_DATA_DIR", str(tmp_path / "data"))
        code = cli(["run", *args, "--engine", "wan", "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out[out.index("{") :])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["animate", "replace"])
def test_animate_run_engine_wan_end_to_end(tiny_weights: Path, tmp_path: Path, mode: str, capsys) -> None:
    """``animate run --engine wan`` on the shared photo + dance: an mp4 with the driving clip's frame count at
    its rate, its audio, and the pose / face (and mask) videos as artifacts at 30 fps."""
    import av

    code, out = _run_cli(
        tmp_path, tiny_weights, capsys, str(PHOTO), str(DANCE), "-o", str(tmp_path / "out.mp4"), "--mode", mode,
        "--size", "64x64", "--max-frames", "8", "--steps", "1", "--segment-frames", "9",
        "--artifacts", str(tmp_path / "art"),
    )  # fmt: skip
    assert code == 0, out
    assert out["engine"] == "wan" and out["frames"] == 8 and (out["width"], out["height"]) == (64, 64)
    with av.open(str(tmp_path / "out.mp4")) as container:
        kinds = {s.type for s in container.streams}
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert kinds == {"video", "audio"} and len(frames) == 8
    with av.open(str(DANCE)) as container:
        rate = float(container.streams.video[0].average_rate)
    assert out["fps"] == pytest.approx(rate, rel=1e-3)
    assert out["plan"]["engine"] == "wan" and out["plan"]["segments"] == 2  # 10 frames at 30 fps, 9 a segment
    expected = {"wan_pose", "wan_face"} | ({"wan_mask"} if mode == "replace" else set())
    assert expected <= set(out["artifacts"])
    for name in expected:
        with av.open(out["artifacts"][name]) as container:
            stream = container.streams.video[0]
            assert float(stream.average_rate) == 30.0
            assert len(list(container.decode(video=0))) == round(8 * 30 / rate)


def test_no_face_in_the_reference_is_a_clear_error(tiny_weights: Path, tmp_path: Path, capsys) -> None:
    """The photo with its head painted over: exit 2 with ``no_face_in_reference`` before any rendering."""
    from PIL import Image

    image = np.asarray(Image.open(PHOTO).convert("RGB")).copy()
    image[: image.shape[0] // 4] = 0  # the head (the woman stands in the frame's upper quarter)
    Image.fromarray(image).save(tmp_path / "headless.png")
    code, out = _run_cli(
        tmp_path, tiny_weights, capsys, str(tmp_path / "headless.png"), str(DANCE), "-o", str(tmp_path / "o.mp4"),
        "--size", "64x64", "--max-frames", "2",
    )  # fmt: skip
    assert code == 2 and out["error"]["code"] == "no_face_in_reference"
    assert not (tmp_path / "o.mp4").exists()


def test_pose_face_and_reference_each_reach_the_output(tiny_weights: Path) -> None:
    """The tiny transformer has no zero-initialised weights on these paths (only biases), so each input must
    move the frames: the pose (keypoints shifted), the face crops (driving frames inverted: only the face
    video reads them in animate mode) and the reference; the same inputs give the same frames."""
    from animate.engines.wan import WanEngine, WanOptions

    engine = WanEngine.from_settings(
        Settings(weights_dir=tiny_weights), WanOptions(segment_frames=9, steps=2)
    )
    zero = [n for n, p in engine.pipeline.transformer.named_parameters() if not p.any() and "bias" not in n]
    assert zero in ([], ["face_encoder.padding_tokens"])

    def render(bundle) -> np.ndarray:
        return np.stack(list(engine.render(bundle))).astype(int)

    base = render(_bundle(9))
    assert (render(_bundle(9)) == base).all()
    moved = _bundle(9)
    moved.keypoints[:, :, 0] += 6
    faces = _bundle(9)
    faces.extras["wan"]["driving_frames"] = [255 - f for f in faces.extras["wan"]["driving_frames"]]
    other = _bundle(9)
    other.reference = 255 - other.reference
    assert np.abs(render(moved) - base).mean() > 0.1
    assert np.abs(render(faces) - base).mean() > 0.1
    assert (render(other) != base).any()  # the reference latent slot and CLIP tokens: a weak effect here


def test_the_pipeline_call_and_the_way_back_to_the_driving_rate(tiny_weights: Path, monkeypatch) -> None:
    """The call's arguments, and which generated frame each output frame is: with the pipeline replaced by
    one whose frame k has value k, a 24 fps clip of 8 frames (10 at 30 fps) comes back as 30 fps frames
    0, 1, 2, 4, 5, 6, 8, 9 (round(j / 24 x 30), by hand)."""
    from types import SimpleNamespace

    from diffusers import WanAnimatePipeline

    from animate.engines.wan import WanEngine, WanOptions

    calls = []

    def fake(self, **kwargs):
        calls.append(kwargs)
        n = len(kwargs["pose_video"])
        frames = np.stack([np.full((32, 32, 3), k / 255.0, np.float32) for k in range(n)])
        return SimpleNamespace(frames=[frames])

    monkeypatch.setattr(WanAnimatePipeline, "__call__", fake)
    engine = WanEngine.from_settings(
        Settings(weights_dir=tiny_weights),
        WanOptions(segment_frames=80, overlap_frames=5, steps=7, guidance_scale=1.5, seed=3),
    )
    out = list(engine.render(_bundle(8, fps=24.0)))
    assert [int(f[0, 0, 0]) for f in out] == [0, 1, 2, 4, 5, 6, 8, 9]
    (kwargs,) = calls
    assert len(kwargs["pose_video"]) == len(kwargs["face_video"]) == 10
    assert kwargs["face_video"][0].size == (512, 512) and kwargs["pose_video"][0].size == (32, 32)
    assert (kwargs["height"], kwargs["width"], kwargs["segment_frame_length"]) == (32, 32, 77)
    assert kwargs["prev_segment_conditioning_frames"] == 5 and kwargs["num_inference_steps"] == 7
    assert kwargs["guidance_scale"] == 1.5 and kwargs["negative_prompt_embeds"] is not None
    assert kwargs["mode"] == "animate" and "background_video" not in kwargs
    assert kwargs["prompt_embeds"].shape == (1, 512, 32)


def test_dry_run_prints_the_wan_plan_and_gpus_are_refused(tiny_weights: Path, tmp_path: Path, capsys) -> None:
    """The dance: 288 frames at 24 fps -> 360 at 30; with 77-frame segments sharing 1 frame, T = 381 (the least
    T >= 360 with (T - 1) % 76 == 0) -> 5 segments x 20 steps; the photo's portrait aspect at 720p's area."""
    args = [str(PHOTO), str(DANCE), "-o", str(tmp_path / "o.mp4")]
    code, out = _run_cli(tmp_path, tiny_weights, capsys, *args, "--dry-run")
    assert code == 0
    plan = out["plan"]
    assert (plan["frames"], plan["generated_frames_30fps"], plan["segments"]) == (288, 360, 5)
    assert plan["denoising_steps_total"] == 100 and plan["weights"] == "ok"
    code, out = _run_cli(tmp_path, tiny_weights, capsys, *args, "--processes", "2")
    assert code == 2 and out["error"]["code"] == "invalid_option"
    assert not (tmp_path / "o.mp4").exists()


def test_clip_tokens_come_from_the_whole_letterboxed_reference(tiny_weights: Path) -> None:
    """Upstream stretches the whole letterboxed reference to the CLIP size (diffusers would centre-crop it):
    a reference whose middle is grey and whose left and right quarters are black (bars) gives the tokens of
    an input whose columns are black / grey / black, not the all-grey centre crop; the tokens are the second
    to last hidden states, and the pipeline uses them instead of its own."""
    import torch

    from animate.engines.wan import WanEngine, WanOptions

    engine = WanEngine.from_settings(
        Settings(weights_dir=tiny_weights), WanOptions(segment_frames=9, steps=1)
    )
    pipe = engine.pipeline
    reference = np.zeros((32, 32, 3), np.uint8)
    reference[:, 8:24] = 128
    mean = np.asarray(pipe.image_processor.image_mean, np.float32)[:, None, None]
    std = np.asarray(pipe.image_processor.image_std, np.float32)[:, None, None]
    columns = np.array([0.0, 128 / 255, 128 / 255, 0.0], np.float32)  # 32 -> 4 columns: bar, grey, grey, bar
    pixels = (np.broadcast_to(columns, (3, 4, 4)) - mean) / std
    with torch.no_grad():
        hidden = pipe.image_encoder(
            pixel_values=torch.from_numpy(pixels[None].astype(np.float32)), output_hidden_states=True
        ).hidden_states
    ours = engine._image_embeds(reference)
    assert torch.allclose(ours, hidden[-2], atol=1e-4) and not torch.allclose(ours, hidden[-1], atol=1e-4)
    grey = (np.full((3, 4, 4), 128 / 255, np.float32) - mean) / std
    with torch.no_grad():
        crop = pipe.image_encoder(pixel_values=torch.from_numpy(grey[None]), output_hidden_states=True)
    assert not torch.allclose(ours, crop.hidden_states[-2], atol=1e-3)
    bundle = _bundle(9)
    bundle.reference = reference
    list(engine.render(bundle))
    assert torch.equal(pipe.encode_image(None, torch.device("cpu")), ours)
