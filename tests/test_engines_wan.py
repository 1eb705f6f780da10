"""``animate.engines.wan`` without running the 14B pipeline: option checks, weights and GPU reasons, the
dry-run plan's sizes, frame counts and segments worked out by hand, and ``WanEngine.inputs`` (which needs no
pipeline): which driving frame each 30 fps frame shows, the pose source per mode, the letterboxed replace-mode
inputs, and a decoder that yields fewer frames than probed. The render itself: ``tests/test_wan_engine.py``."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

import animate.engines.wan as wan
from animate.engines import wan_inputs as wi
from animate.errors import AnimateError
from animate.settings import Settings
from tests._media import make_video

GIB = 1024**3


def test_options_are_checked() -> None:
    wan.WanOptions().validate()
    with pytest.raises(AnimateError) as err:
        wan.WanOptions(mode="swap").validate()
    assert (err.value.code, err.value.message) == (
        "invalid_option",
        "mode must be one of animate, replace, got 'swap'",
    )
    with pytest.raises(AnimateError) as err:
        wan.WanOptions(resolution="1080p").validate()
    assert err.value.message == "resolution must be one of 480p, 720p"
    with pytest.raises(AnimateError) as err:
        wan.WanOptions(segment_frames=9, overlap_frames=5).validate()
    assert "segment_frames must be >= 13" in err.value.message
    defaults = wan.WanOptions()
    assert (defaults.segment_frames, defaults.overlap_frames, defaults.steps, defaults.guidance_scale) == (
        77,
        1,
        20,
        1.0,
    )
    assert defaults.prompt == "People in the video are doing actions." and defaults.negative_prompt == ""


def test_memory_levels_at_the_documented_edges() -> None:
    assert wan.memory_level(60 * GIB) == "none" and wan.memory_level(60 * GIB - 1) == "model"
    assert wan.memory_level(40 * GIB) == "model" and wan.memory_level(40 * GIB - 1) == "sequential"
    assert wan.memory_level(8 * GIB) == "sequential"
    with pytest.raises(AnimateError) as err:
        wan.memory_level(8 * GIB - 2**27)
    assert err.value.code == "out_of_memory"
    assert err.value.message == (
        "the wan engine needs at least 8 GiB of free GPU memory (sequential offload; 40 GiB for model "
        "offload, 60 GiB without offload), 7.9 GiB is free"
    )


def test_weights_and_gpu_reasons(tmp_path: Path, monkeypatch) -> None:
    settings = Settings(weights_dir=tmp_path)
    assert wan.weights_problem(settings) == (f"{wan.WAN_DIR}/ is not in {tmp_path} (see weights/README.md)")
    (tmp_path / wan.WAN_DIR).mkdir()
    problem = wan.weights_problem(settings)
    assert problem.startswith(f"{wan.WAN_DIR}/ in {tmp_path} is ") and problem.endswith(
        " (see weights/README.md)"
    )
    assert "transformer/" in problem
    assert wan.unavailable_reason(settings) == problem  # the weights first, whatever the GPU
    # complete weights: only the GPU's room decides (--engine auto asks for model offload's 40 GiB)
    monkeypatch.setattr(wan, "weights_problem", lambda s: None)
    monkeypatch.setattr(wan, "_free_gpu_bytes", lambda: None)
    assert wan.unavailable_reason(settings) == "no CUDA GPU is available"
    assert wan.unavailable_reason(settings, require_gpu=False) is None
    monkeypatch.setattr(wan, "_free_gpu_bytes", lambda: 40 * GIB - 1)
    assert wan.unavailable_reason(settings) == "the GPU has 40.0 GiB free, the wan engine wants 40 GiB"
    monkeypatch.setattr(wan, "_free_gpu_bytes", lambda: 40 * GIB)
    assert wan.unavailable_reason(settings) is None


def test_plan_to_dict() -> None:
    plan = wan.WanPlan("model", "bfloat16", 3, 77, 5, 20, 211)
    assert plan.to_dict() == {"engine": "wan", "offload": "model", "dtype": "bfloat16", "segments": 3,
                              "segment_frames": 77, "overlap_frames": 5, "steps": 20, "generated_frames": 211}  # fmt: skip


# --- the dry run -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 100 x 200 portrait reference; a 64 x 48 clip of 12 frames at 10 fps (1.2 s)."""
    folder = tmp_path_factory.mktemp("inputs")
    reference = folder / "ref.png"
    Image.fromarray(np.full((200, 100, 3), 120, np.uint8)).save(reference)
    return reference, make_video(folder / "clip.mp4", n_frames=12, width=64, height=48, fps=10)


