"""The planner's inputs (``animate.engines.plan``): what ``plan_job`` reads from the reference, the driving video,
the options and the weights folder, the model shapes counted from safetensors headers and from a loaded
pipeline, card names, free host memory and the table. Expected values are worked out by hand here (sizes,
frame counts, tiles) or counted another way (parameters summed over the modules vs read from the headers)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from animate.engines import plan as P
from animate.errors import AnimateError
from animate.settings import Settings
from tests._media import make_video

GIB = 1024**3


# --- card names, free memory, hardware ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tflops"),
    [("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA L40S", 362.0),
     ("NVIDIA L40", 181.0), ("NVIDIA L4", 121.0), ("NVIDIA A10G", 70.0), ("NVIDIA A10", 125.0),
     ("nvidia a100-sxm4-80gb", 312.0), ("NVIDIA GeForce RTX 4090", 165.0), ("NVIDIA H200", 989.0),
     ("Tesla T4", 65.0), ("Some New Card", 100.0)],
)  # fmt: skip
def test_card_peak_by_the_longest_matching_name(name: str, tflops: float) -> None:
    # "H100 PCIe" before "H100", "L40S" before "L40" before "L4", "A10G" before "A10", any case
    assert P.device_tflops(name) == tflops


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable")


def test_host_available_is_memavailable_in_bytes() -> None:
    before = _mem_available()
    got = P.host_available()
    after = _mem_available()
    slack = 16 * 2**20  # other processes allocate between the reads
    assert min(before, after) - slack <= got <= max(before, after) + slack


def test_hardware_for_a_given_card_and_for_the_cpu() -> None:
    card = P.Hardware.detect(gpu_memory=24 * GIB, gpus=3)
    assert (card.device, card.name, card.gpu_free, card.gpu_total, card.gpus) == (
        "cuda", "a 24 GiB card", 24 * GIB, 24 * GIB, 3
    )  # fmt: skip
    assert card.tflops == 100.0 and card.detected is False
    assert abs(card.host_available - _mem_available()) < 256 * 2**20
    cpu = P.Hardware.detect(gpus=2, cuda=False)
    assert (cpu.device, cpu.name, cpu.gpu_free, cpu.gpu_total, cpu.gpus, cpu.tflops, cpu.detected) == (
        "cpu", "cpu", None, None, 2, 0.2, True
    )  # fmt: skip
    assert P.Hardware.detect(gpu_memory=int(1.5 * GIB)).name == "a 1.5 GiB card"


# --- shapes from headers and from a pipeline ------------------------------------------------------------


def test_safetensors_params_add_up_every_tensor_of_every_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, tmp_path / "one.safetensors", {"format": "pt"})
    save_file({"c": torch.zeros(2, 3, 7, dtype=torch.float16)}, tmp_path / "two.safetensors")
    (tmp_path / "notes.bin").write_bytes(b"\0" * 64)  # not a safetensors file
    assert P._safetensors_params(tmp_path) == 3 * 4 + 5 + 2 * 3 * 7
    assert P._safetensors_params(tmp_path / "empty") == 0


@pytest.fixture(scope="module")
def tiny_dispose_weights(tmp_path_factory):
    """A converted weights folder: tiny UNet, pose guider, Champ encoders and DisPose's ControlNet."""
    from animate.weights import CONVERTED_DIR
    from pipelines import AnimationPipeline
    from pipelines.testing import tiny_components

    components = tiny_components(with_guidance_encoders=True, with_motion_controlnet=True)
    root = tmp_path_factory.mktemp("weights")
    AnimationPipeline(**components).save_pretrained(root / CONVERTED_DIR)
    return root, components


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_shapes_from_the_headers_and_from_the_pipeline_agree_with_the_modules(tiny_dispose_weights) -> None:
    from pipelines import AnimationPipeline

    root, parts = tiny_dispose_weights
    counts = {name: _count(parts[name]) for name in
              ("unet", "motion_controlnet", "image_encoder", "vae", "pose_guider", "guidance_encoders")}  # fmt: skip
    assert len(set(counts.values())) == len(counts)  # all different: a swapped field would show
    types = tuple(parts["guidance_encoders"].config.guidance_types)
    expected = P.ModelShapes(
        unet_params=counts["unet"],
        controlnet_params=counts["motion_controlnet"],
        image_encoder_params=counts["image_encoder"],
        vae_params=counts["vae"],
        small_params=counts["pose_guider"] + counts["guidance_encoders"],
        dift_params=0,
        channels=parts["unet"].config.block_out_channels[0],
        vae_channels=parts["vae"].config.block_out_channels[0],
        pose_guider=True,
        guidance_maps=len(types),
    )
    assert expected.guidance_maps >= 1 and expected.channels != 320 and expected.vae_channels != 128
    assert P.shapes_from_weights(root) == expected
    pipeline = AnimationPipeline(**parts)
    assert P.ModelShapes.from_pipeline(pipeline) == expected
    assert P.ModelShapes.from_pipeline(pipeline, dift=True).dift_params == 859_520_964
    # weights = every network, denoisers = what sequential offload streams per call
    assert expected.weights == sum(counts.values())
    assert expected.denoisers == counts["unet"] + counts["motion_controlnet"] + expected.small_params


