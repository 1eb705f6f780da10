"""``animate train run`` on the tiny pipeline: overfitting two clips, exact resume after Ctrl-C, and the
round trip of the run folder through ``animate run --engine diffusion --adapter``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _train_fixtures import SyntheticClips, save_tiny_base, tiny_train_pipeline, write_synthetic_data
from conftest import DANCE, HERO_RGBA

from animate.train import forward
from animate.train.objective import EDMObjective
from animate.train.trainer import TrainConfig, Trainer, render_validation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _FixedSigma(EDMObjective):
    """The objective at one noise level (the draw from the generator is still taken, so the noise that
    follows is the same stream as in training)."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        object.__setattr__(self, "sigma", sigma)

    def sample_sigmas(self, count, generator=None):
        torch.randn(count, generator=generator)
        return torch.full((count,), self.sigma)


def _fixed_loss(pipe, dataset, sigma: float) -> float:
    """Mean loss over the clips at noise level ``sigma`` with fixed noise and no dropout."""
    options = forward.ForwardOptions(conditioning_dropout=0.0)
    with torch.no_grad():
        values = [
            forward.sample_loss(
                pipe, dataset[i], _FixedSigma(sigma), forward.sample_generator(99, 0, i), options
            )
            for i in range(len(dataset))
        ]
    return float(torch.stack(values).mean())


def _guided_frames(pipe, item, scale: float) -> np.ndarray:
    """The pipeline's frames with the pose guider and the guidance encoders at ``scale``."""
    from animate.train.trainer import validation_inputs

    num_frames = item["frames"].shape[0]
    return pipe(
        **validation_inputs(item, pipe),
        height=16,
        width=16,
        num_frames=num_frames,
        tile_size=num_frames + 1,
        tile_overlap=0,
        num_inference_steps=2,
        max_guidance_scale=1.0,
        min_guidance_scale=1.0,
        conditioning_scales={"pose": scale, **{k: scale for k in pipe.guidance_encoders.guidance_types}},
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).frames[0]


def test_overfitting_two_clips(tmp_path):
    """Two clips, the guidance parts + LoRA + temporal layers at a high learning rate: at the noise levels where
    the conditioning decides the content (sigma >= 3, the log-normal's upper half) the loss falls by at least
    half, the validation video's latents move towards the clip's (L1 -20 %), its pixels too, and the
    zero-initialised output layers become non-zero and change the pipeline's output."""
    pipe = tiny_train_pipeline()
    dataset = SyntheticClips(count=2, frames=3)
    config = TrainConfig(
        output_dir=tmp_path / "run",
        train=("pose_guider", "guidance", "lora", "temporal"),
        steps=40,
        lr=3e-3,
        conditioning_dropout=0.0,
        validate_every=40,
        validation_steps=4,
        validation_guidance=1.0,
        checkpoint_every=0,
        progress=False,
    )
    trainer = Trainer(config, dataset=dataset, pipeline=pipe)
    item = dataset[0]
    before_sigma = {s: _fixed_loss(pipe, dataset, s) for s in (3.0, 10.0, 50.0)}
    _, before_l1, before_latent_l1 = render_validation(pipe, item, config, trainer.forward_options)
    assert pipe.pose_guider.final_proj.weight.abs().max() == 0  # a fresh guider is a no-op
    assert np.array_equal(_guided_frames(pipe, item, 1.0), _guided_frames(pipe, item, 0.0))

    result = trainer.run()

    assert result.steps == 40 and len(result.losses) == 40 and not result.interrupted
    assert all(math.isfinite(v) for v in result.losses)
    for sigma, before in before_sigma.items():
        assert _fixed_loss(pipe, dataset, sigma) <= 0.5 * before, sigma
    ((step, l1, latent_l1),) = result.validation
    assert step == 40
    assert latent_l1 <= 0.8 * before_latent_l1
    assert l1 < before_l1
    # the validation video: reference | result | pose, side by side, one row per frame
    from animate.media import open_video

    video = open_video(tmp_path / "run" / "validation" / "step-0000040.mp4").info
    assert (video.codec, video.width, video.height, video.frame_count) == ("h264", 48, 16, 3)
    # TensorBoard got every step's loss (the values the run returned), lr, grad norm, speed, memory
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "logs" / "train")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/samples_per_second",
        "train/memory_mb",
    } <= tags
    assert {"validation/l1", "validation/latent_l1"} <= tags
    logged = [e.value for e in events.Scalars("train/loss")]
    np.testing.assert_allclose(logged, result.losses, rtol=1e-6)
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([3e-3] * 40)
    # zero-init outputs trained: non-zero, and the guidance now steers the frames
    assert pipe.pose_guider.final_proj.weight.abs().max() > 0
    for encoder in pipe.guidance_encoders.encoders.values():
        assert encoder.conv_out.weight.abs().max() > 0
    assert np.abs(_guided_frames(pipe, item, 1.0) - _guided_frames(pipe, item, 0.0)).max() > 1e-3
    # final/ (LoRA and temporal layers together: unet_temporal/ without the LoRA, unet_lora/ on top) reloads
    from pipelines.adapters import load_adapter

    fresh = tiny_train_pipeline()
    assert load_adapter(fresh, result.final_dir) == [
        "pose_guider",
        "guidance_encoders",
        "unet_temporal",
        "lora",
    ]
    for name in ("unet", "pose_guider", "guidance_encoders"):
        trained, loaded = getattr(pipe, name).state_dict(), getattr(fresh, name).state_dict()
        assert trained.keys() == loaded.keys()
        assert all(torch.equal(trained[k], loaded[k]) for k in trained), name
    # same weights; the frames agree to float noise (~1e-7 in the UNet, amplified by the steps from sigma 700)
    np.testing.assert_allclose(_guided_frames(fresh, item, 1.0), _guided_frames(pipe, item, 1.0), atol=1e-4)


