"""``animate.engines.diffusion``'s parts that need weights this machine lacks, with the loaders replaced by
stand-ins: the DIFT features of the point adapter (Stable Diffusion 1.5 is loaded for the job, its fp16 variant
only when that is all there is, seeded by the job's seed; a load failure turns the adapter off and says why),
the point inputs handed to the pipeline (DisPose's 18 OpenPose body points from our COCO-WholeBody keypoints,
written out here by hand), the weights already on a GPU (counted from fake parameters) and a trained
adapter's summary. No pipeline is built: each engine is made without ``__init__`` and given only what the
method reads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
import torch

from animate.engines.diffusion import DiffusionEngine, DiffusionOptions
from animate.errors import AnimateError


def _engine(pipeline, sd15_dir=None, **options) -> DiffusionEngine:
    engine = DiffusionEngine.__new__(DiffusionEngine)
    engine.pipeline = pipeline
    engine.options = DiffusionOptions(**options)
    engine.sd15_dir = sd15_dir
    engine.parts = {}
    return engine


class FakeDift:
    """``DiftFeaturizer`` stand-in: records how it was loaded and called, and whether it was closed."""

    loads: ClassVar[list[dict]] = []
    error: Exception | None = None

    def __init__(self, features) -> None:
        self.features = features
        self.calls: list[tuple] = []
        self.closed = False

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        cls.loads.append({"path": path, **kwargs})
        if cls.error is not None:
            raise cls.error
        cls.last = cls(torch.full((1, 4, 2, 2), 3.0))
        return cls.last

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.closed = True

    def __call__(self, image, *, seed=None):
        assert not self.closed
        self.calls.append((image, seed))
        return self.features


@pytest.fixture
def dift(monkeypatch):
    import controlnets.dift

    FakeDift.loads, FakeDift.error = [], None
    monkeypatch.setattr(controlnets.dift, "DiftFeaturizer", FakeDift)
    return FakeDift


def _sd15(tmp_path: Path, *files: str) -> Path:
    unet = tmp_path / "sd15" / "unet"
    unet.mkdir(parents=True)
    for name in files:
        (unet / name).write_bytes(b"")
    return tmp_path / "sd15"


def _controlnet_pipeline(dtype=torch.float16):
    return SimpleNamespace(
        _execution_device=torch.device("cpu"),
        motion_controlnet=SimpleNamespace(dtype=dtype, config=SimpleNamespace(residual_mode="dispose")),
        guidance_encoders=None,
    )


@pytest.mark.parametrize(
    ("files", "variant"),
    [
        (["diffusion_pytorch_model.safetensors"], None),
        (["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"], None),
        (["diffusion_pytorch_model.fp16.safetensors"], "fp16"),  # the fp16 files alone suffice
        ([], None),
    ],
)
def test_dift_loads_sd15_on_the_pipelines_device_and_dtype(dift, tmp_path, files, variant) -> None:
    root = _sd15(tmp_path, *files)
    engine = _engine(_controlnet_pipeline(torch.float16), root, seed=11)
    reference = np.full((8, 8, 3), 7, np.uint8)
    features = engine._dift_features(reference)
    assert dift.loads == [
        {"path": root, "device": torch.device("cpu"), "torch_dtype": torch.float16, "variant": variant}
    ]
    assert features is dift.last.features
    ((image, seed),) = dift.last.calls
    assert image is reference and seed == 11  # the job's seed, not DisPose's unseeded draw
    assert dift.last.closed  # the SD 1.5 UNet is freed right after
    assert engine.parts == {}


def test_a_dift_that_cannot_load_turns_the_point_adapter_off(dift, tmp_path) -> None:
    from controlnets.dift import DiftLoadError

    dift.error = DiftLoadError("sd15/unet has no weights")
    engine = _engine(_controlnet_pipeline(torch.float32), _sd15(tmp_path))
    assert engine._dift_features(np.zeros((8, 8, 3), np.uint8)) is None
    assert engine.parts == {"point_adapter": "off (sd15/unet has no weights)"}
    assert dift.loads[0]["torch_dtype"] is torch.float32


def _whole_body(frames: int) -> np.ndarray:
    """COCO-WholeBody keypoints where body point j of frame f is at (10 j + f, 100 + j), score 0.5 + j / 40."""
    keypoints = np.zeros((frames, 133, 3), np.float32)
    for f in range(frames):
        for j in range(17):
            keypoints[f, j] = (10 * j + f, 100 + j, 0.5 + j / 40)
    return keypoints


# OpenPose's 18 body points by COCO index (-1: the neck, between the shoulders 5 and 6)
OPENPOSE_FROM_COCO = [0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]


def _openpose_by_hand(frame: np.ndarray) -> np.ndarray:
    out = np.zeros((18, 3), np.float32)
    for i, j in enumerate(OPENPOSE_FROM_COCO):
        if j >= 0:
            out[i] = frame[j]
        else:  # the neck: the shoulders' midpoint, the weaker shoulder's score
            out[i] = (
                (frame[5, 0] + frame[6, 0]) / 2,
                (frame[5, 1] + frame[6, 1]) / 2,
                min(frame[5, 2], frame[6, 2]),
            )
    return out


def _bundle(frames: int = 3, size: int = 64):
    from animate.motion.bundle import GuidanceBundle

    keypoints = _whole_body(frames)
    return GuidanceBundle(
        reference=np.full((size, size, 3), 9, np.uint8),
        reference_mask=np.full((size, size), 255, np.uint8),
        reference_keypoints=keypoints[1],
        keypoints=keypoints,
        fps=8.0,
        size=(size, size),
    )


def test_point_inputs_are_dispose_openpose_points_with_the_dift_features(tmp_path) -> None:
    engine = _engine(_controlnet_pipeline(), tmp_path, residual_mode="dispose", controlnet_cfg="zero")
    features = torch.ones(1, 2, 3, 3)
    seen = []
    engine._dift_features = lambda reference: seen.append(reference) or features
    bundle = _bundle(frames=3)
    inputs = engine._motion_inputs(bundle, None)
    assert seen and seen[0] is bundle.reference
    assert inputs["point_features"] is features
    assert inputs["keypoints"].shape == (3, 18, 3)
    for f in range(3):
        np.testing.assert_allclose(
            inputs["keypoints"][f], _openpose_by_hand(bundle.keypoints[f]), rtol=0, atol=1e-5
        )
    np.testing.assert_allclose(
        inputs["reference_keypoints"], _openpose_by_hand(bundle.keypoints[1]), atol=1e-5
    )
    # neck of frame 2: shoulders at x 52 / 62 -> 57, y 105 / 106 -> 105.5, score min(0.625, 0.65)
    np.testing.assert_allclose(inputs["keypoints"][2, 1], (57.0, 105.5, 0.625), atol=1e-6)
    assert (inputs["residual_mode"], inputs["controlnet_cfg"]) == ("dispose", "zero")
    assert (
        engine.parts["dense_flow"] == "2D skeleton field" and engine.parts["trajectory_flow"] == "keypoints"
    )


def test_no_point_inputs_when_dift_is_off_or_the_job_is_canceled(tmp_path) -> None:
    engine = _engine(_controlnet_pipeline(), tmp_path)
    engine._dift_features = lambda reference: None  # the load failed: the adapter is off
    inputs = engine._motion_inputs(_bundle(), None)
    assert set(inputs) == {"dense_flow", "trajectory_flow", "residual_mode", "controlnet_cfg"}
    calls = []
    engine._dift_features = lambda reference: calls.append(reference)
    inputs = engine._motion_inputs(_bundle(), lambda: True)  # canceled: SD 1.5 is not loaded
    assert calls == [] and "point_features" not in inputs
    inputs = engine._motion_inputs(_bundle(), lambda: False)
    assert len(calls) == 1
    # no SD 1.5: no DIFT at all
    engine = _engine(_controlnet_pipeline(), None)
    engine._dift_features = lambda reference: pytest.fail("DIFT without Stable Diffusion 1.5")
    assert "point_features" not in engine._motion_inputs(_bundle(), None)


class FakeParameters(torch.nn.Module):
    """A module whose parameters claim devices and sizes: (device type, numel, element size)."""

    def __init__(self, *specs) -> None:
        super().__init__()
        self.specs = specs

    def parameters(self, recurse: bool = True):
        for device, numel, size in self.specs:
            yield SimpleNamespace(
                device=torch.device(device), numel=lambda n=numel: n, element_size=lambda s=size: s
            )


def test_bytes_on_gpu_count_only_cuda_parameters_of_modules() -> None:
    pipeline = SimpleNamespace(
        components={
            "unet": FakeParameters(("cuda", 1000, 2), ("cpu", 5000, 2), ("cuda", 10, 4), ("meta", 70, 2)),
            "vae": FakeParameters(("cuda", 3, 1)),
            "scheduler": SimpleNamespace(parameters=lambda: pytest.fail("not a module")),
            "feature_extractor": None,
        }
    )
    assert _engine(pipeline)._bytes_on_gpu() == 1000 * 2 + 10 * 4 + 3 * 1
    real = SimpleNamespace(components={"linear": torch.nn.Linear(4, 4)})
    assert _engine(real)._bytes_on_gpu() == 0  # on the CPU


def test_a_trained_adapter_is_summarised_or_refused(monkeypatch, tmp_path) -> None:
    import pipelines.adapters
    from animate.engines.diffusion import load_trained_parts
    from pipelines.checkpoints import CheckpointError

    calls = []

    def load(pipeline, path, dtype=None):
        calls.append((pipeline, path, dtype))
        return parts

    monkeypatch.setattr(pipelines.adapters, "load_adapter", load)
    parts = ["unet", "pose_guider"]
    assert load_trained_parts("pipe", tmp_path / "run" / "final", torch.float16) == (
        "adapter final (unet, pose_guider)"
    )
    assert calls == [("pipe", tmp_path / "run" / "final", torch.float16)]
    parts = []
    assert load_trained_parts("pipe", "final", torch.float32) == "adapter final (nothing)"

    def refuse(pipeline, path, dtype=None):
        raise CheckpointError("final/unet.safetensors is not a state dict", "not_a_state_dict")

    monkeypatch.setattr(pipelines.adapters, "load_adapter", refuse)
    with pytest.raises(AnimateError) as err:
        load_trained_parts("pipe", "final", torch.float32)
    assert (err.value.code, err.value.message) == (
        "adapter_invalid",
        "final/unet.safetensors is not a state dict",
    )
