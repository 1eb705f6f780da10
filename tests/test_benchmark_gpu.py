"""``benchmarks/gpu_pipeline.py`` end to end on CPU with tiny components: every configuration reported.

Runs the script as a user would (a subprocess), with the fewest frames and steps that still exercise each
configuration (2 frames; a 3-frame "video" tiled by 2 with overlap 1, and by one tile), then reads the JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_pipeline.py"
TIMED = (
    "step_s_median",
    "step_s_mean",
    "end_to_end_s",
    "decode_s",
    "flops_per_step",
    "achieved_tflops",
    "fraction_of_peak",
    "peak_memory_mib",
)


def _controlnet_available() -> bool:
    try:
        from controlnets import MotionControlNet  # noqa: F401
        from pipelines.testing import tiny_motion_controlnet  # noqa: F401
    except ImportError:
        return False
    return True


def test_cpu_tiny_run_reports_every_configuration(tmp_path):
    command = [
        sys.executable,
        str(SCRIPT),
        "--device", "cpu",
        "--frames", "2",
        "--video-frames", "3",
        "--video-tiles", "2/1,4/1",
        "--steps", "2",
        "--warmup-steps", "0",
        "--height", "16",
        "--width", "16",
        "--out", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_pipeline_cpu_tiny.json").read_text())

    assert report["scale"] == "tiny"
    env = report["environment"]
    assert env["torch"] == torch.__version__ and env["diffusers"] and env["device_name"]
    assert report["matmul_peak_tflops"] > 0
    configs = {c["name"]: c for c in report["configurations"]}
    expected = {
        "svd_f2",
        "ours_f2",
        "ours_guided_f2",
        "ours_controlnet_f2",
        "ours_guided_f2_cfg_sequential",
        "video_f3_tile2o1",
        "video_f3_tile4o1",
        "video_f3_tile2o1_low_memory",
        *(
            f"opt_{name}_f2"
            for name in (
                "attention_eager",
                "attention_xformers",
                "fused_qkv",
                "channels_last",
                "forward_chunking",
                "step_cache",
                "compile",
                "fast",
            )
        ),
    }
    assert set(configs) == expected

    may_skip = {"opt_attention_xformers_f2", "opt_compile_f2"}  # no xformers / no --compile on CPU
    if not _controlnet_available():
        may_skip.add("ours_controlnet_f2")
    for name, config in configs.items():
        assert config["error"] is None, (name, config["error"])
        if config["skipped"]:
            assert name in may_skip, (name, config["skipped"])
            continue
        for key in TIMED:
            assert config[key] is not None and config[key] > 0, (name, key, config[key])
        assert config["steps_timed"] == 1 and config["unet_calls_per_step"] >= 1

    # the oracle: with no guidance and one tile our pipeline computes exactly SVD's latents
    assert configs["ours_f2"]["max_abs_diff"] == 0.0
    # tiling: 3 frames + reference in tiles of 2 overlapping by 1 -> 3 tiles; one tile of 4 with 2 CFG calls
    assert configs["video_f3_tile2o1"]["unet_calls_per_step"] == 3
    assert configs["video_f3_tile4o1"]["unet_calls_per_step"] == 2
    assert configs["ours_guided_f2_cfg_sequential"]["unet_calls_per_step"] == 2
    # exact rewrites stay close; the step cache differs (reported, not hidden)
    for name in ("fused_qkv", "channels_last", "forward_chunking", "attention_eager", "fast"):
        assert configs[f"opt_{name}_f2"]["rel_l2_diff"] <= 1e-4, name
    assert configs["opt_step_cache_f2"]["rel_l2_diff"] is not None
    assert configs["video_f3_tile2o1_low_memory"]["rel_l2_diff"] <= 1e-4

    assert [row["chunk"] for row in report["vae_decode"]] == [1, 2]
    assert all(row["seconds"] > 0 and row["peak_memory_mib"] > 0 for row in report["vae_decode"])
    assert "| svd_f2" in done.stdout and "wrote" in done.stdout
