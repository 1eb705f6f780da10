"""The identity adapter's decoupled attention against a hand-written multi-head softmax attention, and the
rules around it: which layers count as spatial cross-attention, the per-video token rows after the skipped
(unconditional) rows, the layer's own attention scale, dtype hand-offs between a float64 adapter and a
float32 UNet, the refusals, ``for_unet``'s defaults and ``reinitialize_output``'s draw.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from controlnets.identity_adapter import (
    IdentityAdapter,
    IdentityInjector,
    IdentityLayer,
    spatial_cross_attention_layers,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUERY_DIM, CONTEXT_DIM, HEADS, HEAD_DIM, TOKEN_DIM = 8, 6, 2, 4, 5
NAME = "block.transformer_blocks.0.attn2"


def attention_model(scale_qk: bool = True) -> nn.Module:
    """One spatial cross-attention layer (2 heads of 4) at ``NAME``."""
    torch.manual_seed(0)
    model = nn.Module()
    model.block = nn.Module()
    model.block.transformer_blocks = nn.ModuleList([nn.Module()])
    model.block.transformer_blocks[0].attn2 = Attention(
        query_dim=QUERY_DIM,
        cross_attention_dim=CONTEXT_DIM,
        heads=HEADS,
        dim_head=HEAD_DIM,
        scale_qk=scale_qk,
    )
    return model


def adapter_for(model: nn.Module, num_tokens: int = 3) -> IdentityAdapter:
    adapter = IdentityAdapter.for_unet(model, embedding_dim=7, num_tokens=num_tokens, token_dim=TOKEN_DIM)
    adapter.reinitialize_output(std=0.5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.to_out.bias.normal_()
    return adapter.eval()


def reference_identity(
    attn: Attention, layer: IdentityLayer, hidden: torch.Tensor, tokens: torch.Tensor, scale
):
    """``to_out(softmax(q k^T * attn.scale) v)`` per head, heads side by side, for each row with its own
    tokens; float64 throughout."""
    hidden, tokens = hidden.double(), tokens.double()
    q = hidden @ attn.to_q.weight.double().T  # (R, L, heads * d)
    k = tokens @ layer.to_k.weight.double().T  # (R, N, heads * d)
    v = tokens @ layer.to_v.weight.double().T
    outputs = []
    for h in range(HEADS):
        cols = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
        weights = torch.softmax(q[..., cols] @ k[..., cols].transpose(1, 2) * attn.scale, dim=-1)
        outputs.append(weights @ v[..., cols])
    mixed = torch.cat(outputs, dim=-1)
    return scale * (mixed @ layer.to_out.weight.double().T + layer.to_out.bias.double())


@pytest.mark.parametrize("scale_qk", [True, False])
def test_hooked_layer_adds_a_hand_written_multi_head_attention_per_video(scale_qk):
    model = attention_model(scale_qk)
    attn = model.block.transformer_blocks[0].attn2
    assert attn.scale == (HEAD_DIM**-0.5 if scale_qk else 1.0)
    adapter = adapter_for(model)
    layer = adapter.layers["block__transformer_blocks__0__attn2"]
    generator = torch.Generator().manual_seed(2)
    videos, frames, skip = 2, 3, 4  # 4 skipped rows, then 2 videos of 3 frames
    hidden = torch.randn(skip + videos * frames, 10, QUERY_DIM, generator=generator)
    clip = torch.randn(skip + videos * frames, 1, CONTEXT_DIM, generator=generator)
    tokens = torch.randn(videos, 3, TOKEN_DIM, generator=generator)  # each video its own tokens
    with torch.no_grad():
        plain = attn(hidden_states=hidden, encoder_hidden_states=clip)
        injector = IdentityInjector(model, adapter)
        with injector, injector.identity(tokens, scale=0.7, skip_rows=skip):
            hooked = attn(hidden_states=hidden, encoder_hidden_states=clip)  # hidden as a keyword
            positional = attn(hidden, encoder_hidden_states=clip)
    per_row = tokens.repeat_interleave(frames, dim=0)  # video 0 -> rows 4..6, video 1 -> rows 7..9
    expected = plain.double().clone()
    expected[skip:] += reference_identity(attn, layer, hidden[skip:], per_row, 0.7)
    torch.testing.assert_close(hooked.double(), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(hooked[:skip], plain[:skip])
    assert torch.equal(positional, hooked)
    assert injector.calls == 2 and injector.unet is model
    # the two videos really get different identities (a mix-up of token rows would show)
    swapped = reference_identity(attn, layer, hidden[skip:], tokens.flip(0).repeat_interleave(frames, 0), 0.7)
    assert (swapped - expected[skip:] + plain[skip:].double()).abs().max() > 1e-3


def test_a_single_row_gets_its_tokens_and_no_rows_is_refused():
    model = attention_model()
    attn = model.block.transformer_blocks[0].attn2
    adapter = adapter_for(model)
    layer = adapter.layers["block__transformer_blocks__0__attn2"]
    hidden, clip, tokens = torch.randn(2, 4, QUERY_DIM), torch.randn(2, 1, CONTEXT_DIM), torch.randn(1, 3, 5)
    injector = IdentityInjector(model, adapter)
    with torch.no_grad(), injector:
        plain = attn(hidden, encoder_hidden_states=clip)
        with injector.identity(tokens, 1.0, skip_rows=1):  # one conditional row of one video
            one = attn(hidden, encoder_hidden_states=clip)
        expected = plain[1:].double() + reference_identity(attn, layer, hidden[1:], tokens, 1.0)
        torch.testing.assert_close(one[1:].double(), expected, atol=1e-5, rtol=1e-5)
        with (
            injector.identity(tokens, 1.0, skip_rows=2),
            pytest.raises(ValueError, match="do not divide the 0 UNet rows after 2 skipped"),
        ):
            attn(hidden, encoder_hidden_states=clip)


def test_scale_zero_or_no_tokens_skip_the_work():
    model = attention_model()
    attn = model.block.transformer_blocks[0].attn2
    adapter = adapter_for(model)
    hidden, clip = torch.randn(1, 4, QUERY_DIM), torch.randn(1, 1, CONTEXT_DIM)
    injector = IdentityInjector(model, adapter)
    with torch.no_grad(), injector:
        plain = attn(hidden, encoder_hidden_states=clip)
        with injector.identity(torch.randn(1, 3, 5), 0.0):
            assert torch.equal(attn(hidden, encoder_hidden_states=clip), plain)
        with injector.identity(None, 1.0):
            assert torch.equal(attn(hidden, encoder_hidden_states=clip), plain)
    assert injector.calls == 0  # nothing computed, not just a zero added


def test_a_float64_adapter_on_a_float32_layer_keeps_the_layers_dtype():
    model = attention_model()
    attn = model.block.transformer_blocks[0].attn2
    adapter = adapter_for(model).double()
    layer = adapter.layers["block__transformer_blocks__0__attn2"]
    hidden, clip = torch.randn(2, 4, QUERY_DIM), torch.randn(2, 1, CONTEXT_DIM)
    tokens = torch.randn(1, 3, TOKEN_DIM)  # float32 tokens into the float64 adapter
    with torch.no_grad():
        plain = attn(hidden, encoder_hidden_states=clip)
    injector = IdentityInjector(model, adapter)
    with torch.no_grad(), injector, injector.identity(tokens, 0.5):
        hooked = attn(hidden, encoder_hidden_states=clip)
    assert hooked.dtype == torch.float32
    per_row = tokens.repeat_interleave(2, dim=0)
    expected = plain.double() + reference_identity(attn, layer, hidden, per_row, 0.5)
    torch.testing.assert_close(hooked.double(), expected, atol=1e-5, rtol=1e-5)


def test_tokens_take_any_float_embedding():
    adapter = IdentityAdapter(embedding_dim=3, num_tokens=2, token_dim=4, attention_layers=[[NAME, 8, 8, 2]])
    embedding = torch.randn(2, 3)
    expected = adapter.tokens(embedding)
    torch.testing.assert_close(adapter.tokens(embedding.double()), expected)
    # by hand: Linear, split into tokens, LayerNorm over each token
    projected = (embedding @ adapter.proj.weight.T + adapter.proj.bias).view(2, 2, 4)
    normed = (projected - projected.mean(-1, keepdim=True)) / torch.sqrt(
        projected.var(-1, unbiased=False, keepdim=True) + 1e-5
    )
    torch.testing.assert_close(expected, normed, atol=1e-5, rtol=1e-5)


# --- which layers ------------------------------------------------------------------------------------


class _StandIn(nn.Module):
    """An attention module that does not say whether it is cross-attention (counted as one)."""


def test_spatial_cross_attention_layers_by_name_and_flag():
    model = nn.Module()
    model.transformer_blocks = nn.ModuleList([nn.Module()])  # a 3-part name at the top level
    model.transformer_blocks[0].attn2 = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    model.transformer_blocks[0].attn1 = Attention(query_dim=8, heads=2, dim_head=4)
    model.block = nn.Module()
    model.block.transformer_blocks = nn.ModuleList([nn.Module(), nn.Module()])
    model.block.transformer_blocks[0].attn2 = Attention(query_dim=8, heads=2, dim_head=4)  # self-attention
    model.block.transformer_blocks[1].attn2 = _StandIn()
    model.block.temporal_transformer_blocks = nn.ModuleList([nn.Module()])
    model.block.temporal_transformer_blocks[0].attn2 = Attention(query_dim=8, cross_attention_dim=6)
    model.attn2 = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)  # not in a block
    names = [name for name, _ in spatial_cross_attention_layers(model)]
    assert names == ["transformer_blocks.0.attn2", "block.transformer_blocks.1.attn2"]


# --- construction --------------------------------------------------------------------------------


def test_for_unet_defaults():
    model = attention_model()
    model.config = SimpleNamespace()  # no cross_attention_dim: 1024-wide tokens (SVD's)
    adapter = IdentityAdapter.for_unet(model)
    assert (adapter.config.embedding_dim, adapter.config.num_tokens, adapter.config.token_dim) == (
        128,
        4,
        1024,
    )
    assert [list(entry) for entry in adapter.config.attention_layers] == [[NAME, QUERY_DIM, 8, HEADS]]
    assert adapter.proj.out_features == 4 * 1024
    model.config = SimpleNamespace(cross_attention_dim=6)
    adapter = IdentityAdapter.for_unet(model, embedding_dim=512, num_tokens=2)
    assert (adapter.config.embedding_dim, adapter.config.num_tokens, adapter.config.token_dim) == (512, 2, 6)
    assert adapter.tokens(torch.randn(3, 512)).shape == (3, 2, 6)


def test_layer_parameters_are_ip_adapter_s_bias_free_keys_and_values():
    layer = IdentityLayer(token_dim=5, inner_dim=8, query_dim=6, heads=2)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {
        "to_k.weight": (8, 5),
        "to_v.weight": (8, 5),
        "to_out.weight": (6, 8),
        "to_out.bias": (6,),
    }
    assert not layer.to_out.weight.any() and not layer.to_out.bias.any()


def test_reinitialize_output_draws_normal_weights_times_std_from_the_generator():
    adapter = IdentityAdapter(
        embedding_dim=3, num_tokens=2, token_dim=4, attention_layers=[["a", 6, 8, 2], ["b", 5, 8, 2]]
    )
    adapter.reinitialize_output(generator=torch.Generator().manual_seed(9))
    generator = torch.Generator().manual_seed(9)
    for name, shape in (("a", (6, 8)), ("b", (5, 8))):
        expected = torch.randn(shape, generator=generator) * 0.02  # the default std
        assert torch.equal(adapter.layers[name].to_out.weight, expected)
        assert not adapter.layers[name].to_out.bias.any()
    adapter.reinitialize_output(std=3.0, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(
        adapter.layers["a"].to_out.weight,
        torch.randn((6, 8), generator=torch.Generator().manual_seed(9)) * 3.0,
    )


def test_an_adapter_for_another_unet_is_refused_naming_three_layers():
    model = attention_model()
    layers = [[f"missing.{i}", 8, 8, 2] for i in range(4)]
    adapter = IdentityAdapter(embedding_dim=3, num_tokens=2, token_dim=4, attention_layers=layers)
    with pytest.raises(ValueError) as info:
        IdentityInjector(model, adapter)
    assert str(info.value) == (
        "identity adapter layers not in this UNet: ['missing.0', 'missing.1', 'missing.2']"
    )
    with pytest.raises(ValueError, match="at least one attention layer"):
        IdentityAdapter(attention_layers=[])
