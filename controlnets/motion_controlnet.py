"""DisPose's hybrid motion ControlNet: dense flow + trajectory flow + keypoint point features -> UNet residuals.

A ControlNet built from the SVD UNet (``from_unet`` copies ``conv_in``, the time and added-time embeddings,
the down blocks and the mid block). Its input is the UNet's own 8-channel latent with the same
cross-attention and time ids; two identical conv branches embed the dense motion field and the trajectory
flow (pixels, at image size) down to the latent grid, their sum goes through ``conv_final`` and is added
after ``conv_in``; a ``PointAdapter`` adds keypoint features after each down block. Each skip connection
and the mid block leave through a zero-initialised 1x1 conv, times ``conditioning_scale``: a fresh
ControlNet's residuals are exact zeros.

The default config is key- and shape-exact with ``DisPose.pth`` (705 keys, no prefix; see the research
manifest ``dispose_controlnet.json``). ``residual_mode`` records how the UNet must consume the residuals:
``"once"`` (each skip gets its residual once, as diffusers' ControlNets) or ``"dispose"`` (the additions
inside DisPose's down-block loop, which the released weights were trained with: 4, 3, 2, 1 times by block).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_3d_blocks import UNetMidBlockSpatioTemporal, get_down_block
from diffusers.utils import BaseOutput
from torch import nn

from controlnets.point_adapter import PointAdapter

RESIDUAL_MODES = ("once", "dispose")
# UNet config entries the ControlNet shares (the ControlNet has no up blocks and no output convs)
UNET_CONFIG_KEYS = (
    "sample_size",
    "in_channels",
    "down_block_types",
    "block_out_channels",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
    "layers_per_block",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "num_attention_heads",
    "num_frames",
)
# the parts from_unet copies; add_embedding too (DisPose leaves it random, then DisPose.pth overwrites it)
UNET_PARTS = ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block")


@dataclass
class MotionControlNetOutput(BaseOutput):
    """``down_block_res_samples``: one residual per UNet skip connection, in the UNet's order;
    ``mid_block_res_sample``: the residual for the mid block's output. Rows: ``batch * frames``."""

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor


class MotionEmbedding(nn.Module):
    """Two identical branches (dense flow ``*_flow``, trajectory flow ``*_traj``): ``conv_in``, conv ``blocks``
    (SiLU after each, every second one stride 2), a zero-initialised ``conv_out``; summed, then ``conv_final``.

    Key names equal DisPose's ``controlnet_cond_embedding.*``. A branch whose flow is not given adds nothing;
    with neither flow the embedding is skipped (``None``).
    """

    branches = ("flow", "traj")

    def __init__(
        self,
        out_channels: int,
        flow_channels: int = 2,
        block_out_channels: tuple[int, ...] = (16, 32, 96, 256),
    ) -> None:
        super().__init__()
        for branch in self.branches:
            setattr(self, f"conv_in_{branch}", nn.Conv2d(flow_channels, block_out_channels[0], 3, padding=1))
            blocks = nn.ModuleList()
            for channel_in, channel_out in itertools.pairwise(block_out_channels):
                blocks.append(nn.Conv2d(channel_in, channel_in, 3, padding=1))
                blocks.append(nn.Conv2d(channel_in, channel_out, 3, padding=1, stride=2))
            setattr(self, f"blocks_{branch}", blocks)
            conv_out = nn.Conv2d(block_out_channels[-1], out_channels, 3, padding=1)
            nn.init.zeros_(conv_out.weight)
            nn.init.zeros_(conv_out.bias)
            setattr(self, f"conv_out_{branch}", conv_out)
        self.conv_final = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.downsample_factor = 2 ** (len(block_out_channels) - 1)

    def _branch(self, branch: str, flow: torch.Tensor) -> torch.Tensor:
        hidden_states = F.silu(getattr(self, f"conv_in_{branch}")(flow))
        for block in getattr(self, f"blocks_{branch}"):
            hidden_states = F.silu(block(hidden_states))
        return getattr(self, f"conv_out_{branch}")(hidden_states)

    def forward(
        self, dense_flow: torch.Tensor | None, trajectory_flow: torch.Tensor | None
    ) -> torch.Tensor | None:
        if (
            dense_flow is not None
            and trajectory_flow is not None
            and dense_flow.shape != trajectory_flow.shape
        ):
            raise ValueError(
                f"dense_flow {tuple(dense_flow.shape)} and trajectory_flow {tuple(trajectory_flow.shape)} differ"
            )
        total = None
        for branch, flow in zip(self.branches, (dense_flow, trajectory_flow), strict=True):
            if flow is None:
                continue
            features = self._branch(branch, flow.to(self.conv_final.weight.dtype))
            total = features if total is None else total + features
        return None if total is None else self.conv_final(total)