def _dry(inputs, tmp_path, monkeypatch, free=None, **options):
    from animate.animator import AnimationOptions

    monkeypatch.setattr(wan, "_free_gpu_bytes", lambda: free)
    reference, driving = inputs
    return wan.dry_run_plan(Settings(weights_dir=tmp_path), reference, driving, AnimationOptions(**options))


def test_dry_run_animate_mode_by_hand(inputs, tmp_path, monkeypatch) -> None:
    plan = _dry(inputs, tmp_path, monkeypatch, engine="wan")
    # the reference's 1:2 at 720p's area: h = sqrt(921600 / 0.5) = 1357.6 -> 1344, w = 678.8 -> 672;
    # 12 frames at 10 fps -> 36 at 30 fps: one 77-frame segment (36 padded to 77), 20 steps
    assert plan == {
        "engine": "wan", "weights": f"{wan.WAN_DIR}/ is not in {tmp_path} (see weights/README.md)",
        "mode": "animate", "size": [672, 1344], "frames": 12, "fps": 10.0, "generated_frames_30fps": 36,
        "segments": 1, "segment_frames": 77, "overlap_frames": 1, "steps": 20, "denoising_steps_total": 20,
        "memory": "cpu", "gpu_free_gib": None,
    }  # fmt: skip


def test_dry_run_replace_mode_rate_cap_segments_and_gpu(inputs, tmp_path, monkeypatch) -> None:
    plan = _dry(inputs, tmp_path, monkeypatch, free=int(45.26 * GIB), engine="wan", mode="replace", max_frames=4,
                segment_frames=9, steps=3, resolution="480p")  # fmt: skip
    # the driving clip's 4:3 at 480p: h = sqrt(399360 / (4/3)) = 547.3 -> 544, w = 729.7 -> 720;
    # 4 frames at 10 fps -> 12 at 30 fps; segments of 9 with overlap 1 step by 8: 12 -> 17, two of them
    assert plan["size"] == [720, 544] and plan["frames"] == 4 and plan["generated_frames_30fps"] == 12
    assert (plan["segments"], plan["segment_frames"], plan["steps"], plan["denoising_steps_total"]) == (
        2,
        9,
        3,
        6,
    )
    assert (plan["memory"], plan["gpu_free_gib"]) == ("model", 45.3)
    # an output rate: 1.2 s at 5 fps = 6 frames -> 36 at 30 fps; a size given wins; 10 segment frames -> 9
    plan = _dry(inputs, tmp_path, monkeypatch, free=2 * GIB, engine="wan", fps=5.0, size=(320, 160),
                segment_frames=10)  # fmt: skip
    assert (plan["frames"], plan["fps"], plan["size"], plan["generated_frames_30fps"]) == (
        6,
        5.0,
        [320, 160],
        36,
    )
    assert plan["segment_frames"] == 9 and plan["segments"] == 5  # 36 -> 41 = 1 + 5 x 8
    assert plan["memory"].startswith("out_of_memory: the wan engine needs at least 8 GiB")


# --- the pipeline's inputs -------------------------------------------------------------------------------

SIZE = 32


def _keypoints(frames: int, size: int = SIZE) -> np.ndarray:
    from tests.test_wan_draw import figure

    kp, _ = figure(size, size)
    kp[23:91] = (size / 2, size / 2, 1.0)
    kp[23:91, 0] += np.linspace(-4, 4, 68)
    kp[23:91, 1] += np.linspace(-4, 4, 68)[::-1]
    keypoints = np.repeat(kp[None], frames, axis=0)
    keypoints[:, :, 0] += np.arange(frames)[:, None] * 2.0 * (keypoints[:, :, 2] > 0)  # each frame its pose
    return keypoints


