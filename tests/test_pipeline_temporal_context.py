"""pipelines.temporal_context on a micro UNet: which CLIP token each temporal-attention row sees.

diffusers 0.27 built ``time_context`` by broadcasting the videos' tokens over ``(pixels, videos)``, so row
``r`` of the temporal attention (rows video-major: ``r = video * pixels + p``) got the token of video
``r mod videos``; diffusers today gives each row its own video's token. The expectations are those two rules
written out per row.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.attention import TemporalBasicTransformerBlock

from pipelines.temporal_context import TEMPORAL_CONTEXTS, TemporalContext, diffusers_027_time_context

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LATENT = 4  # the mid block (the only temporal attention of this UNet) runs on 2 x 2 = 4 pixels


@pytest.fixture(scope="module")
def unet() -> UNetSpatioTemporalConditionModel:
    torch.manual_seed(0)
    return UNetSpatioTemporalConditionModel(
        sample_size=LATENT, in_channels=8, out_channels=4, block_out_channels=(32, 32), layers_per_block=1,
        down_block_types=("DownBlockSpatioTemporal",) * 2, up_block_types=("UpBlockSpatioTemporal",) * 2,
        cross_attention_dim=4, num_attention_heads=(1, 1), projection_class_embeddings_input_dim=12,
        addition_time_embed_dim=4,
    ).eval()  # fmt: skip


def test_time_context_rows_take_the_token_of_row_mod_videos():
    tokens = torch.arange(3.0).view(3, 1, 1)  # video b's token is b
    assert diffusers_027_time_context(tokens, 2).flatten().tolist() == [0, 1, 2, 0, 1, 2]
    # a call holding videos 1.. of the batch: its rows are rows 2.. of the whole batch
    assert diffusers_027_time_context(tokens, 2, first_video=1).flatten().tolist() == [2, 0, 1, 2]
    assert diffusers_027_time_context(tokens, 2, first_video=2, videos=1).flatten().tolist() == [1, 2]
    assert diffusers_027_time_context(tokens, 4, first_video=0, videos=1).flatten().tolist() == [0, 1, 2, 0]
    wide = torch.arange(12.0).view(2, 2, 3)  # (N, T, D): every token of a row travels together
    assert torch.equal(diffusers_027_time_context(wide, 3), wide[[0, 1, 0, 1, 0, 1]])


def _contexts(unet, mode, sample, tokens, call=None):
    """The ``encoder_hidden_states`` every temporal block's cross-attention receives in one UNet call."""
    seen = []
    blocks = [m for m in unet.modules() if isinstance(m, TemporalBasicTransformerBlock)]
    assert blocks
    handles = [
        b.attn2.register_forward_pre_hook(
            lambda m, a, k: seen.append(k["encoder_hidden_states"]), with_kwargs=True
        )
        for b in blocks
    ]
    videos = sample.shape[0]
    try:
        with TemporalContext([unet, None], mode) as context, torch.no_grad():  # noqa: SIM117
            with context.call(*call) if call is not None else nullcontext():
                unet(sample, 1.0, encoder_hidden_states=tokens, added_time_ids=torch.zeros(videos, 3))
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _sample(videos: int, frames: int = 2) -> torch.Tensor:
    return torch.randn(videos, frames, 8, LATENT, LATENT, generator=torch.Generator().manual_seed(0))


def test_per_video_leaves_diffusers_pairing_and_installs_nothing(unet):
    tokens = torch.randn(2, 1, 4, generator=torch.Generator().manual_seed(1))
    (context,) = _contexts(unet, "per_video", _sample(2), tokens)
    rows = context.view(2, -1, 1, 4)
    for video in range(2):
        assert torch.equal(rows[video], tokens[video].expand_as(rows[video]))
    with TemporalContext([unet], "per_video") as temporal:
        assert temporal._handles == []


def test_diffusers_027_pairs_pixel_p_with_video_p_mod_videos(unet):
    tokens = torch.randn(2, 1, 4, generator=torch.Generator().manual_seed(1))
    (context,) = _contexts(unet, "diffusers_0.27", _sample(2), tokens)
    pixels = context.shape[0] // 2
    assert pixels == 4
    rows = context.view(2, pixels, 1, 4)
    for video in range(2):
        for p in range(pixels):
            assert torch.equal(rows[video, p], tokens[(video * pixels + p) % 2]), (video, p)
    three = torch.randn(3, 1, 4, generator=torch.Generator().manual_seed(2))
    (context,) = _contexts(unet, "diffusers_0.27", _sample(3), three)
    flat = context.view(3 * pixels, 1, 4)
    for row in range(3 * pixels):
        assert torch.equal(flat[row], three[row % 3])


