"""Each trainable set reaches the pipeline and comes back from the run folder: the motion ControlNet and the
UNet's temporal layers (their tensors only), gradient checkpointing changes nothing but memory, and bad
``animate train run`` input is a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _train_fixtures import SyntheticClips, tiny_train_pipeline

from animate.train import forward
from animate.train.objective import EDMObjective
from animate.train.trainer import TrainConfig, Trainer, render_validation, trainable_parameters
from pipelines.adapters import inject_lora, load_adapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_motion_controlnet_and_temporal_layers_train_and_reload(tmp_path):
    pipe = tiny_train_pipeline(with_motion_controlnet=True)
    dataset = SyntheticClips(count=2, frames=2)
    config = TrainConfig(
        output_dir=tmp_path,
        train=("motion_controlnet", "temporal"),
        steps=2,
        lr=1e-2,
        validate_every=0,
        checkpoint_every=0,
        validation_steps=2,
        progress=False,
    )
    trainer = Trainer(config, dataset=dataset, pipeline=pipe)
    zero = [
        p for n, p in pipe.motion_controlnet.named_parameters() if n.startswith("controlnet_down_blocks.")
    ]
    assert all(p.abs().max() == 0 for p in zero)
    temporal_before = {k: p.detach().clone() for k, p in trainer.named.items() if k.startswith("unet.")}
    spatial_before = pipe.unet.down_blocks[0].resnets[0].spatial_res_block.conv1.weight.detach().clone()
    assert temporal_before and all("temporal" in k or "time_" in k for k in temporal_before)
    result = trainer.run()

    assert all(p.abs().max() > 0 for p in zero)  # the zero convs learnt
    assert any(not torch.equal(trainer.named[k], v) for k, v in temporal_before.items())
    assert torch.equal(pipe.unet.down_blocks[0].resnets[0].spatial_res_block.conv1.weight, spatial_before)
    assert {p.name for p in result.final_dir.iterdir()} == {
        "adapter.json",
        "motion_controlnet",
        "unet_temporal",
    }

    fresh = tiny_train_pipeline(with_motion_controlnet=True)
    assert load_adapter(fresh, result.final_dir) == ["motion_controlnet", "unet_temporal"]
    pipe.motion_controlnet.eval()
    item = dataset[0]
    trained_video = render_validation(pipe, item, config, trainer.forward_options)[0]
    loaded_video = render_validation(fresh, item, config, trainer.forward_options)[0]
    base_video = render_validation(tiny_train_pipeline(True), item, config, trainer.forward_options)[0]
    assert np.array_equal(loaded_video, trained_video)
    assert not np.array_equal(loaded_video, base_video)

    # temporal tensors that do not fit the base UNet are refused, not silently skipped
    from safetensors.torch import save_file

    from pipelines.checkpoints import CheckpointError

    save_file(
        {"down_blocks.9.temporal_res_block.weight": torch.zeros(1)},
        result.final_dir / "unet_temporal" / "diffusion_pytorch_model.safetensors",
    )
    with pytest.raises(CheckpointError, match="does not fit the UNet"):
        load_adapter(tiny_train_pipeline(with_motion_controlnet=True), result.final_dir)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    item = SyntheticClips(count=1, frames=2)[0]
    results = []
    for checkpointing in (False, True):
        pipe = tiny_train_pipeline()
        inject_lora(pipe.unet, rank=4)
        named = trainable_parameters(pipe, ("pose_guider", "lora"))
        calls = []
        if checkpointing:
            pipe.unet.enable_gradient_checkpointing()
            for module in pipe.unet.modules():
                original = getattr(module, "_gradient_checkpointing_func", None)
                if getattr(module, "gradient_checkpointing", False) and original is not None:

                    def counting(*args, _original=original, _calls=calls, **kwargs):
                        _calls.append(1)
                        return _original(*args, **kwargs)

                    module._gradient_checkpointing_func = counting
        loss = forward.sample_loss(
            pipe, item, EDMObjective(), forward.sample_generator(0, 0, 0), forward.ForwardOptions()
        )
        loss.backward()
        results.append((loss.detach(), {k: p.grad.clone() for k, p in named.items() if p.grad is not None}))
        assert bool(calls) == checkpointing  # the recomputation really ran
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and any(g.abs().max() > 0 for g in grads_a.values())
    for key in grads_a:
        torch.testing.assert_close(grads_b[key], grads_a[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train", "pose_guider,everything"], "--train takes a comma list"),
        (["--mixed-precision", "fp8"], "--mixed-precision must be one of"),
        ([], "usable clips"),  # the data folder holds no prepared clip
    ],
)
def test_bad_train_input_is_a_clear_error(tmp_path, capsys, extra, message):
    from animate.cli import run as cli_run

    argv = [
        "train",
        "run",
        "--data",
        str(tmp_path / "none"),
        "--base",
        str(tmp_path),
        "-o",
        str(tmp_path / "r"),
    ]
    assert cli_run([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "[train_invalid]" in err and "Traceback" not in err