def _bundle(frames: int = 4, fps: float = 15.0, driving=None, driving_size=(SIZE, SIZE), size=(SIZE, SIZE)):
    from animate.motion.bundle import GuidanceBundle

    keypoints = _keypoints(frames)
    if driving is None:  # frame i is flat grey 10 (i + 1): a face crop tells which frame it came from
        driving = [
            np.full((driving_size[1], driving_size[0], 3), 10 * (i + 1), np.uint8) for i in range(frames)
        ]
    bundle = GuidanceBundle(
        reference=np.zeros((size[1], size[0], 3), np.uint8),
        reference_mask=np.full((size[1], size[0]), 255, np.uint8),
        reference_keypoints=keypoints[0],
        keypoints=keypoints,
        fps=fps,
        size=size,
    )
    bundle.extras["wan"] = {"driving_keypoints": keypoints + 1.0 * (keypoints[..., 2:] > 0) * [1, 0, 0],
                            "driving_size": driving_size, "driving_frames": driving, "person_masks": None}  # fmt: skip
    return bundle


# 4 frames at 15 fps -> 8 at 30 fps, 30 fps frame k shows source round(k / 2) (half to even), clipped to 3
SOURCE = [0, 0, 1, 2, 2, 2, 3, 3]


def test_animate_inputs_show_each_30_fps_frames_own_driving_frame() -> None:
    from animate.pose.draw_wan import draw_pose_wan

    bundle = _bundle()
    out = wan.WanEngine(None, wan.WanOptions()).inputs(bundle)
    assert [int(f[0, 0, 0]) for f in out["face"]] == [10 * (i + 1) for i in SOURCE]
    assert {f.shape for f in out["face"]} == {(512, 512, 3)}
    # animate mode: the retargeted keypoints of the bundle draw the pose
    for k, i in enumerate(SOURCE):
        assert np.array_equal(out["pose"][k], draw_pose_wan(bundle.keypoints[i], SIZE, SIZE)), k
    assert out["index"].tolist() == [0, 2, 4, 6]  # output frame j at 15 fps: 30 fps frame 2 j
    assert [np.asarray(p).tolist() for p in out["pil"]["pose_video"]] == [p.tolist() for p in out["pose"]]
    assert len(out["pil"]["face_video"]) == 8 and "mask" not in out and "background_video" not in out["pil"]


def test_a_callable_source_and_a_short_decoder() -> None:
    bundle = _bundle()
    frames = bundle.extras["wan"]["driving_frames"]
    bundle.extras["wan"]["driving_frames"] = lambda: iter(frames[:3])  # one frame fewer than probed
    out = wan.WanEngine(None, wan.WanOptions()).inputs(bundle)
    # 30 fps frames that show source 3 hold frame 2, the last one read
    assert [int(f[0, 0, 0]) for f in out["face"]] == [10 * (min(i, 2) + 1) for i in SOURCE]
    bundle.extras["wan"]["driving_frames"] = frames + [np.zeros_like(frames[0])] * 3  # more than n: ignored
    assert [int(f[0, 0, 0]) for f in wan.WanEngine(None, wan.WanOptions()).inputs(bundle)["face"]] == [
        10 * (i + 1) for i in SOURCE
    ]


def test_replace_inputs_letterbox_the_drivers_frames_pose_and_mask() -> None:
    from animate.pose.draw_wan import draw_pose_wan

    # a 64 x 32 driving clip into 32 x 32: scaled by 0.5 to 32 x 16, bars of 8 above and below
    bundle = _bundle(driving_size=(64, 32))
    person = np.zeros((32, 64), np.uint8)
    person[8:24, 24:40] = 255  # -> rows 12..19, columns 12..19 of the letterboxed frame
    bundle.extras["wan"]["person_masks"] = [person, None, person, person]
    out = wan.WanEngine(None, wan.WanOptions(mode="replace")).inputs(bundle)
    driving_kp = bundle.extras["wan"]["driving_keypoints"]
    for k, i in enumerate(SOURCE):
        letterboxed = driving_kp[i].copy()
        letterboxed[:, 0] *= 0.5
        letterboxed[:, 1] = letterboxed[:, 1] * 0.5 + 8
        assert np.array_equal(out["pose"][k], draw_pose_wan(letterboxed, SIZE, SIZE)), k
    # frame 0: the given mask, letterboxed and grown (7 x 7, three times: 9 px): rows 3..28, columns 3..28
    mask = out["mask"][0]
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[3:29, 3:29] = 255
    assert np.array_equal(mask, expected)
    background = out["background"][0]
    assert not background[mask > 0].any()
    assert (background[:3] == 0).all() and (background[29:] == 0).all()  # the letterbox bars
    assert (background[8:24][mask[8:24] == 0] == 10).all()  # frame 0's grey outside the mask, inside the box
    # frame 1 has no segmentation: the hull of its letterboxed keypoints, grown, is the person
    hull = wi.replace_mask(wi.keypoint_person_mask(
        wi.letterbox_keypoints(driving_kp[1], 64, 32, SIZE, SIZE), SIZE, SIZE))  # fmt: skip
    assert np.array_equal(out["mask"][2], hull)  # 30 fps frame 2 shows source frame 1
    assert len(out["mask"]) == len(out["background"]) == len(out["pil"]["mask_video"]) == 8
    assert len(out["pil"]["background_video"]) == 8


