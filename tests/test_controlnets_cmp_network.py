"""CMPFlow's network against a written-out reference (plain ``F.conv2d`` / ``F.batch_norm`` calls with the
strides, paddings and dilations of CMP's ``resnet50`` at output stride 8, ``shallownet8x`` and
``MotionDecoderSkipLayer`` spelled out here), with random BatchNorm statistics so every layer shows; the image
normalisations by hand; the feature expansion; the random init rule; the loader's messages.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from controlnets.cmp import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CMPCheckpointError,
    CMPFlow,
    CMPImageFeatures,
    bin_centers,
    decode_flow_bins,
    resample_sparse_flow,
    resize_flow,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Two blocks per stage, so the blocks after the first (no downsample, the stage's dilation) run too.
CONFIG = {
    "base_width": 8,
    "layers": (2, 2, 2, 2),
    "img_enc_dim": 16,
    "sparse_enc_dim": 8,
    "decoder_width": 16,
}


def random_statistics(model: nn.Module, seed: int = 0) -> None:
    """BatchNorm layers that are not the identity: random mean, variance, scale and shift."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
            elif isinstance(module, nn.Conv2d) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)


@pytest.fixture(scope="module")
def model() -> CMPFlow:
    torch.manual_seed(0)
    network = CMPFlow(**CONFIG)
    random_statistics(network)
    return network.eval()


# --- the reference ------------------------------------------------------------------------------------


def conv(x, m: nn.Conv2d, stride: int = 1, padding: int = 0, dilation: int = 1):
    return F.conv2d(x, m.weight, m.bias, stride=stride, padding=padding, dilation=dilation)


def bn(x, m: nn.BatchNorm2d):
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, training=False, eps=1e-5)


def bottleneck(x, block, stride: int, dilation: int):
    """1x1, BN, ReLU; 3x3 with the stride and dilation (padding = dilation), BN, ReLU; 1x1, BN; plus the
    shortcut (a strided 1x1 + BN where the shape changes), ReLU."""
    out = F.relu(bn(conv(x, block.conv1), block.bn1))
    out = F.relu(bn(conv(out, block.conv2, stride, dilation, dilation), block.bn2))
    out = bn(conv(out, block.conv3), block.bn3)
    shortcut = x
    if block.downsample is not None:
        shortcut = bn(conv(x, block.downsample[0], stride), block.downsample[1])
    return F.relu(out + shortcut)


def reference_encoder(encoder, image):
    half = F.relu(bn(conv(image, encoder.conv1, 2, 3), encoder.bn1))
    x = F.max_pool2d(half, 3, 2, 1)
    stages = {1: (1, 1), 2: (2, 1), 3: (1, 2), 4: (1, 4)}  # (stride of the first block, dilation)
    quarter = None
    for index, (stride, dilation) in stages.items():
        for number, block in enumerate(getattr(encoder, f"layer{index}")):
            x = bottleneck(x, block, stride if number == 0 else 1, dilation)
        if index == 1:
            quarter = x
    return conv(x, encoder.conv5), quarter, half


