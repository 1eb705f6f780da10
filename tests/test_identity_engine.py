"""The diffusion engine with weights/identity_adapter/ (tiny random pipeline in the converted layout): the
adapter is loaded and reported, the reference's face embedding steers the frames, a face-less reference is
no_face_detected, an embedding of the wrong size is weights_invalid."""

from __future__ import annotations

import json

import numpy as np
import pytest

from animate.cli import run as cli_run
from animate.errors import AnimateError
from animate.settings import Settings
from animate.weights import CONVERTED_DIR, IDENTITY_DIR
from tests.conftest import DANCE, HERO_RGBA

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import torch

    from controlnets import IdentityAdapter
    from pipelines import AnimationPipeline
    from pipelines.testing import reinit_zero_layers, tiny_components

    components = tiny_components(with_guidance_encoders=False)
    reinit_zero_layers(components["pose_guider"])
    plain = tmp_path_factory.mktemp("plain")
    AnimationPipeline(**components).save_pretrained(plain / CONVERTED_DIR)
    with_identity = tmp_path_factory.mktemp("identity")
    AnimationPipeline(**components).save_pretrained(with_identity / CONVERTED_DIR)
    torch.manual_seed(0)
    adapter = IdentityAdapter.for_unet(components["unet"], embedding_dim=128, num_tokens=2)
    adapter.reinitialize_output(std=0.5, generator=torch.Generator().manual_seed(1))
    adapter.save_pretrained(with_identity / IDENTITY_DIR)
    return plain, with_identity


def _bundle(embedding):
    from animate.motion.bundle import GuidanceBundle

    rng = np.random.default_rng(0)
    keypoints = np.zeros((3, 133, 3), np.float32)
    keypoints[:, :17, :2] = rng.uniform(8, 56, (3, 17, 2))
    keypoints[:, :17, 2] = 1.0
    return GuidanceBundle(
        reference=rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
        reference_mask=np.full((64, 64), 255, np.uint8),
        reference_keypoints=keypoints[0],
        keypoints=keypoints,
        fps=8.0,
        size=(64, 64),
        extras={"face_embedding": embedding},
    )


def test_identity_adapter_is_loaded_and_the_face_steers_the_frames(weights):
    from animate.engines.diffusion import DiffusionEngine, DiffusionOptions

    plain_root, identity_root = weights
    options = DiffusionOptions(steps=2)
    plain = DiffusionEngine.from_settings(Settings(weights_dir=plain_root), options)
    engine = DiffusionEngine.from_settings(Settings(weights_dir=identity_root), options)
    assert plain.parts["identity_adapter"] == "off"
    assert engine.parts["identity_adapter"] == "on (128-d face embedding, 2 tokens)"
    assert engine.parts["weights"].endswith(f"+ {IDENTITY_DIR}/")
    rng = np.random.default_rng(3)
    face_a, face_b = rng.normal(size=128).astype(np.float32), rng.normal(size=128).astype(np.float32)
    base = np.stack(list(plain.render(_bundle(face_a)))).astype(np.float32)
    a = np.stack(list(engine.render(_bundle(face_a)))).astype(np.float32)
    a_again = np.stack(list(engine.render(_bundle(face_a)))).astype(np.float32)
    b = np.stack(list(engine.render(_bundle(face_b)))).astype(np.float32)
    assert np.array_equal(a, a_again)  # same face, same frames
    assert np.abs(a - base).mean() > 0.5 and np.abs(a - b).mean() > 0.1
    with pytest.raises(AnimateError) as info:
        list(engine.render(_bundle(None)))
    assert info.value.code == "no_face_detected"
    with pytest.raises(AnimateError) as info:
        list(engine.render(_bundle(np.zeros(512, np.float32))))
    assert info.value.code == "weights_invalid" and "128-d" in info.value.message


def test_cli_faceless_reference_with_identity_weights_is_no_face_detected(
    weights, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("ANIMATE_WEIGHTS_DIR", str(weights[1]))
    argv = [
        "run", str(HERO_RGBA), str(DANCE), "-o", str(tmp_path / "o.mp4"), "--engine", "diffusion",
        "--size", "64x64", "--max-frames", "3", "--steps", "1", "--json",
    ]  # fmt: skip
    assert cli_run(argv) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "no_face_detected"
    assert not (tmp_path / "o.mp4").exists()
