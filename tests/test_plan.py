"""The planner's choices for (GPU memory, size, frames), against peaks worked out by hand here.

Hand arithmetic, from the coefficients in ``animate/engines/plan.py``'s docstring (SVD-xt / MimicMotion 1.1,
float16, tiles of 72 frames with overlap 6, the reference frame prepended):

- weights: (1,524,623,082 UNet + 632,076,800 CLIP + 97,742,847 VAE + 205,557 pose guider) x 2 B = 4.509 GB;
  with model offload the UNet, pose guider and VAE stay: 3.245 GB; sequential offload: one 1280x5120
  feed-forward layer pair, 8 x 1280^2 x 2 B = 26 MB.
- one feature map at 576x1024 (72x128 latent, 320 channels, 2 B): 5.898 MB; latents + accumulators:
  64 B x 9216 latent pixels per frame.
- activations per UNet row 289.2 MB (+ 37.8 MB per call), chunked 118.2 MB (+ 214.6 MB), plus one pose
  feature map per row; VAE decode 2114.0 MB per frame.
- peak = 1.15 x (resident weights + sequence + max(activations, decode)) + 0.6 GiB; budget = 92% of free.
"""

from __future__ import annotations

import math

import pytest

from animate.engines.plan import (
    GIB,
    LEVELS,
    Hardware,
    ModelShapes,
    Workload,
    estimate,
    format_table,
    make_plan,
    parse_bytes,
    warp_plan,
)

MB = 1e6
FEATURE = 320 * 72 * 128 * 2  # one pose feature map per row at 576x1024
WEIGHTS = (1_524_623_082 + 632_076_800 + 97_742_847 + 205_557) * 2
WEIGHTS_MODEL_OFFLOAD = (1_524_623_082 + 205_557 + 97_742_847) * 2
WEIGHTS_SEQUENTIAL = 8 * 1280**2 * 2


def hand_peak(level: str, frames: int, scale: float = 1.0) -> float:
    """The expected peak in bytes; ``scale``: latent area relative to 576x1024."""
    rows = 144 if level == "fast" else 72
    if level in ("fast", "sequential_cfg"):
        activations = rows * 289.2 * MB + 37.8 * MB + rows * FEATURE
    else:
        activations = rows * 118.2 * MB + 214.6 * MB + rows * FEATURE
    decode = {"fast": 8, "sequential_cfg": 4, "chunked": 2}.get(level, 1) * 2114.0 * MB
    resident = {"model_offload": WEIGHTS_MODEL_OFFLOAD, "sequential_offload": WEIGHTS_SEQUENTIAL}.get(
        level, WEIGHTS
    )
    sequence = 64 * 9216 * scale * (frames + 1)
    return 1.15 * (resident + sequence + max(activations, decode) * scale) + 0.6 * GIB


def work(frames: int, width: int = 576, height: int = 1024) -> Workload:
    return Workload(
        width, height, frames, steps=25, tile_size=72, tile_overlap=6, shapes=ModelShapes.published()
    )


def card(gib: float, gpus: int = 1) -> Hardware:
    return Hardware.detect(gpu_memory=int(gib * GIB), gpus=gpus)


# (GPU GiB, width, height, frames) -> level, fits
CASES = {
    (80, 576, 1024, 72): ("fast", True),  # 51.0 GiB of 73.6
    (48, 576, 1024, 72): ("sequential_cfg", True),  # fast 51.0 > 44.2; sequential CFG 28.3
    (24, 576, 1024, 1024): ("chunked", True),  # sequential CFG 28.9 > 22.1; chunked 15.9
    (24, 288, 512, 72): ("fast", True),  # a quarter of the pixels: fast 16.8 GiB
    (24, 576, 1024, 14_400): ("sequential_offload", True),  # 8.5 GB of latents: model offload 23.0; 19.5
    (16, 576, 1024, 72): ("model_offload", True),  # chunked 15.3 > 14.7; model offload 13.9
    (12, 576, 1024, 72): ("sequential_offload", True),  # model offload 13.9 > 11.0; 10.5
    (8, 576, 1024, 72): ("sequential_offload", False),  # 10.5 GiB at the leanest: does not fit
}


@pytest.mark.parametrize(("gib", "width", "height", "frames"), list(CASES))
def test_planner_picks_the_fastest_level_that_fits(gib, width, height, frames):
    level, fits = CASES[(gib, width, height, frames)]
    scale = (width * height) / (576 * 1024)
    budget = 0.92 * gib * GIB
    # the hand table agrees with itself: the chosen level fits, every faster one does not
    faster = LEVELS[: LEVELS.index(level)]
    assert all(hand_peak(name, frames, scale) > budget for name in faster)
    assert (hand_peak(level, frames, scale) <= budget) == fits
    plan = make_plan(work(frames, width, height), card(gib))
    assert (plan.level, plan.fits) == (level, fits)
    assert plan.gpu_peak == pytest.approx(hand_peak(level, frames, scale), rel=1e-6)
    assert plan.gpu_budget == pytest.approx(budget, abs=1)
    assert plan.dtype == "float16" and plan.attention == "sdpa"
    if not fits:
        assert any("lower --tile-size or --size" in note for note in plan.notes)


def test_levels_get_leaner_and_lower_walks_them_in_order():
    plan = make_plan(work(1024), card(80))
    seen = []
    while plan is not None:
        seen.append((plan.level, plan.gpu_peak))
        plan = plan.lower()
    assert [level for level, _ in seen] == list(LEVELS)
    peaks = [peak for _, peak in seen]
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == len(peaks)
    knobs = make_plan(work(1024), card(80)).lower()
    assert (knobs.cfg, knobs.forward_chunk, knobs.decode_chunk, knobs.offload) == (
        "sequential",
        None,
        4,
        "none",
    )


