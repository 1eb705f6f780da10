"""CMP (conditional motion propagation, Zhan et al., CVPR 2019): an image plus a few motion vectors -> a
dense flow field. DisPose (via MOFA-Video) uses it to turn sparse keypoint motion into its dense motion
field; this is our implementation of the network configured as theirs (``resnet50_vip+mpii_liteflow``).

Layout (key names as in ``ckpt_iter_42000.pth.tar`` once its ``module.`` prefix is stripped):

- ``image_encoder``: a ResNet-50 with output stride 8 (``layer3``/``layer4`` keep stride 1 and dilate their
  3x3 convs by 2/4) and a 1x1 ``conv5`` 2048 -> ``img_enc_dim``; it also hands the decoder two skip
  features, ``conv1`` after BN+ReLU (1/2 resolution, 64 ch) and ``layer1`` (1/4, 256 ch). The stride of
  ``layer2.0`` sits on its 3x3 conv (torchvision's placement); CMP's backbone source was not at hand to
  confirm this, and no key or shape depends on it.
- ``flow_encoder`` (``shallownet8x``): the 4-channel sparse input (flow x, y and the point mask twice) ->
  5x5 stride-2 conv 16, BN, ReLU, max-pool 2, 3x3 conv ``sparse_enc_dim``, BN, ReLU, avg-pool 2 (1/8).
- ``flow_decoder`` (``MotionDecoderSkipLayer``): on the concatenated 1/8 features, four branches
  (``decoder1/2/4/8``: max-pool by 1/2/4/8, three 3x3 conv-BN-ReLU, bilinear back to 1/8), ``fusion8``;
  then up to 1/4 with ``skipconv4(layer1)`` and ``fusion4``, to 1/2 with ``skipconv2(conv1)`` and
  ``fusion2``; a 1x1 ``head`` to ``2 * nbins`` logits. (The config's ``decoder_combo`` is not read by this
  decoder: all four branches always exist.)

The logits are a discrete distribution over ``nbins`` = 99 flow values per axis in ``[-fmax, fmax]`` =
``[-50, 50]`` pixels of the 384x384 input; the flow is the softmax expectation over the bin centres,
bilinearly upsampled (``align_corners=True``) from 1/2 to full resolution, as CMP decodes it.

Only ``CMPFlow.from_checkpoint`` builds an instance meant for use: a fresh ``CMPFlow()`` has random weights
and produces meaningless flow (DisPose silently runs that way when its checkpoint is missing; we do not).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

#: The training normalisation in CMP's config (RGB, on 0..255).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
IMAGE_NORMALIZATIONS = ("minus_one_one", "imagenet")
#: Prefixes the released checkpoint may carry (``FixModule``/``DistModule`` store the network as ``.module``).
CHECKPOINT_PREFIXES = ("module.",)


class CMPCheckpointError(ValueError):
    """A CMP checkpoint is missing, unreadable or does not fit ``CMPFlow``; ``code`` is stable."""

    code = "weights_invalid"


@dataclass
class CMPImageFeatures:
    """What the image encoder computes once per reference: the 1/8 encoding and the two skip features."""

    encoded: torch.Tensor  # (B, img_enc_dim, H/8, W/8)
    skip_quarter: torch.Tensor  # (B, 4 * base_width, H/4, W/4): layer1
    skip_half: torch.Tensor  # (B, base_width, H/2, W/2): conv1 after BN + ReLU

    @property
    def batch_size(self) -> int:
        return int(self.encoded.shape[0])

    def expand(self, batch_size: int) -> CMPImageFeatures:
        """The same features for ``batch_size`` samples (a view; only batch 1 can be expanded)."""
        if self.batch_size == batch_size:
            return self
        if self.batch_size != 1:
            raise ValueError(f"cannot expand image features of batch {self.batch_size} to {batch_size}")
        return CMPImageFeatures(
            *(t.expand(batch_size, -1, -1, -1) for t in (self.encoded, self.skip_quarter, self.skip_half))
        )


def _conv_bn_relu(channels_in: int, channels_out: int, kernel_size: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(channels_in, channels_out, kernel_size, padding=kernel_size // 2),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    ]


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3 carrying the stride and dilation, 1x1 x4), no biases, BN after each."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != width:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class DilatedResNetEncoder(nn.Module):
    """ResNet with output stride 8 and a 1x1 ``conv5`` to ``out_channels``; returns the skip features too."""

    def __init__(self, out_channels: int, base_width: int, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._inplanes = base_width
        # (planes, stride, dilation) per stage: strides 1, 2, then dilation instead of stride
        stages = ((1, 1, 1), (2, 2, 1), (4, 1, 2), (8, 1, 4))
        for index, ((mult, stride, dilation), blocks) in enumerate(zip(stages, layers, strict=True), 1):
            setattr(self, f"layer{index}", self._make_layer(base_width * mult, blocks, stride, dilation))
        self.conv5 = nn.Conv2d(self._inplanes, out_channels, 1)

    def _make_layer(self, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride, dilation)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> CMPImageFeatures:
        conv1 = self.relu(self.bn1(self.conv1(image)))
        layer1 = self.layer1(self.maxpool(conv1))
        x = self.layer4(self.layer3(self.layer2(layer1)))
        return CMPImageFeatures(encoded=self.conv5(x), skip_quarter=layer1, skip_half=conv1)


class ShallowFlowEncoder(nn.Module):
    """CMP's ``shallownet8x``: the sparse input (flow, mask) -> ``out_channels`` features at 1/8."""

    def __init__(self, in_channels: int = 4, out_channels: int = 16, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, stride=2, padding=2),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, stride=2),
            nn.Conv2d(width, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2, stride=2),
        )

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        return self.features(sparse)