def test_shapes_of_a_pipeline_without_optional_parts() -> None:
    from pipelines import AnimationPipeline
    from pipelines.testing import tiny_components

    parts = tiny_components(with_guidance_encoders=False)
    parts["pose_guider"] = None
    shapes = P.ModelShapes.from_pipeline(AnimationPipeline(**parts))
    assert (shapes.controlnet_params, shapes.small_params, shapes.pose_guider, shapes.guidance_maps) == (
        0, 0, False, 0
    )  # fmt: skip
    assert shapes.unet_params == _count(parts["unet"]) and shapes.vae_params == _count(parts["vae"])


def test_published_shapes() -> None:
    plain = P.ModelShapes.published()
    assert (plain.controlnet_params, plain.small_params, plain.dift_params, plain.guidance_maps) == (
        0, 205_557, 0, 0
    )  # fmt: skip
    full = P.ModelShapes.published(controlnet=True, guidance_maps=2, dift=True)
    assert (full.controlnet_params, full.small_params, full.dift_params, full.guidance_maps) == (
        685_139_601, 205_557 + 2 * 3_833_136, 859_520_964, 2
    )  # fmt: skip
    assert plain.unet_params == 1_524_623_082 and plain.channels == 320 and plain.pose_guider


# --- plan_job: what the inputs and options decide -------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 100 x 200 portrait reference; a 64 x 48 clip of 12 frames at 10 fps (1.2 s)."""
    folder = tmp_path_factory.mktemp("inputs")
    reference = folder / "ref.png"
    Image.fromarray(np.full((200, 100, 3), 120, np.uint8)).save(reference)
    driving = make_video(folder / "clip.mp4", n_frames=12, width=64, height=48, fps=10)
    fast = make_video(folder / "fast.mp4", n_frames=24, width=64, height=48, fps=120)  # 0.2 s at 120 fps
    return reference, driving, fast


def _job(settings, inputs, frames=None, gpu_memory=80 * GIB, **options):
    from animate.animator import AnimationOptions

    reference, driving, _ = inputs
    return P.plan_job(
        settings, reference, driving, AnimationOptions(**options), gpu_memory=gpu_memory, frames=frames
    )


def test_plan_job_without_weights_plans_mimicmotion_at_the_reference_aspect(inputs, tmp_path) -> None:
    settings = Settings(weights_dir=tmp_path / "none")
    plan = _job(settings, inputs, engine="diffusion")
    # 100 x 200 in the 576 x 1024 portrait box: scale min(5.76, 5.12) = 5.12 -> 512 x 1024
    assert (plan.engine, plan.width, plan.height, plan.frames, plan.steps) == ("diffusion", 512, 1024, 12, 25)
    assert (plan.tile_size, plan.tile_overlap, plan.tiles) == (72, 6, 1)  # MimicMotion 1.1's tiles
    assert plan.workload.shapes == P.ModelShapes.published()
    assert plan.notes[0] == "no weights here: planned for MimicMotion 1.1 (SVD-xt + pose guider)"
    assert plan.gpus == 1 and plan.gpu_budget == int(0.92 * 80 * GIB) and plan.level == "fast"
    from animate.animator import AnimationOptions

    reference, driving, _ = inputs
    two = P.plan_job(settings, reference, driving, AnimationOptions(engine="diffusion"), gpu_memory=80 * GIB,
                     gpus=2)  # fmt: skip
    assert two.gpus == 2
    # a weights folder without diffusion weights plans the published model too, and says so
    (tmp_path / "empty").mkdir()
    empty = _job(Settings(weights_dir=tmp_path / "empty"), inputs, engine="diffusion")
    assert empty.notes[0].startswith("no weights here") and empty.workload.shapes == P.ModelShapes.published()
    two = _job(settings, inputs, engine="diffusion", gpu_memory=24 * GIB)
    assert two.gpu_budget == int(0.92 * 24 * GIB)


