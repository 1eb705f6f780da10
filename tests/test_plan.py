"""The planner's choices for (GPU memory, size, frames), against peaks worked out by hand here.

Hand arithmetic, from the coefficients in ``animate/engines/plan.py``'s docstring (SVD-xt / MimicMotion 1.1,
float16, tiles of 72 frames with overlap 6, the reference frame prepended):

- weights: (1,524,623,082 UNet + 632,076,800 CLIP + 97,742,847 VAE + 205,557 pose guider) x 2 B = 4.509 GB;
  with model offload the UNet, pose guider and VAE stay: 3.245 GB; sequential offload: one 1280x5120
  feed-forward layer pair, 8 x 1280^2 x 2 B = 26 MB.
- one feature map at 576x1024 (72x128 latent, 320 channels, 2 B): 5.898 MB; the whole-length tensors at
  the scheduler step: 96 B x 9216 latent pixels per frame (measured below), on the GPU or, when only that
  makes the level fit, on the host; a tile's own copies on the GPU: 16 x 2 B x 9216 x 72 rows.
- activations per UNet row 289.2 MB (+ 37.8 MB per call), chunked 118.2 MB (+ 214.6 MB), plus one pose
  feature map per row; VAE decode 2114.0 MB per frame.
- peak = 1.15 x (resident weights + sequence + window + max(activations, decode)) + 0.6 GiB; budget = 92%
  of free.
"""

from __future__ import annotations

import math

import pytest
import torch

