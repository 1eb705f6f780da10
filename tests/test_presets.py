"""``--preset mimicmotion|dispose``: upstream's preprocessing rules on tiny cases, and the options plumbing.

Expected values are worked out by hand from MimicMotion's inference.py / dwpose/preprocess.py and DisPose's
inference_ctrl.py (the rules are quoted in ``animate.presets``); none of their code runs here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _media import frame_index, make_video

from animate.animator import AnimationOptions, Animator
from animate.errors import AnimateError
from animate.media import open_video
from animate.pose import Pose, PoseError, PoseSequence, global_fit
from animate.pose.layout import OPENPOSE18_FROM_COCO
from animate.presets import (
    PRESETS,
    crop_box,
    frame_stride,
    preprocess_reference,
    reference_round_trip,
    resize_size,
    sample_frames,
    target_size,
)

MM, DP = PRESETS["mimicmotion"], PRESETS["dispose"]


@pytest.mark.parametrize(
    ("width", "height", "preset", "target", "resized", "box"),
    [
        # landscape 1000x800: 1024x576; h/w 0.8 >= 576/1024 -> width 1024, height ceil(819.2) = 820; top 122
        (1000, 800, MM, (1024, 576), (1024, 820), (0, 122, 1024, 698)),
        # portrait 800x1000: 576x1024; h/w 1.25 < 1024/576 -> height 1024, width ceil(819.2) = 820
        (800, 1000, MM, (576, 1024), (820, 1024), (122, 0, 698, 1024)),
        # MimicMotion's square goes landscape (h > w is false): 1024x1024 resized, top 224
        (500, 500, MM, (1024, 576), (1024, 1024), (0, 224, 1024, 800)),
        (500, 500, DP, (576, 576), (576, 576), (0, 0, 576, 576)),  # DisPose keeps it square
        # torchvision's crop offset rounds half to even: ceil(576.512) = 577 -> round(0.5) = 0 ...
        (1000, 563, MM, (1024, 576), (1024, 577), (0, 0, 1024, 576)),
        # ... and ceil(578.56) = 579 -> round(1.5) = 2
        (1000, 565, MM, (1024, 576), (1024, 579), (0, 2, 1024, 578)),
    ],
)
def test_reference_size_resize_and_crop_box(width, height, preset, target, resized, box) -> None:
    assert target_size(width, height, preset) == target
    assert resize_size(width, height, target) == resized
    assert crop_box(resized, target) == box


def test_reference_resize_is_bilinear_without_antialiasing_rounded_half_to_even() -> None:
    # 4096x2304 -> exactly 1024x576 (ratio 0.5625 is not below 576/1024): a 4x reduction. Bilinear without
    # antialiasing samples source (4i + 1.5): the mean of pixels 4i+1 and 4i+2 on each axis.
    rgb = np.random.default_rng(0).integers(0, 256, (2304, 4096, 3), dtype=np.uint8)
    out, mask = preprocess_reference(rgb, MM, rgb[..., 0])
    assert out.shape == (576, 1024, 3) and out.dtype == np.uint8
    block = rgb.astype(np.float64).reshape(576, 4, 1024, 4, 3)[:, 1:3, :, 1:3].mean(axis=(1, 3))
    np.testing.assert_array_equal(out, np.round(block).astype(np.uint8))  # np.round: half to even
    np.testing.assert_array_equal(mask, out[..., 0])


def test_reference_round_trip_truncates_like_upstream() -> None:
    u = np.arange(256, dtype=np.uint8)
    # upstream, in torch: preprocess's "/ 127.5 - 1", then run_pipeline's "(x + 1.0) * 127.5 -> uint8"
    expected = ((torch.from_numpy(u) / 127.5 - 1 + 1.0) * 127.5).to(torch.uint8).numpy()
    out = reference_round_trip(u)
    np.testing.assert_array_equal(out, expected)
    assert (out[0], out[1], out[255]) == (0, 0, 255)  # 1 -> 0.99999994 -> 0; the ends survive
    dropped = (out != u).mean()
    assert 0.1 < dropped < 0.4 and (u.astype(int) - out <= 1).all()  # a fifth-ish drop by exactly one


@pytest.mark.parametrize(
    ("fps", "stride"),
    [(24, 2), (23.976, 2), (25, 2), (30, 2), (47.9, 2), (48, 4), (60, 4), (72, 6), (120, 10)],
)
def test_frame_stride_is_two_times_int_fps_over_24(fps, stride) -> None:
    assert frame_stride(fps, MM) == stride


def test_sample_frames_picks_every_strided_frame(tmp_path) -> None:
    # 48 fps -> stride 2 * int(48 / 24) = 4: frames 0, 4, 8, 12 of 14; the frames keep their own size
    video = open_video(make_video(tmp_path / "v.mp4", n_frames=14, width=64, height=48, fps=48))
    frames, count = sample_frames(video, MM)
    frames = list(frames)
    assert count == 4 and [frame_index(f) for f in frames] == [0, 4, 8, 12]
    assert frames[0].shape == (48, 64, 3)
    frames, count = sample_frames(video, DP, max_frames=2)
    assert count == 2 and [frame_index(f) for f in frames] == [0, 4]


# ---- the one linear pose fit -------------------------------------------------------------------------------

COCO_OF_OPENPOSE = {op: coco for op, coco in enumerate(OPENPOSE18_FROM_COCO) if coco >= 0}


def _pose(points: np.ndarray, score: float = 0.9) -> Pose:
    kp = np.zeros((133, 3), np.float32)
    kp[:, :2], kp[:, 2] = points, score
    return Pose(kp)


def test_global_fit_recovers_the_inverse_of_a_linear_map() -> None:
    # Reference 400x800, driving video 800x400; driving pixel = 2 * reference pixel + 3 (both axes).
    # In upstream's normalised coordinates: ay = fh / (2H), by = -3 / (2H), ax = ay * (fw/fh) * (H/W) = fw / (2W),
    # bx = -3 / (2W): every output pixel is (driving - 3) / 2, i.e. the reference's own points.
    rng = np.random.default_rng(1)
    ref_px = rng.uniform([20, 40], [380, 760], (133, 2)).astype(np.float32)
    ref = _pose(ref_px)
    frames = []
    arms_hands_face = np.r_[7:11, 17:133]  # the fit's points stay, the rest moves
    for t in range(4):
        moved = ref_px.copy()
        moved[arms_hands_face] += rng.normal(0, 20, (len(arms_hands_face), 2)) * t
        frames.append(_pose(2 * moved + 3))
    frames.append(Pose.empty())  # a frame without a person is not part of the fit
    driving = PoseSequence(frames, 800, 400, 30.0)
    out = global_fit(driving, ref, 400, 800)
    assert (out.width, out.height) == (400, 800) and out.meta["scale"] == pytest.approx(0.5)
    expected = (driving.keypoints[:4, :, :2] - 3) / 2  # every keypoint follows the one map
    np.testing.assert_allclose(out.keypoints[:4, :, :2], expected, atol=1e-3)


def test_global_fit_uses_knees_and_ankles_and_driving_points_whatever_their_score() -> None:
    ref_px = np.zeros((133, 2), np.float32)
    ref = _pose(ref_px, score=0.0)
    # the reference shows only OpenPose knees and ankles (9, 10, 12, 13)
    legs = [COCO_OF_OPENPOSE[i] for i in (9, 10, 12, 13)]
    ref.keypoints[legs] = [[100, 500, 0.9], [110, 700, 0.9], [200, 520, 0.9], [190, 690, 0.9]]
    kp = np.zeros((133, 3), np.float32)
    kp[:, :2] = 2 * ref.keypoints[:, :2] + 3
    kp[:, 2] = 0.0  # unseen everywhere: upstream's fit still reads DWPose's coordinates
    driving = PoseSequence([Pose(kp)], 800, 1600, 30.0)
    out = global_fit(driving, ref, 400, 800)
    np.testing.assert_allclose(out.keypoints[0, legs, :2], ref.keypoints[legs, :2], atol=1e-3)
    ref.keypoints[legs[1:], 2] = 0.29  # seen is score > 0.3: one point left is too few to fit
    with pytest.raises(PoseError):
        global_fit(driving, ref, 400, 800)


# ---- options plumbing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"preset": "animateanyone"},
        {"preset": "mimicmotion", "engine": "warp"},
        {"preset": "dispose", "size": (576, 1024)},
        {"preset": "dispose", "fps": 30.0},
        {"tile_size": 1},
        {"tile_size": 8, "tile_overlap": 8},
        {"tile_overlap": -1},
        {"preset": "dispose", "tile_size": 6},  # the preset's overlap 6 does not fit a 6-frame tile
    ],
)
def test_bad_preset_and_tile_options_are_invalid_option(options) -> None:
    with pytest.raises(AnimateError) as info:
        AnimationOptions(**options).validate()
    assert info.value.code == "invalid_option"


def test_preset_and_tiles_reach_the_diffusion_options() -> None:
    to_diffusion = Animator._diffusion_options
    mm = to_diffusion(AnimationOptions(preset="mimicmotion"))
    assert (mm.preset, mm.tile_size, mm.tile_overlap) == ("mimicmotion", 72, 6)  # test.yaml: 72 / 6
    dp = to_diffusion(AnimationOptions(preset="dispose", tile_overlap=4))
    assert (dp.preset, dp.tile_size, dp.tile_overlap) == ("dispose", 16, 4)  # DisPose's test.yaml: 16
    own = to_diffusion(AnimationOptions(tile_size=24, tile_overlap=8))
    assert (own.preset, own.tile_size, own.tile_overlap) == (None, 24, 8)
    AnimationOptions(preset="dispose", tile_size=7).validate()  # 6 < 7: fine


def test_preset_tiles_are_the_engine_table_s() -> None:
    """animate may not import pipelines outside the engine, so the preset's tiles are written twice: they agree."""
    from animate.presets import PRESETS
    from pipelines.parity import TILES

    assert {name: (p.tile_size, p.tile_overlap) for name, p in PRESETS.items()} == {
        name: TILES[name] for name in PRESETS
    }