def test_plan_job_options_size_fps_frames_steps_tiles(inputs, tmp_path) -> None:
    settings = Settings(weights_dir=tmp_path / "none")
    plan = _job(settings, inputs, engine="diffusion", size=(256, 128), fps=5.0, steps=7, tile_size=8,
                tile_overlap=0)  # fmt: skip
    # 1.2 s at 5 fps = 6 frames + the reference = 7 rows in one tile of 8; overlap 0 is kept (not the default)
    assert (plan.width, plan.height, plan.frames, plan.steps) == (256, 128, 6, 7)
    assert (plan.tile_size, plan.tile_overlap, plan.tiles) == (8, 0, 1)
    assert _job(settings, inputs, engine="diffusion", max_frames=4).frames == 4
    assert _job(settings, inputs, engine="diffusion", max_frames=40).frames == 12
    assert _job(settings, inputs, engine="diffusion", frames=300).frames == 300
    # 301 rows in tiles of 72 with overlap 6: 1 + ceil((301 - 72) / 66) = 5
    assert _job(settings, inputs, engine="diffusion", frames=300).tiles == 5
    assert _job(settings, inputs, engine="diffusion", steps=1).steps == 1


def test_plan_job_resamples_a_driving_rate_above_60(inputs, tmp_path) -> None:
    from animate.animator import AnimationOptions

    reference, _, fast = inputs
    settings = Settings(weights_dir=tmp_path / "none")
    plan = P.plan_job(settings, reference, fast, AnimationOptions(engine="diffusion"), gpu_memory=80 * GIB)
    assert plan.frames == 12  # 0.2 s at 60 fps (the output cap), not the 24 source frames


def test_plan_job_warp_and_auto_without_weights(inputs, tmp_path) -> None:
    settings = Settings(weights_dir=tmp_path / "none")
    warp = _job(settings, inputs, engine="warp")
    assert (warp.engine, warp.width, warp.height, warp.frames, warp.gpu_peak) == ("warp", 512, 1024, 12, None)
    auto = _job(settings, inputs, engine="auto", gpu_memory=None)
    assert auto.engine == "warp" and auto.frames == 12
    assert auto.notes[0].startswith("diffusion not used: the weights directory ")
    assert auto.notes[1] == warp.notes[0]
    with pytest.raises(AnimateError) as err:
        _job(settings, inputs, engine="diffusion", gpu_memory=None)
    assert err.value.code == "engine_unavailable"
    assert err.value.message.startswith("the diffusion engine cannot run: the weights directory ")


def test_plan_job_with_a_preset_uses_its_size_stride_and_tiles(inputs, tmp_path) -> None:
    settings = Settings(weights_dir=tmp_path / "none")
    plan = _job(settings, inputs, engine="diffusion", preset="dispose")
    # DisPose: portrait 576 x int(576 / (9 / 16) // 64) x 64 = 576 x 1024; every 2nd of 12 frames; 16 / 6
    assert (plan.width, plan.height, plan.frames, plan.tile_size, plan.tile_overlap) == (576, 1024, 6, 16, 6)
    assert _job(settings, inputs, engine="diffusion", preset="dispose", max_frames=4).frames == 4
    assert _job(settings, inputs, engine="diffusion", preset="mimicmotion", tile_size=24).tile_size == 24


