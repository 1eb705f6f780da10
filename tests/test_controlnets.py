"""PoseGuider and GuidanceEncoder/GuidanceFusion: key-exact layouts, exact no-op when fresh, real effect re-initialised."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import load_manifest

from controlnets import GuidanceEncoder, GuidanceFusion, PoseGuider, convert_champ_state_dict
from pipelines.testing import reinit_zero_layers, tiny_guidance_encoders, tiny_pose_guider


def test_pose_guider_default_is_key_and_shape_exact_with_mimicmotion():
    manifest = load_manifest("mimicmotion_1_1.json")
    expected = {
        k.removeprefix("pose_net."): v for k, v in manifest["keys"].items() if k.startswith("pose_net.")
    }
    with torch.device("meta"):
        guider = PoseGuider()
    ours = {k: list(v.shape) for k, v in guider.state_dict().items()}
    assert ours == expected
    assert sum(p.numel() for p in guider.parameters()) == manifest["param_count_pose_net"] == 205_557


def test_pose_guider_fresh_is_exact_zero_and_downsamples_like_the_vae():
    torch.manual_seed(0)
    guider = PoseGuider()
    out = guider(torch.rand(2, 3, 64, 96) * 2 - 1)
    assert out.shape == (2, 320, 8, 12)
    assert torch.equal(out, torch.zeros_like(out))
    assert guider.scale.item() == 2.0
    assert guider.downsample_factor == 8
    assert tiny_pose_guider().downsample_factor == 2


def test_pose_guider_reinitialised_depends_on_pose_and_scale():
    torch.manual_seed(0)
    guider = tiny_pose_guider()
    reinit_zero_layers(guider)
    pose_a, pose_b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out_a = guider(pose_a)
    assert out_a.shape == (2, 32, 16, 16)
    assert not torch.allclose(out_a, guider(pose_b))
    with torch.no_grad():
        guider.scale.fill_(1.0)
    torch.testing.assert_close(guider(pose_a) * 2, out_a)
    # 5-D input (batch, frames, ...) is flattened like MimicMotion's
    assert guider(pose_a[None]).shape == out_a.shape


def test_guidance_encoder_default_maps_every_champ_key_used_in_forward():
    manifest = load_manifest("champ_guidance_encoder.json")
    with torch.device("meta"):
        encoder = GuidanceEncoder()
    champ = {k: torch.empty(v, device="meta") for k, v in manifest["keys"].items()}
    conversion = convert_champ_state_dict(champ, encoder)
    assert conversion.missing == ()
    used = set(manifest["keys_used_in_forward"])
    mapped_from = {k for k in champ if k not in conversion.ignored}
    assert mapped_from == used
    assert all(k.startswith(("attentions.", "guidance_attention.")) for k in conversion.ignored)


def test_champ_state_dict_loads_strictly_and_reports_a_truncated_file():
    torch.manual_seed(0)
    encoder = GuidanceEncoder(
        block_out_channels=(8, 16, 32), out_channels=32, attention_num_heads=2, attention_norm_num_groups=8
    )
    reinit_zero_layers(encoder)
    # Champ's layout: our attention is its `attentions.<last>`, plus attention blocks its forward never uses
    champ = {
        ("attentions.3." + k[len("attention.") :] if k.startswith("attention.") else k): v
        for k, v in encoder.state_dict().items()
    }
    champ["attentions.0.norm.weight"] = torch.ones(8)
    champ["guidance_attention.proj_in.bias"] = torch.ones(32)
    fresh = GuidanceEncoder(**encoder.config)
    conversion = convert_champ_state_dict(champ, fresh)
    assert conversion.missing == ()
    assert set(conversion.ignored) == {"attentions.0.norm.weight", "guidance_attention.proj_in.bias"}
    fresh.load_state_dict(conversion.state_dict, strict=True)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(fresh(x), encoder(x), rtol=0, atol=0)
    del champ["conv_out.bias"]
    assert convert_champ_state_dict(champ, fresh).missing == ("conv_out.bias",)


def test_guidance_encoder_fresh_is_exact_zero():
    torch.manual_seed(0)
    encoder = GuidanceEncoder(
        block_out_channels=(8, 16, 32), out_channels=32, attention_num_heads=2, attention_norm_num_groups=8
    )
    out = encoder(torch.rand(3, 3, 32, 32))
    assert out.shape == (3, 32, 8, 8)
    assert torch.equal(out, torch.zeros_like(out))


def test_spatial_attention_matches_champs_transformer_math():
    """GroupNorm -> 1x1 proj_in -> x + attn(LN(x)) -> x + GEGLU-FF(LN(x)) -> 1x1 proj_out -> + residual."""
    torch.manual_seed(0)
    encoder = GuidanceEncoder(
        block_out_channels=(8, 16), out_channels=32, attention_num_heads=2, attention_norm_num_groups=8
    )
    for p in encoder.attention.parameters():
        torch.nn.init.normal_(p, std=0.3)
    attn = encoder.attention
    block = attn.transformer_blocks[0]
    x = torch.randn(2, 16, 5, 6)
    h = attn.proj_in(F.group_norm(x, 8, attn.norm.weight, attn.norm.bias, eps=1e-6))
    tokens = h.flatten(2).transpose(1, 2)  # (b, hw, c)
    n = F.layer_norm(tokens, (16,), block.norm1.weight, block.norm1.bias)
    q, k, v = (F.linear(n, getattr(block.attn1, f"to_{c}").weight) for c in "qkv")
    heads = lambda t: t.unflatten(-1, (2, 8)).transpose(1, 2)  # noqa: E731
    a = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / 8**0.5, dim=-1) @ heads(v)
    tokens = tokens + block.attn1.to_out[0](a.transpose(1, 2).flatten(2))
    n = F.layer_norm(tokens, (16,), block.norm3.weight, block.norm3.bias)
    value, gate = block.ff.net[0].proj(n).chunk(2, dim=-1)
    tokens = tokens + block.ff.net[2](value * F.gelu(gate))
    expected = attn.proj_out(tokens.transpose(1, 2).reshape(2, 16, 5, 6)) + x
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


def test_guidance_fusion_sums_learns_weights_and_skips_zero_scales():
    torch.manual_seed(0)
    fusion = tiny_guidance_encoders("sum")
    maps = {name: torch.rand(2, 3, 32, 32) for name in fusion.guidance_types}
    fresh = fusion(maps)
    assert torch.equal(fresh, torch.zeros_like(fresh))
    reinit_zero_layers(fusion)
    parts = {name: fusion.encoders[name](x) for name, x in maps.items()}
    torch.testing.assert_close(fusion(maps), parts["depth"] + parts["normal"] + parts["semantic"])
    torch.testing.assert_close(
        fusion(maps, {"normal": 0, "semantic": 0.5}), parts["depth"] + 0.5 * parts["semantic"]
    )
    assert fusion({"depth": maps["depth"]}, {"depth": 0}) is None
    with pytest.raises(ValueError, match="unknown guidance types"):
        fusion({"albedo": maps["depth"]})

    learned = tiny_guidance_encoders("learned")
    learned.load_state_dict({**fusion.state_dict(), "fusion_weights": torch.tensor([1.0, -2.0, 0.0])})
    torch.testing.assert_close(learned(maps), parts["depth"] - 2 * parts["normal"])
    with pytest.raises(ValueError, match="fusion"):
        GuidanceFusion(fusion="max")


def test_save_and_load_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    guider, fusion = tiny_pose_guider(), tiny_guidance_encoders("learned")
    reinit_zero_layers(guider)
    reinit_zero_layers(fusion)
    guider.save_pretrained(tmp_path / "guider")
    fusion.save_pretrained(tmp_path / "fusion")
    guider2 = PoseGuider.from_pretrained(tmp_path / "guider")
    fusion2 = GuidanceFusion.from_pretrained(tmp_path / "fusion")
    assert (tmp_path / "guider" / "diffusion_pytorch_model.safetensors").is_file()
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(guider2(x), guider(x))
    maps = {"depth": x, "semantic": x.flip(-1)}
    assert torch.equal(fusion2(maps), fusion(maps))
    assert fusion2.config.fusion == "learned"