def test_inputs_refuse_odd_sizes_and_missing_frames() -> None:
    engine = wan.WanEngine(None, wan.WanOptions())
    with pytest.raises(AnimateError) as err:
        engine.inputs(_bundle(size=(40, 32)))
    assert (err.value.code, err.value.message) == (
        "invalid_option", "the wan engine needs sides that are multiples of 16, got 40x32"
    )  # fmt: skip
    with pytest.raises(AnimateError) as err:
        engine.inputs(_bundle(size=(32, 24)))
    assert err.value.code == "invalid_option"
    bundle = _bundle()
    bundle.extras["wan"]["driving_frames"] = None
    with pytest.raises(AnimateError) as err:
        engine.inputs(bundle)
    assert (err.value.code, err.value.message) == ("invalid_input", "the wan engine needs the driving frames")
    bundle.extras["wan"]["driving_frames"] = []
    with pytest.raises(AnimateError) as err:
        engine.inputs(bundle)
    assert (err.value.code, err.value.message) == ("invalid_input", "no driving frame could be read")


# --- the pipeline call's inputs on the tiny random pipeline -----------------------------------------------


@pytest.fixture(scope="module")
def tiny_pipeline():
    from tests._wan_tiny import tiny_wan_pipeline

    pipeline = tiny_wan_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    for module in pipeline.components.values():  # as from_pretrained leaves them (no dropout)
        if isinstance(module, __import__("torch").nn.Module):
            module.eval()
    return pipeline


def test_prompt_embeddings_are_the_pipelines_own(tiny_pipeline, monkeypatch) -> None:
    """Diffusers' ``_get_t5_prompt_embeds`` is the reference (its ``ftfy`` clean-up is the identity on a plain
    prompt, and ftfy is not installed here): padded to 512 tokens, zero past the prompt's own tokens."""
    import torch
    from diffusers.pipelines.wan import pipeline_wan_animate

    monkeypatch.setattr(pipeline_wan_animate, "prompt_clean", lambda text: text)
    engine = wan.WanEngine(tiny_pipeline, wan.WanOptions())
    for text in (wan.PROMPT, "", "dance " * 600):  # the last one is cut at 512 tokens
        ours = engine._prompt_embeds(text)
        theirs = tiny_pipeline._get_t5_prompt_embeds(
            text, max_sequence_length=512, device=torch.device("cpu")
        )
        assert ours.shape == theirs.shape == (1, 512, ours.shape[-1])
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)  # float summation order only


def test_render_writes_the_inputs_as_artifacts_and_records_the_plan(tiny_pipeline, tmp_path) -> None:
    from animate.media import open_video

    engine = wan.WanEngine(tiny_pipeline, wan.WanOptions(segment_frames=5, steps=1))  # parts: none given
    bundle = _bundle(frames=4)
    bundle.extras["wan"]["artifacts_dir"] = tmp_path
    frames = list(engine.render(bundle))
    assert len(frames) == 4 and {f.shape for f in frames} == {(SIZE, SIZE, 3)}
    # 8 frames at 30 fps in segments of 5 overlapping by 1: 8 -> 9 = 1 + 2 x 4, two segments
    assert engine.plan == wan.WanPlan("none", "float32", 2, 5, 1, 1, 8)
    assert engine.parts["segments"] == "2 x 5 frames, overlap 1"
    assert sorted(engine.artifacts) == ["wan_face", "wan_pose"]
    for name in ("wan_face", "wan_pose"):
        info = open_video(engine.artifacts[name]).info
        assert (info.frame_count, info.fps) == (8, 30.0), name
    pose = list(open_video(engine.artifacts["wan_pose"]).frames())
    assert pose[0].shape == (SIZE, SIZE, 3) and max(p.std() for p in pose) > 1  # the drawn skeletons