class MotionControlNet(ModelMixin, ConfigMixin):
    r"""DisPose's ControlNet: residuals for the SVD UNet's 12 skip connections and its mid block.

    Args (config): the UNet's own (``from_unet`` copies them); ``conditioning_channels`` (2: a flow's x, y),
        ``conditioning_embedding_out_channels`` (the motion branches' widths), ``point_embedding_channels``
        (DIFT's 1280), ``point_mid_channels`` (128), ``residual_mode`` (``"once"`` | ``"dispose"``).
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = 96,
        in_channels: int = 8,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 768,
        layers_per_block: int | tuple[int, ...] = 2,
        cross_attention_dim: int | tuple[int, ...] = 1024,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20),
        num_frames: int = 25,
        conditioning_channels: int = 2,
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        point_embedding_channels: int = 1280,
        point_mid_channels: int = 128,
        residual_mode: str = "once",
    ) -> None:
        super().__init__()
        if residual_mode not in RESIDUAL_MODES:
            raise ValueError(f"residual_mode must be one of {RESIDUAL_MODES}, got {residual_mode!r}")
        blocks = len(down_block_types)
        if len(block_out_channels) != blocks:
            raise ValueError("block_out_channels and down_block_types differ in length")
        per_block = {
            "num_attention_heads": num_attention_heads,
            "cross_attention_dim": cross_attention_dim,
            "layers_per_block": layers_per_block,
            "transformer_layers_per_block": transformer_layers_per_block,
        }
        expanded = {k: (v,) * blocks if isinstance(v, int) else tuple(v) for k, v in per_block.items()}
        for name, values in expanded.items():
            if len(values) != blocks:
                raise ValueError(f"{name} has {len(values)} entries for {blocks} down blocks")

        # attribute order = DisPose's state_dict order
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        time_embed_dim = block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim)
        self.add_time_proj = Timesteps(addition_time_embed_dim, True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)

        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList()
        self.controlnet_down_blocks.append(self._zero_conv(block_out_channels[0]))
        output_channel = block_out_channels[0]
        for i, down_block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            is_final_block = i == blocks - 1
            block = get_down_block(
                down_block_type,
                num_layers=expanded["layers_per_block"][i],
                transformer_layers_per_block=expanded["transformer_layers_per_block"][i],
                in_channels=input_channel,
                out_channels=output_channel,
                temb_channels=time_embed_dim,
                add_downsample=not is_final_block,
                resnet_eps=1e-5,
                cross_attention_dim=expanded["cross_attention_dim"][i],
                num_attention_heads=expanded["num_attention_heads"][i],
                resnet_act_fn="silu",
            )
            self.down_blocks.append(block)
            for _ in range(expanded["layers_per_block"][i] + int(not is_final_block)):
                self.controlnet_down_blocks.append(self._zero_conv(output_channel))

        self.point_adapter = PointAdapter(
            embedding_channels=point_embedding_channels,
            channels=tuple(block_out_channels),
            mid_channels=point_mid_channels,
        )
        self.controlnet_cond_embedding = MotionEmbedding(
            block_out_channels[0], conditioning_channels, tuple(conditioning_embedding_out_channels)
        )
        self.controlnet_mid_block = self._zero_conv(block_out_channels[-1])
        self.mid_block = UNetMidBlockSpatioTemporal(
            block_out_channels[-1],
            temb_channels=time_embed_dim,
            transformer_layers_per_block=expanded["transformer_layers_per_block"][-1],
            cross_attention_dim=expanded["cross_attention_dim"][-1],
            num_attention_heads=expanded["num_attention_heads"][-1],
        )

    @staticmethod
    def _zero_conv(channels: int) -> nn.Conv2d:
        conv = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        return conv

    @property
    def num_skip_connections(self) -> int:
        return len(self.controlnet_down_blocks)

    @property
    def motion_downsample_factor(self) -> int:
        """Image pixels per latent cell the motion branches assume (8 for SVD's VAE)."""
        return self.controlnet_cond_embedding.downsample_factor

    @classmethod
    def config_from_unet(cls, unet_config: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
        """The ControlNet config for a UNet config: the shared entries, then ``overrides``."""
        config = {k: unet_config[k] for k in UNET_CONFIG_KEYS if k in unet_config}
        for key, value in config.items():
            if isinstance(value, list):
                config[key] = tuple(value)
        return config | overrides

    @classmethod
    def from_unet(
        cls, unet: nn.Module, load_weights_from_unet: bool = True, **overrides: Any
    ) -> MotionControlNet:
        """A ControlNet shaped like ``unet`` (a ``UNetSpatioTemporalConditionModel``), with ``conv_in``, the
        time / added-time embeddings, the down blocks and the mid block copied from it (``UNET_PARTS``)."""
        controlnet = cls(**cls.config_from_unet(unet.config, **overrides))
        if load_weights_from_unet:
            for name in UNET_PARTS:
                getattr(controlnet, name).load_state_dict(getattr(unet, name).state_dict(), strict=True)
        if controlnet.dtype != unet.dtype:
            controlnet.to(dtype=unet.dtype)
        return controlnet.to(unet.device)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        dense_flow: torch.Tensor | None = None,
        trajectory_flow: torch.Tensor | None = None,
        point_embeddings: torch.Tensor | None = None,
        point_positions: torch.Tensor | None = None,
        point_visible: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        return_dict: bool = True,
    ) -> MotionControlNetOutput | tuple:
        r"""Residuals for the UNet call on the same inputs.

        Args:
            sample: ``(B, F, 8, h, w)``: the UNet's input (noisy latents + reference latent).
            timestep, encoder_hidden_states ``(B, 1, D)``, added_time_ids ``(B, 3)``: as the UNet's.
            dense_flow, trajectory_flow: ``(B * F, 2, h * f, w * f)`` in pixels of that image size
                (``f`` = ``motion_downsample_factor``), x then y.
            point_embeddings ``(B * F, K, E)``: reference features of each keypoint; point_positions
                ``(B * F, K, 2)``: where each keypoint is in that frame, normalised ``(x / W, y / H)``;
                point_visible ``(B * F, K)``: which ones to place.
            conditioning_scale: multiplies every residual.
        """
        batch, frames = sample.shape[:2]
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            dtype = torch.float64 if isinstance(timestep, float) else torch.int64
            timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(batch)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype))
        time_embeds = self.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
        emb = emb + self.add_embedding(time_embeds)

        sample = sample.flatten(0, 1)
        emb = emb.repeat_interleave(frames, dim=0)
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(frames, dim=0)

        sample = self.conv_in(sample)
        motion = self.controlnet_cond_embedding(dense_flow, trajectory_flow)
        if motion is not None:
            if motion.shape != sample.shape:
                raise ValueError(
                    f"the motion embedding {tuple(motion.shape)} does not fit the latent {tuple(sample.shape)}: "
                    f"flows must be {self.motion_downsample_factor}x the latent size, one per frame"
                )
            sample = sample + motion

        use_points = point_embeddings is not None
        if use_points and (point_positions is None or point_visible is None):
            raise ValueError("point_embeddings need point_positions and point_visible")
        image_only_indicator = torch.zeros(batch, frames, dtype=sample.dtype, device=sample.device)
        down_block_res_samples: tuple[torch.Tensor, ...] = (sample,)
        cells = means = grid = None
        for index, block in enumerate(self.down_blocks):
            cross = getattr(block, "has_cross_attention", False)
            kwargs = {"encoder_hidden_states": encoder_hidden_states} if cross else {}
            sample, res_samples = block(
                hidden_states=sample, temb=emb, image_only_indicator=image_only_indicator, **kwargs
            )
            down_block_res_samples += res_samples
            if use_points:
                if grid is None:
                    grid = tuple(sample.shape[-2:])
                    cells, means = self.point_adapter.scatter(
                        point_embeddings, point_positions, point_visible, grid
                    )
                points = self.point_adapter.level(
                    index, cells, means, sample.shape[0], grid, tuple(sample.shape[-2:])
                )
                sample = sample + points.to(sample.dtype)

        sample = self.mid_block(
            hidden_states=sample,
            temb=emb,
            encoder_hidden_states=encoder_hidden_states,
            image_only_indicator=image_only_indicator,
        )
        down = tuple(
            conv(res) * conditioning_scale
            for res, conv in zip(down_block_res_samples, self.controlnet_down_blocks, strict=True)
        )
        mid = self.controlnet_mid_block(sample) * conditioning_scale
        if not return_dict:
            return (down, mid)
        return MotionControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)