def _resume_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(
        output_dir=tmp_path,
        train=("pose_guider", "guidance", "lora"),
        steps=6,
        lr=2e-3,
        batch=1,
        grad_accum=2,  # an epoch of 4 clips is 2 optimizer steps: the stop at 3 is mid-epoch
        lr_schedule="cosine",
        warmup_steps=2,
        ema=True,
        ema_decay=0.9,
        conditioning_dropout=0.5,
        validate_every=0,
        checkpoint_every=2,
        keep_checkpoints=2,
        progress=False,
    )
    return TrainConfig(**(values | overrides))


def _trained_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {k: p.detach().clone() for k, p in trainer.named.items()}
    state |= {f"ema.{i}": p.clone() for i, p in enumerate(trainer.ema.shadow_params)}
    return state


def test_resume_after_ctrl_c_continues_exactly(tmp_path):
    """6 steps straight vs 3 steps, Ctrl-C (the checkpoint it saves), ``resume="latest"``, 3 more: the same
    weights, EMA and loss curve (EMA, cosine warm-up schedule, accumulation, dropout all in play)."""
    straight = Trainer(
        _resume_config(tmp_path / "a"), dataset=SyntheticClips(4, 2), pipeline=tiny_train_pipeline()
    )
    full = straight.run()
    assert full.steps == 6

    def stop_at_three(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    first = Trainer(
        _resume_config(tmp_path / "b"), dataset=SyntheticClips(4, 2), pipeline=tiny_train_pipeline()
    )
    half = first.run(on_step=stop_at_three)
    assert half.interrupted and half.steps == 3 and half.final_dir is None
    checkpoints = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert checkpoints == ["step-0000002", "step-0000003"]  # the periodic one and Ctrl-C's

    second = Trainer(
        _resume_config(tmp_path / "b", resume="latest"),
        dataset=SyntheticClips(4, 2),
        pipeline=tiny_train_pipeline(),
    )
    rest = second.run()
    assert rest.steps == 6
    np.testing.assert_allclose(half.losses + rest.losses, full.losses, rtol=0, atol=1e-6)
    assert [i for s in half.seen + rest.seen for i in s] == [i for s in full.seen for i in s]
    a, b = _trained_state(straight), _trained_state(second)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    # keep last 2: step 6 (final) and step 4
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == [
        "step-0000004",
        "step-0000006",
    ]
    assert second.lr_scheduler.get_last_lr() == straight.lr_scheduler.get_last_lr()
    # final/ holds the EMA weights, not the last raw ones
    from safetensors.torch import load_file

    saved = load_file(rest.final_dir / "pose_guider" / "diffusion_pytorch_model.safetensors")
    names = list(second.named)
    for i, shadow in enumerate(second.ema.shadow_params):
        if names[i].startswith("pose_guider."):
            torch.testing.assert_close(saved[names[i].removeprefix("pose_guider.")], shadow, rtol=0, atol=0)
    raw = second.named["pose_guider.final_proj.weight"]
    assert not torch.equal(saved["final_proj.weight"], raw.detach())
    # each checkpoint carries the parts as final/ does (usable with --adapter)
    in_checkpoint = tmp_path / "b" / "checkpoints" / "step-0000006" / "adapter"
    assert json.loads((in_checkpoint / "adapter.json").read_text())["steps"] == 6
    from_checkpoint = load_file(in_checkpoint / "pose_guider" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(from_checkpoint[k], saved[k]) for k in saved)


def test_run_folder_round_trip_through_animate_run(tmp_path, capsys, monkeypatch, data_dir):
    """``animate train run`` on prepared shards with the tiny base, then ``animate run --engine diffusion
    --adapter RUN/final``: a valid mp4; and the engine with the adapter renders exactly the frames of the
    in-memory trained pipeline."""
    from animate.cli import run as cli_run
    from animate.engines.diffusion import DiffusionEngine, DiffusionOptions
    from animate.media import open_video
    from animate.settings import Settings

    data = write_synthetic_data(tmp_path / "data", clips=2, frames=3)
    base = save_tiny_base(tmp_path / "weights")
    run_dir = tmp_path / "run"
    config = TrainConfig(
        output_dir=run_dir,
        base=base,
        data_dir=data,
        train=("pose_guider", "guidance", "lora"),
        frames=3,
        steps=3,
        lr=1e-2,
        validate_every=0,
        checkpoint_every=0,
        progress=False,
    )
    trainer = Trainer(config)
    result = trainer.run()
    final = result.final_dir
    info = json.loads((final / "adapter.json").read_text())
    assert info["parts"] == ["pose_guider", "guidance", "lora"] and info["steps"] == 3
    assert {p.name for p in final.iterdir()} == {
        "adapter.json",
        "pose_guider",
        "guidance_encoders",
        "unet_lora",
    }

    # the loaded adapter renders what the trained pipeline renders
    bundle = _bundle()
    options = DiffusionOptions(steps=2, seed=0)
    trained = DiffusionEngine(trainer.pipe.to("cpu"), options)
    for module in (trainer.pipe.pose_guider, trainer.pipe.guidance_encoders):
        module.eval()
    in_memory = np.stack(list(trained.render(bundle)))
    loaded = DiffusionEngine.from_settings(
        Settings(weights_dir=base), DiffusionOptions(steps=2, seed=0, adapter=final)
    )
    assert "adapter final (pose_guider, guidance_encoders, lora)" in loaded.parts["weights"]
    from_disk = np.stack(list(loaded.render(bundle)))
    plain = np.stack(
        list(
            DiffusionEngine.from_settings(
                Settings(weights_dir=base), DiffusionOptions(steps=2, seed=0)
            ).render(bundle)
        )
    )
    assert np.array_equal(from_disk, in_memory)
    assert not np.array_equal(from_disk, plain)  # the trained parts are in effect

    monkeypatch.setenv("ANIMATE_WEIGHTS_DIR", str(base))
    out = tmp_path / "adapted.mp4"
    argv = [
        "run", str(HERO_RGBA), str(DANCE), "-o", str(out), "--engine", "diffusion", "--adapter", str(final),
        "--size", "64x64", "--max-frames", "3", "--steps", "2",
    ]  # fmt: skip
    assert cli_run(argv) == 0, capsys.readouterr().err
    video = open_video(out).info
    assert (video.codec, video.width, video.height, video.frame_count) == ("h264", 64, 64, 3)

    # not a run folder: a clear error with its code, no traceback
    argv[argv.index("--adapter") + 1] = str(run_dir)
    assert cli_run(argv) == 2
    err = capsys.readouterr().err
    assert "[adapter_invalid]" in err and "Traceback" not in err

    # `animate weights check` on the run folder reports the trained parts; a damaged part shows
    assert cli_run(["weights", "check", "--dir", str(run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["root"] == str(final)
    assert report["features"] == {
        "trained_pose_guider": True,
        "trained_guidance_encoders": True,
        "trained_lora": True,
        "adapter": True,
    }
    (final / "unet_lora" / "adapter_model.safetensors").write_bytes(b"\x00" * 4)
    assert cli_run(["weights", "check", "--dir", str(final), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["features"]["trained_lora"] is False and report["features"]["adapter"] is False


def _bundle():
    from animate.motion.bundle import GuidanceBundle

    rng = np.random.default_rng(0)
    keypoints = np.zeros((3, 133, 3), np.float32)
    keypoints[:, :17, :2] = rng.uniform(8, 56, (3, 17, 2))
    keypoints[:, :17, 2] = 1.0
    maps = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    return GuidanceBundle(
        reference=rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
        reference_mask=np.full((64, 64), 255, np.uint8),
        reference_keypoints=keypoints[0],
        keypoints=keypoints,
        fps=8.0,
        size=(64, 64),
        depth=maps,
        normal=maps[:, ::-1].copy(),
        semantic=maps[:, :, ::-1].copy(),
    )