def test_the_plan_records_the_loaded_offload_and_dtype_and_cancel_stops_early(tiny_pipeline) -> None:
    from animate.animator import Canceled

    engine = wan.WanEngine(tiny_pipeline, wan.WanOptions(segment_frames=5, steps=2),
                           parts={"offload": "model", "dtype": "bfloat16"})  # fmt: skip
    assert len(list(engine.render(_bundle(frames=2)))) == 2
    assert (engine.plan.offload, engine.plan.dtype, engine.plan.segments) == ("model", "bfloat16", 1)
    seen: list[tuple[int, int]] = []
    with pytest.raises(Canceled) as err:
        list(engine.render(_bundle(frames=4), progress=lambda *p: seen.append(p), should_cancel=lambda: True))
    assert (err.value.code, err.value.message) == ("canceled", "the job was canceled")
    # 2 segments x 2 steps planned; the pipeline stops at the first step's interrupt
    assert seen[0] == (1, 4) and len(seen) < 4


def test_image_tokens_read_a_dict_crop_size_like_an_int(tiny_pipeline, monkeypatch) -> None:
    """CLIP processors give ``crop_size`` as an int or as ``{"height", "width"}``: the same tokens."""
    import torch

    engine = wan.WanEngine(tiny_pipeline, wan.WanOptions())
    reference = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    processor = tiny_pipeline.image_processor
    crop = processor.crop_size
    side = crop if isinstance(crop, int) else crop["height"]
    monkeypatch.setattr(processor, "crop_size", side)
    as_int = engine._image_embeds(reference)
    monkeypatch.setattr(processor, "crop_size", {"height": side, "width": side})
    torch.testing.assert_close(engine._image_embeds(reference), as_int, rtol=0, atol=0)


def test_a_driving_video_no_longer_than_the_overlap_is_refused(tiny_pipeline) -> None:
    """2 frames at 15 fps are 4 at 30 fps: with overlap 5 the pipeline's own count gives no segment (and
    diffusers fails on an empty concatenation), so the engine refuses before generating anything."""
    engine = wan.WanEngine(tiny_pipeline, wan.WanOptions(segment_frames=13, overlap_frames=5, steps=1))
    with pytest.raises(AnimateError) as err:
        list(engine.render(_bundle(frames=2)))
    assert err.value.code == "invalid_input" and "4 frames at 30 fps" in err.value.message
    # overlap 1 on the same clip is one segment
    engine = wan.WanEngine(tiny_pipeline, wan.WanOptions(segment_frames=5, overlap_frames=1, steps=1))
    assert len(list(engine.render(_bundle(frames=2)))) == 2


