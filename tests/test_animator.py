"""The facade end to end on the shared media: ``animate run`` with the CPU warp engine.

The default path fits the 3D body (reference + driving) and the warp engine samples the reference along
the transferred body; ``body=False`` (and any failed fit) uses the 2D skeleton field instead.
"""

from __future__ import annotations

import json
from concurrent.futures import Future
from dataclasses import replace

import numpy as np
import pytest
from conftest import DANCE, HERO_RGBA, WOMAN_JPG

from animate.animator import AnimationOptions, Animator, Canceled, _fit_body, default_size
from animate.cli import run as cli_run
from animate.engines.warp import WarpEngine
from animate.errors import AnimateError
from animate.media import MediaError, open_video
from animate.pose import MediaPipeEstimator, PoseSequence
from animate.settings import Settings

FRAMES = 16


@pytest.fixture(scope="session")
def animated(tmp_path_factory, data_dir):
    """One CLI run (MimicMotion's reference on the dance video) shared by the checks below."""
    out = tmp_path_factory.mktemp("run")
    assert (
        cli_run(
            [
                "run",
                str(WOMAN_JPG),
                str(DANCE),
                "-o",
                str(out / "out.mp4"),
                "--max-frames",
                str(FRAMES),
                "--artifacts",
                str(out / "artifacts"),
                "--engine",
                "warp",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="session")
def prepared(data_dir):
    """The same job's guidance and the engine's frames, silhouettes and rendered target body masks."""
    animator = Animator()
    prep = animator.prepare(WOMAN_JPG, DANCE, AnimationOptions(engine="warp", max_frames=FRAMES))
    assert prep.bundle.body is not None, prep.notes  # the 3D body path, not the fallback
    engine = WarpEngine()
    frames, silhouettes, bodies = [], [], []
    for frame in engine.render(prep.bundle):
        frames.append(frame)
        silhouettes.append(engine.last_silhouette.copy())
        bodies.append(engine.last_body_mask.copy())
    return prep, frames, silhouettes, bodies


def test_run_writes_valid_mp4(animated):
    info = open_video(animated / "out.mp4").info
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert (info.width, info.height, info.frame_count, info.fps) == (576, 1024, FRAMES, 24.0)
    assert info.has_audio
    artifacts = animated / "artifacts"
    for name in ("skeleton", "motion", "dense_flow", "depth", "normal", "semantic"):
        preview = open_video(artifacts / f"{name}.mp4").info  # every frame, at half the size (<= 512)
        assert (preview.frame_count, preview.width, preview.height) == (FRAMES, 288, 512), name
    # the body guidance previews show the body: a lit middle, a black background
    depth = next(open_video(artifacts / "depth.mp4").frames())
    assert depth[256, 144].mean() > 100 and depth[3, 3].mean() < 10
    poses = json.loads((artifacts / "poses.json").read_text())
    assert poses["layout"] == "coco_wholebody_133" and len(poses["frames"]) == FRAMES
    # poses.json stays in the output's pixels; the skeleton preview draws them halved: its limbs span the
    # halved box of the confident body keypoints (+- a limb's width)
    sequence = PoseSequence.load(artifacts / "poses.json")
    body = sequence.keypoints[0, :17]
    box = body[body[:, 2] > 0.5, :2] / 2
    drawn = np.argwhere(next(open_video(artifacts / "skeleton.mp4").frames()).max(axis=2) > 60)[:, ::-1]
    assert np.abs(drawn.min(axis=0) - box.min(axis=0)).max() < 12, (drawn.min(axis=0), box.min(axis=0))
    assert np.abs(drawn.max(axis=0) - box.max(axis=0)).max() < 12, (drawn.max(axis=0), box.max(axis=0))
    body = json.loads((artifacts / "body.json").read_text())
    assert len(body["transferred"]["frames"]) == FRAMES and len(body["reference"]["frames"]) == 1


def test_output_moves_like_the_driver(prepared):
    """MediaPipe on the output frames finds the body where the retargeted driving keypoints put it."""
    prep, frames, _, _ = prepared
    targets = prep.bundle.keypoints
    ref = prep.bundle.reference_keypoints
    body = ref[:17]
    height = float(np.ptp(body[body[:, 2] > 0.5, 1]))
    errors = []
    with MediaPipeEstimator(static=False, segmentation=False) as estimator:
        for t, frame in enumerate(frames):
            found = estimator.detect(frame)
            assert found, f"no person found in output frame {t}"
            seen = (found[0].keypoints[:17, 2] > 0.5) & (targets[t, :17, 2] > 0.5)
            errors += list(
                np.linalg.norm(found[0].keypoints[:17][seen, :2] - targets[t, :17][seen, :2], axis=1)
            )
    assert len(errors) > FRAMES * 8
    assert np.median(errors) <= 0.05 * height, (np.median(errors), height)


def test_output_person_covers_the_rendered_body(prepared):
    """MediaPipe's person mask of the output vs the rendered target body (the naked body), grown by the
    clothes: by how far the reference person reaches beyond its own fitted body, in the median (loose
    clothes and hair are drawn beyond the body, the test should not count them as misses)."""
    from scipy import ndimage

    prep, frames, _, bodies = prepared
    reference_body = prep.bundle.body.reference_render.mask
    person = prep.bundle.reference_mask > 127
    outside = ndimage.distance_transform_edt(~reference_body)[person & ~reference_body]
    clothes = max(1, round(float(np.median(outside))))
    ious = []
    with MediaPipeEstimator(static=True, segmentation=True, whole_body=False) as estimator:
        for frame, body in list(zip(frames, bodies, strict=True))[::4]:
            mask = estimator.detect(frame)[0].mask > 127
            target = _grow(body, clothes)
            ious.append((mask & target).sum() / (mask | target).sum())
    assert min(ious) >= 0.7, (ious, clothes)


def test_output_looks_like_the_reference(prepared):
    prep, frames, silhouettes, _ = prepared
    reference = prep.bundle.reference.astype(float)
    ref_person = prep.bundle.reference_mask > 127
    ref_colour = reference[ref_person].mean(0)
    grown_ref = _grow(ref_person, 12)
    for frame, silhouette in zip(frames, silhouettes, strict=True):
        out_colour = frame[silhouette].astype(float).mean(0)
        assert np.abs(out_colour - ref_colour).max() < 20, (out_colour, ref_colour)
        # Away from both the old and the new person, the background is the reference's own.
        away = ~grown_ref & ~_grow(silhouette, 12)
        assert np.abs(frame[away].astype(float) - reference[away]).mean() < 4


def test_cancel_stops_within_one_frame(tmp_path, data_dir):
    rendered = []

    def on_progress(p):
        if p.stage == "render":
            rendered.append(p.step)

    out = tmp_path / "canceled.mp4"
    with pytest.raises(Canceled):
        Animator().run(
            HERO_RGBA, DANCE, out, AnimationOptions(engine="warp", max_frames=40),
            progress=on_progress, should_cancel=lambda: len(rendered) >= 3,
        )  # fmt: skip
    assert max(rendered) <= 4
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_progress_reaches_one_exactly_once(tmp_path, data_dir):
    """Also the 2D skeleton path end to end (``body=False``)."""
    seen = []
    result = Animator().run(
        HERO_RGBA,
        DANCE,
        tmp_path / "o.mp4",
        AnimationOptions(engine="warp", max_frames=6, body=False),
        progress=seen.append,
    )
    assert result.motion == "skeleton" and result.frames == 6
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions)
    assert fractions.count(1.0) == 1 and fractions[-1] == 1.0
    assert next(p.stage for p in seen) == "decode" and {"pose", "render"} <= {p.stage for p in seen}


def test_bad_inputs_are_refused_before_work(tmp_path, data_dir):
    text = tmp_path / "v.mp4"
    text.write_text("nope")
    with pytest.raises(MediaError) as excinfo:
        Animator().run(WOMAN_JPG, text, tmp_path / "o.mp4")
    assert excinfo.value.code == "unsupported_format"
    assert cli_run(["run", str(WOMAN_JPG), str(DANCE), "-o", str(tmp_path / "o.mp4"), "--engine", "x"]) == 2
    assert (
        cli_run(["run", str(WOMAN_JPG), str(DANCE), "-o", str(tmp_path / "o.mp4"), "--engine", "diffusion"])
        == 2
    )

    # a body model file the user named must exist: an error with its code, not a silent fallback to Anny
    settings = Settings(weights_dir=tmp_path, body_model=tmp_path / "SMPL_NEUTRAL.npz")
    with pytest.raises(AnimateError) as excinfo:
        Animator(settings).run(WOMAN_JPG, DANCE, tmp_path / "o.mp4", AnimationOptions(max_frames=2))
    assert excinfo.value.code == "body_model_not_found" and not (tmp_path / "o.mp4").exists()


def test_default_size_follows_the_reference():
    assert default_size(1080, 1920) == (576, 1024)
    assert default_size(576, 768) == (576, 768)
    assert default_size(1920, 1080) == (1024, 576)
    w, h = default_size(704, 1216)
    assert w <= 576 and h <= 1024 and w % 8 == 0 and h % 8 == 0 and abs(w / h - 704 / 1216) < 0.02


def test_diffusion_guidance_comes_from_the_transferred_body(prepared, tmp_path):
    """What the diffusion engine reads: depth / normal / semantic / mask renders and the body's dense field."""
    from animate.animator import _Reporter
    from animate.motion.body_field import DenseField
    from animate.settings import Settings

    prep = prepared[0]
    motion, n = prep.bundle.body, 4
    track = motion.track
    short = replace(track, root=track.root[:n], pose=track.pose[:n], transl=track.transl[:n], valid=None)
    bundle = replace(prep.bundle, keypoints=prep.bundle.keypoints[:n], body=motion.with_track(short))
    animator = Animator(Settings(weights_dir=tmp_path))  # no CMP checkpoint there: the body's field
    animator._fill_guidance(bundle, _Reporter(None, None))
    bundle.validate()
    renderer, camera = bundle.body.renderer()
    vertices = bundle.body.vertices(3, 4)[0]
    frame = renderer.render(vertices, camera)
    np.testing.assert_array_equal(bundle.mask[3], frame.mask_image)
    np.testing.assert_array_equal(bundle.semantic[3], frame.semantic_image)
    # the same render up to float rounding of the posed vertices (chunked vs one frame): a level at most,
    # on a handful of pixels whose depth sits on a rounding boundary
    depth = bundle.depth[3][..., 0].astype(int) - frame.depth_image.astype(int)
    assert np.abs(depth).max() <= 1 and np.count_nonzero(depth) <= 1e-3 * frame.mask.sum()
    assert bundle.normal[3][frame.mask].any()
    flow = DenseField(bundle.body, bundle.reference_mask).flow(vertices)
    np.testing.assert_allclose(bundle.dense_flow[3], flow, atol=1e-3)  # pixels; same float noise as above
    background = (bundle.reference_mask == 0) & ~motion.reference_render.mask
    assert not bundle.dense_flow[3][background].any()  # the background stays


def test_a_body_fit_that_cannot_be_used_falls_back_with_a_reason(prepared):
    """No 3D landmarks in the driving poses, or a reference fit that misses the person: no body, a reason."""
    prep = prepared[0]
    reference = prep.bundle.body
    no_world = PoseSequence([replace(p, world=None) for p in prep.targets], 576, 1024, 24.0)
    done = Future()
    done.set_result((reference, 0.9))
    motion, reason = _fit_body(done, no_world)
    assert motion is None and "3D landmarks" in reason
    poor = Future()
    poor.set_result((reference, 0.2))
    motion, reason = _fit_body(poor, prep.targets)
    assert motion is None and "20%" in reason
    failed = Future()
    failed.set_exception(RuntimeError("the optimiser diverged"))
    motion, reason = _fit_body(failed, prep.targets)
    assert motion is None and "diverged" in reason


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=pixels)


def test_poses_artifact_loads(animated):
    seq = PoseSequence.load(animated / "artifacts" / "poses.json")
    assert len(seq) == FRAMES and (seq.width, seq.height) == (576, 1024)