def test_preset_with_auto_falling_back_to_warp_is_invalid_option(tmp_path, data_dir) -> None:
    from conftest import DANCE, HERO_RGBA

    from animate.settings import Settings

    animator = Animator(Settings(weights_dir=tmp_path))  # no weights: auto takes warp
    with pytest.raises(AnimateError) as info:
        animator.prepare(HERO_RGBA, DANCE, AnimationOptions(preset="mimicmotion", max_frames=2))
    assert info.value.code == "invalid_option" and "diffusion" in info.value.message


# ---- the API's option fields ----------------------------------------------------------------------------------


@pytest.fixture()
def client(tmp_path, data_dir):
    from fastapi.testclient import TestClient

    from animate.settings import Settings
    from server import create_app

    settings = Settings(data_dir=tmp_path / "data", media={"max_video_seconds": 60})
    with TestClient(create_app(settings)) as c:
        yield c


def _post(client, data: dict):
    from conftest import DANCE, WOMAN_JPG

    files = {
        "reference": ("reference.jpg", WOMAN_JPG.read_bytes(), "image/jpeg"),
        "driving": ("driving.mp4", DANCE.read_bytes(), "video/mp4"),
    }
    return client.post("/v1/jobs", files=files, data={k: str(v) for k, v in data.items()})