def _t5_like_tokenizer():
    """The tiny vocabulary with T5's post-processor: ``$A </s>``. umT5's tokenizer (Wan's) ends every text
    with ``</s>`` (id 1) the same way; the tiny pipeline's own tokenizer adds nothing."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "people": 3, "in": 4, "the": 5, "video": 6}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def test_prompt_tokens_end_with_the_eos_token_as_umt5_adds_it(tiny_pipeline) -> None:
    """``people in the video`` is 3 4 5 6 and T5's ``</s>`` (1), padded with 0 to 512: the embeddings are the
    encoder's on exactly those ids and that mask, zero past the 5 real tokens (without the special token the
    EOS position would be zero and the mask one shorter)."""
    from types import SimpleNamespace

    import torch

    tokenizer = _t5_like_tokenizer()
    encoder = tiny_pipeline.text_encoder
    engine = wan.WanEngine(SimpleNamespace(tokenizer=tokenizer, text_encoder=encoder), wan.WanOptions())
    ids = torch.zeros((1, 512), dtype=torch.long)
    ids[0, :5] = torch.tensor([3, 4, 5, 6, 1])
    mask = (torch.arange(512) < 5).long()[None]
    with torch.no_grad():
        expected = encoder(ids, mask).last_hidden_state
    expected[:, 5:] = 0
    ours = engine._prompt_embeds("people in the video")
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    assert ours[0, 4].abs().sum() > 0 and not ours[0, 5:].any()


# --- loading, without the 14B weights: the pipeline class is a recorder ----------------------------------


class FakeWanPipeline:
    """``WanAnimatePipeline`` stand-in: records ``from_pretrained``'s arguments and what is done to it."""

    loads: ClassVar[list] = []

    def __init__(self) -> None:
        self.calls: list = []

    @classmethod
    def from_pretrained(cls, root, **kwargs):
        cls.loads.append((root, kwargs))
        return cls()

    def to(self, device):
        self.calls.append(("to", device))

    def enable_model_cpu_offload(self):
        self.calls.append(("model offload",))

    def enable_sequential_cpu_offload(self):
        self.calls.append(("sequential offload",))

    def set_progress_bar_config(self, **kwargs):
        self.calls.append(("progress bar", kwargs))


@pytest.mark.parametrize(
    ("free", "level", "dtype", "placement"),
    [
        (None, "cpu", "float32", []),  # no GPU: fp32 on the CPU, nothing moved
        (60 * GIB, "none", "bfloat16", [("to", "cuda")]),
        (45 * GIB, "model", "bfloat16", [("model offload",)]),
        (8 * GIB, "sequential", "bfloat16", [("sequential offload",)]),
    ],
)
def test_from_settings_loads_at_the_memory_level(
    tmp_path, monkeypatch, free, level, dtype, placement
) -> None:
    import diffusers
    import torch

    FakeWanPipeline.loads = []
    monkeypatch.setattr(diffusers, "WanAnimatePipeline", FakeWanPipeline)
    monkeypatch.setattr(wan, "_free_gpu_bytes", lambda: free)
    settings = Settings(weights_dir=tmp_path)
    monkeypatch.setattr(wan, "weights_problem", lambda s: None if s is settings else "other settings")
    options = wan.WanOptions(steps=3)
    engine = wan.WanEngine.from_settings(settings, options)
    assert FakeWanPipeline.loads == [
        (tmp_path / "Wan2.2-Animate-14B-Diffusers", {"dtype": getattr(torch, dtype)})
    ]
    assert engine.pipeline.calls == [*placement, ("progress bar", {"disable": True})]
    assert engine.parts == {"weights": "Wan2.2-Animate-14B-Diffusers/", "dtype": dtype, "offload": level}
    assert engine.options is options and engine.plan is None and engine.artifacts == {}
    assert wan.WanEngine.from_settings(settings).options == wan.WanOptions()  # the defaults


def test_from_settings_refuses_before_loading(tmp_path, monkeypatch) -> None:
    import diffusers

    FakeWanPipeline.loads = []
    monkeypatch.setattr(diffusers, "WanAnimatePipeline", FakeWanPipeline)
    settings = Settings(weights_dir=tmp_path)
    with pytest.raises(AnimateError) as err:  # the options first
        wan.WanEngine.from_settings(settings, wan.WanOptions(mode="swap"))
    assert err.value.code == "invalid_option"
    with pytest.raises(AnimateError) as err:
        wan.WanEngine.from_settings(settings)
    assert (err.value.code, err.value.message) == (
        "weights_missing", f"{wan.WAN_DIR}/ is not in {tmp_path} (see weights/README.md)"
    )  # fmt: skip
    monkeypatch.setattr(wan, "weights_problem", lambda s: None)
    monkeypatch.setattr(wan, "_free_gpu_bytes", lambda: 8 * GIB - 1)
    with pytest.raises(AnimateError) as err:  # no room: stopped before 48 GB are read
        wan.WanEngine.from_settings(settings)
    assert err.value.code == "out_of_memory"
    assert FakeWanPipeline.loads == []


def test_free_gpu_memory_is_cudas_free_bytes(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (123 * GIB, 141 * GIB))
    assert wan._free_gpu_bytes() == 123 * GIB
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert wan._free_gpu_bytes() is None


