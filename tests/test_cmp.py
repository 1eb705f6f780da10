"""CMPFlow: key-exact with ckpt_iter_42000.pth.tar, strict loading, exact bin decoding and flow rescaling;
animate.motion.cmp: the checkpoint lookup and the dense field over a real reference photo."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import WOMAN_JPG, load_manifest

from animate.errors import AnimateError
from animate.motion.cmp import CMP_CHECKPOINT, cmp_dense_flow, find_cmp_checkpoint, load_cmp
from animate.motion.keypoint_flow import sparse_motion
from controlnets.cmp import (
    CMPCheckpointError,
    CMPFlow,
    bin_centers,
    decode_flow_bins,
    resample_sparse_flow,
    resize_flow,
)

#: Same key names as the released network, a fraction of its width and depth.
SMALL = {"base_width": 8, "layers": (1, 1, 1, 1), "img_enc_dim": 16, "sparse_enc_dim": 8, "decoder_width": 16}
NBINS, FMAX = 99, 50.0


def save_cmp_checkpoint(path, model: CMPFlow, *, legacy: bool = True, prefix: str = "module.", extra=None):
    """The released file's layout: ``{'step', 'state_dict' (prefixed), 'optimizer'}``, legacy pickle."""
    state = {f"{prefix}{k}": v for k, v in model.state_dict().items()}
    state.update(extra or {})
    optimizer = {
        "state": {},
        "param_groups": [{"lr": 0.001, "momentum": 0.9, "params": list(range(len(state)))}],
    }
    torch.save(
        {"step": 42000, "state_dict": state, "optimizer": optimizer},
        path,
        _use_new_zipfile_serialization=not legacy,
    )
    return path


def loaded_small_model(path, seed: int, input_size: int = 384) -> CMPFlow:
    """A small random CMP through the real loader, its head scaled so the flow spans many bins."""
    torch.manual_seed(seed)
    config = {**SMALL, "input_size": input_size}
    model = CMPFlow(**config)
    with torch.no_grad():
        model.flow_decoder.head.weight.mul_(200.0)
    return CMPFlow.from_checkpoint(save_cmp_checkpoint(path, model), config=config)


def constant_flow_model(path, ix: int, iy: int) -> CMPFlow:
    """A small CMP whose head ignores its input and puts all mass on bin ``ix`` (x) and ``iy`` (y)."""
    torch.manual_seed(0)
    model = CMPFlow(**SMALL)
    with torch.no_grad():
        model.flow_decoder.head.weight.zero_()
        model.flow_decoder.head.bias.fill_(-60.0)
        model.flow_decoder.head.bias[ix] = 60.0
        model.flow_decoder.head.bias[NBINS + iy] = 60.0
    return CMPFlow.from_checkpoint(save_cmp_checkpoint(path, model), config=SMALL)


def test_cmp_default_is_key_and_shape_exact_with_the_released_checkpoint():
    manifest = load_manifest("cmp.json")
    assert manifest["expected_key_prefix"] == "module."
    expected = {k.removeprefix("module."): v for k, v in manifest["keys"].items()}
    with torch.device("meta"):
        model = CMPFlow()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected
    assert len(ours) == manifest["num_keys"] == 455
    assert sum(p.numel() for p in model.parameters()) == manifest["param_count"]
    assert sum(b.numel() for b in model.buffers()) == manifest["buffer_numel"]
    module = manifest["config_model_module"]
    assert (module["nbins"], module["fmax"], module["output_dim"]) == (NBINS, FMAX, 2 * NBINS)
    assert (model.config.nbins, model.config.fmax, model.config.img_enc_dim) == (99, 50.0, 256)


