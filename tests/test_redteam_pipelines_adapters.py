"""Red team (issue 20): parts loaded from an adapter folder come back in eval mode, as ``load_adapter``
documents, even when the pipeline's own parts were training (a trainer's pipeline hands over to inference)."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines import AnimationPipeline
from pipelines.adapters import ADAPTER_FILE, load_adapter
from pipelines.testing import tiny_components, tiny_guidance_encoders, tiny_pose_guider

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_loaded_parts_are_in_eval_mode_whatever_mode_they_replace(tmp_path):
    root = tmp_path / "final"
    root.mkdir()
    (root / ADAPTER_FILE).write_text(json.dumps({"format": 1, "parts": ["pose_guider", "guidance_encoders"]}))
    torch.manual_seed(0)
    tiny_pose_guider().train().save_pretrained(root / "pose_guider")
    tiny_guidance_encoders().train().save_pretrained(root / "guidance_encoders")
    pipeline = AnimationPipeline(**tiny_components(with_motion_controlnet=False))
    for module in (pipeline.pose_guider, pipeline.guidance_encoders):
        if module is not None:
            module.train()
    assert load_adapter(pipeline, root) == ["pose_guider", "guidance_encoders"]
    for name in ("pose_guider", "guidance_encoders"):
        module = getattr(pipeline, name)
        assert not any(m.training for m in module.modules()), name