def test_resolution_refusal_code() -> None:
    with pytest.raises(AnimateError) as err:
        wan.WanOptions(resolution="4k").validate()
    assert err.value.code == "invalid_option"


def test_dry_run_counts_the_headers_frames_without_an_output_rate(inputs, tmp_path, monkeypatch) -> None:
    """A variable-rate phone clip: 13 frames in the header, 1.2 s x 10 fps on average = 12. Without ``--fps``
    the header's count is the clip; with ``--fps 10`` the frames are duration x rate."""
    import dataclasses

    import animate.media.video as video

    real = video.probe_video
    monkeypatch.setattr(video, "probe_video", lambda *a: dataclasses.replace(real(*a), frame_count=13))
    plan = _dry(inputs, tmp_path, monkeypatch, engine="wan")
    assert (plan["frames"], plan["generated_frames_30fps"]) == (13, 39)
    plan = _dry(inputs, tmp_path, monkeypatch, engine="wan", fps=10.0)
    assert (plan["frames"], plan["generated_frames_30fps"]) == (12, 36)


def test_a_driver_above_30_fps_skips_the_frames_between(monkeypatch) -> None:
    """8 frames at 60 fps are 4 at 30 fps, showing source frames 0, 2, 4, 6: the odd ones are read past."""
    bundle = _bundle(frames=8, fps=60.0)
    out = wan.WanEngine(None, wan.WanOptions()).inputs(bundle)
    assert [int(f[0, 0, 0]) for f in out["face"]] == [10, 30, 50, 70]
    # output frame j at 60 fps: 30 fps frame round(j / 2), half to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2), 7 -> 3
    assert out["index"].tolist() == [0, 0, 1, 2, 2, 2, 3, 3]


def test_without_driving_keypoints_or_size_the_bundles_own_are_used() -> None:
    from animate.face.wan import crop_face, face_boxes

    rng = np.random.default_rng(1)  # textured frames: a crop at another box differs
    bundle = _bundle(driving=[rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(4)])
    bundle.extras["wan"] = {"driving_frames": bundle.extras["wan"]["driving_frames"]}
    out = wan.WanEngine(None, wan.WanOptions()).inputs(bundle)
    boxes = face_boxes(bundle.keypoints, SIZE, SIZE)
    frames = bundle.extras["wan"]["driving_frames"]
    for k, i in enumerate(SOURCE):
        assert np.array_equal(out["face"][k], crop_face(frames[i], boxes[i])), k
    # replace mode: the driver's pose letterboxed from the bundle's own size to itself, i.e. unchanged
    from animate.pose.draw_wan import draw_pose_wan

    out = wan.WanEngine(None, wan.WanOptions(mode="replace")).inputs(bundle)
    for k, i in enumerate(SOURCE):
        assert np.array_equal(out["pose"][k], draw_pose_wan(bundle.keypoints[i], SIZE, SIZE)), k


def test_replace_mode_artifacts_are_named_and_hold_the_mask(tmp_path) -> None:
    from animate.media import open_video

    bundle = _bundle(driving_size=(64, 32))
    bundle.extras["wan"]["artifacts_dir"] = tmp_path / "art"
    (tmp_path / "art").mkdir()
    engine = wan.WanEngine(None, wan.WanOptions(mode="replace"))
    inputs = engine.inputs(bundle)
    engine._write_artifacts(bundle, inputs)
    assert engine.artifacts == {
        name: tmp_path / "art" / f"{name}.mp4" for name in ("wan_pose", "wan_face", "wan_mask")
    }
    frames = list(open_video(engine.artifacts["wan_mask"]).frames())
    assert len(frames) == 8 and frames[0].shape == (SIZE, SIZE, 3)
    for got, mask in zip(frames, inputs["mask"], strict=True):  # grey: the 0/255 mask in all three channels
        assert np.abs(got.astype(int) - mask[..., None]).mean() < 12
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == [
        "wan_face.mp4",
        "wan_mask.mp4",
        "wan_pose.mp4",
    ]
    # no folder given: nothing written
    del bundle.extras["wan"]["artifacts_dir"]
    other = wan.WanEngine(None, wan.WanOptions(mode="replace"))
    other._write_artifacts(bundle, inputs)
    assert other.artifacts == {}