def test_cmp_real_size_checkpoint_in_the_released_format_loads_strictly(tmp_path):
    torch.manual_seed(0)
    saved = CMPFlow()
    path = save_cmp_checkpoint(tmp_path / "ckpt_iter_42000.pth.tar", saved)
    loaded = CMPFlow.from_checkpoint(path)
    assert loaded.checkpoint_path == str(path) and saved.checkpoint_path is None
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for (name, a), (_, b) in zip(saved.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.device.type == "cpu" and loaded.dtype == torch.float32


def test_cmp_loader_takes_zip_bare_state_dicts_without_bn_counters(tmp_path):
    torch.manual_seed(1)
    model = CMPFlow(**SMALL)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "bare.pth")  # zip format (memory-mapped), no prefix
    loaded = CMPFlow.from_checkpoint(tmp_path / "bare.pth", config=SMALL, dtype=torch.float16)
    assert loaded.dtype == torch.float16
    assert torch.equal(loaded.flow_decoder.head.weight, model.flow_decoder.head.weight.half())
    assert int(loaded.image_encoder.bn1.num_batches_tracked) == 0


def test_cmp_loader_rejects_what_does_not_fit(tmp_path):
    torch.manual_seed(2)
    small = CMPFlow(**SMALL)
    cases = {
        "wrong_width.pth.tar": lambda p: save_cmp_checkpoint(p, small),  # loaded into the default config
        "extra_key.pth.tar": lambda p: save_cmp_checkpoint(p, small, extra={"module.stray": torch.zeros(1)}),
        "garbage.pth.tar": lambda p: p.write_bytes(b"not a checkpoint at all"),
        "no_tensors.pth": lambda p: torch.save({"step": 3, "state_dict": {"a": 1}}, p),
    }
    for name, write in cases.items():
        path = tmp_path / name
        write(path)
        config = None if name == "wrong_width.pth.tar" else SMALL
        with pytest.raises(CMPCheckpointError) as info:
            CMPFlow.from_checkpoint(path, config=config)
        assert info.value.code == "weights_invalid", name
    missing = {k: v for k, v in small.state_dict().items() if not k.startswith("flow_decoder.head")}
    torch.save({"state_dict": missing}, tmp_path / "missing.pth")
    with pytest.raises(CMPCheckpointError, match="2 missing"):
        CMPFlow.from_checkpoint(tmp_path / "missing.pth", config=SMALL)
    with pytest.raises(CMPCheckpointError, match="not found"):
        CMPFlow.from_checkpoint(tmp_path / "absent.pth.tar")
    # the animate side turns it into a stable error code, never a stack trace
    with pytest.raises(AnimateError) as info:
        load_cmp(tmp_path / "wrong_width.pth.tar")
    assert info.value.code == "weights_invalid"


