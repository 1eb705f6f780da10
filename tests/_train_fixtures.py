"""Tiny training fixtures: a pipeline small enough to train on two CPU cores, and a synthetic clip dataset
with exactly ``animate.train.data.ClipDataset``'s sample keys and formats."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

MAP_NAMES = ("depth", "normal", "semantic", "mask")


def tiny_train_pipeline(with_motion_controlnet: bool = False):
    """``pipelines.testing.tiny_components`` with a 2-layer CLIP on 8x8 inputs (the 32x32 one costs more than
    the UNet at 16x16)."""
    from pipelines import AnimationPipeline
    from pipelines.testing import tiny_components

    components = tiny_components(with_motion_controlnet=with_motion_controlnet)
    torch.manual_seed(0)
    components["image_encoder"] = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=8,
            intermediate_size=37,
            patch_size=1,
        )
    ).eval()
    components["feature_extractor"] = CLIPImageProcessor(crop_size=8, size=8)
    return AnimationPipeline(**components)


def _blob(height: int, width: int, cx: float, cy: float, radius: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    return torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * radius**2))


class SyntheticClips(Dataset):
    """``count`` clips of a coloured blob moving across a gradient: frames in [-1, 1], the blob's position as
    the pose image (a white dot), maps derived from it, flows of its motion. Deterministic per clip; the
    epoch does not change a sample (set_epoch exists as in ClipDataset)."""

    def __init__(self, count: int = 2, frames: int = 3, size: tuple[int, int] = (16, 16)) -> None:
        self.count, self.frames, (self.width, self.height) = count, frames, size
        self.epoch = 0
        self.loads: list[int] = []

    def __len__(self) -> int:
        return self.count

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _frame(self, clip: int, t: int) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
        h, w = self.height, self.width
        angle = 2 * math.pi * (clip / max(self.count, 1)) + 0.6 * t
        cx, cy = w / 2 + w / 4 * math.cos(angle), h / 2 + h / 4 * math.sin(angle)
        blob = _blob(h, w, cx, cy, 2.5)
        colour = torch.tensor([1.0, 0.3 + 0.3 * clip, 0.2])[:, None, None]
        background = torch.linspace(-0.6, 0.2, w)[None, None, :].expand(3, h, w).clone()
        background[2] = -background[2]
        image = (background * (1 - blob) + colour * blob).clamp(-1, 1)
        pose = _blob(h, w, cx, cy, 1.0).expand(3, h, w).clone()
        return image, pose, (cx, cy)

    def __getitem__(self, index: int) -> dict:
        self.loads.append(index)
        h, w, F = self.height, self.width, self.frames
        ref_image, ref_pose, (rx, ry) = self._frame(index, 0)
        frames, poses, centres = zip(*(self._frame(index, t + 1) for t in range(F)), strict=True)
        frames, poses = torch.stack(frames), torch.stack(poses)

        def maps(pose: torch.Tensor) -> dict[str, torch.Tensor]:
            return {name: (pose * (k + 1) / len(MAP_NAMES)).clamp(0, 1) for k, name in enumerate(MAP_NAMES)}

        dense = torch.zeros(F, h, w, 2)
        trajectory = torch.zeros(F, h, w, 2)
        previous = (rx, ry)
        for t, (cx, cy) in enumerate(centres):
            dense[t, ..., 0], dense[t, ..., 1] = cx - rx, cy - ry
            trajectory[t, ..., 0], trajectory[t, ..., 1] = cx - previous[0], cy - previous[1]
            previous = (cx, cy)
        keypoints = torch.tensor([[[cx, cy, 1.0]] for cx, cy in centres])
        return {
            "reference": ref_image,
            "reference_pose": ref_pose,
            "reference_guidance": maps(ref_pose),
            "frames": frames,
            "pose_images": poses,
            "guidance_maps": {k: torch.stack([maps(p)[k] for p in poses]) for k in MAP_NAMES},
            "dense_flow": dense,
            "trajectory_flow": trajectory,
            "keypoints": keypoints,
            "reference_keypoints": torch.tensor([[rx, ry, 1.0]]),
            "index": torch.tensor(index),
            "start": torch.tensor(1),
        }


def write_synthetic_data(root, clips: int = 2, frames: int = 3, size: tuple[int, int] = (16, 16)):
    """A data folder in ``animate train prepare``'s layout (``animate.train.shard``) holding ``clips`` clips
    of ``SyntheticClips``' moving blob, ``frames`` frames each, frame 0 the only reference."""
    from pathlib import Path

    import numpy as np

    from animate.train.shard import (
        CLIPS_DIR,
        DONE_FILE,
        FORMAT_VERSION,
        META_FILE,
        SHARD_FILE,
        ShardWriter,
        dump_json,
        flow_size,
        member,
    )

    root = Path(root)
    width, height = size
    fw, fh = flow_size(width, height)
    source = SyntheticClips(clips, frames, size)
    for clip in range(clips):
        folder = root / CLIPS_DIR / f"synthetic-{clip:012d}"
        folder.mkdir(parents=True)
        images, poses, centres = zip(*(source._frame(clip, t) for t in range(frames)), strict=True)
        with ShardWriter(folder / SHARD_FILE) as shard:
            for t in range(frames):
                rgb = ((images[t].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
                grey = (poses[t][0] * 255).round().byte().numpy()
                shard.add(member("frames", t), rgb)
                shard.add(member("depth", t), grey)
                shard.add(member("normal", t), np.stack([grey, 255 - grey, grey // 2], axis=-1))
                shard.add(member("semantic", t), np.stack([grey // 2, grey, 255 - grey], axis=-1))
                shard.add(member("mask", t), np.where(grey > 64, 255, 0).astype(np.uint8))
            for t in range(frames):
                shift = np.array([centres[t][0] - centres[0][0], centres[t][1] - centres[0][1]], np.float32)
                shard.add(member("dense_flow", t, 0), np.broadcast_to(shift, (fh, fw, 2)).astype(np.float16))
            keypoints = np.zeros((frames, 133, 3), np.float32)
            for t, (cx, cy) in enumerate(centres):
                # a small upright figure around the blob: COCO body points spread on a vertical line
                for k in range(17):
                    keypoints[t, k] = (cx + (k % 3 - 1) * 1.5, cy - 3 + k * 0.4, 1.0)
            shard.add("keypoints", keypoints)
            shard.add("references", np.array([0], np.int64))
            shard.add("person_masks", np.zeros((1, height, width), np.uint8))
        meta = {
            "format": FORMAT_VERSION,
            "source": f"synthetic-{clip}",
            "fps": 8.0,
            "size": [width, height],
            "frames": frames,
            "references": [0],
            "flow_size": [fw, fh],
            "keypoints": "coco_wholebody_133",
        }
        (folder / META_FILE).write_text(dump_json(meta))
        (folder / DONE_FILE).write_text("")
    return root


def save_tiny_base(root, with_motion_controlnet: bool = False):
    """A weights folder whose ``animation-pipeline/`` is the tiny training pipeline (the diffusion engine's
    fast-load layout)."""
    from pathlib import Path

    from animate.weights import CONVERTED_DIR

    root = Path(root)
    tiny_train_pipeline(with_motion_controlnet).save_pretrained(root / CONVERTED_DIR)
    return root
