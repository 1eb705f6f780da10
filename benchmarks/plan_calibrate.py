"""Measure the planner's coefficients (``animate/engines/plan.py``) and write them as JSON.

Two modes, both on the real module shapes (SVD-xt UNet, DisPose's ControlNet, SVD's temporal VAE; random
weights, nothing downloaded):

- ``--mode fake`` (any machine): the modules run in float16 on PyTorch fake tensors under a dispatch mode
  that adds up the bytes of every live (non-view) tensor; the peak is the activation memory of one forward.
  This is how the shipped (uncalibrated) coefficients were derived.
- ``--mode cuda`` (a CUDA card): ``torch.cuda.max_memory_allocated`` over the same forwards, and the time of
  a UNet call (its achieved TFLOP/s gives ``efficiency`` against the card's peak in ``DEVICE_TFLOPS``).

Activations per row come from two calls (1 and 3 rows: the slope is per row, the rest per call).

    .venv/bin/python benchmarks/plan_calibrate.py --mode fake [--out benchmarks/results/plan_fake.json]
    .venv/bin/python benchmarks/plan_calibrate.py --mode cuda --out benchmarks/results/plan_<card>.json
    ANIMATE_PLAN_CALIBRATION=benchmarks/results/plan_<card>.json animate plan PHOTO DANCE
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from animate.engines.plan import Coefficients, device_tflops

LATENT = (72, 128)  # 576x1024
UNIT = 320 * LATENT[0] * LATENT[1] * 2
VAE_UNIT = 128 * 576 * 1024 * 2


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the live non-view tensors created inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor._base is None:
                size = tensor.numel() * tensor.element_size()
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._free, size)
        return out

    def _free(self, size: int) -> None:
        self.live -= size


def build(mode: str):
    """(unet, controlnet, vae, context manager for the inputs, device)."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    from controlnets import MotionControlNet

    if mode == "fake":
        from torch._subclasses.fake_tensor import FakeTensorMode

        fake = FakeTensorMode(allow_non_fake_inputs=True)
        place, device = fake, "cpu"
    else:
        place, device = contextlib.nullcontext(), "cuda"
    torch.set_default_dtype(torch.float16)
    try:
        with place, torch.device(device):
            unet = UNetSpatioTemporalConditionModel()
            controlnet = MotionControlNet(**MotionControlNet.config_from_unet(unet.config))
            vae = AutoencoderKLTemporalDecoder(
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4,
                layers_per_block=2,
                latent_channels=4,
            )
    finally:
        torch.set_default_dtype(torch.float32)
    return unet, controlnet, vae, place, device


def peak_bytes(mode: str, place, device: str, run) -> float:
    with place, torch.no_grad():
        if mode == "fake":
            with LiveBytes() as live:
                run()
            return float(live.peak)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)


def measure(mode: str) -> dict:
    unet, controlnet, vae, place, device = build(mode)
    h, w = LATENT
    half = torch.float16

    def unet_call(rows: int):
        def run():
            sample = torch.randn(1, rows, 8, h, w, dtype=half, device=device)
            context = torch.randn(1, 1, 1024, dtype=half, device=device)
            ids = torch.zeros(1, 3, dtype=half, device=device)
            unet(sample, torch.tensor([1.0], device=device), context, ids)

        return run

    def controlnet_call(rows: int):
        def run():
            sample = torch.randn(1, rows, 8, h, w, dtype=half, device=device)
            context = torch.randn(1, 1, 1024, dtype=half, device=device)
            ids = torch.zeros(1, 3, dtype=half, device=device)
            flow = torch.randn(rows, 2, 8 * h, 8 * w, dtype=half, device=device)
            controlnet(
                sample,
                torch.tensor([1.0], device=device),
                context,
                ids,
                dense_flow=flow,
                trajectory_flow=flow,
            )

        return run

    def decode(frames: int):
        return lambda: vae.decode(torch.randn(frames, 4, h, w, dtype=half, device=device), num_frames=frames)

    def slope(call) -> tuple[float, float]:
        one, three = peak_bytes(mode, place, device, call(1)), peak_bytes(mode, place, device, call(3))
        per_row = (three - one) / 2
        return per_row, one - per_row

    unet_row, unet_call_bytes = slope(unet_call)
    unet.enable_forward_chunking(1, dim=0)
    unet_row_chunked, unet_call_chunked = slope(unet_call)
    for block in unet.modules():  # off again (enable_forward_chunking(None) means chunks of 1)
        if hasattr(block, "set_chunk_feed_forward"):
            block.set_chunk_feed_forward(None, dim=0)
    controlnet_row, _ = slope(controlnet_call)
    vae_frame, _ = slope(lambda frames: decode(frames))
    coefficients = {
        "unet_row": unet_row / UNIT,
        "unet_call": unet_call_bytes / UNIT,
        "unet_row_chunked": unet_row_chunked / UNIT,
        "unet_call_chunked": unet_call_chunked / UNIT,
        "controlnet_row": controlnet_row / UNIT,
        "vae_frame": vae_frame / VAE_UNIT,
    }
    figures = {
        "unet_row_mb": unet_row / 1e6,
        "unet_call_mb": unet_call_bytes / 1e6,
        "unet_row_chunked_mb": unet_row_chunked / 1e6,
        "unet_call_chunked_mb": unet_call_chunked / 1e6,
        "controlnet_row_mb": controlnet_row / 1e6,
        "vae_frame_mb": vae_frame / 1e6,
    }
    if mode == "cuda":
        rows = 14
        call = unet_call(rows)
        with torch.no_grad():
            call()  # warm-up
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(3):
                call()
            torch.cuda.synchronize()
        seconds_per_row = (time.perf_counter() - start) / 3 / rows
        name = torch.cuda.get_device_name()
        achieved = Coefficients().unet_tflop_row / seconds_per_row
        coefficients["efficiency"] = achieved / device_tflops(name)
        coefficients["calibrated"] = True
        figures |= {"device": name, "seconds_per_unet_row": seconds_per_row, "achieved_tflops": achieved}
    return {"mode": mode, "coefficients": coefficients, "figures": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mode", choices=("fake", "cuda"), default="cuda" if torch.cuda.is_available() else "fake"
    )
    parser.add_argument("--out", type=Path, default=None, help="Write the JSON here.")
    args = parser.parse_args()
    result = measure(args.mode)
    shipped = Coefficients()
    print(f"{'coefficient':<20} {'measured':>10} {'shipped':>10}")
    for name, value in result["coefficients"].items():
        if isinstance(value, float):
            print(f"{name:<20} {value:>10.3f} {getattr(shipped, name):>10.3f}")
    for name, value in result["figures"].items():
        print(f"{name:<20} {value:>10.1f}" if isinstance(value, float) else f"{name:<20} {value}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