def conv_bn_relu(x, seq, first: int = 0):
    return F.relu(bn(conv(x, seq[first], 1, seq[first].kernel_size[0] // 2), seq[first + 1]))


def reference_forward(model: CMPFlow, image, sparse):
    encoded, quarter, half = reference_encoder(model.image_encoder, image)
    f = model.flow_encoder.features
    s = F.relu(bn(conv(sparse, f[0], 2, 2), f[1]))
    s = F.max_pool2d(s, 2, 2)
    s = F.relu(bn(conv(s, f[4], 1, 1), f[5]))
    s = F.avg_pool2d(s, 2, 2)
    x = torch.cat([encoded, s], dim=1)
    decoder = model.flow_decoder

    def branch(seq, y, first):
        for i in range(3):
            y = conv_bn_relu(y, seq, first + 3 * i)
        return y

    x1 = branch(decoder.decoder1, x, 0)
    branches = [x1]
    for factor in (2, 4, 8):
        pooled = F.max_pool2d(x, factor, factor)
        y = branch(getattr(decoder, f"decoder{factor}"), pooled, 1)
        branches.append(F.interpolate(y, size=x1.shape[-2:], mode="bilinear", align_corners=True))
    f8 = conv_bn_relu(torch.cat(branches, 1), decoder.fusion8)
    f8 = F.interpolate(f8, size=quarter.shape[-2:], mode="bilinear", align_corners=True)
    f4 = conv_bn_relu(torch.cat([f8, conv_bn_relu(quarter, decoder.skipconv4)], 1), decoder.fusion4)
    f4 = F.interpolate(f4, size=half.shape[-2:], mode="bilinear", align_corners=True)
    f2 = conv_bn_relu(torch.cat([f4, conv_bn_relu(half, decoder.skipconv2)], 1), decoder.fusion2)
    return conv(f2, decoder.head)


def sparse_input(batch: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mask = (torch.rand(batch, 1, height, width, generator=generator) > 0.97).float()
    flow = torch.randn(batch, 2, height, width, generator=generator) * 8 * mask
    return torch.cat([flow, mask, mask], dim=1)


@pytest.mark.parametrize("size", [(64, 64), (64, 128)])
def test_network_equals_the_written_out_reference(model, size):
    generator = torch.Generator().manual_seed(2)
    image = torch.rand(2, 3, *size, generator=generator) * 2 - 1
    sparse = sparse_input(2, *size)
    with torch.no_grad():
        ours = model(image, sparse)
        expected = reference_forward(model, image, sparse)
        features = model.encode_image(image)
        encoded, quarter, half = reference_encoder(model.image_encoder, image)
    height, width = size
    assert ours.shape == (2, 2 * 99, height // 2, width // 2)
    assert features.encoded.shape[-2:] == (height // 8, width // 8)
    torch.testing.assert_close(features.encoded, encoded, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(features.skip_quarter, quarter, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(features.skip_half, half, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    assert expected.std() > 1e-2  # a reference that says something


def test_decode_expands_one_reference_to_every_frame(model):
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    sparse = sparse_input(3, 64, 64, seed=4)
    with torch.no_grad():
        features = model.encode_image(image)
        together = model.decode(features, sparse)
        apart = torch.cat([model(image, sparse[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, apart, atol=1e-4, rtol=1e-4)


def test_image_features_expand_only_from_one():
    features = CMPImageFeatures(torch.rand(1, 4, 2, 2), torch.rand(1, 5, 4, 4), torch.rand(1, 6, 8, 8))
    assert features.batch_size == 1 and features.expand(1) is features
    three = features.expand(3)
    assert three.batch_size == 3
    for before, after in zip(
        (features.encoded, features.skip_quarter, features.skip_half),
        (three.encoded, three.skip_quarter, three.skip_half),
        strict=True,
    ):
        assert after.shape == (3, *before.shape[1:])
        assert all(torch.equal(after[i], before[0]) for i in range(3))
    two = CMPImageFeatures(torch.rand(2, 4, 2, 2), torch.rand(2, 5, 4, 4), torch.rand(2, 6, 8, 8))
    assert two.expand(2) is two
    with pytest.raises(ValueError) as info:
        two.expand(3)
    assert str(info.value) == "cannot expand image features of batch 2 to 3"


# --- input normalisation ----------------------------------------------------------------------------


def test_image_normalisations_by_hand():
    image = torch.zeros(1, 3, 1, 2)
    image[0, :, 0, 0] = torch.tensor([0.0, 0.5, 1.0])
    image[0, :, 0, 1] = torch.tensor([0.25, 1.0, 0.0])
    with torch.device("meta"):
        plain = CMPFlow(**CONFIG)
        imagenet = CMPFlow(**CONFIG, image_normalization="imagenet")
    torch.testing.assert_close(plain.normalize_image(image), image * 2 - 1)
    # CMP's training normalisation: (255 x - mean) / std per RGB channel
    expected = torch.tensor(
        [
            [(0.0 - 123.675) / 58.395, (63.75 - 123.675) / 58.395],
            [(127.5 - 116.28) / 57.12, (255.0 - 116.28) / 57.12],
            [(255.0 - 103.53) / 57.375, (0.0 - 103.53) / 57.375],
        ]
    ).view(1, 3, 1, 2)
    torch.testing.assert_close(imagenet.normalize_image(image), expected)
    assert IMAGENET_MEAN == (123.675, 116.28, 103.53) and IMAGENET_STD == (58.395, 57.12, 57.375)
    double = imagenet.normalize_image(image.double())
    assert double.dtype == torch.float64
    mean64 = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std64 = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.equal(double, (image.double() * 255 - mean64) / std64)  # float64 constants, not float32 ones
    with pytest.raises(ValueError, match="image_normalization must be one of"):
        CMPFlow(**CONFIG, image_normalization="zero_one")
    with pytest.raises(ValueError, match="multiple of 8"):
        CMPFlow(**CONFIG, input_size=100)


def test_encode_reference_resizes_clamps_and_normalises(model):
    image = torch.rand(1, 3, 48, 80) * 1.4 - 0.2  # outside [0, 1] on purpose
    side = model.config.input_size
    features = model.encode_reference(image)
    resized = F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        expected = model.encode_image(resized.clamp(0, 1) * 2 - 1)
    torch.testing.assert_close(features.encoded, expected.encoded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features.skip_half, expected.skip_half, atol=1e-5, rtol=1e-5)
    exact = torch.rand(1, 3, side, side)  # already the network's size: no resampling
    with torch.no_grad():
        direct = model.encode_image(exact * 2 - 1)
    torch.testing.assert_close(model.encode_reference(exact).encoded, direct.encoded, atol=1e-5, rtol=1e-5)


def test_propagate_feeds_the_resampled_sparse_vectors_and_mask_twice(model):
    side = model.config.input_size
    flow = torch.zeros(2, 2, 40, 60)
    mask = torch.zeros(2, 40, 60)
    flow[0, :, 10, 20], flow[1, :, 30, 50] = torch.tensor([3.0, -2.0]), torch.tensor([-5.0, 4.0])
    mask[0, 10, 20] = mask[1, 30, 50] = 1
    image = torch.rand(1, 3, side, side)
    dense = model.propagate(image, flow, mask)
    grid_flow, grid_mask = resample_sparse_flow(flow, mask, (side, side))
    with torch.no_grad():
        logits = model(image * 2 - 1, torch.cat([grid_flow, grid_mask, grid_mask], 1))
    flow_full = model.logits_to_flow(logits, (side, side))
    expected = F.interpolate(flow_full, size=(40, 60), mode="bilinear", align_corners=False)
    expected = expected * torch.tensor([60 / side, 40 / side]).view(1, 2, 1, 1)
    torch.testing.assert_close(dense, expected, atol=1e-4, rtol=1e-4)


# --- init and loading -------------------------------------------------------------------------------


def test_fresh_weights_follow_cmp_s_init_rule():
    torch.manual_seed(0)
    network = CMPFlow(**CONFIG)
    assert network.checkpoint_path is None
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    for module in convs:
        bound = math.sqrt(2.0 / (module.out_channels * module.kernel_size[0] * module.kernel_size[1]))
        assert module.weight.abs().max() <= bound
        if module.weight.numel() >= 500:  # uniform on [-bound, bound]: the extremes are reached
            assert module.weight.abs().max() > 0.9 * bound
            assert abs(float(module.weight.detach().std()) - bound / math.sqrt(3)) < 0.15 * bound
        if module.bias is not None:
            assert not module.bias.any()
    assert any(m.bias is not None for m in convs)
    norms = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in norms)


def test_loader_messages_name_what_does_not_fit(tmp_path, model):
    state = dict(model.state_dict())
    for key in (
        "flow_decoder.head.weight",
        "flow_decoder.head.bias",
        "image_encoder.conv5.bias",
        "image_encoder.bn1.bias",
    ):
        state.pop(key, None)
    state["stray.weight"] = torch.zeros(1)
    state["image_encoder.conv5.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CMPCheckpointError) as info:
        CMPFlow.from_checkpoint(tmp_path / "bad.pth", config=CONFIG)
    assert str(info.value) == (
        "bad.pth does not fit CMPFlow: 4 missing (e.g. image_encoder.bn1.bias, image_encoder.conv5.bias, "
        "flow_decoder.head.weight); 1 unexpected (e.g. stray.weight); 1 mismatched (e.g. "
        "image_encoder.conv5.weight: file (3, 3, 1, 1) vs model (16, 256, 1, 1))"
    )
    assert info.value.code == "weights_invalid"
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CMPCheckpointError, match=r"list\.pth holds no state dict of tensors"):
        CMPFlow.from_checkpoint(tmp_path / "list.pth", config=CONFIG)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CMPCheckpointError, match=r"junk.pth is not a readable PyTorch checkpoint \("):
        CMPFlow.from_checkpoint(tmp_path / "junk.pth", config=CONFIG)


def test_loader_strips_the_prefix_only_when_every_key_has_it(tmp_path, model):
    state = model.state_dict()
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "prefixed.pth")
    loaded = CMPFlow.from_checkpoint(tmp_path / "prefixed.pth", config=CONFIG, dtype=torch.float64)
    assert loaded.dtype == torch.float64 and not loaded.training
    assert torch.equal(loaded.flow_decoder.head.weight, state["flow_decoder.head.weight"].double())
    assert loaded.image_encoder.bn1.num_batches_tracked.dtype == torch.long
    mixed = {f"module.{k}": v for k, v in state.items()} | {"extra": torch.zeros(1)}
    torch.save(mixed, tmp_path / "mixed.pth")
    with pytest.raises(CMPCheckpointError, match="unexpected"):
        CMPFlow.from_checkpoint(tmp_path / "mixed.pth", config=CONFIG)


# --- decoding and the sparse grid --------------------------------------------------------------------


def test_bin_decoding_refuses_the_wrong_channel_count_and_keeps_the_dtype():
    with pytest.raises(ValueError) as info:
        decode_flow_bins(torch.zeros(1, 10, 2, 2), 99, 50.0)
    assert str(info.value) == "expected 198 logit channels, got 10"
    centers = bin_centers(4, 2.0, dtype=torch.float64)  # bins of width 1 over [-2, 2]
    assert centers.dtype == torch.float64
    assert centers.tolist() == [-1.5, -0.5, 0.5, 1.5]


def test_logits_to_flow_upsamples_with_aligned_corners():
    with torch.device("meta"):
        network = CMPFlow(**CONFIG, nbins=4, fmax=2.0)
    logits = torch.full((1, 8, 2, 2), -1e4)
    x_bins = [[0, 3], [1, 2]]  # a 2 x 2 field of one bin each; centres -1.5, -0.5, 0.5, 1.5
    for row in range(2):
        for col in range(2):
            logits[0, x_bins[row][col], row, col] = 0.0
            logits[0, 4 + 1, row, col] = 0.0  # y: bin 1 everywhere
    flow = network.logits_to_flow(logits, (4, 4))
    # align_corners=True: output pixel i sits at i / 3 of the way between the two input pixels
    t = torch.arange(4, dtype=torch.float32) / 3
    top, bottom = -1.5 + 3 * t, -0.5 + t  # rows 0 and 1 of the x field, interpolated along x
    expected_x = (1 - t)[:, None] * top + t[:, None] * bottom
    torch.testing.assert_close(flow[0, 0], expected_x)
    torch.testing.assert_close(flow[0, 1], torch.full((4, 4), -0.5))
    same = network.logits_to_flow(logits, (2, 2))
    torch.testing.assert_close(same[0, 0], torch.tensor([[-1.5, 1.5], [-0.5, 0.5]]))


def test_sparse_vectors_at_the_last_row_and_column_land_in_the_last_cell():
    flow = torch.zeros(1, 2, 30, 50)
    mask = torch.zeros(1, 1, 30, 50)  # the (B, 1, H, W) mask layout
    flow[0, :, 29, 49] = torch.tensor([5.0, 3.0])
    flow[0, :, 0, 0] = torch.tensor([-5.0, 6.0])
    mask[0, 0, 29, 49] = mask[0, 0, 0, 0] = 1
    out, out_mask = resample_sparse_flow(flow, mask, (20, 20))
    assert out_mask[0, 0].nonzero().tolist() == [[0, 0], [19, 19]]
    assert out.dtype == out_mask.dtype == torch.float32  # a {0, 1} mask in the flow's dtype
    _, mask64 = resample_sparse_flow(flow.double(), mask, (20, 20))
    assert mask64.dtype == torch.float64
    torch.testing.assert_close(out[0, :, 19, 19], torch.tensor([5.0 * 20 / 50, 3.0 * 20 / 30]))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([-5.0 * 20 / 50, 6.0 * 20 / 30]))


def test_resize_flow_scales_float64_vectors_by_float64_ratios():
    flow = torch.rand(1, 2, 384, 384, dtype=torch.float64)
    out = resize_flow(flow, (200, 250))
    resized = F.interpolate(flow, size=(200, 250), mode="bilinear", align_corners=False)
    ratios = torch.tensor([250 / 384, 200 / 384], dtype=torch.float64).view(1, 2, 1, 1)
    assert out.dtype == torch.float64 and torch.equal(out, resized * ratios)