def test_plan_job_reads_the_weights_folder(inputs, tiny_dispose_weights) -> None:
    root, parts = tiny_dispose_weights
    plan = _job(Settings(weights_dir=root), inputs, engine="diffusion")
    # DisPose's ControlNet is there: its 16 / 6 tiles; 12 frames + the reference = 13 rows, one tile
    assert (plan.tile_size, plan.tile_overlap, plan.tiles) == (16, 6, 1)
    assert plan.workload.shapes.unet_params == _count(parts["unet"])
    assert not any(note.startswith("no weights here") for note in plan.notes)


def test_plan_job_honours_the_speed_setting(inputs, tmp_path) -> None:
    settings = Settings(weights_dir=tmp_path / "none", diffusion_speed="low_memory")
    plan = _job(settings, inputs, engine="diffusion", gpu_memory=24 * GIB)
    assert plan.override == "ANIMATE_DIFFUSION_SPEED=low_memory" and plan.level is None
    assert (plan.cfg, plan.forward_chunk, plan.decode_chunk, plan.offload) == ("sequential", 1, 2, "model")


# --- knobs, levels, lower, table -----------------------------------------------------------------------


def test_speed_knobs_on_the_cpu_and_unknown_names() -> None:
    cpu = P.Hardware(device="cpu")
    assert P.speed_knobs("low_memory", cpu) == P.Knobs("sequential", 1, 2, "none")  # nothing to offload to
    assert P.speed_knobs("fast", cpu) == P.Knobs("batched", None, 8, "none")
    assert P.speed_knobs("something", cpu) == P.LEVEL_KNOBS["fast"]


def _work(frames: int = 72) -> P.Workload:
    return P.Workload(576, 1024, frames, shapes=P.ModelShapes.published())


def test_lower_steps_exactly_one_level_each_time() -> None:
    hw = P.Hardware.detect(gpu_memory=80 * GIB)
    for index, level in enumerate(P.LEVELS[:-1]):
        plan = P.estimate(_work(), hw, level)
        assert plan.lower().level == P.LEVELS[index + 1]
    assert P.estimate(_work(), hw, "sequential_offload").lower() is None
    # the CPU has no offload levels: chunked is its leanest
    cpu = P.Hardware(device="cpu", host_available=64 * GIB)
    assert P.estimate(_work(8), cpu, "fast").lower().level == "sequential_cfg"
    assert P.estimate(_work(8), cpu, "sequential_cfg").lower().level == "chunked"
    # nothing to lower: a warp plan, an override's plan, a plan without its workload
    assert P.warp_plan(64, 64, 3).lower() is None
    assert P.make_plan(_work(), hw, speed="fast").lower() is None
    assert P.Plan(engine="diffusion", device="cuda", level="fast").lower() is None


def test_make_plan_lowest_starts_the_search_there() -> None:
    hw = P.Hardware.detect(gpu_memory=80 * GIB)
    assert P.make_plan(_work(), hw).level == "fast"
    assert P.make_plan(_work(), hw, lowest="chunked").level == "chunked"
    assert P.make_plan(_work(), hw, lowest="sequential_offload").level == "sequential_offload"


def test_gpu_budget_and_available_levels() -> None:
    assert P.gpu_budget(P.Hardware(device="cuda", gpu_free=1000)) == 920
    assert P.gpu_budget(P.Hardware(device="cpu")) is None
    assert P.available_levels(None) == ("fast", "sequential_cfg", "chunked")
    assert P.available_levels(P.Hardware(device="cuda", gpu_free=1)) == P.LEVELS


def test_describe_each_level_in_words() -> None:
    hw = P.Hardware.detect(gpu_memory=80 * GIB)
    words = {level: P.estimate(_work(), hw, level).describe() for level in P.LEVELS}
    assert words == {
        "fast": "fast (batched CFG, decode 8, no offload)",
        "sequential_cfg": "sequential_cfg (sequential CFG, decode 4, no offload)",
        "chunked": "chunked (sequential CFG, forward chunks of 1, decode 2, no offload)",
        "model_offload": "model_offload (sequential CFG, forward chunks of 1, decode 1, model offload)",
        "sequential_offload": "sequential_offload (sequential CFG, forward chunks of 1, decode 1, sequential offload)",
    }
    override = P.make_plan(_work(), hw, speed="low_memory").describe()
    assert (
        override
        == "ANIMATE_DIFFUSION_SPEED=low_memory (sequential CFG, forward chunks of 1, decode 2, model offload)"
    )
    assert P.warp_plan(64, 64, 3).describe() == "warp on cpu"


