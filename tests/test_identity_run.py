"""The identity score of a real run (warp engine, shared photo + dance) in `animate run --json`, and a
reference without a face: a note when identity was not requested, no_face_detected (exit 2) when it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from animate.cli import run
from tests.conftest import DANCE, WOMAN_JPG

COMMON = ["--engine", "warp", "--no-body", "--size", "432x768", "--max-frames", "9", "--json"]


@pytest.fixture(scope="module")
def faceless(tmp_path_factory) -> str:
    # the shared photo with the head painted over with the wall's colour: the body stays, the face goes
    image = np.asarray(Image.open(WOMAN_JPG).convert("RGB")).copy()
    image[230:470, 380:620] = image[230:470, 330:340].mean(axis=(0, 1)).astype(np.uint8)
    path = tmp_path_factory.mktemp("faceless") / "no_face.png"
    Image.fromarray(image).save(path)
    return str(path)


def test_warp_run_reports_the_identity_score(tmp_path, capsys):
    assert run(["run", str(WOMAN_JPG), str(DANCE), "-o", str(tmp_path / "out.mp4"), *COMMON]) == 0
    result = json.loads(capsys.readouterr().out)
    identity = result["identity"]
    # 9 frames, every 8th sampled: frames 0 and 8
    assert identity["frames"] == 2 and identity["every"] == 8 and identity["embedder"] == "dlib_resnet_v1"
    assert identity["face_share"] == 1.0
    # the warp engine moves the reference's own pixels: the same person by dlib's measure (distance < 0.6
    # is cosine > ~0.9 at these descriptors' norm ~1.4; different people measured ~0.86)
    assert 0.9 < identity["min"] <= identity["mean"] <= 1.0


def test_faceless_reference_is_a_note_unless_identity_is_requested(tmp_path, capsys, faceless):
    assert run(["run", faceless, str(DANCE), "-o", str(tmp_path / "a.mp4"), *COMMON]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["identity"] is None
    assert "identity score skipped: no face found in the reference" in result["notes"]
    assert run(["run", faceless, str(DANCE), "-o", str(tmp_path / "b.mp4"), *COMMON, "--identity"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]["code"] == "no_face_detected"  # --json: the error as JSON
    assert "Traceback" not in captured.err
    assert not (tmp_path / "b.mp4").exists()


def test_job_options_and_job_record_carry_identity(tmp_path):
    from animate.animator import AnimationResult
    from server.schemas import JobOptions, ResultOut
    from server.worker import _result_record

    assert JobOptions(identity=True).animation_options().identity is True
    assert JobOptions().animation_options().identity is False
    score = {
        "mean": 0.97,
        "min": 0.95,
        "face_share": 0.75,
        "frames": 4,
        "every": 8,
        "embedder": "dlib_resnet_v1",
    }
    result = AnimationResult(tmp_path / "o.mp4", "warp", 30, 24.0, (64, 64), identity=score)
    out = ResultOut(**_result_record(result))
    assert out.identity is not None and out.identity.model_dump() == score
    faceless = AnimationResult(tmp_path / "o.mp4", "warp", 30, 24.0, (64, 64))
    assert ResultOut(**_result_record(faceless)).identity is None


def test_weights_check_and_doctor_report_identity_parts(tmp_path, capsys):
    import torch

    from controlnets import IdentityAdapter
    from pipelines.testing import tiny_unet

    assert run(["weights", "check", "--dir", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    files = {f["name"]: f for f in report["files"]}
    assert files["identity_adapter"]["status"] == "missing" and files["face_embedder"]["status"] == "missing"
    assert report["face_embedder"] == "dlib_resnet_v1" and report["features"]["identity_adapter"] is False

    torch.manual_seed(0)
    IdentityAdapter.for_unet(tiny_unet(), num_tokens=2).save_pretrained(tmp_path / "identity_adapter")
    (tmp_path / "face").mkdir()
    (tmp_path / "face" / "glintr100.onnx").write_bytes(b"\0" * 16)  # presence only: not loaded here
    assert run(["weights", "check", "--dir", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    files = {f["name"]: f for f in report["files"]}
    assert files["identity_adapter"]["status"] == "ok"
    assert files["identity_adapter"]["detail"] == "128-d embeddings -> 2 tokens, 6 layers"
    assert (
        files["face_embedder"]["status"] == "present"
        and files["face_embedder"]["path"] == "face/glintr100.onnx"
    )
    assert (
        report["face_embedder"] == "arcface_onnx:glintr100.onnx"
        and report["features"]["face_arcface"] is True
    )

    config = tmp_path / "identity_adapter" / "config.json"
    config.write_text(config.read_text().replace('"IdentityAdapter"', '"PoseGuider"'))
    assert run(["weights", "check", "--dir", str(tmp_path), "--json"]) == 0
    files = {f["name"]: f for f in json.loads(capsys.readouterr().out)["files"]}
    assert (
        files["identity_adapter"]["status"] == "invalid"
        and "PoseGuider" in files["identity_adapter"]["detail"]
    )

    assert run(["doctor", "--json"]) == 0
    face = json.loads(capsys.readouterr().out)["face"]
    assert face == {"embedder": "dlib_resnet_v1", "dlib_models": True}  # ./weights has no face/ here
