"""Independent expectations for AnimationPipeline's UNet calls (used by test_pipeline.py and
test_pipeline_controlnet.py).

A reference forward pass of the stock SVD UNet, written here from diffusers' and DisPose's code (no hooks),
takes the guidance features and ControlNet residuals as plain additions; the pipeline's UNet calls are
captured (inputs and outputs) and must equal it. Tile fusion and classifier-free guidance are checked the
same way: the fused ``noise_pred`` must equal a blend of the captured per-call predictions computed by hand
(triangular weights, ``uncond + s * (cond - uncond)`` with per-frame scales).
"""

from __future__ import annotations

import torch
from diffusers import UNetSpatioTemporalConditionModel

from pipelines import AnimationPipeline
from pipelines.testing import reinit_zero_layers, tiny_components

SIZE = 32


LATENT = SIZE // 2  # the tiny VAE downsamples by 2


ATOL = 1e-5


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def reference_unet(
    unet: UNetSpatioTemporalConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    added_time_ids: torch.Tensor,
    features: torch.Tensor | None = None,
    down: list[torch.Tensor] | None = None,
    mid: torch.Tensor | None = None,
    mode: str = "once",
) -> torch.Tensor:
    """diffusers' spatio-temporal UNet forward, written out, with MimicMotion's pose features added to
    ``conv_in``'s output and ControlNet residuals: ``"once"`` adds each skip's residual before the up
    blocks (diffusers' ControlNets); ``"dispose"`` adds them to every skip collected so far after each
    down block (DisPose's UNet loop). Rows of ``features`` / residuals: every ``batch * frames`` row."""
    batch, frames = sample.shape[:2]
    emb = unet.time_embedding(unet.time_proj(timestep.reshape(-1).expand(batch)).to(sample.dtype))
    time_embeds = unet.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
    emb = (emb + unet.add_embedding(time_embeds)).repeat_interleave(frames, dim=0)
    context = encoder_hidden_states.repeat_interleave(frames, dim=0)
    indicator = torch.zeros(batch, frames, dtype=sample.dtype)
    x = unet.conv_in(sample.flatten(0, 1))
    if features is not None:
        x = x + features
    skips = [x]
    for block in unet.down_blocks:
        kwargs = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
        x, res = block(hidden_states=x, temb=emb, image_only_indicator=indicator, **kwargs)
        skips += list(res)
        if mode == "dispose" and down is not None:
            skips = [s + r for s, r in zip(skips, down, strict=False)]
    if mode == "once" and down is not None:
        skips = [s + r for s, r in zip(skips, down, strict=True)]
    x = unet.mid_block(
        hidden_states=x, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator
    )
    if mid is not None:
        x = x + mid
    for block in unet.up_blocks:
        count = len(block.resnets)
        res, skips = tuple(skips[-count:]), skips[:-count]
        kwargs = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
        x = block(
            hidden_states=x, temb=emb, res_hidden_states_tuple=res, image_only_indicator=indicator, **kwargs
        )
    x = unet.conv_out(unet.conv_act(unet.conv_norm_out(x)))
    return x.reshape(batch, frames, *x.shape[1:])


class UNetCalls:
    """Every UNet call of a pipeline run: ``sample``, ``t``, ``encoder_hidden_states``, ``added_time_ids``
    and the prediction it returned (hooks on the UNet module itself, not on its blocks)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.calls: list[dict] = []
        unet.register_forward_pre_hook(self._before, with_kwargs=True)
        unet.register_forward_hook(self._after)

    def _before(self, module, args, kwargs):
        sample, t = args[:2]
        self.calls.append(
            {
                "sample": sample.clone(),
                "t": torch.as_tensor(t).clone(),
                "encoder_hidden_states": kwargs["encoder_hidden_states"].clone(),
                "added_time_ids": kwargs["added_time_ids"].clone(),
            }
        )

    def _after(self, module, args, output):
        self.calls[-1]["output"] = output[0].clone()

    def reference(self, unet: torch.nn.Module, call: dict, **kwargs) -> torch.Tensor:
        with torch.no_grad():
            return reference_unet(
                unet,
                call["sample"],
                call["t"],
                call["encoder_hidden_states"],
                call["added_time_ids"],
                **kwargs,
            )


def make_pipe(pose: bool = False, controlnet: bool = False, residual_mode: str = "once") -> AnimationPipeline:
    components = tiny_components(with_motion_controlnet=controlnet)
    if pose:
        reinit_zero_layers(components["pose_guider"])
        reinit_zero_layers(components["guidance_encoders"])
    if controlnet:
        components["motion_controlnet"].register_to_config(residual_mode=residual_mode)
        reinit_zero_layers(components["motion_controlnet"])
    pipe = AnimationPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe: AnimationPipeline, noise_preds: list | None = None, **kwargs) -> torch.Tensor:
    """One step by default; ``noise_preds`` collects the fused prediction of every step."""

    def keep(pipeline, step, timestep, tensors):
        noise_preds.append(tensors["noise_pred"].clone())
        return {}

    inputs = {
        "image": _rand(1, 3, SIZE, SIZE, seed=0),
        "height": SIZE,
        "width": SIZE,
        "num_inference_steps": 1,
        "generator": torch.Generator().manual_seed(0),
        "output_type": "latent",
        "min_guidance_scale": 1.0,
        "max_guidance_scale": 2.5,
        "noise_aug_strength": 0.02,
    }
    if noise_preds is not None:
        inputs |= {"callback_on_step_end": keep, "callback_on_step_end_tensor_inputs": ["noise_pred"]}
    inputs.update(kwargs)
    return pipe(**inputs).frames


def _svd_layout_unet() -> UNetSpatioTemporalConditionModel:
    """SVD's four down blocks (three with cross-attention) and their up blocks, at toy width."""
    torch.manual_seed(0)
    return UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=2,
        sample_size=16,
        in_channels=8,
        out_channels=4,
        cross_attention_dim=32,
        num_attention_heads=(2, 2, 2, 2),
        projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32,
    ).eval()


class ControlNetCalls:
    """The motion ControlNet's residuals of every call."""

    def __init__(self, controlnet: torch.nn.Module) -> None:
        self.outputs: list[tuple[list[torch.Tensor], torch.Tensor]] = []
        controlnet.register_forward_hook(
            lambda m, a, out: self.outputs.append(([d.clone() for d in out[0]], out[1].clone()))
        )