def test_table_rows_of_a_gpu_plan() -> None:
    plan = P.make_plan(_work(72), P.Hardware.detect(gpu_memory=80 * GIB))
    lines = P.format_table(plan).splitlines()
    rows = dict(line.split("  ", 1) for line in lines if not line.startswith("note:"))
    rows = {name.strip(): value.strip() for name, value in rows.items()}
    assert rows["engine"] == "diffusion on cuda (a 80 GiB card)"
    assert rows["size"] == "576x1024, 72 frames"
    assert rows["memory level"] == "fast" and rows["dtype / attention"] == "float16 / sdpa"
    assert (rows["CFG"], rows["offload"], rows["forward chunking"]) == ("batched", "none", "off")
    assert rows["VAE decode chunk"] == "8 frames" and rows["feature cache"] == "host"
    assert rows["sequence latents"] == "cuda (a 80 GiB card)"
    # 73 rows: two tiles of 72 with overlap 6
    assert rows["tiles"] == "2 of 72 frames, overlap 6" and rows["steps"] == "25" and rows["GPUs"] == "1"
    assert rows["GPU peak (each)"] == f"{plan.gpu_peak / GIB:.1f} GiB of {0.92 * 80:.1f} GiB usable"
    assert rows["host memory"] == f"{plan.host_memory / GIB:.1f} GiB"
    # 2 tiles x 72 rows x 2 halves x 3.2 TFLOPs at 40 TFLOP/s = 23.04 s per step
    assert rows["time per step"] == "23.04 s"
    assert rows["time in total"] == f"{(25 * 23.04 + 72 * 6.8 / 20) / 60:.1f} min (denoising + VAE decode)"
    assert rows["fits"] == "yes" and rows["calibrated"].startswith("no (coefficients from module shapes")
    tight = P.format_table(P.make_plan(_work(72), P.Hardware.detect(gpu_memory=8 * GIB)))
    assert "\nfits               no\n" in tight
    assert "\ncalibrated         yes" in P.format_table(P.make_plan(_work(72), P.Hardware.detect(gpu_memory=80 * GIB),
                                                              P.Coefficients(calibrated=True)))  # fmt: skip
    # the names are padded to one column: every value starts at the same place
    assert len({line.index(value) for line, value in zip(lines, rows.values(), strict=False)}) == 1
    chunked = P.format_table(P.estimate(_work(), P.Hardware.detect(gpu_memory=80 * GIB), "chunked"))
    assert "forward chunking   1" in chunked


def test_table_of_a_cpu_plan_and_its_notes() -> None:
    cpu = P.Hardware(device="cpu", name="cpu", host_available=64 * GIB)
    plan = P.estimate(_work(8), cpu, "fast")
    table = P.format_table(plan)
    assert "GPU peak" not in table and "engine             diffusion on cpu" in table
    assert table.splitlines()[-1] == (
        "note: no CUDA GPU: the diffusion engine runs on the CPU (tiny test weights only in practice)"
    )
    assert plan.to_dict()["gpu_budget_gib"] is None and plan.gpu_budget is None and plan.dtype == "float32"
    # on the CPU the host holds the peak: 80% of the host memory is the budget
    tight = P.estimate(_work(8), P.Hardware(device="cpu", host_available=GIB), "fast")
    assert not tight.fits and tight.notes[0].startswith("expected peak ") and " host budget" in tight.notes[0]
    assert f"the {0.8:.1f} GiB host budget" in tight.notes[0]