class SkipLayerFlowDecoder(nn.Module):
    """CMP's ``MotionDecoderSkipLayer`` (see the module docstring); output at 1/2 resolution."""

    def __init__(self, in_channels: int, out_channels: int, width: int, base_width: int) -> None:
        super().__init__()
        self.decoder1 = nn.Sequential(*self._branch(in_channels, width))
        for factor in (2, 4, 8):
            branch = [nn.MaxPool2d(factor, stride=factor), *self._branch(in_channels, width)]
            setattr(self, f"decoder{factor}", nn.Sequential(*branch))
        self.fusion8 = nn.Sequential(*_conv_bn_relu(4 * width, 2 * width))
        self.skipconv4 = nn.Sequential(*_conv_bn_relu(4 * base_width, width))
        self.fusion4 = nn.Sequential(*_conv_bn_relu(3 * width, width))
        self.skipconv2 = nn.Sequential(*_conv_bn_relu(base_width, base_width // 2))
        self.fusion2 = nn.Sequential(*_conv_bn_relu(width + base_width // 2, width // 2))
        self.head = nn.Conv2d(width // 2, out_channels, 1)

    @staticmethod
    def _branch(in_channels: int, width: int) -> list[nn.Module]:
        return _conv_bn_relu(in_channels, width) + _conv_bn_relu(width, width) + _conv_bn_relu(width, width)

    def forward(self, x: torch.Tensor, skip_quarter: torch.Tensor, skip_half: torch.Tensor) -> torch.Tensor:
        x1 = self.decoder1(x)
        size = x1.shape[-2:]
        branches = [x1] + [
            F.interpolate(getattr(self, f"decoder{f}")(x), size=size, mode="bilinear", align_corners=True)
            for f in (2, 4, 8)
        ]
        f8 = self.fusion8(torch.cat(branches, dim=1))
        f8 = F.interpolate(f8, size=skip_quarter.shape[-2:], mode="bilinear", align_corners=True)
        f4 = self.fusion4(torch.cat([f8, self.skipconv4(skip_quarter)], dim=1))
        f4 = F.interpolate(f4, size=skip_half.shape[-2:], mode="bilinear", align_corners=True)
        f2 = self.fusion2(torch.cat([f4, self.skipconv2(skip_half)], dim=1))
        return self.head(f2)


def bin_centers(nbins: int, fmax: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """The flow value of each bin: ``nbins`` equal bins over ``[-fmax, fmax]``, at their centres."""
    step = 2.0 * fmax / nbins
    return torch.arange(nbins, device=device, dtype=dtype) * step - fmax + step / 2


def decode_flow_bins(logits: torch.Tensor, nbins: int, fmax: float) -> torch.Tensor:
    """``(B, 2 * nbins, h, w)`` logits (x bins, then y bins) -> ``(B, 2, h, w)`` expected flow, float32."""
    if logits.shape[1] != 2 * nbins:
        raise ValueError(f"expected {2 * nbins} logit channels, got {logits.shape[1]}")
    logits = logits.float()
    centers = bin_centers(nbins, fmax, device=logits.device).view(1, nbins, 1, 1)
    fx = (logits[:, :nbins].softmax(dim=1) * centers).sum(dim=1)
    fy = (logits[:, nbins:].softmax(dim=1) * centers).sum(dim=1)
    return torch.stack([fx, fy], dim=1)


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(B, 2, h, w)`` pixel flow to ``size`` = (H, W), vectors rescaled to the new pixels."""
    height, width = size
    h, w = flow.shape[-2:]
    if (h, w) == (height, width):
        return flow
    out = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
    scale = torch.tensor([width / w, height / h], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
    return out * scale


def resample_sparse_flow(
    sparse_flow: torch.Tensor, sparse_mask: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move sparse motion vectors onto a grid of ``size`` = (h, w) without blurring them away.

    sparse_flow: ``(B, 2, H, W)`` pixels; sparse_mask: ``(B, H, W)``, ``(B, 1, H, W)`` or ``(B, 2, H, W)``,
    nonzero where a vector is set. Each set pixel lands in the cell containing its centre; its vector is
    rescaled to the new pixel size; vectors sharing a cell are averaged. Returns flow ``(B, 2, h, w)`` and
    mask ``(B, 1, h, w)`` in {0, 1}.
    """
    if sparse_mask.ndim == 4:
        sparse_mask = sparse_mask[:, 0]
    batch, _, height, width = sparse_flow.shape
    h, w = size
    b, ys, xs = torch.nonzero(sparse_mask > 0, as_tuple=True)
    vectors = sparse_flow[b, :, ys, xs].float()  # (N, 2)
    vectors = vectors * torch.tensor([w / width, h / height], device=vectors.device)
    cx = ((xs.float() + 0.5) * (w / width)).floor().long().clamp_(0, w - 1)
    cy = ((ys.float() + 0.5) * (h / height)).floor().long().clamp_(0, h - 1)
    cell = (b * h + cy) * w + cx
    sums = torch.zeros(batch * h * w, 2, device=vectors.device)
    counts = torch.zeros(batch * h * w, device=vectors.device)
    sums.index_add_(0, cell, vectors)
    counts.index_add_(0, cell, torch.ones_like(cell, dtype=counts.dtype))
    flow = (sums / counts.clamp(min=1).unsqueeze(1)).view(batch, h, w, 2).permute(0, 3, 1, 2)
    mask = (counts > 0).view(batch, 1, h, w)
    return flow.to(sparse_flow.dtype).contiguous(), mask.to(sparse_flow.dtype)


class CMPFlow(ModelMixin, ConfigMixin):
    """CMP as DisPose runs it; the default config is key- and shape-exact with ``ckpt_iter_42000.pth.tar``.

    ``base_width``, ``layers``, ``img_enc_dim``, ``sparse_enc_dim`` and ``decoder_width`` exist so tests can
    build a small network with the same key names; ``input_size`` is the square size CMP runs at (384);
    ``image_normalization`` is how an image in ``[0, 1]`` is fed: ``"minus_one_one"`` (``2x - 1``, what
    DisPose and MOFA-Video do at inference) or ``"imagenet"`` (CMP's training normalisation).
    """

    @register_to_config
    def __init__(
        self,
        base_width: int = 64,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        img_enc_dim: int = 256,
        sparse_enc_dim: int = 16,
        decoder_width: int = 128,
        nbins: int = 99,
        fmax: float = 50.0,
        input_size: int = 384,
        image_normalization: str = "minus_one_one",
    ) -> None:
        super().__init__()
        if image_normalization not in IMAGE_NORMALIZATIONS:
            raise ValueError(f"image_normalization must be one of {IMAGE_NORMALIZATIONS}")
        if input_size % 8:
            raise ValueError("input_size must be a multiple of 8 (the encoders' output stride)")
        self.image_encoder = DilatedResNetEncoder(img_enc_dim, base_width, tuple(layers))
        self.flow_encoder = ShallowFlowEncoder(4, sparse_enc_dim)
        self.flow_decoder = SkipLayerFlowDecoder(
            img_enc_dim + sparse_enc_dim, 2 * nbins, decoder_width, base_width
        )
        #: Where the weights came from; ``None`` for a randomly initialised network (not for real use).
        self.checkpoint_path: str | None = None
        self._init_weights()

    def _init_weights(self) -> None:
        # CMP's init: uniform convs scaled by fan-out, zero biases, BN as identity
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module.weight.device.type != "meta":
                fan = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                bound = math.sqrt(2.0 / fan)
                nn.init.uniform_(module.weight, -bound, bound)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # -- the network ---------------------------------------------------------------------------------
    def normalize_image(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in ``[0, 1]`` -> the network's input range (see ``image_normalization``)."""
        if self.config.image_normalization == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
            return (image * 255.0 - mean) / std
        return image * 2.0 - 1.0

    def encode_image(self, image: torch.Tensor) -> CMPImageFeatures:
        """Normalised ``(B, 3, H, W)`` image (H, W multiples of 8) -> encoder features."""
        return self.image_encoder(image)

    def decode(self, features: CMPImageFeatures, sparse: torch.Tensor) -> torch.Tensor:
        """Encoder features + ``(B, 4, H, W)`` sparse input -> ``(B, 2 * nbins, H/2, W/2)`` logits."""
        features = features.expand(sparse.shape[0])
        x = torch.cat([features.encoded, self.flow_encoder(sparse)], dim=1)
        return self.flow_decoder(x, features.skip_quarter, features.skip_half)

    def forward(self, image: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """CMP's forward: normalised image ``(B, 3, H, W)`` and sparse input ``(B, 4, H, W)`` (flow x, y in
        pixels, then the point mask twice) -> ``(B, 2 * nbins, H/2, W/2)`` bin logits."""
        return self.decode(self.encode_image(image), sparse)

    def logits_to_flow(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Bin logits -> ``(B, 2, *size)`` float32 flow in pixels of the network input (CMP's decode)."""
        flow = decode_flow_bins(logits, self.config.nbins, self.config.fmax)
        if tuple(flow.shape[-2:]) != tuple(size):
            flow = F.interpolate(flow, size=size, mode="bilinear", align_corners=True)
        return flow

    # -- any image size ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_reference(self, image: torch.Tensor) -> CMPImageFeatures:
        """``(B, 3, H, W)`` RGB in ``[0, 1]`` at any size -> encoder features at ``input_size`` (run once per
        reference; ``propagate`` reuses them for every frame)."""
        side = self.config.input_size
        dtype = self.dtype
        image = image.to(device=self.device, dtype=torch.float32)
        if tuple(image.shape[-2:]) != (side, side):
            image = F.interpolate(
                image, size=(side, side), mode="bilinear", align_corners=False, antialias=True
            )
        return self.encode_image(self.normalize_image(image.clamp(0, 1)).to(dtype))

    @torch.no_grad()
    def propagate(
        self,
        reference: torch.Tensor | CMPImageFeatures,
        sparse_flow: torch.Tensor,
        sparse_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Dense flow at the sparse input's size, in its pixels.

        reference: ``(1 or B, 3, H', W')`` RGB in ``[0, 1]``, or ``encode_reference``'s features;
        sparse_flow: ``(B, 2, H, W)`` pixels; sparse_mask: ``(B, [1 or 2,] H, W)`` nonzero at set vectors.
        The vectors are moved onto the ``input_size`` grid (``resample_sparse_flow``), CMP runs there, and
        the decoded flow is resized back to ``(H, W)`` with its vectors rescaled. Returns ``(B, 2, H, W)``
        float32.
        """
        features = reference if isinstance(reference, CMPImageFeatures) else self.encode_reference(reference)
        side = self.config.input_size
        height, width = sparse_flow.shape[-2:]
        flow, mask = resample_sparse_flow(
            sparse_flow.to(self.device, torch.float32), sparse_mask.to(self.device), (side, side)
        )
        sparse = torch.cat([flow, mask, mask], dim=1).to(self.dtype)
        dense = self.logits_to_flow(self.decode(features, sparse), (side, side))
        return resize_flow(dense, (height, width))

    # -- loading -------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        config: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> CMPFlow:
        """Load CMP's ``.pth.tar`` (``{'step', 'state_dict', 'optimizer'}``) or a bare state dict, strictly.

        Keys may carry the ``module.`` prefix (stripped). Every key must land on a parameter or buffer of
        the same shape; only BatchNorm ``num_batches_tracked`` counters may be absent (older PyTorch did not
        save them; inference never reads them). The network is built on the meta device and the file's
        tensors assigned, so weights are not held twice. Raises ``CMPCheckpointError`` otherwise.
        The result is in eval mode with gradients off.
        """
        path = Path(path)
        if not path.is_file():
            raise CMPCheckpointError(f"CMP checkpoint {path} not found")
        state = _read_state_dict(path)
        with torch.device("meta"):
            model = cls(**dict(config or {}))
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        mismatched = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state and tuple(state[k].shape) != tuple(v.shape)
        ]
        for key in [k for k in missing if k.endswith(".num_batches_tracked")]:
            state[key] = torch.zeros((), dtype=torch.long)
            missing.remove(key)
        if missing or unexpected or mismatched:
            parts = [
                f"{len(items)} {label} (e.g. {', '.join(items[:3])})"
                for label, items in (
                    ("missing", missing),
                    ("unexpected", unexpected),
                    ("mismatched", mismatched),
                )
                if items
            ]
            raise CMPCheckpointError(f"{path.name} does not fit CMPFlow: {'; '.join(parts)}")
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        model.to(device or "cpu")
        model.eval().requires_grad_(False)
        model.checkpoint_path = str(path)
        return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` (``checkpoint['state_dict']`` when present), prefixes stripped."""
    try:
        raw = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # legacy (pre-zip) pickles, like the released file, cannot be memory-mapped
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CMPCheckpointError(f"{path.name} is not a readable PyTorch checkpoint ({exc})") from None
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else None
    del raw  # the optimizer state (as large as the weights) is not kept
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CMPCheckpointError(f"{path.name} holds no state dict of tensors")
    state = dict(state)
    for prefix in CHECKPOINT_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state
