"""``accelerate launch --multi_gpu --num_processes 2 -m animate.train run`` on the CPU (gloo): both ranks end
with the same weights, every clip is trained on once per epoch across the ranks, one checkpoint per save,
and the result equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_fixtures import save_tiny_base, write_synthetic_data
from safetensors.torch import load_file

from animate.train.trainer import TrainConfig, Trainer

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.slow,
]  # two launched processes: ~30 s CPU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(final: Path) -> dict[str, torch.Tensor]:
    out = {}
    for part in ("pose_guider", "guidance_encoders"):
        out |= {
            f"{part}.{k}": v
            for k, v in load_file(final / part / "diffusion_pytorch_model.safetensors").items()
        }
    return out


def test_two_gloo_processes_equal_one_process_with_the_global_batch(tmp_path):
    data = write_synthetic_data(tmp_path / "data", clips=4, frames=3)
    base = save_tiny_base(tmp_path / "weights")
    run = tmp_path / "two"
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "animate.train", "run", "--data", str(data), "--base", str(base), "-o", str(run),
        "--train", "pose_guider,guidance", "--frames", "3", "--steps", "4", "--lr", "1e-3", "--batch", "1",
        "--validate-every", "0", "--checkpoint-every", "2", "--no-progress",
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # no GPU here: accelerate's MULTI_CPU on gloo
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 4 steps") == 1  # rank 0 speaks for the run

    ranks = [json.loads((run / "logs" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["processes"] for r in ranks] == [2, 2]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    per_step = [a + b for a, b in zip(ranks[0]["clips_per_step"], ranks[1]["clips_per_step"], strict=True)]
    # 4 clips, global batch 2: 2 steps an epoch, each clip once per epoch over both ranks
    assert sorted(per_step[0] + per_step[1]) == [0, 1, 2, 3]
    assert sorted(per_step[2] + per_step[3]) == [0, 1, 2, 3]
    # one checkpoint folder per save, its model/optimizer state written once
    checkpoints = sorted((run / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-0000002", "step-0000004"]
    assert len(list(checkpoints[-1].glob("optimizer*.bin"))) == 1

    single = Trainer(
        TrainConfig(
            output_dir=tmp_path / "one",
            base=base,
            data_dir=data,
            train=("pose_guider", "guidance"),
            frames=3,
            steps=4,
            lr=1e-3,
            batch=2,
            validate_every=0,
            checkpoint_every=0,
            progress=False,
        )
    )
    result = single.run()
    assert [sorted(s) for s in result.seen] == [sorted(s) for s in per_step]
    two, one = _weights(run / "final"), _weights(result.final_dir)
    assert two.keys() == one.keys()
    changed = 0
    for key in one:
        # a twentieth of one AdamW step (lr 1e-3): summation order differs by CPU (AMD EPYC showed > 1e-5)
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=5e-5, msg=key)
        changed += int(not torch.equal(one[key], _initial_weight(base, key)))
    assert changed > 0  # training moved the weights: the comparison is not of two untouched copies


def _initial_weight(base: Path, key: str) -> torch.Tensor:
    part, name = key.split(".", 1)
    return load_file(base / "animation-pipeline" / part / "diffusion_pytorch_model.safetensors")[name]
