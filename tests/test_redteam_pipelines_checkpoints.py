"""Red team (issue 20): which published Champ file feeds which guidance type, from Champ's release
(``pretrained_models/champ/guidance_encoder_{depth,normal,semantic_map,dwpose}.pth``; research manifest
``champ_guidance_encoder.json``), and each file's weights landing in the encoder of that type.

A swapped entry (the normal encoder reading the semantic map's file) loads without any error, both files
have the same keys and shapes, so only the names pin it.
"""

from __future__ import annotations

import torch

from animate.weights import CHAMP_FILES
from controlnets import GuidanceFusion
from pipelines.checkpoints import load_champ_guidance_encoders

CHAMP_RELEASE = {
    "depth": "guidance_encoder_depth.pth",
    "normal": "guidance_encoder_normal.pth",
    "semantic": "guidance_encoder_semantic_map.pth",
    "skeleton": "guidance_encoder_dwpose.pth",
}


def test_champ_file_names_per_guidance_type_are_champs_release():
    assert CHAMP_FILES == CHAMP_RELEASE  # what the engine and the trainer read


def test_each_champ_file_loads_into_the_encoder_of_its_type(tmp_path):
    kwargs = {"block_out_channels": (4, 8), "out_channels": 4, "attention_num_heads": 1}
    kwargs["attention_norm_num_groups"] = 4
    fusion = GuidanceFusion(guidance_types=("depth", "normal", "semantic"), **kwargs)
    files = {}
    for value, name in enumerate(("depth", "normal", "semantic"), start=1):
        # Champ's key names: our keys, with the used attention under attentions.<last block>
        state = {
            k.replace("attention.", "attentions.1.", 1) if k.startswith("attention.") else k: torch.full_like(
                v, float(value)
            )
            for k, v in fusion.encoders[name].state_dict().items()
        }
        files[name] = tmp_path / CHAMP_RELEASE[name]
        torch.save(state, files[name])
    loaded, ignored = load_champ_guidance_encoders(files, fusion)
    assert ignored == {"depth": (), "normal": (), "semantic": ()}
    for value, name in enumerate(("depth", "normal", "semantic"), start=1):
        for key, tensor in loaded.encoders[name].state_dict().items():
            assert torch.all(tensor == value), (name, key)