def test_a_call_of_part_of_the_batch_sees_the_rows_of_the_whole_batch(unet):
    """Sequential CFG: the second half alone (video 1 of 2) gets rows pixels..2*pixels-1 of the batch."""
    tokens = torch.randn(2, 1, 4, generator=torch.Generator().manual_seed(1))
    (whole,) = _contexts(unet, "diffusers_0.27", _sample(2), tokens)
    (second,) = _contexts(unet, "diffusers_0.27", _sample(1), tokens[1:], call=(tokens, 1))
    assert torch.equal(second, whole[4:])
    (first,) = _contexts(unet, "diffusers_0.27", _sample(1), tokens[:1], call=(tokens, 0))
    assert torch.equal(first, whole[:4])
    # after the call the whole-batch rule is back: a one-video call sees its own token only
    (alone,) = _contexts(unet, "diffusers_0.27", _sample(1), tokens[1:])
    assert torch.equal(alone, tokens[1].expand(4, 1, 4))


def test_call_resets_after_the_block_and_hooks_leave_with_the_context(unet):
    temporal = TemporalContext([unet], "diffusers_0.27")
    tokens = torch.zeros(2, 1, 4)
    with temporal.call(tokens, 1):
        assert temporal._tokens is tokens and temporal._first == 1
    assert temporal._tokens is None and temporal._first == 0
    with pytest.raises(RuntimeError), temporal.call(tokens, 1):
        raise RuntimeError
    assert temporal._tokens is None and temporal._first == 0
    blocks = [m for m in unet.modules() if isinstance(m, TemporalBasicTransformerBlock)]
    assert len(temporal.blocks) == len(blocks) == 1
    with temporal:
        assert len(temporal._handles) == 1 and len(blocks[0]._forward_pre_hooks) == 1
    assert temporal._handles == [] and not blocks[0]._forward_pre_hooks


def test_modes_are_checked():
    assert TEMPORAL_CONTEXTS == ("per_video", "diffusers_0.27")
    assert TemporalContext([]).mode == "per_video"  # diffusers' own pairing unless asked
    with pytest.raises(
        ValueError, match=r"^temporal_context must be one of \('per_video', 'diffusers_0.27'\), got '0.28'$"
    ):
        TemporalContext([], "0.28")


def test_repair_leaves_calls_without_context_alone_and_reads_num_frames_from_args(unet):
    temporal = TemporalContext([unet], "diffusers_0.27")
    hidden = torch.zeros(4, 3, 32)  # 2 videos x 2 frames, 3 pixels
    assert temporal._repair(None, (hidden,), {"num_frames": 2}) is None
    tokens = torch.arange(2.0).view(2, 1, 1).repeat_interleave(3, 0)  # per-video rows, video-major
    args, kwargs = temporal._repair(None, (hidden, 2), {"encoder_hidden_states": tokens})
    assert args[0] is hidden and kwargs["encoder_hidden_states"].flatten().tolist() == [0, 1, 0, 1, 0, 1]
    _, kwargs = temporal._repair(
        None, (), {"hidden_states": hidden, "num_frames": 2, "encoder_hidden_states": tokens.double()}
    )
    assert kwargs["encoder_hidden_states"].dtype == torch.float64
    assert kwargs["encoder_hidden_states"].flatten().tolist() == [0, 1, 0, 1, 0, 1]


def test_given_tokens_take_the_context_dtype():
    temporal = TemporalContext([], "diffusers_0.27")
    hidden, context = torch.zeros(2, 3, 32), torch.zeros(6, 1, 1, dtype=torch.float64)
    with temporal.call(torch.arange(2.0).view(2, 1, 1), 1):  # float32 tokens of a 2-video batch, video 1 here
        _, kwargs = temporal._repair(None, (hidden,), {"num_frames": 2, "encoder_hidden_states": context})
    repaired = kwargs["encoder_hidden_states"]
    assert repaired.dtype == torch.float64 and repaired.flatten().tolist() == [1, 0, 1]