def test_bin_decoding_is_exact_for_constructed_logits():
    centers = bin_centers(NBINS, FMAX)
    step = 2 * FMAX / NBINS
    torch.testing.assert_close(centers[[0, 49, 98]], torch.tensor([-FMAX + step / 2, 0.0, FMAX - step / 2]))
    torch.testing.assert_close(centers[1:] - centers[:-1], torch.full((98,), step))
    logits = torch.full((1, 2 * NBINS, 2, 3), -1e4)
    logits[0, 10, 0, 0] = logits[0, NBINS + 80, 0, 0] = 0.0  # one bin each
    logits[0, :NBINS, 0, 1] = logits[0, NBINS:, 0, 1] = 0.0  # uniform: symmetric bins give zero
    logits[0, [20, 30], 1, :] = 0.0  # two equal x bins: their midpoint
    logits[0, NBINS + 60, 1, :] = 0.0
    logits[0, NBINS + 40, 0, 2] = logits[0, 5, 0, 2] = 0.0
    flow = decode_flow_bins(logits, NBINS, FMAX)
    assert flow.shape == (1, 2, 2, 3) and flow.dtype == torch.float32
    torch.testing.assert_close(flow[0, :, 0, 0], centers[[10, 80]])
    torch.testing.assert_close(flow[0, :, 0, 1], torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(flow[0, :, 1, 0], torch.stack([(centers[20] + centers[30]) / 2, centers[60]]))
    torch.testing.assert_close(flow[0, :, 0, 2], centers[[5, 40]])
    # a two-to-one split weighs the bins 2:1
    logits = torch.full((1, 2 * NBINS, 1, 1), -1e4)
    logits[0, 70] = np.log(2.0)
    logits[0, 90] = logits[0, NBINS + 49] = 0.0
    flow = decode_flow_bins(logits, NBINS, FMAX)
    torch.testing.assert_close(
        flow[0, :, 0, 0], torch.stack([(2 * centers[70] + centers[90]) / 3, centers[49]])
    )


def test_flow_resizing_rescales_vectors_to_the_new_pixels():
    flow = torch.empty(2, 2, 384, 384)
    flow[:, 0], flow[:, 1] = 3.0, -2.0
    out = resize_flow(flow, (200, 768))
    assert out.shape == (2, 2, 200, 768)
    torch.testing.assert_close(out[:, 0], torch.full((2, 200, 768), 6.0))
    torch.testing.assert_close(out[:, 1], torch.full((2, 200, 768), -2.0 * 200 / 384))
    assert resize_flow(flow, (384, 384)) is flow


def test_sparse_vectors_move_onto_the_cmp_grid_without_blurring():
    height, width = 200, 768  # to 384 x 384: x halves, y grows by 1.92
    flow = torch.zeros(2, 2, height, width)
    mask = torch.zeros(2, height, width)
    flow[0, :, 100, 400] = torch.tensor([10.0, 5.0])
    mask[0, 100, 400] = 1
    flow[1, :, 0, 0], flow[1, :, 0, 1] = torch.tensor([4.0, 0.0]), torch.tensor([8.0, 2.0])  # share a cell
    mask[1, 0, :2] = 255
    flow[1, :, 199, 767] = torch.tensor([-6.0, 1.0])  # unmasked: ignored
    out, out_mask = resample_sparse_flow(flow, mask, (384, 384))
    assert out.shape == (2, 2, 384, 384) and out_mask.shape == (2, 1, 384, 384)
    assert out_mask.sum() == 2 and out_mask[0, 0, 192, 200] == 1 and out_mask[1, 0, 0, 0] == 1
    torch.testing.assert_close(out[0, :, 192, 200], torch.tensor([5.0, 5.0 * 384 / 200]))
    torch.testing.assert_close(out[1, :, 0, 0], torch.tensor([3.0, 1.0 * 384 / 200]))
    assert out.abs().sum() == out[0, :, 192, 200].abs().sum() + out[1, :, 0, 0].abs().sum()
    # the same with a 2-channel mask (CMP's own input format)
    again, _ = resample_sparse_flow(flow, mask[:, None].expand(-1, 2, -1, -1), (384, 384))
    torch.testing.assert_close(again, out)


def test_propagate_runs_at_any_size_and_matches_the_network_forward(tmp_path):
    side = 192  # the network's input size (384 for the released model); smaller keeps this test fast
    model = loaded_small_model(tmp_path / "small.pth.tar", seed=3, input_size=side)
    image = torch.rand(1, 3, side, side)
    flow = torch.zeros(3, 2, side, side)
    mask = torch.zeros(3, side, side)
    flow[:, :, 50, 100] = torch.tensor([[4.0, -3.0], [20.0, 7.0], [4.0, -3.0]])
    mask[:, 50, 100] = 1
    dense = model.propagate(image, flow, mask)
    assert dense.shape == (3, 2, side, side) and dense.dtype == torch.float32
    sparse = torch.cat([flow, mask[:, None], mask[:, None]], dim=1)
    with torch.no_grad():
        direct = model.logits_to_flow(
            model(model.normalize_image(image).expand(3, -1, -1, -1), sparse), (side, side)
        )
    torch.testing.assert_close(dense, direct, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dense[0], dense[2])  # same motion, same field
    assert not torch.allclose(dense[0], dense[1])  # the motion drives the field
    # encoded once, reused per frame; any output size
    features = model.encode_reference(torch.rand(1, 3, 90, 160))
    small = model.propagate(features, flow[:, :, :90, :160], mask[:, :90, :160])
    assert small.shape == (3, 2, 90, 160)
    one_by_one = torch.cat(
        [
            model.propagate(features, flow[i : i + 1, :, :90, :160], mask[i : i + 1, :90, :160])
            for i in range(3)
        ]
    )
    torch.testing.assert_close(small, one_by_one, atol=1e-4, rtol=1e-4)


def test_propagate_rescales_a_constructed_constant_field(tmp_path):
    model = constant_flow_model(tmp_path / "const.pth.tar", ix=80, iy=30)
    centers = bin_centers(NBINS, FMAX)
    dense = model.propagate(torch.rand(1, 3, 50, 200), torch.zeros(1, 2, 50, 200), torch.zeros(1, 50, 200))
    torch.testing.assert_close(dense[0, 0], torch.full((50, 200), float(centers[80]) * 200 / 384))
    torch.testing.assert_close(dense[0, 1], torch.full((50, 200), float(centers[30]) * 50 / 384))


def _reference(width: int = 96, height: int = 128) -> np.ndarray:
    image = cv2.cvtColor(cv2.imread(str(WOMAN_JPG)), cv2.COLOR_BGR2RGB)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def test_find_cmp_checkpoint(tmp_path):
    assert find_cmp_checkpoint(tmp_path) is None and find_cmp_checkpoint(None) is None
    (tmp_path / CMP_CHECKPOINT).parent.mkdir(parents=True)
    (tmp_path / CMP_CHECKPOINT).write_bytes(b"x")
    assert find_cmp_checkpoint(tmp_path) == tmp_path / "cmp" / "ckpt_iter_42000.pth.tar"


def test_cmp_dense_flow_on_a_real_reference(tmp_path):
    reference = _reference()
    height, width = reference.shape[:2]
    person = np.zeros((height, width), np.uint8)
    cv2.ellipse(person, (48, 64), (20, 50), 0, 0, 360, 255, -1)
    keypoints = np.array([[40, 30, 1.0], [56, 30, 1.0], [48, 80, 1.0], [10, 10, 0.0]], np.float32)
    frames = np.stack(
        [keypoints + np.array([dx, dy, 0], np.float32) for dx, dy in [(0, 0), (6, -2), (-3, 4), (6, -2)]]
    )
    sparse_flow, sparse_mask = sparse_motion(keypoints, frames, (width, height))

    model = loaded_small_model(tmp_path / "small.pth.tar", seed=4, input_size=128)
    calls = []
    dense = cmp_dense_flow(
        reference, person, sparse_flow, sparse_mask, model, batch=3, callback=lambda *a: calls.append(a)
    )
    assert dense.shape == (4, height, width, 2) and dense.dtype == np.float32 and np.isfinite(dense).all()
    assert calls == [(3, 4), (4, 4)]
    np.testing.assert_allclose(dense[1], dense[3], atol=1e-5)
    assert np.abs(dense[1] - dense[2]).max() > 1e-3
    np.testing.assert_allclose(
        cmp_dense_flow(reference, person, sparse_flow, sparse_mask, model, batch=1), dense, atol=1e-4
    )
    # a still background: zero far from the person, untouched on it
    still = cmp_dense_flow(reference, person, sparse_flow, sparse_mask, model, outside="zero")
    assert np.all(still[:, :, :10] == 0) and np.all(still[:, :, -10:] == 0)
    np.testing.assert_allclose(still[:, person > 0], dense[:, person > 0], atol=1e-5)


def test_cmp_dense_flow_rescales_to_output_pixels_and_refuses_random_weights(tmp_path):
    reference = _reference(160, 90)
    person = np.full((90, 160), 255, np.uint8)
    zeros = np.zeros((2, 90, 160, 2), np.float32)
    model = constant_flow_model(tmp_path / "const.pth.tar", ix=70, iy=20)
    dense = cmp_dense_flow(reference, person, zeros, zeros[..., 0], model)
    centers = bin_centers(NBINS, FMAX).numpy()
    np.testing.assert_allclose(dense[..., 0], centers[70] * 160 / 384, rtol=1e-5)
    np.testing.assert_allclose(dense[..., 1], centers[20] * 90 / 384, rtol=1e-5)
    with pytest.raises(AnimateError) as info:
        cmp_dense_flow(reference, person, zeros, zeros[..., 0], CMPFlow(**SMALL))
    assert info.value.code == "weights_missing"