def test_to_dict_rounds_and_lists() -> None:
    plan = P.make_plan(_work(72), P.Hardware.detect(gpu_memory=80 * GIB))
    data = plan.to_dict()
    assert data["gpu_budget_gib"] == round(0.92 * 80, 2) and data["gpus"] == 1
    assert data["seconds_per_step"] == 23.04 and data["tiles"] == 2 and data["frames"] == 72
    assert data["width"] == 576 and data["height"] == 1024 and data["steps"] == 25
    assert (data["tile_size"], data["tile_overlap"], data["cfg"], data["offload"]) == (
        72,
        6,
        "batched",
        "none",
    )
    assert data["forward_chunk"] is None and data["decode_chunk"] == 8 and data["feature_cache"] == "host"
    assert data["notes"] == [] and data["override"] is None and data["calibrated"] is False
    assert data["engine"] == "diffusion" and data["device"] == "cuda (a 80 GiB card)" and data["fits"] is True
    assert data["level"] == "fast" and data["dtype"] == "float16" and data["attention"] == "sdpa"
    assert data["seconds_total"] == round(25 * 23.04 + 72 * 6.8 / 20, 2)
    # two GPUs: one tile each plus the all-reduce, 11.52215 s: rounded to the hundredth
    two = P.make_plan(_work(72), P.Hardware.detect(gpu_memory=80 * GIB, gpus=2)).to_dict()
    assert two["seconds_per_step"] == 11.52 and two["gpus"] == 2
    assert math.isclose(data["host_memory_gib"], round(plan.host_memory / GIB, 2))


