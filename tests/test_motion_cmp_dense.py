"""``cmp_dense_flow``'s contract with a small CMP that puts all its mass on one bin (so its flow is a known
constant): each refusal, the batches and the callback, DisPose's nearest-neighbour output scaled per axis to
output pixels, and the still background's soft mask (1 on the person and a margin of 2% of the image around
it, 0 beyond three margins), checked against a distance transform of the mask."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_cmp import FMAX, NBINS, SMALL, constant_flow_model, loaded_small_model

from animate.errors import AnimateError
from animate.motion.cmp import CMP_CHECKPOINT, cmp_dense_flow, find_cmp_checkpoint, load_cmp
from controlnets.cmp import bin_centers

CENTERS = bin_centers(NBINS, FMAX).numpy()


@pytest.fixture(scope="module")
def constant(tmp_path_factory):
    """CMP's flow is (CENTERS[70], CENTERS[20]) in its 384 px grid everywhere."""
    return constant_flow_model(tmp_path_factory.mktemp("cmp") / "const.pth.tar", ix=70, iy=20)


def _inputs(width: int, height: int, frames: int = 2, grid: tuple[int, int] | None = None):
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (height, width, 3), np.uint8)
    person = np.zeros((height, width), np.uint8)
    gh, gw = grid or (height, width)
    return reference, person, np.zeros((frames, gh, gw, 2), np.float32), np.zeros((frames, gh, gw), np.uint8)


def test_each_refusal_names_what_is_wrong(constant):
    reference, person, flow, mask = _inputs(40, 30)
    with pytest.raises(ValueError, match=r"^outside must be one of \('keep', 'zero'\), got 'none'$"):
        cmp_dense_flow(reference, person, flow, mask, constant, outside="none")
    with pytest.raises(ValueError, match=r"^io must be one of \('resample', 'dispose'\), got 'nearest'$"):
        cmp_dense_flow(reference, person, flow, mask, constant, io="nearest")
    with pytest.raises(ValueError, match=r"^batch must be at least 1$"):
        cmp_dense_flow(reference, person, flow, mask, constant, batch=0)
    cmp_dense_flow(reference, person, flow, mask, constant, batch=1)  # 1 is enough
    with pytest.raises(ValueError, match=r"^reference \(30, 40, 3\) and mask \(40, 30\) disagree$"):
        cmp_dense_flow(reference, person.T, flow, mask, constant)
    with pytest.raises(ValueError, match=r"^reference \(30, 40\) and mask"):
        cmp_dense_flow(reference[..., 0], person, flow, mask, constant)
    with pytest.raises(
        ValueError, match=r"^sparse flow \(2, 30, 40, 2\) / mask \(2, 30, 41\) do not fit \(2, \(30, 40\)\)$"
    ):
        cmp_dense_flow(reference, person, flow, np.zeros((2, 30, 41)), constant)
    with pytest.raises(ValueError, match=r"do not fit \(2, \(30, 40\)\)"):
        cmp_dense_flow(reference, person, flow[..., :1], mask, constant)
    # DisPose's rule wants CMP's grid (384 x 384), not the output size
    with pytest.raises(ValueError, match=r"do not fit \(2, \(384, 384\)\)"):
        cmp_dense_flow(reference, person, flow, mask, constant, io="dispose")


def test_batches_and_callback(constant):
    reference, person, flow, mask = _inputs(40, 30, frames=3)
    calls = []
    out = cmp_dense_flow(
        reference, person, flow, mask, constant, batch=2, callback=lambda *a: calls.append(a)
    )
    assert calls == [(2, 3), (3, 3)]
    assert out.shape == (3, 30, 40, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], CENTERS[70] * 40 / 384, rtol=1e-5)  # every frame, every batch
    np.testing.assert_allclose(out[..., 1], CENTERS[20] * 30 / 384, rtol=1e-5)
    calls.clear()
    cmp_dense_flow(reference, person, flow, mask, constant, batch=8, callback=lambda *a: calls.append(a))
    assert calls == [(3, 3)]
    reference, person, flow, mask = _inputs(8, 6, frames=9)
    calls.clear()
    cmp_dense_flow(reference, person, flow, mask, constant, callback=lambda *a: calls.append(a))
    assert calls == [(8, 9), (9, 9)]  # 8 frames a batch by default


def test_random_weights_are_refused_with_the_reason():
    from controlnets.cmp import CMPFlow

    reference, person, flow, mask = _inputs(8, 6, frames=1)
    with pytest.raises(AnimateError) as info:
        cmp_dense_flow(reference, person, flow, mask, CMPFlow(**SMALL))
    assert info.value.code == "weights_missing"
    assert info.value.message == "CMP has no loaded checkpoint; refusing to run random weights"


def test_dispose_output_is_scaled_per_axis_to_output_pixels(constant):
    reference, person, flow, mask = _inputs(160, 90, grid=(384, 384))
    out = cmp_dense_flow(reference, person, flow, mask, constant, io="dispose")
    assert out.shape == (2, 90, 160, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], CENTERS[70] * 160 / 384, rtol=1e-5)
    np.testing.assert_allclose(out[..., 1], CENTERS[20] * 90 / 384, rtol=1e-5)