@pytest.mark.parametrize(
    "data",
    [
        {"preset": "champ"},
        {"preset": "dispose", "engine": "warp"},
        {"tile_size": 1},
        {"tile_size": 8, "tile_overlap": 8},
        {"tile_overlap": -1},
        {"preset": "mimicmotion", "fps": 24},
    ],
)
def test_api_refuses_bad_preset_and_tile_fields_with_422(client, data) -> None:
    response = _post(client, data)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_option"


def test_api_documents_and_stores_the_preset_fields(client) -> None:
    from server.schemas import JobOptions

    spec = client.get("/openapi.json").json()
    form = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    fields = form["properties"]
    assert {"mimicmotion", "dispose"} <= {v for o in fields["preset"]["anyOf"] for v in o.get("enum", [])}
    assert (
        fields["tile_size"]["anyOf"][0]["minimum"] == 2 and fields["tile_overlap"]["anyOf"][0]["minimum"] == 0
    )
    assert all(fields[name]["description"] for name in ("preset", "tile_size", "tile_overlap"))
    response = _post(client, {"preset": "dispose", "tile_overlap": 4})
    assert response.status_code == 202, response.text
    stored = client.get(response.headers["Location"]).json()["options"]
    # what the worker hands the animator (server/worker.py: JobOptions(**job.options).animation_options())
    options = JobOptions(**stored).animation_options()
    assert (options.preset, options.tile_size, options.tile_overlap) == ("dispose", None, 4)


