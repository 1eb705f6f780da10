"""Tiny random Wan2.2-Animate components in the real Diffusers layout (research sheet section 6, offline
variant): a few MB, built with each component's ``save_pretrained``; no download."""

from __future__ import annotations

from pathlib import Path

WAN_DIR = "Wan2.2-Animate-14B-Diffusers"


def tiny_wan_pipeline(seed: int = 0):
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanAnimatePipeline,
        WanAnimateTransformer3DModel,
    )
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        PreTrainedTokenizerFast,
        T5Config,
        T5EncoderModel,
    )

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
    )
    text_encoder = T5EncoderModel(
        T5Config(vocab_size=32, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
    )
    vocab = {
        "<pad>": 0,
        "</s>": 1,
        "<unk>": 2,
        **{w: i + 3 for i, w in enumerate(["people", "in", "the", "video", "are", "doing", "actions."])},
    }
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    transformer = WanAnimateTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36,
        latent_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        image_dim=4,
        rope_max_seq_len=32,
        motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16},
        motion_encoder_size=16,
        motion_style_dim=8,
        motion_dim=4,
        motion_encoder_dim=16,
        face_encoder_hidden_dim=16,
        face_encoder_num_heads=2,
        inject_face_latents_blocks=2,
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=4,
            projection_dim=4,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=4,
            intermediate_size=16,
            patch_size=1,
        )
    )
    image_processor = CLIPImageProcessor(crop_size=4, size=4)
    return WanAnimatePipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        image_processor=image_processor,
        image_encoder=image_encoder,
        transformer=transformer,
    )


def save_tiny_wan(weights_dir: Path, seed: int = 0) -> Path:
    """``weights_dir``/Wan2.2-Animate-14B-Diffusers with tiny random parts; returns that folder."""
    target = Path(weights_dir) / WAN_DIR
    tiny_wan_pipeline(seed).save_pretrained(target)
    return target
