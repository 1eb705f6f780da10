"""Tiny random components in the real classes, for tests, benchmarks and smoke runs without weights.

Same shapes as diffusers' own SVD fast tests (block channels (32, 64), VAE downsampling 2, 32x32 frames);
the pose guider, guidance encoders and the motion ControlNet's flow branches are sized to match (one stride-2
stage, 32 output channels); the point adapter takes 16-channel reference features.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from controlnets import GuidanceFusion, MotionControlNet, PoseGuider

TINY_GUIDANCE_TYPES = ("depth", "normal", "semantic")
TINY_POINT_CHANNELS = 16
# the zero-initialised output layers of our modules, by parameter name
_ZERO_INIT_PREFIXES = ("final_proj", "controlnet_down_blocks.", "controlnet_mid_block.")
_ZERO_INIT_SUFFIXES = (
    "conv_out.weight",
    "conv_out.bias",
    "conv_out_flow.weight",
    "conv_out_flow.bias",
    "conv_out_traj.weight",
    "conv_out_traj.bias",
)


def tiny_unet() -> UNetSpatioTemporalConditionModel:
    """diffusers' SVD test UNet. Its blocks normalise in 32 groups: at the 32-channel level (one channel a
    group) the next GroupNorm removes the per-channel time embedding, so the timestep and the added time ids
    reach the prediction through the 64-channel level only (keep a level of more than 32 channels, or a
    pipeline passing the wrong ones goes unseen: ``tests/test_pipeline_animation_tiny_unet.py``)."""
    return UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32,
        num_attention_heads=8,
        projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32,
    )


def svd_scheduler() -> EulerDiscreteScheduler:
    """The SVD-xt scheduler config (v-prediction, Karras sigmas, continuous timesteps)."""
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        trained_betas=None,
        use_karras_sigmas=True,
    )


def tiny_pose_guider() -> PoseGuider:
    return PoseGuider(block_out_channels=(8, 16), out_channels=32)


def tiny_guidance_encoders(fusion: str = "sum") -> GuidanceFusion:
    return GuidanceFusion(
        guidance_types=TINY_GUIDANCE_TYPES,
        block_out_channels=(8, 16),
        out_channels=32,
        attention_num_heads=2,
        attention_norm_num_groups=8,
        fusion=fusion,
    )


def tiny_motion_controlnet(
    unet: UNetSpatioTemporalConditionModel, residual_mode: str = "once"
) -> MotionControlNet:
    """DisPose's ControlNet built from ``unet`` with tiny flow branches and point adapter."""
    return MotionControlNet.from_unet(
        unet,
        conditioning_embedding_out_channels=(8, 16),
        point_embedding_channels=TINY_POINT_CHANNELS,
        point_mid_channels=8,
        residual_mode=residual_mode,
    )


def tiny_components(
    with_guidance_encoders: bool = True, fusion: str = "sum", with_motion_controlnet: bool = False
) -> dict[str, Any]:
    """Components for ``AnimationPipeline(**components)``; seeded so two calls build identical weights."""
    torch.manual_seed(0)
    unet = tiny_unet()
    scheduler = svd_scheduler()
    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        latent_channels=4,
    )
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=32,
            num_hidden_layers=5,
            num_attention_heads=4,
            image_size=32,
            intermediate_size=37,
            patch_size=1,
        )
    )
    feature_extractor = CLIPImageProcessor(crop_size=32, size=32)
    torch.manual_seed(0)
    pose_guider = tiny_pose_guider()
    torch.manual_seed(0)
    guidance_encoders = tiny_guidance_encoders(fusion) if with_guidance_encoders else None
    torch.manual_seed(0)
    motion_controlnet = tiny_motion_controlnet(unet) if with_motion_controlnet else None
    # eval mode, as from_pretrained leaves them: a fresh transformers module in train mode takes another
    # attention kernel and differs by ~1e-7, which two Euler steps from sigma 700 amplify to ~1e-4
    for module in (unet, vae, image_encoder, pose_guider, guidance_encoders, motion_controlnet):
        if module is not None:
            module.eval()
    return {
        "unet": unet,
        "image_encoder": image_encoder,
        "scheduler": scheduler,
        "vae": vae,
        "feature_extractor": feature_extractor,
        "pose_guider": pose_guider,
        "guidance_encoders": guidance_encoders,
        **({"motion_controlnet": motion_controlnet} if with_motion_controlnet else {}),
    }


def reinit_zero_layers(module: torch.nn.Module, seed: int = 1, std: float = 0.5) -> None:
    """Give the zero-initialised output layers non-zero weights, so a conditioning path has an effect."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if (
            name.startswith(_ZERO_INIT_PREFIXES) or name.endswith(_ZERO_INIT_SUFFIXES)
        ) and param.abs().max() == 0:
            with torch.no_grad():
                param.copy_(torch.randn(param.shape, generator=generator) * std)


TINY_CLIP_MERGES = ["p h", "h u", "hu m", "hum a", "huma n</w>", "o f</w>", "c a", "ca t</w>"]


def write_clip_tokenizer(path: str | Path) -> int:
    """A byte-level CLIP BPE vocabulary (every byte alone and word-final, a few merges) in SD 1.5's files
    (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``); returns the vocabulary size."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path = Path(path)
    path.mkdir(parents=True)
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in TINY_CLIP_MERGES]
    vocab = {token: i for i, token in enumerate([*tokens, "<|startoftext|>", "<|endoftext|>"])}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(TINY_CLIP_MERGES) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return len(vocab)


def save_tiny_sd15(root: str | Path, feature_channels: int = 32) -> Path:
    """Stable Diffusion 1.5's diffusers layout, block types and scheduler config at toy widths (4 UNet
    levels, a VAE downsampling by 8), for DIFT; ``up_blocks[1]`` gives ``feature_channels`` channels."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = Path(root)
    vocab_size = write_clip_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    ).save_pretrained(root / "text_encoder")
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 16, feature_channels, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=2,
    ).save_pretrained(root / "unet")
    torch.manual_seed(0)
    AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    ).save_pretrained(root / "vae")
    # SD 1.5 ships a PNDM config; DIFT noises with DDIM's add_noise over the same betas
    PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    ).save_config(root / "scheduler")
    return root