def test_dispose_reads_the_reference_by_nearest_neighbour(tmp_path):
    """The reference resized to 384 by nearest neighbour: a reference that is already 384 x 384 goes in as
    it is, so its flow equals the network run by hand on the normalised image and the sparse input."""
    import torch

    model = loaded_small_model(tmp_path / "small.pth.tar", seed=2, input_size=384)
    reference, person, flow, mask = _inputs(384, 384, frames=1, grid=(384, 384))
    flow[0, 100:110, 200:210] = (3.0, -2.0)
    mask[0, 100:110, 200:210] = 7  # any nonzero marks a vector
    out = cmp_dense_flow(reference, person, flow, mask, model, io="dispose")
    with torch.no_grad():
        image = torch.from_numpy(reference).permute(2, 0, 1)[None].float() / 255
        features = model.encode_image(model.normalize_image(image))
        sparse = torch.from_numpy(flow).permute(0, 3, 1, 2)
        marks = torch.from_numpy(mask > 0)[:, None].float()
        logits = model.decode(features, torch.cat([sparse, marks, marks], 1))
        expected = model.logits_to_flow(logits, (384, 384)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    assert np.abs(out).max() > 0.1


def _check_fade(soft: np.ndarray, person: np.ndarray, margin: int) -> None:
    """1 within one margin of the person; 0 beyond the dilation plus the blur's reach (four sigmas = two
    margins along each axis, so 2 sqrt(2) margins on a diagonal); fading, not cut, in between."""
    distance = cv2.distanceTransform((person == 0).astype(np.uint8), cv2.DIST_L2, 5)
    assert (soft[distance <= margin - 1] == 1).all()
    assert (soft[distance > (1 + 2 * np.sqrt(2)) * margin + 1.5] == 0).all()
    band = (distance > margin + 1) & (distance < 2 * margin)
    assert (soft[band] > 0.02).all() and (soft[band] < 1).all()
    assert soft.min() >= 0 and soft.max() <= 1


def test_a_still_background_fades_out_beyond_the_margin(constant):
    """outside="zero": CMP's flow times the soft mask; margin = max(2, round(0.02 x 400)) = 8."""
    reference, person, flow, mask = _inputs(400, 300, frames=1)
    person[100:150, 133:200] = 1  # any nonzero is the person
    keep = cmp_dense_flow(reference, person, flow, mask, constant)
    zero = cmp_dense_flow(reference, person, flow, mask, constant, outside="zero")
    np.testing.assert_allclose(keep[..., 0], CENTERS[70] * 400 / 384, rtol=1e-5)
    _check_fade(zero[0, ..., 0] / keep[0, ..., 0], person, 8)
    np.testing.assert_allclose(
        zero[0, ..., 1] / keep[0, ..., 1], zero[0, ..., 0] / keep[0, ..., 0], rtol=1e-5
    )


@pytest.mark.parametrize(
    ("width", "height", "margin"), [(100, 60, 2), (60, 40, 2), (250, 500, 10), (176, 120, 4)]
)
def test_the_margin_is_two_percent_of_the_longer_side_at_least_two(width, height, margin):
    from animate.motion.cmp import _soft_mask

    person = np.zeros((height, width), np.uint8)
    person[height // 3 : height // 2, width // 3 : width // 2] = 255
    _check_fade(_soft_mask(person), person, margin)


def test_checkpoint_lookup_needs_a_file_and_bad_files_are_weights_invalid(tmp_path):
    (tmp_path / CMP_CHECKPOINT).mkdir(parents=True)  # a folder of that name is not a checkpoint
    assert find_cmp_checkpoint(tmp_path) is None
    assert find_cmp_checkpoint(str(tmp_path)) is None
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(AnimateError) as info:
        load_cmp(bad)
    assert info.value.code == "weights_invalid"
    assert info.value.message.startswith("CMP checkpoint: ")


def test_the_soft_mask_of_a_symmetric_person_is_symmetric():
    """A person mask symmetric about the image's centre lines grows and fades the same way on every side."""
    from animate.motion.cmp import _soft_mask

    for width, height in ((101, 61), (201, 151)):
        person = np.zeros((height, width), np.uint8)
        cy, cx = height // 2, width // 2
        person[cy - 10 : cy + 11, cx - 20 : cx + 21] = 255
        soft = _soft_mask(person)
        np.testing.assert_allclose(soft, soft[:, ::-1], atol=1e-6)
        np.testing.assert_allclose(soft, soft[::-1], atol=1e-6)


def test_load_cmp_keeps_the_asked_dtype_and_device(tmp_path):
    import torch
    from test_cmp import save_cmp_checkpoint

    from controlnets.cmp import CMPFlow

    torch.manual_seed(0)
    path = save_cmp_checkpoint(tmp_path / "ckpt_iter_42000.pth.tar", CMPFlow())  # the released size
    assert load_cmp(path).dtype == torch.float32
    half = load_cmp(path, device="cpu", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.device.type == "cpu"
    assert half.checkpoint_path == str(path)


def test_dispose_runs_a_bfloat16_model(tmp_path):
    """The reference goes in at the model's dtype: a bfloat16 CMP gives its constant flow too."""
    import torch

    from controlnets.cmp import CMPFlow

    float_model = constant_flow_model(tmp_path / "const.pth.tar", ix=70, iy=20)
    model = CMPFlow.from_checkpoint(float_model.checkpoint_path, config=SMALL, dtype=torch.bfloat16)
    reference, person, flow, mask = _inputs(160, 90, frames=1, grid=(384, 384))
    out = cmp_dense_flow(reference, person, flow, mask, model, io="dispose")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], CENTERS[70] * 160 / 384, rtol=2e-2)
    np.testing.assert_allclose(out[..., 1], CENTERS[20] * 90 / 384, rtol=2e-2)