# ---- end to end: the CLI with tiny diffusion weights ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from animate.weights import CONVERTED_DIR
    from pipelines import AnimationPipeline
    from pipelines.testing import reinit_zero_layers, tiny_components

    components = tiny_components(with_guidance_encoders=False)
    reinit_zero_layers(components["pose_guider"])
    root = tmp_path_factory.mktemp("weights")
    AnimationPipeline(**components).save_pretrained(root / CONVERTED_DIR)
    return root


def test_prepare_with_a_preset_has_upstream_size_frame_rate_and_frames(tiny_weights, data_dir):
    from conftest import DANCE, WOMAN_JPG
    from PIL import Image

    from animate.settings import Settings

    animator = Animator(Settings(weights_dir=tiny_weights))
    options = AnimationOptions(engine="diffusion", preset="mimicmotion", max_frames=3)
    prepared = animator.prepare(WOMAN_JPG, DANCE, options)
    bundle = prepared.bundle
    width, height = Image.open(WOMAN_JPG).size
    expected_size = (576, 1024) if height > width else (1024, 576)
    assert bundle.size == expected_size and bundle.reference.shape == (*expected_size[::-1], 3)
    assert (bundle.fps, bundle.num_frames) == (15.0, 3)  # 24 fps driving: frames 0, 2, 4 written at 15 fps
    assert bundle.body is None and bundle.extras["preset"] == "mimicmotion"  # upstream has no body model
    assert prepared.engine.options.preset == "mimicmotion"
    assert (prepared.engine.options.tile_size, prepared.engine.options.tile_overlap) == (72, 6)
    assert any("one driving frame in 2" in note for note in prepared.notes)
    assert not prepared.has_audio  # 12 frames per second of video shown at 15: its audio would drift


def test_cli_bad_preset_is_exit_2(tmp_path, capsys):
    from conftest import DANCE, WOMAN_JPG

    from animate.cli import run as cli_run

    argv = ["run", str(WOMAN_JPG), str(DANCE), "-o", str(tmp_path / "o.mp4"), "--preset", "champ"]
    assert cli_run(argv) == 2
    assert "[invalid_option]" in capsys.readouterr().err
    argv[-1:] = ["dispose", "--tile-size", "4"]  # the preset's overlap 6 does not fit
    assert cli_run(argv) == 2
    assert "tile_overlap" in capsys.readouterr().err


@pytest.mark.slow  # ~30 s on a loaded 2-core machine
def test_engine_under_a_preset_feeds_the_round_tripped_reference_and_upstream_pose_images(
    tiny_weights, monkeypatch
) -> None:
    from animate.engines.diffusion import DiffusionEngine, DiffusionOptions
    from animate.motion.bundle import GuidanceBundle
    from animate.pose import draw_pose_mimicmotion
    from animate.settings import Settings

    rng = np.random.default_rng(0)
    keypoints = np.zeros((3, 133, 3), np.float32)
    keypoints[:, :17, :2] = rng.uniform(8, 56, (3, 17, 2))
    keypoints[:, :17, 2] = 0.8
    keypoints[:, 91:95] = (30, 40, 0.1)  # a hand point below 0.3: upstream still draws it
    reference = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    bundle = GuidanceBundle(
        reference, np.full((64, 64), 255, np.uint8), keypoints[0], keypoints, 15.0, (64, 64)
    )
    engine = DiffusionEngine.from_settings(
        Settings(weights_dir=tiny_weights),
        DiffusionOptions(steps=1, preset="mimicmotion", tile_size=4, tile_overlap=1),
    )
    pipeline_type = type(engine.pipeline)
    real_call, seen = pipeline_type.__call__, {}

    def spy(self, image, **kwargs):  # the real pipeline runs; only its inputs are kept
        seen.update(kwargs, image=np.asarray(image))
        return real_call(self, image, **kwargs)

    monkeypatch.setattr(pipeline_type, "__call__", spy)
    frames = list(engine.render(bundle))
    assert len(frames) == 3
    expected = ((torch.from_numpy(reference) / 127.5 - 1 + 1.0) * 127.5).to(torch.uint8).numpy()
    np.testing.assert_array_equal(seen["image"], expected)
    drawn = np.stack([draw_pose_mimicmotion(Pose(k), 64, 64) for k in keypoints])
    np.testing.assert_array_equal(seen["pose_images"], drawn)
    np.testing.assert_array_equal(seen["reference_pose_image"][0], drawn[0])
