"""``animate train run --fsdp`` under ``accelerate launch --multi_gpu --num_processes 2`` on the CPU (gloo):
the UNet is sharded with FSDP2 ``fully_shard``; LoRA + temporal layers (sharded) and the pose guider (whole,
averaged by the trainer) train to the same weights as one unsharded process with the same global batch, both
ranks agree, ``final/`` loads with ``--adapter``, and a checkpoint holds full tensors (resumes unsharded)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_fixtures import save_tiny_base, tiny_train_pipeline, write_synthetic_data

from animate.train.trainer import TrainConfig, Trainer, TrainError, clip_grad_norm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARTS = ("pose_guider", "lora", "temporal")
LR = 1e-3
CLIP = 0.05


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single(tmp_path: Path, name: str, data: Path, base: Path, **overrides) -> Trainer:
    values = dict(
        output_dir=tmp_path / name,
        base=base,
        data_dir=data,
        train=PARTS,
        frames=3,
        steps=4,
        lr=LR,
        max_grad_norm=CLIP,
        batch=2,
        lora_rank=2,
        validate_every=0,
        checkpoint_every=0,
        progress=False,
    )
    return Trainer(TrainConfig(**(values | overrides)))


def _loaded(final: Path) -> dict[str, torch.Tensor]:
    """The UNet and pose guider of a fresh tiny pipeline after ``--adapter final`` (``load_adapter``)."""
    from pipelines.adapters import load_adapter

    pipe = tiny_train_pipeline()
    assert load_adapter(pipe, final) == ["pose_guider", "unet_temporal", "lora"]
    return {f"unet.{k}": v for k, v in pipe.unet.state_dict().items()} | {
        f"pose_guider.{k}": v for k, v in pipe.pose_guider.state_dict().items()
    }


def _assert_same(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], start: dict[str, torch.Tensor]
) -> None:
    """``a`` equals ``b`` (``b`` trained from ``start``) on every element that a real gradient moved.

    AdamW moves an element with a real gradient by about ``lr`` a step. Some trained elements have no effect
    on the loss (LoRA on cross-attention q/k: SVD attends to one context token, so the softmax is 1; biases
    added right before a GroupNorm): their gradient is float noise (~1e-10), which Adam's normalisation turns
    into steps of up to ~lr/10 whose size and sign depend on the summation order. Those are only bounded."""
    assert a.keys() == b.keys()
    real = total = 0
    for key in a:
        if key not in start:  # frozen: untouched by both
            assert torch.equal(a[key], b[key]), key
            continue
        moved = (b[key] - start[key]).abs() > LR / 4
        real, total = real + int(moved.sum()), total + moved.numel()
        # a twentieth of one step's move: summation order differs by CPU (AMD EPYC showed > 2e-6)
        torch.testing.assert_close(a[key][moved], b[key][moved], rtol=1e-4, atol=LR / 20, msg=key)
        assert (a[key] - b[key]).abs().max() < LR / 2, key
    assert real > total / 2, (real, total)  # most trained elements are compared exactly


@pytest.mark.slow  # two launched processes plus three in-process runs: ~60 s CPU
def test_fsdp_on_two_gloo_processes_equals_one_process_with_the_global_batch(tmp_path):
    data = write_synthetic_data(tmp_path / "data", clips=4, frames=3)
    base = save_tiny_base(tmp_path / "weights")
    run = tmp_path / "fsdp"
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "animate.train", "run", "--fsdp", "--data", str(data), "--base", str(base), "-o", str(run),
        "--train", ",".join(PARTS), "--lora-rank", "2", "--frames", "3", "--steps", "4", "--lr", "1e-3",
        "--batch", "1", "--validate-every", "4", "--checkpoint-every", "2", "--no-progress",
        "--max-grad-norm", str(CLIP),  # gradient norms here are 0.1 to 0.35: clipping is active
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # no GPU here: accelerate's MULTI_CPU on gloo
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 4 steps") == 1

    ranks = [json.loads((run / "logs" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["processes"] for r in ranks] == [2, 2]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # gathered weights agree
    assert [c.name for c in sorted((run / "checkpoints").iterdir())] == ["step-0000002", "step-0000004"]
    assert (run / "validation" / "step-0000004.mp4").stat().st_size > 0  # both ranks ran its forward

    single = _single(tmp_path, "one", data, base)
    start = {k: v.detach().clone() for k, v in single.named.items()}  # the weights before training
    result = single.run()
    per_step = [a + b for a, b in zip(ranks[0]["clips_per_step"], ranks[1]["clips_per_step"], strict=True)]
    assert [sorted(s) for s in result.seen] == [sorted(s) for s in per_step]
    sharded, whole = _loaded(run / "final"), _loaded(result.final_dir)
    _assert_same(sharded, whole, start)
    untouched = {f"unet.{k}": v for k, v in tiny_train_pipeline().unet.state_dict().items()}
    moved = {
        kind: sum(
            int(not torch.equal(v, untouched[k]))
            for k, v in whole.items()
            if k in untouched and kind in k and "lora_" not in k
        )
        for kind in ("temporal", "conv_in")
    }
    assert moved["temporal"] > 0 and moved["conv_in"] == 0  # temporal layers trained, the rest frozen
    assert any(("lora_B" in k) and v.abs().max() > 0 for k, v in whole.items())  # LoRA left zero-init

    # the checkpoint holds full tensors: an unsharded single process resumes it exactly
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / "step-0000002", resumed_dir / "checkpoints" / "step-0000002")
    resumed = _single(tmp_path, "resumed", data, base, resume="latest").run()
    assert resumed.losses == pytest.approx(result.losses[2:], rel=1e-4)
    _assert_same(_loaded(resumed.final_dir), whole, start)


def test_fsdp_refuses_what_it_does_not_shard(tmp_path):
    with pytest.raises(TrainError, match="--ema"):
        TrainConfig(output_dir=tmp_path, fsdp=True, ema=True).validate()
    with pytest.raises(TrainError, match="bf16"):
        TrainConfig(output_dir=tmp_path, fsdp=True, mixed_precision="fp16").validate()


def test_clip_grad_norm_is_torchs_rule():
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b in zip(ours, theirs, strict=True):
        a.grad = torch.randn_like(a) * 3
        b.grad = a.grad.clone()
    # by hand: the L2 norm of all gradients together, scaled to 0.5 / (norm + 1e-6)
    norm = torch.cat([p.grad.reshape(-1) for p in ours]).pow(2).sum().sqrt()
    expected = [p.grad * (0.5 / (norm + 1e-6)) for p in ours]
    total = clip_grad_norm(ours, 0.5)
    torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    torch.testing.assert_close(total, norm)
    for a, b, e in zip(ours, theirs, expected, strict=True):
        torch.testing.assert_close(a.grad, e)
        torch.testing.assert_close(a.grad, b.grad)
    small = [torch.nn.Parameter(torch.ones(2))]
    small[0].grad = torch.full((2,), 0.1)
    clip_grad_norm(small, 1.0)  # under the limit: unchanged
    assert torch.equal(small[0].grad, torch.full((2,), 0.1))


def test_accelerates_own_fsdp_launch_is_refused_with_the_way_to_shard(tmp_path):
    from types import SimpleNamespace

    fsdp_launch = SimpleNamespace(distributed_type=SimpleNamespace(name="FSDP"))
    with pytest.raises(TrainError, match="--fsdp") as caught:
        Trainer(TrainConfig(output_dir=tmp_path), accelerator=fsdp_launch)
    assert caught.value.code == "train_invalid"


def test_the_8_gpu_config_is_a_plain_multi_gpu_accelerate_config():
    from accelerate.commands.config.config_args import ClusterConfig

    path = Path(__file__).parents[1] / "animate" / "train" / "configs" / "fsdp_8gpu.yaml"
    config = ClusterConfig.from_yaml_file(str(path))
    assert (config.distributed_type.name, config.num_processes) == ("MULTI_GPU", 8)
    assert "run --fsdp" in path.read_text()
