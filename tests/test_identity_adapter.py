"""Identity adapter (controlnets/identity_adapter.py): a hand-computed decoupled attention, exact no-op when
fresh, scale 0 == no adapter, conditional-half-only CFG rows, save/load, and the tiny UNet end to end."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from controlnets.identity_adapter import IdentityAdapter, IdentityInjector, spatial_cross_attention_layers
from pipelines.testing import tiny_unet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList([nn.Module()])
        self.transformer_blocks[0].attn2 = Attention(query_dim=2, cross_attention_dim=2, heads=1, dim_head=2)


def _tiny_attention_model() -> tuple[nn.Module, IdentityAdapter]:
    model = nn.Module()
    model.block = _Block()
    attn = model.block.transformer_blocks[0].attn2
    torch.manual_seed(0)
    adapter = IdentityAdapter(
        embedding_dim=2,
        num_tokens=2,
        token_dim=2,
        attention_layers=[["block.transformer_blocks.0.attn2", 2, 2, 1]],
    )
    with torch.no_grad():
        attn.to_q.weight.copy_(torch.eye(2))
        # tokens before LayerNorm: (e0, -e0) and (-e0, e0) -> after it (1, -1) and (-1, 1)
        adapter.proj.weight.copy_(torch.tensor([[1.0, 0], [-1, 0], [-1, 0], [1, 0]]))
        adapter.proj.bias.zero_()
        layer = adapter.layers["block__transformer_blocks__0__attn2"]
        layer.to_k.weight.copy_(torch.eye(2))
        layer.to_v.weight.copy_(torch.tensor([[1.0, 0], [0, 2]]))  # values (1, -2) and (-1, 2)
        layer.to_out.weight.copy_(torch.eye(2))
    return model, adapter


def test_decoupled_attention_by_hand():
    model, adapter = _tiny_attention_model()
    attn = model.block.transformer_blocks[0].attn2
    # query (a, 0) with sqrt(2) * a = ln 3: scores a/sqrt(2) and -a/sqrt(2), softmax weights 3/4 and 1/4
    # -> 3/4 (1, -2) + 1/4 (-1, 2) = (0.5, -1); query (0, 0) -> equal weights -> (0, 0)
    a = math.log(3) / math.sqrt(2)
    hidden = torch.tensor([[[a, 0.0], [0.0, 0.0]]] * 3)  # 3 rows, the first one skipped
    clip = torch.randn(3, 1, 2)
    plain = attn(hidden, encoder_hidden_states=clip)
    tokens = adapter.tokens(torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(tokens, torch.tensor([[[1.0, -1.0], [-1.0, 1.0]]]), atol=1e-4, rtol=0)
    injector = IdentityInjector(model, adapter)
    with injector, injector.identity(tokens, scale=0.5, skip_rows=1):
        hooked = attn(hidden, encoder_hidden_states=clip)
    expected = plain.clone()
    expected[1:, 0] += 0.5 * torch.tensor([0.5, -1.0])
    torch.testing.assert_close(hooked, expected, atol=1e-4, rtol=0)
    assert torch.equal(hooked[0], plain[0])  # the skipped (unconditional) row is untouched
    assert injector.calls == 1
    torch.testing.assert_close(attn(hidden, encoder_hidden_states=clip), plain)  # hooks gone


def test_identity_contribution_is_linear_in_scale():
    model, adapter = _tiny_attention_model()
    attn = model.block.transformer_blocks[0].attn2
    hidden, clip = torch.randn(2, 5, 2), torch.randn(2, 1, 2)
    tokens = adapter.tokens(torch.randn(1, 2))
    plain = attn(hidden, encoder_hidden_states=clip)
    injector = IdentityInjector(model, adapter)
    outs = {}
    with injector:
        for scale in (0.0, 0.7, 1.4):
            with injector.identity(tokens, scale=scale):
                outs[scale] = attn(hidden, encoder_hidden_states=clip)
    assert torch.equal(outs[0.0], plain)
    torch.testing.assert_close(outs[1.4] - plain, 2 * (outs[0.7] - plain), atol=1e-5, rtol=1e-4)
    assert (outs[0.7] - plain).abs().max() > 1e-3


# --- on the tiny spatio-temporal UNet ----------------------------------------------------------------


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return tiny_unet().eval()


def _inputs(batch: int, frames: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, frames, 8, 16, 16, generator=generator)
    clip = torch.randn(batch, 1, 32, generator=generator)
    time_ids = torch.tensor([[6.0, 127.0, 0.02]] * batch)
    return sample, clip, time_ids


def _run(unet, sample, clip, time_ids):
    with torch.no_grad():
        return unet(sample, 10.0, encoder_hidden_states=clip, added_time_ids=time_ids, return_dict=False)[0]


def test_spatial_cross_attention_layers_of_the_tiny_unet(unet):
    names = [name for name, _ in spatial_cross_attention_layers(unet)]
    # 2 in the cross-attention down block, 1 in the mid block, 3 in the cross-attention up block
    assert len(names) == 6
    assert all(".transformer_blocks." in n and "temporal" not in n and n.endswith("attn2") for n in names)
    adapter = IdentityAdapter.for_unet(unet, embedding_dim=128, num_tokens=4)
    assert adapter.config.token_dim == 32 and adapter.layer_names == names
    # zero-initialised output projections
    assert all(
        layer.to_out.weight.abs().max() == 0 and layer.to_out.bias.abs().max() == 0
        for layer in adapter.layers.values()
    )


def test_fresh_adapter_is_exact_no_op_and_reinitialised_changes_the_output(unet):
    sample, clip, time_ids = _inputs(2)
    plain = _run(unet, sample, clip, time_ids)
    torch.manual_seed(1)
    adapter = IdentityAdapter.for_unet(unet).eval()
    embedding = torch.randn(2, 128)
    injector = IdentityInjector(unet, adapter)
    with injector, injector.identity(adapter.tokens(embedding), 1.0):
        fresh = _run(unet, sample, clip, time_ids)
    assert torch.equal(fresh, plain) and injector.calls == 6
    adapter.reinitialize_output(std=0.5, generator=torch.Generator().manual_seed(2))
    with injector, injector.identity(adapter.tokens(embedding), 1.0):
        changed = _run(unet, sample, clip, time_ids)
    with injector, injector.identity(adapter.tokens(torch.randn(2, 128)), 1.0):
        other_face = _run(unet, sample, clip, time_ids)
    with injector, injector.identity(adapter.tokens(embedding), 0.0):
        off = _run(unet, sample, clip, time_ids)
    assert (changed - plain).abs().mean() > 1e-3
    assert (other_face - changed).abs().mean() > 1e-4  # the face embedding steers the output
    assert torch.equal(off, plain)  # identity_scale = 0 == no adapter


def test_batched_cfg_rows_equal_two_sequential_calls(unet):
    batch, frames = 2, 3
    sample, clip, time_ids = _inputs(batch, frames)
    torch.manual_seed(1)
    adapter = IdentityAdapter.for_unet(unet).eval()
    adapter.reinitialize_output(std=0.5, generator=torch.Generator().manual_seed(2))
    tokens = adapter.tokens(torch.randn(batch, 128))
    uncond_clip = torch.zeros_like(clip)
    injector = IdentityInjector(unet, adapter)
    with injector:
        with injector.identity(tokens, 0.8, skip_rows=batch * frames):
            both = _run(
                unet, torch.cat([sample, sample]), torch.cat([uncond_clip, clip]), torch.cat([time_ids] * 2)
            )
        uncond = _run(unet, sample, uncond_clip, time_ids)  # no identity in the unconditional call
        with injector.identity(tokens, 0.8):
            cond = _run(unet, sample, clip, time_ids)
    torch.testing.assert_close(both[:batch], uncond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[batch:], cond, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_is_exact(unet, tmp_path):
    torch.manual_seed(3)
    adapter = IdentityAdapter.for_unet(unet, embedding_dim=512, num_tokens=2)
    adapter.reinitialize_output(generator=torch.Generator().manual_seed(4))
    adapter.save_pretrained(tmp_path / "identity_adapter")
    loaded = IdentityAdapter.from_pretrained(tmp_path / "identity_adapter")
    assert loaded.config.embedding_dim == 512 and loaded.layer_names == adapter.layer_names
    state, loaded_state = adapter.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)


def test_wrong_embedding_size_and_rows_are_clear_errors(unet):
    adapter = IdentityAdapter.for_unet(unet)
    with pytest.raises(ValueError, match=r"face embedding must be \(B, 128\)"):
        adapter.tokens(torch.randn(1, 512))
    sample, clip, time_ids = _inputs(1)
    injector = IdentityInjector(unet, adapter)
    with (
        injector,
        injector.identity(adapter.tokens(torch.randn(2, 128)), 1.0),
        pytest.raises(ValueError, match="do not divide"),
    ):
        _run(unet, sample, clip, time_ids)  # 2 token rows for 3 frames of 1 video