def test_calibration_path_setting(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("ANIMATE_PLAN_CALIBRATION", raising=False)
    assert P.calibration_path() is None and P.load_coefficients() == P.Coefficients()
    monkeypatch.setenv("ANIMATE_PLAN_CALIBRATION", str(tmp_path / "absent.json"))
    assert P.calibration_path() == tmp_path / "absent.json"
    assert P.load_coefficients() == P.Coefficients()  # a missing file: the shipped figures
    flat = tmp_path / "flat.json"
    flat.write_text('{"unet_row": 3.5, "unknown": 1}')  # without the "coefficients" wrapper; unknown dropped
    assert P.Coefficients.from_json(flat).unet_row == 3.5


# --- the memory and time formulas on round numbers ------------------------------------------------------

UNIT_SHAPES = P.ModelShapes(unet_params=100, controlnet_params=0, image_encoder_params=0, vae_params=0,
                            small_params=0, channels=320, vae_channels=128)  # fmt: skip
#: every figure zero but the activations per row (in feature maps): peaks read as whole feature maps
ROUND = P.Coefficients(unet_row=1.0, unet_call=3.0, unet_row_chunked=1.0, unet_call_chunked=3.0,
                       controlnet_row=10.0, controlnet_residuals_row=0.0, feature_row=1.0, vae_frame=0.0,
                       sequence_frame_bytes=0.0, window_frame_elements=0.0, overhead=1.0, context_bytes=0.0)  # fmt: skip
MAP = 320 * 72 * 128 * 2  # one feature map at 576x1024 in float16


def _peak_in_maps(shapes: P.ModelShapes, level: str, frames: int = 7) -> float:
    work = P.Workload(576, 1024, frames, tile_size=8, tile_overlap=2, shapes=shapes)
    plan = P.estimate(work, P.Hardware.detect(gpu_memory=80 * GIB), level, ROUND)
    return (plan.gpu_peak - shapes.weights * 2) / MAP


def test_activation_peak_counts_features_and_the_controlnet_by_hand() -> None:
    # 7 frames + the reference = 8 rows; batched CFG doubles them: 16 rows of 1 UNet map + 1 pose map, plus
    # 3 maps per UNet call
    assert _peak_in_maps(UNIT_SHAPES, "fast") == pytest.approx(16 * 2 + 3)
    assert _peak_in_maps(UNIT_SHAPES, "sequential_cfg") == pytest.approx(8 * 2 + 3)
    # Champ's maps add one more feature map per row, however many encoders there are; no pose guider: one less
    maps = dataclasses.replace(UNIT_SHAPES, guidance_maps=1)
    assert _peak_in_maps(maps, "fast") == pytest.approx(16 * 3 + 3)
    assert _peak_in_maps(dataclasses.replace(maps, guidance_maps=3), "fast") == pytest.approx(16 * 3 + 3)
    assert _peak_in_maps(dataclasses.replace(maps, pose_guider=False), "fast") == pytest.approx(16 * 2 + 3)
    # the ControlNet's 10 maps per row (half with chunking), its call's 3 and the features: its pass is the
    # peak here
    dispose = dataclasses.replace(UNIT_SHAPES, controlnet_params=50)
    assert _peak_in_maps(dispose, "fast") == pytest.approx(16 * 10 + 3 + 16)
    assert _peak_in_maps(dispose, "chunked") == pytest.approx(8 * 5 + 3 + 8)


def test_decode_and_dift_peaks_by_hand() -> None:
    """Where the VAE decode or SD 1.5's UNet (loaded for DIFT before denoising) is the largest part."""
    decode_only = dataclasses.replace(ROUND, unet_row=0.0, unet_call=0.0, unet_row_chunked=0.0,
                                      unet_call_chunked=0.0, feature_row=0.0, vae_frame=1.0)  # fmt: skip
    hw = P.Hardware.detect(gpu_memory=80 * GIB)
    work = P.Workload(576, 1024, 7, tile_size=8, tile_overlap=2, shapes=UNIT_SHAPES)
    for level, chunk in (("fast", 8), ("sequential_cfg", 4), ("chunked", 2)):
        peak = P.estimate(work, hw, level, decode_only).gpu_peak - 100 * 2
        assert peak == pytest.approx(128 * 576 * 1024 * 2 * chunk), level  # a 128-wide map per decoded frame
    small = P.Workload(64, 64, 7, tile_size=8, tile_overlap=2, shapes=P.ModelShapes.published(dift=True))
    plan = P.estimate(small, hw, "fast")
    resident = P.ModelShapes.published().weights * 2
    assert plan.gpu_peak == int(
        1.15 * (resident + 96 * 64 * 8 + 16 * 2 * 64 * 8 + 859_520_964 * 2) + 0.6 * GIB
    )


def test_host_memory_by_hand() -> None:
    hw = P.Hardware.detect(gpu_memory=80 * GIB)
    hw = dataclasses.replace(hw, host_available=64 * GIB)
    work = P.Workload(576, 1024, 72, shapes=P.ModelShapes.published())
    pixels = 576 * 1024
    cache = MAP * 73  # the pose features of every frame, cached: 73 x 5.9 MB fits a quarter of 64 GiB
    windows = 12 * pixels * 72  # a tile's guidance windows
    base = 2.5 * GIB + cache + windows
    fast = P.estimate(work, hw, "fast")
    assert fast.host_memory == int(base + 12 * pixels * 8) and fast.feature_cache == "host"  # decode 8 frames
    chunked = P.estimate(work, hw, "chunked")
    assert chunked.host_memory == int(base + 12 * pixels * 2)
    # offloaded weights live on the host
    offload = P.estimate(work, hw, "model_offload")
    assert offload.host_memory == int(base + 12 * pixels * 1 + work.shapes.weights * 2)
    # two feature kinds (pose + Champ maps) double the cache
    maps = dataclasses.replace(work, shapes=P.ModelShapes.published(guidance_maps=1))
    assert P.estimate(maps, hw, "fast").host_memory - fast.host_memory == cache
    # no room for the cache (a quarter of 1 GiB): recomputed, not counted
    small = dataclasses.replace(hw, host_available=GIB)
    assert P.estimate(work, small, "fast").host_memory == int(2.5 * GIB + windows + 12 * pixels * 8)
    assert P.estimate(work, small, "fast").feature_cache == "none"


def test_cpu_plans_count_float32_and_the_weights_on_the_host() -> None:
    cpu = P.Hardware(device="cpu", host_available=64 * GIB)
    work = P.Workload(64, 64, 7, tile_size=8, tile_overlap=2, shapes=UNIT_SHAPES)
    plan = P.estimate(work, cpu, "fast", ROUND)
    unit = 320 * 8 * 8 * 4  # a feature map of the 8x8 latent in float32
    peak = 100 * 4 + 16 * 2 * unit  # weights + 16 rows of (UNet + pose) maps, no CUDA context
    host = 2.5 * GIB + unit * 8 + 12 * 64 * 64 * 8 + 12 * 64 * 64 * 8 + 100 * 4
    assert plan.host_memory == max(int(peak), int(host)) == int(host)
    assert (plan.gpu_peak, plan.gpu_budget, plan.fits) == (None, None, True)
    tight = P.estimate(work, P.Hardware(device="cpu", host_available=int(peak / 0.8) - 8), "fast", ROUND)
    assert not tight.fits and tight.notes[0].startswith("expected peak")


def test_step_time_scales_with_widths_controlnet_and_offload_by_hand() -> None:
    hw = P.Hardware.detect(gpu_memory=80 * GIB)
    work = P.Workload(576, 1024, 72, shapes=P.ModelShapes.published())  # 2 tiles of 72 rows
    base = 2 * 72 * 2 * 3.2 / 40  # rows x TFLOPs / (100 TFLOP/s x 40%)
    assert P.estimate(work, hw, "fast").seconds_per_step == pytest.approx(base)
    half = dataclasses.replace(work, shapes=dataclasses.replace(work.shapes, channels=160, vae_channels=64))
    # half the widths: a quarter of the UNet work and of the decode (72 frames x 6.8 TFLOPs at 20 TFLOP/s)
    quarter = P.estimate(half, hw, "fast")
    assert quarter.seconds_per_step == pytest.approx(base / 4)
    assert quarter.seconds_total == pytest.approx(25 * base / 4 + 72 * 6.8 / 20 / 4)
    dispose = dataclasses.replace(work, shapes=P.ModelShapes.published(controlnet=True))
    assert P.estimate(dispose, hw, "fast").seconds_per_step == pytest.approx(2 * 72 * 2 * (3.2 + 1.27) / 40)
    # sequential offload streams the denoisers' float16 weights over PCIe (16 GB/s) on each UNet call:
    # two calls per tile with sequential CFG, one batched
    denoisers = 1_524_623_082 + 205_557
    streamed = P.estimate(work, hw, "sequential_offload").seconds_per_step - base
    assert streamed == pytest.approx(2 * 2 * denoisers * 2 / 16e9)
    batched = P.estimate(work, hw, "fast", override=P.Knobs("batched", None, 8, "sequential"))
    assert batched.seconds_per_step - base == pytest.approx(2 * 1 * denoisers * 2 / 16e9)


def test_the_given_coefficients_follow_every_path() -> None:
    k = P.Coefficients(efficiency=0.5, calibrated=True)
    hw = P.Hardware.detect(gpu_memory=24 * GIB)
    long = P.Workload(576, 1024, 14_400, shapes=P.ModelShapes.published())
    plan = P.make_plan(long, dataclasses.replace(hw, host_available=64 * GIB), k)
    assert plan.latents_on_host and plan.coefficients is k and plan.calibrated
    lower = plan.lower()
    assert lower.latents_on_host and lower.coefficients is k and lower.calibrated
    short = P.make_plan(P.Workload(576, 1024, 72, shapes=P.ModelShapes.published()), hw, k)
    assert short.lower().coefficients is k
    assert P.make_plan(long, hw, k, speed="fast").coefficients is k


def test_warp_plan_fields() -> None:
    plan = P.warp_plan(320, 240, 99)
    assert (plan.engine, plan.device, plan.width, plan.height, plan.frames, plan.level) == (
        "warp", "cpu", 320, 240, 99, None
    )  # fmt: skip
    assert plan.notes == ("the warp engine runs on the CPU; memory is flat in length (frames are streamed)",)


def test_plan_job_reads_the_inputs_under_the_settings_media_limits(inputs, tmp_path) -> None:
    from animate.settings import MediaLimits

    image_cap = Settings(weights_dir=tmp_path / "none", media=MediaLimits(max_image_pixels=100 * 200 - 1))
    with pytest.raises(AnimateError) as err:
        _job(image_cap, inputs, engine="diffusion")  # the 100 x 200 reference is one pixel over
    assert err.value.code == "too_large"
    frame_cap = Settings(weights_dir=tmp_path / "none", media=MediaLimits(max_video_frames=11))
    with pytest.raises(AnimateError) as err:
        _job(frame_cap, inputs, engine="diffusion")  # 12 driving frames
    assert err.value.code == "too_long"