def test_a_cpu_has_no_offload_levels():
    cpu = Hardware(device="cpu", name="cpu", host_available=64 * GIB)
    plan = estimate(work(16), cpu, "chunked")
    assert plan.lower() is None and plan.gpu_peak is None and plan.dtype == "float32"


def test_time_per_step_counts_tiles_rows_and_both_cfg_halves():
    # 72 frames + the reference = 73 > 72: two tiles of 72 rows, both CFG halves, 3.2 TFLOPs per row,
    # at 40% of the default card's 100 TFLOP/s
    plan = make_plan(work(72), card(80))
    assert plan.tiles == 2
    assert plan.seconds_per_step == pytest.approx(2 * 72 * 2 * 3.2 / 40)
    decode = 72 * 6.8 / 20
    assert plan.seconds_total == pytest.approx(25 * plan.seconds_per_step + decode)
    # two GPUs: one tile each, plus the all-reduce of predictions and weights (4 fp32 maps per frame)
    two = make_plan(work(72), card(80, gpus=2))
    assert two.seconds_per_step == pytest.approx(72 * 2 * 3.2 / 40 + 2 * 4 * 4 * 9216 * 73 / 10e9)
    # 1024 frames: 1 + ceil((1025 - 72) / 66) = 16 tiles
    assert work(1024).tiles == 1 + math.ceil((1025 - 72) / 66) == 16


def test_feature_cache_on_the_host_only_when_it_fits():
    small = make_plan(work(72), card(80))
    assert small.feature_cache == "host"  # 73 x 5.9 MB
    hw = Hardware.detect(gpu_memory=80 * GIB)
    tight = make_plan(work(14_400), Hardware(**{**hw.__dict__, "host_available": 64 * GIB}))
    assert tight.feature_cache == "none"  # 14,401 x 5.9 MB = 85 GB > a quarter of 64 GiB


def test_speed_setting_overrides_the_knobs():
    plan = make_plan(work(72), card(24), speed="low_memory")
    assert plan.override == "ANIMATE_DIFFUSION_SPEED=low_memory" and plan.level is None
    assert (plan.cfg, plan.forward_chunk, plan.decode_chunk, plan.offload) == ("sequential", 1, 2, "model")
    fast = make_plan(work(1024), card(24), speed="fast")
    assert fast.cfg == "batched" and not fast.fits  # the setting wins even where the plan expects no fit


def test_the_controlnet_adds_its_weights_and_residuals():
    base = make_plan(work(72), card(80))
    shapes = ModelShapes.published(controlnet=True)
    dispose = estimate(Workload(576, 1024, 72, 25, 72, 6, shapes), card(80), "fast")
    extra_weights = 685_139_601 * 2
    extra_activations = 144 * 30.2 * MB  # residuals held while the UNet runs (UNet's peak is the larger)
    assert dispose.gpu_peak - base.gpu_peak == pytest.approx(
        1.15 * (extra_weights + extra_activations), rel=1e-6
    )


def test_to_dict_and_table():
    plan = make_plan(work(1024), card(24))
    data = plan.to_dict()
    assert data["level"] == "chunked" and data["gpu_peak_gib"] == round(plan.gpu_peak / GIB, 2)
    assert set(data) >= {"dtype", "attention", "cfg", "offload", "forward_chunk", "decode_chunk", "feature_cache",
                         "gpu_peak_gib", "host_memory_gib", "seconds_per_step", "seconds_total"}  # fmt: skip
    table = format_table(plan)
    assert "memory level       chunked" in table and "GPU peak (each)" in table


def test_warp_plan_has_no_gpu_numbers():
    data = warp_plan(576, 1024, 300).to_dict()
    assert data["engine"] == "warp" and data["gpu_peak_gib"] is None and data["seconds_per_step"] is None
    assert "GPU peak" not in format_table(warp_plan(576, 1024, 300))


@pytest.mark.parametrize(
    ("text", "value"),
    [("24GiB", 24 * GIB), ("24GB", 24 * GIB), ("80G", 80 * GIB), ("512MiB", 512 * 2**20), ("1000", 1000),
     ("1.5g", int(1.5 * GIB))],
)  # fmt: skip
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


def test_parse_bytes_refuses_nonsense():
    with pytest.raises(ValueError, match="not a memory size"):
        parse_bytes("lots")


def test_calibration_json_is_read_from_the_setting(monkeypatch, tmp_path):
    """``benchmarks/plan_calibrate.py``'s output (here its committed fake-mode run) feeds the planner."""
    from pathlib import Path

    from animate.engines.plan import Coefficients, load_coefficients

    committed = Path(__file__).parents[1] / "benchmarks" / "results" / "plan_fake.json"
    measured = Coefficients.from_json(committed)
    shipped = Coefficients()
    for name in (
        "unet_row",
        "unet_call",
        "unet_row_chunked",
        "unet_call_chunked",
        "controlnet_row",
        "vae_frame",
    ):
        assert getattr(measured, name) == pytest.approx(getattr(shipped, name), rel=2e-3), name
    calibration = tmp_path / "card.json"
    calibration.write_text('{"coefficients": {"unet_row": 24.5, "efficiency": 0.5, "calibrated": true}}')
    monkeypatch.setenv("ANIMATE_PLAN_CALIBRATION", str(calibration))
    loaded = load_coefficients()
    assert (loaded.unet_row, loaded.efficiency, loaded.calibrated) == (24.5, 0.5, True)
    plan = make_plan(work(72), card(80), loaded)
    assert plan.calibrated and plan.seconds_per_step == pytest.approx(2 * 72 * 2 * 3.2 / 50)
