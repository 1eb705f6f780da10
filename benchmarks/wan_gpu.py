"""Seconds per denoising step and peak GPU memory of the full-size Wan2.2-Animate-14B transformer (random bf16
weights: no download) for one 77-frame segment at 480p and 720p, resident and with offload.

    python benchmarks/wan_gpu.py                       # on a CUDA machine; JSON to benchmarks/results/
    python benchmarks/wan_gpu.py --tiny --device cpu   # the same code path with a tiny config (a smoke run)

Each case builds the transformer with the Diffusers repo's config (40 layers x 5120, face adapter every 5 blocks)
on the meta device, materialises it on the GPU (resident) or in pinned host memory (``group`` offload: one
block on the GPU at a time, overlapped with a CUDA stream; ``model`` offload is not measured separately: for
the transformer alone it equals resident plus one host-to-GPU copy), fills it with small random numbers, and
times ``--steps`` forward passes (after one warm-up) on the inputs one segment gives the transformer: 16 noise
+ 4 mask + 16 conditioning channels over 1 + 77 / 4 latent frames, the VAE-encoded pose video, 77 face crops
of 512 px, 512 text tokens of UMT5 and 257 CLIP tokens. Text encoder, CLIP and VAE are not part of the figure
(their resident bf16 weights add ~13 GB). Prints a table; writes ``benchmarks/results/wan_gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

FULL = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 36,
    "latent_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "image_dim": 1280,
    "added_kv_proj_dim": 5120,
    "rope_max_seq_len": 1024,
    "pos_embed_seq_len": 514,
    "motion_encoder_size": 512,
    "motion_style_dim": 512,
    "motion_dim": 20,
    "motion_encoder_dim": 512,
    "face_encoder_hidden_dim": 1024,
    "face_encoder_num_heads": 4,
    "inject_face_latents_blocks": 5,
}
TINY = {
    **FULL,
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "text_dim": 32,
    "ffn_dim": 32,
    "num_layers": 2,
    "image_dim": 4,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 32,
    "pos_embed_seq_len": None,
    "motion_encoder_channel_sizes": {"4": 16, "8": 16, "16": 16},
    "motion_encoder_size": 16,
    "motion_style_dim": 8,
    "motion_dim": 4,
    "motion_encoder_dim": 16,
    "face_encoder_hidden_dim": 16,
    "face_encoder_num_heads": 2,
    "inject_face_latents_blocks": 2,
}
SIZES = {"480p": (832, 480), "720p": (1280, 720)}


def build(config: dict, device, dtype, offload: str):
    import torch
    from diffusers import WanAnimateTransformer3DModel

    with torch.device("meta"):
        model = WanAnimateTransformer3DModel(**config)
    home = device if offload == "none" else torch.device("cpu")
    model = model.to_empty(device=home).to(dtype)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():  # as from_pretrained(torch_dtype=bf16) leaves them
        if keep & set(name.split(".")):
            module.to(torch.float32)
    generator = torch.Generator(device=home).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=generator)
        for b in model.buffers():
            if b.is_floating_point():
                b.zero_()
    if offload == "group":
        model.enable_group_offload(
            onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
            num_blocks_per_group=1, use_stream=device.type == "cuda",
        )  # fmt: skip
    return model.eval()


def inputs(config: dict, size: tuple[int, int], frames: int, device, dtype, tokens: int) -> dict:
    import torch

    width, height = size
    latent_t = (frames - 1) // 4 + 1
    h, w = height // 8, width // 8
    face = config["motion_encoder_size"]
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype)

    return {
        "hidden_states": rnd(1, config["in_channels"], latent_t + 1, h, w),
        "timestep": torch.tensor([999], device=device),
        "encoder_hidden_states": rnd(1, tokens, config["text_dim"]),
        "encoder_hidden_states_image": rnd(1, 257, config["image_dim"]),
        "pose_hidden_states": rnd(1, config["latent_channels"], latent_t, h, w),
        "face_pixel_values": rnd(1, 3, frames, face, face).clamp(-1, 1),
    }


def measure(config: dict, size, frames: int, steps: int, device, dtype, offload: str, tokens: int) -> dict:
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model = build(config, device, dtype, offload)
    built = time.perf_counter() - start
    kwargs = inputs(config, size, frames, device, dtype, tokens)
    times = []
    with torch.inference_mode():
        for i in range(steps + 1):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(**kwargs, return_dict=False)
            if cuda:
                torch.cuda.synchronize()
            if i:  # the first pass warms up kernels (and, offloaded, the pinned copies)
                times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    params = sum(p.numel() for p in model.parameters())
    del model, kwargs
    if cuda:
        torch.cuda.empty_cache()
    tokens_video = (frames - 1) // 4 + 2
    return {
        "resolution": size,
        "frames": frames,
        "offload": offload,
        "params": params,
        "seconds_per_step": min(times),
        "seconds_per_step_median": sorted(times)[len(times) // 2],
        "peak_gpu_gib": None if peak is None else round(peak / 1024**3, 2),
        "build_seconds": round(built, 1),
        "sequence_tokens": tokens_video * (size[1] // 16) * (size[0] // 16),
    }


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config (smoke run of this script)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--frames", type=int, default=77)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--resolutions", default="480p,720p")
    parser.add_argument("--offload", default="none,group", help="comma list of none | group")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "wan_gpu.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    config = TINY if args.tiny else FULL
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    rows = []
    for name in args.resolutions.split(","):
        size = (64, 64) if args.tiny else SIZES[name]
        for offload in args.offload.split(","):
            try:
                row = measure(
                    config, size, args.frames, args.steps, device, dtype, offload, 16 if args.tiny else 512
                )
            except torch.OutOfMemoryError as exc:
                row = {"resolution": size, "frames": args.frames, "offload": offload, "error": str(exc)[:200]}
            row["tier"] = name
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'tier':<6}{'offload':<9}{'s/step':>9}{'peak GiB':>10}{'tokens':>9}")
    for r in rows:
        sps = f"{r['seconds_per_step']:.2f}" if "seconds_per_step" in r else "OOM"
        print(
            f"{r['tier']:<6}{r['offload']:<9}{sps:>9}{r.get('peak_gpu_gib') or '-':>10}{r.get('sequence_tokens', '-'):>9}"
        )
    report = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": str(dtype),
        "config": "tiny" if args.tiny else "Wan2.2-Animate-14B (random weights)",
        "rows": rows,
    }
    if not args.tiny:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