from animate.engines.plan import (
    GIB,
    LEVELS,
    Coefficients,
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


def hand_peak(level: str, frames: int, scale: float = 1.0, host: bool = False) -> float:
    """The expected peak in bytes; ``scale``: latent area relative to 576x1024; ``host``: latents there."""
    rows = 144 if level == "fast" else 72
    if level in ("fast", "sequential_cfg"):
        activations = rows * 289.2 * MB + 37.8 * MB + rows * FEATURE
    else:
        activations = rows * 118.2 * MB + 214.6 * MB + rows * FEATURE
    decode = {"fast": 8, "sequential_cfg": 4, "chunked": 2}.get(level, 1) * 2114.0 * MB
    resident = {"model_offload": WEIGHTS_MODEL_OFFLOAD, "sequential_offload": WEIGHTS_SEQUENTIAL}.get(
        level, WEIGHTS
    )
    sequence = 0 if host else 96 * 9216 * scale * (frames + 1)
    window = 16 * 2 * 9216 * scale * min(72, frames + 1)
    return 1.15 * (resident + sequence + window + max(activations, decode) * scale) + 0.6 * GIB


def work(frames: int, width: int = 576, height: int = 1024) -> Workload:
    return Workload(
        width, height, frames, steps=25, tile_size=72, tile_overlap=6, shapes=ModelShapes.published()
    )


def card(gib: float, gpus: int = 1, host_gib: float = 64) -> Hardware:
    hw = Hardware.detect(gpu_memory=int(gib * GIB), gpus=gpus)
    return Hardware(**{**hw.__dict__, "host_available": int(host_gib * GIB)})


# (GPU GiB, width, height, frames) -> level, fits, latents on the host
CASES = {
    (80, 576, 1024, 72): ("fast", True, False),  # 51.1 GiB of 73.6
    (48, 576, 1024, 72): ("sequential_cfg", True, False),  # fast 51.1 > 44.2 (51.0 on the host too); 28.3
    (24, 576, 1024, 1024): ("chunked", True, False),  # sequential CFG 29.2 (28.2 host) > 22.1; chunked 16.2
    (24, 288, 512, 72): ("fast", True, False),  # a quarter of the pixels: fast 16.8 GiB
    # 12.7 GB of whole-length tensors: even the leanest level (24.1) does not fit with them on the GPU;
    # on the host, chunked does (15.3)
    (24, 576, 1024, 14_400): ("chunked", True, True),
    (40, 576, 1024, 14_400): ("sequential_cfg", True, True),  # 41.9 on the GPU, 28.2 with host latents
    (80, 576, 1024, 14_400): ("fast", True, False),  # 64.7 of 73.6: the latents stay on the GPU
    (16, 576, 1024, 72): ("model_offload", True, False),  # chunked 15.3 > 14.7; model offload 14.0
    (12, 576, 1024, 72): ("sequential_offload", True, False),  # model offload 13.9 > 11.0; 10.5
    (8, 576, 1024, 72): ("sequential_offload", False, True),  # 10.5 GiB at the leanest: does not fit
}


@pytest.mark.parametrize(("gib", "width", "height", "frames"), list(CASES))
def test_planner_picks_the_fastest_level_that_fits(gib, width, height, frames):
    level, fits, host = CASES[(gib, width, height, frames)]
    scale = (width * height) / (576 * 1024)
    budget = 0.92 * gib * GIB
    # the hand table agrees with itself: the chosen level fits, every faster one does not (latents on the
    # GPU or not), and the latents go to the host only where they do not fit on the GPU
    faster = LEVELS[: LEVELS.index(level)]
    assert all(hand_peak(name, frames, scale, on_host) > budget for name in faster for on_host in (0, 1))
    assert (hand_peak(level, frames, scale, host) <= budget) == fits
    assert (hand_peak(level, frames, scale) > budget) == host
    plan = make_plan(work(frames, width, height), card(gib))
    assert (plan.level, plan.fits, plan.latents_on_host) == (level, fits, host)
    assert plan.gpu_peak == pytest.approx(hand_peak(level, frames, scale, host), rel=1e-6)
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

    from animate.engines.plan import load_coefficients

    # the repository's copy, also from mutmut's copy of the tests (build/mutation/<module>/mutants/tests/)
    name = Path("benchmarks", "results", "plan_fake.json")
    committed = next(p / name for p in Path(__file__).resolve().parents if (p / name).is_file())
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


# --- the whole-length latents on the host ---------------------------------------------------------------

LONG = 14_400  # 10 minutes at 24 fps
SEQUENCE = 96 * 9216 * (LONG + 1)  # 12.7 GB: latents, fused prediction, the step's float32 temporaries


def test_host_latents_only_where_the_host_has_room():
    roomy = make_plan(work(LONG), card(24, host_gib=64))
    assert (roomy.level, roomy.latents_on_host, roomy.fits) == ("chunked", True, True)
    # the host carries them: the same plan's host memory minus the GPU plan's at that level is the sequence
    on_gpu = estimate(work(LONG), card(24, host_gib=64), "chunked")
    assert roomy.host_memory - on_gpu.host_memory == pytest.approx(SEQUENCE, abs=1)
    assert on_gpu.gpu_peak - roomy.gpu_peak == pytest.approx(1.15 * SEQUENCE, rel=1e-6)
    # 16 GiB of host memory: 80% of it (12.8 GiB) cannot take 11.8 GiB of latents plus the process' own
    tight = make_plan(work(LONG), card(24, host_gib=16))
    assert not tight.latents_on_host and not tight.fits and tight.level == "sequential_offload"
    # on the CPU the latents are on the host anyway: never marked
    cpu = Hardware(device="cpu", name="cpu", host_available=64 * GIB)
    assert not estimate(work(16), cpu, "fast", latents_on_host=True).latents_on_host


def test_host_latents_cost_their_transfers_and_the_cpu_step():
    hw = card(24)
    host = estimate(work(LONG), hw, "chunked", latents_on_host=True)
    gpu = estimate(work(LONG), hw, "chunked")
    tiles = 1 + math.ceil((LONG + 1 - 72) / 66)
    window = 4 * 2 * 9216 * 72  # one float16 copy of a tile's latents, over and back per tile
    expected = tiles * 2 * window / 16e9 + SEQUENCE / 10e9
    assert host.seconds_per_step - gpu.seconds_per_step == pytest.approx(expected, rel=1e-9)


def test_lower_keeps_host_latents_and_the_table_shows_them():
    plan = make_plan(work(LONG), card(24))
    lower = plan.lower()
    assert (lower.level, lower.latents_on_host) == ("model_offload", True)
    # 1,024 frames on 16 GiB: model offload fits only with host latents (14.9 GiB on the GPU > 14.7); the
    # retry's leaner level keeps them there, though it would fit with them on the GPU (11.4)
    short = make_plan(work(1024), card(16))
    assert (short.level, short.latents_on_host) == ("model_offload", True)
    assert estimate(work(1024), card(16), "sequential_offload").fits
    assert (short.lower().level, short.lower().latents_on_host) == ("sequential_offload", True)
    assert plan.to_dict()["latents_on_host"] is True
    assert "sequence latents   host (tile windows on the GPU)" in format_table(plan)
    assert plan.describe().endswith("latents on the host)")
    assert make_plan(work(72), card(80)).to_dict()["latents_on_host"] is False


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_sequence_bytes_are_the_measured_peak_of_the_scheduler_step(dtype):
    """96 B per latent pixel of every frame: the live tensors' peak while the whole-length fused prediction is
    normalised and diffusers' Euler scheduler (v-prediction, SVD's) steps the latents, counted by a dispatch
    mode (what the pipeline does after its tiles: ``noise_pred / weight_sum``, ``scheduler.step``)."""
    import weakref

    from diffusers import EulerDiscreteScheduler
    from torch.utils._python_dispatch import TorchDispatchMode

    class Live(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live = self.peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, tuple | list) else (out,):
                if isinstance(tensor, torch.Tensor) and tensor._base is None and tensor.numel() > 1000:
                    size = tensor.numel() * tensor.element_size()
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(tensor, self._free, size)
            return out

        def _free(self, size):
            self.live -= size

    scheduler = EulerDiscreteScheduler(prediction_type="v_prediction", use_karras_sigmas=True)
    scheduler.set_timesteps(4)
    t = scheduler.timesteps[0]
    frames, pixels = 20, 16 * 16
    with Live() as live:
        latents = torch.randn(1, frames, 4, 16, 16, dtype=dtype)
        scheduler.scale_model_input(latents[:, :2], t)
        weight_sum = torch.full((frames,), 2.0, dtype=dtype)
        noise_pred = torch.randn(1, frames, 4, 16, 16, dtype=dtype)
        noise_pred = noise_pred / weight_sum[:, None, None, None]
        latents = scheduler.step(noise_pred, t, latents).prev_sample
    assert live.peak / (frames * pixels) == Coefficients().sequence_frame_bytes == 96
