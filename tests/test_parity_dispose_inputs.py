"""DisPose's motion inputs as its own code makes them (lihxxx/DisPose @ c38ab13, UPSTREAM_PARITY.md D8-D10):
the trajectory flow (start-point writing, the fixed unit-sum 199-tap sigma-20 Gaussian, reflect-101 borders,
full resolution, first flow from the reference), CMP's inputs and outputs on its 384 grid, the 18 OpenPose
points, the seen rule, and the engine choosing these rules whenever DisPose.pth's ControlNet is loaded.
Every expectation is derived by hand from the rule (the kernel summed from its definition, borders reflected
by a loop), never from the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_cmp import constant_flow_model

from animate.motion.bundle import GuidanceBundle, GuidanceConventions
from animate.motion.cmp import cmp_dense_flow
from animate.motion.keypoint_flow import (
    conventional_sparse_motion,
    conventional_trajectory,
    dispose_sparse_motion,
    dispose_trajectory_flow,
    trajectory_flow,
)

HALF, SIGMA = 99, 20.0
DISPOSE = GuidanceConventions.for_networks(dispose=True)
PRESET = GuidanceConventions.for_networks(preset="dispose")


def kernel_2d() -> np.ndarray:
    """DisPose's ``bivariate_Gaussian(199, 20, 20, 0)``: exp(-(x^2 + y^2) / (2 sigma^2)) over -99..99, / sum."""
    ax = np.arange(-HALF, HALF + 1, dtype=np.float64)
    k = np.exp(-(ax[None, :] ** 2 + ax[:, None] ** 2) / (2 * SIGMA**2))
    return k / k.sum()


def reflect101(p: int, n: int) -> int:
    """OpenCV's BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba), by its definition."""
    while not 0 <= p < n:
        p = -p if p < 0 else 2 * (n - 1) - p
    return p


def blurred_impulse(x: int, y: int, width: int, height: int) -> np.ndarray:
    """cv2.filter2D of a unit impulse at (x, y) with the 2-D kernel, reflect-101 borders, as a matrix product:
    out[py, px] = sum_q K[q] [reflect(p + q) == (y, x)]."""
    k = kernel_2d()
    hits_y = np.array(
        [[reflect101(py + q, height) == y for q in range(-HALF, HALF + 1)] for py in range(height)]
    )
    hits_x = np.array(
        [[reflect101(px + q, width) == x for q in range(-HALF, HALF + 1)] for px in range(width)]
    )
    return hits_y.astype(np.float64) @ k @ hits_x.T.astype(np.float64)


def points(*xys_scores) -> np.ndarray:
    return np.array(xys_scores, np.float32).reshape(-1, 3)


# -- D9: the trajectory flow ---------------------------------------------------------------------------------
def test_trajectory_is_written_at_the_start_point_with_the_kernels_peak():
    width, height = 240, 220
    reference = points((100.7, 110.2, 1.0))
    frames = points((103.7, 106.2, 1.0))[None]  # one step: (+3, -4) from the reference into frame 0
    flow = dispose_trajectory_flow(reference, frames, (width, height))
    assert flow.shape == (1, height, width, 2) and flow.dtype == np.float32
    one_d = sum(math.exp(-(j**2) / (2 * SIGMA**2)) for j in range(-HALF, HALF + 1))
    peak = 1.0 / one_d**2  # the unit-sum kernel's centre, ~3.98e-4
    assert peak == pytest.approx(3.98e-4, rel=1e-2)
    np.testing.assert_allclose(flow[0, 110, 100], (3 * peak, -4 * peak), rtol=1e-6)
    assert np.abs(flow[0]).max() == pytest.approx(4 * peak, rel=1e-6)  # the maximum sits at int(start)
    # unit sum: far from the borders the blurred map holds the whole displacement
    np.testing.assert_allclose(flow[0].sum(axis=(0, 1), dtype=np.float64), (3.0, -4.0), rtol=1e-5)
    # full resolution: the window's edge (99 px off) still carries the kernel's value there
    edge = kernel_2d()[HALF, 0] * 3
    assert flow[0, 110, 1, 0] == pytest.approx(edge, rel=1e-5) and abs(flow[0, 110, 0, 0]) < 1e-15


def test_trajectory_borders_reflect_without_repeating_the_edge():
    width, height = 64, 48
    reference = points((1.9, 30.0, 1.0), (50.0, 0.0, 1.0))
    frames = points((3.9, 30.0, 1.0), (50.0, 5.0, 1.0))[None]
    flow = dispose_trajectory_flow(reference, frames, (width, height))
    expected = 2.0 * blurred_impulse(1, 30, width, height)
    np.testing.assert_allclose(flow[0, ..., 0], expected, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(
        flow[0, ..., 1], 5.0 * blurred_impulse(50, 0, width, height), rtol=1e-5, atol=1e-12
    )
    # at the border: column 0 gathers the kernel at +1 and at -1 (reflected onto column 1)
    g = _kernel_1d()
    row = sum(g[q + HALF] for q in range(-HALF, HALF + 1) if reflect101(30 + q, height) == 30)
    assert flow[0, 30, 0, 0] == pytest.approx(2.0 * (g[HALF + 1] + g[HALF - 1]) * row, rel=1e-5)


def _kernel_1d() -> np.ndarray:
    g = np.exp(-(np.arange(-HALF, HALF + 1) ** 2) / (2 * SIGMA**2))
    return g / g.sum()


def test_trajectory_steps_start_at_the_reference_and_follow_the_track():
    width, height = 200, 200
    reference = points((100, 100, 1.0))
    frames = np.stack([points((100, 104, 1.0)), points((110, 104, 1.0)), points((110, 104, 1.0))])
    flow = dispose_trajectory_flow(reference, frames, (width, height))
    peak = kernel_2d()[HALF, HALF]
    np.testing.assert_allclose(flow[0, 100, 100], (0, 4 * peak), rtol=1e-6)  # reference -> frame 0
    np.testing.assert_allclose(
        flow[1, 104, 100], (10 * peak, 0), rtol=1e-6
    )  # frame 0 -> 1, at frame 0's point
    assert not flow[2].any()
    # ours: the first flow is zero, the blur is normalised to the full displacement at the end point
    ours = trajectory_flow(np.concatenate([reference[None], frames]), (width, height))
    assert not ours[0].any() and ours[1, 104, 100, 1] == pytest.approx(4.0, rel=0.05)


def test_a_lost_end_point_gives_minus_the_start_only_under_the_preset():
    width, height = 200, 200
    reference = points((120.5, 80.9, 1.0))
    frames = points((0.0, 0.0, 0.1))[None]  # lost in frame 0
    peak = kernel_2d()[HALF, HALF]
    skipped = dispose_trajectory_flow(reference, frames, (width, height), unseen="skip")
    assert not skipped.any()
    zeros = dispose_trajectory_flow(reference, frames, (width, height), unseen="zeros")
    np.testing.assert_allclose(zeros[0, 80, 120], (-120.5 * peak, -80.9 * peak), rtol=1e-6)
    # a step from an unseen start writes nothing, whatever its end
    back = dispose_trajectory_flow(points((5, 5, 0.0)), reference[None], (width, height), unseen="zeros")
    assert not back.any()


def test_points_on_one_pixel_keep_the_later_keypoints_step_and_coordinates_are_clamped():
    width, height = 200, 200
    reference = points((50.2, 60.7, 1.0), (50.9, 60.1, 1.0), (250.0, -3.0, 1.0))
    frames = points((52.2, 60.7, 1.0), (50.9, 63.1, 1.0), (260.0, 10.0, 1.0))[None]
    flow = dispose_trajectory_flow(reference, frames, (width, height))
    peak = kernel_2d()[HALF, HALF]
    # keypoint 1 overwrote keypoint 0 at pixel (50, 60): no x motion there beyond keypoint 2's faint tail
    assert flow[0, 60, 50, 1] == pytest.approx(3 * peak, rel=1e-3)
    assert abs(flow[0, 60, 50, 0]) < 1e-3 * peak
    # keypoint 2 clamped to (199, 0) -> (199, 10): written at (199, 0), moving (0, +10)
    assert flow[0, 0, 199, 1] == pytest.approx(10 * peak, rel=1e-6)


# -- D8: CMP's inputs and outputs ----------------------------------------------------------------------------
def test_cmp_sparse_input_at_int_of_the_unrounded_grid_coordinate():
    width, height = 576, 1024
    reference = points((100.7, 50.2, 1.0), (300.0, 500.0, 1.0))
    frames = points((110.7, 40.2, 1.0), (310.0, 500.0, 0.2))[None]
    flow, mask = dispose_sparse_motion(reference, frames, (width, height))
    assert flow.shape == (1, 384, 384, 2) and mask.shape == (1, 384, 384)
    x, y = int(100.7 / 576 * 384), int(50.2 / 1024 * 384)  # 67, 18 (rounding first would give 67, 19)
    assert (x, y) == (67, 18)
    np.testing.assert_allclose(flow[0, y, x], (10 * 384 / 576, -10 * 384 / 1024), rtol=1e-6)
    assert mask[0].sum() == 1 and mask[0, y, x] == 1  # keypoint 1 is lost in the frame: skipped


def test_cmp_sparse_input_writes_unseen_keypoints_as_zeros_under_the_preset():
    width, height = 384, 768
    reference = points((100.0, 200.0, 1.0), (0.0, 0.0, 0.0), (40.0, 80.0, 1.0))
    frames = points((0.0, 0.0, 0.0), (30.0, 60.0, 1.0), (44.0, 80.0, 1.0))[None]
    flow, mask = dispose_sparse_motion(reference, frames, (width, height), unseen="zeros")
    # keypoint 0 lost in the frame: minus its reference position, at its reference cell
    np.testing.assert_allclose(flow[0, 100, 100], (-100.0, -100.0), rtol=1e-6)
    # keypoint 1 unseen in the reference: its frame position, written at the grid's pixel (0, 0)
    np.testing.assert_allclose(flow[0, 0, 0], (30.0, 30.0), rtol=1e-6)
    np.testing.assert_allclose(flow[0, 40, 40], (4.0, 0.0), rtol=1e-6)
    assert mask[0].sum() == 3
    skipped, skipped_mask = dispose_sparse_motion(reference, frames, (width, height))
    assert skipped_mask[0].sum() == 1 and not skipped[0, 0, 0].any()


def test_cmp_dispose_io_resizes_by_nearest_and_scales(tmp_path, monkeypatch):
    width, height = 96, 160
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    person = np.full((height, width), 255, np.uint8)
    model = constant_flow_model(tmp_path / "const.pth.tar", ix=70, iy=20)
    side = model.config.input_size
    seen_images, seen_sparse = [], []
    encode, decode = model.encode_image, model.decode
    monkeypatch.setattr(model, "encode_image", lambda image: seen_images.append(image) or encode(image))
    monkeypatch.setattr(model, "decode", lambda f, sparse: seen_sparse.append(sparse) or decode(f, sparse))
    # a known flow on the grid: x = column index, y = row index (in grid pixels)
    ramp = torch.stack(torch.meshgrid(torch.arange(float(side)), torch.arange(float(side)), indexing="xy"))
    monkeypatch.setattr(
        model, "logits_to_flow", lambda logits, size: ramp[None].expand(len(logits), -1, -1, -1)
    )

    keypoints = points((30.5, 100.2, 1.0), (60.0, 20.0, 1.0))
    frames = np.stack([keypoints + np.float32([[3, 1, 0], [0, -2, 0]])] * 2)
    sparse, mask = dispose_sparse_motion(keypoints, frames, (width, height))
    dense = cmp_dense_flow(reference, person, sparse, mask, model, io="dispose")

    # the encoder saw the reference resized by nearest neighbour (PyTorch's legacy rule, DisPose's default):
    # source index floor(i * scale), scale = in / out in float32
    def nearest(n_out: int, n_in: int) -> np.ndarray:
        return np.floor(np.arange(n_out, dtype=np.float32) * np.float32(n_in / n_out)).astype(int)

    rows, cols = nearest(side, height), nearest(side, width)
    expected_image = reference[rows][:, cols].astype(np.float32) / 255 * 2 - 1
    np.testing.assert_allclose(seen_images[0][0].permute(1, 2, 0).numpy(), expected_image, atol=1e-6)
    # the sparse input is the grid's flow with the mask twice
    np.testing.assert_array_equal(seen_sparse[0][:, 0].numpy(), sparse[..., 0])
    np.testing.assert_array_equal(seen_sparse[0][:, 2].numpy(), mask)
    np.testing.assert_array_equal(seen_sparse[0][:, 3].numpy(), mask)
    # the flow came back by nearest neighbour, scaled to output pixels: grid cell floor(y * 384 / H)
    ys, xs = nearest(height, side), nearest(width, side)
    np.testing.assert_allclose(
        dense[0, ..., 0], np.broadcast_to(xs * width / side, (height, width)), rtol=1e-6
    )
    np.testing.assert_allclose(
        dense[1, ..., 1], np.broadcast_to((ys * height / side)[:, None], (height, width)), rtol=1e-6
    )


# -- D10, the seen rule and the engine's choice --------------------------------------------------------------
def test_conventions_for_the_loaded_networks():
    assert GuidanceConventions.for_networks() == GuidanceConventions()
    assert (DISPOSE.keypoints, DISPOSE.trajectory, DISPOSE.cmp_io) == ("openpose18", "dispose", "dispose")
    assert (DISPOSE.unseen, DISPOSE.seen) == ("skip", "at_least")  # upstream's defects: the preset only
    assert (PRESET.keypoints, PRESET.unseen, PRESET.seen) == ("openpose18", "zeros", "above")
    champ = GuidanceConventions.for_networks(champ=("depth", "normal", "skeleton"))
    assert (champ.depth, champ.skeleton, champ.trajectory) == ("champ", "dwpose", "density")
    with pytest.raises(ValueError, match="trajectory"):
        GuidanceConventions(trajectory="upstream")


def _wholebody(nose_xy, score=1.0, extra_score=1.0) -> np.ndarray:
    """133 keypoints: the nose at ``nose_xy``, the left wrist (COCO 9) and a face point (23) elsewhere."""
    k = np.zeros((133, 3), np.float32)
    k[0] = (*nose_xy, score)
    k[9] = (150.0, 150.0, extra_score)
    k[40] = (60.0, 20.0, extra_score)  # a face point: not one of the 18 body points
    return k


def test_the_18_point_set_drops_face_points_and_the_seen_rule_is_strict_under_the_preset():
    size = (200, 200)
    reference = _wholebody((100, 100))
    frames = _wholebody((100, 103))[None].copy()
    frames[0, 40, :2] += 7  # only the face point moves besides the nose
    peak = kernel_2d()[HALF, HALF]
    flow = conventional_trajectory(reference, frames, size, DISPOSE)
    np.testing.assert_allclose(flow[0, 100, 100], (0, 3 * peak), rtol=1e-6)
    assert flow[0, 20, 60, 0] == pytest.approx(0.0, abs=1e-9 + 1e-3 * peak)
    # a score of exactly 0.3 is seen by ours (>=), not by DWPose's rule (> 0.3), in float32 as DWPose
    border = frames.copy()
    border[0, 0, 2] = np.float32(0.3)
    at_least = conventional_trajectory(reference, border, size, DISPOSE)
    above = conventional_trajectory(reference, border, size, PRESET)
    assert at_least[0, 100, 100, 1] == pytest.approx(3 * peak, rel=1e-6)
    assert above[0, 100, 100, 1] == pytest.approx(-100 * peak, rel=1e-2)  # lost end: minus the start
    # CMP's input: the 18 points on the grid, the face point not among them
    sparse, mask = conventional_sparse_motion(reference, frames, size, DISPOSE)
    assert sparse.shape == (1, 384, 384, 2) and mask.sum() == 2  # nose and left wrist
    full, full_mask = conventional_sparse_motion(reference, frames, size, GuidanceConventions())
    assert full.shape == (1, 200, 200, 2) and full_mask.sum() == 3  # ours: all 133 (three seen)


def _engine(residual_mode: str, **options):
    from animate.engines.diffusion import DiffusionEngine, DiffusionOptions
    from pipelines import AnimationPipeline
    from pipelines.testing import tiny_components, tiny_motion_controlnet

    components = tiny_components(with_guidance_encoders=False)
    components["motion_controlnet"] = tiny_motion_controlnet(components["unet"], residual_mode=residual_mode)
    return DiffusionEngine(AnimationPipeline(**components), DiffusionOptions(**options))


def test_engine_feeds_dispose_rules_whenever_dispose_weights_are_loaded():
    size = (200, 200)
    reference = _wholebody((100, 100))
    frames = np.stack([_wholebody((100, 103)), _wholebody((104, 103))])
    bundle = GuidanceBundle(
        reference=np.zeros((200, 200, 3), np.uint8),
        reference_mask=np.zeros((200, 200), np.uint8),
        reference_keypoints=reference,
        keypoints=frames,
        fps=10.0,
        size=size,
        dense_flow=np.zeros((2, 200, 200, 2), np.float32),
    )
    peak = kernel_2d()[HALF, HALF]
    dispose = _engine("dispose")
    assert dispose.guidance_conventions == DISPOSE
    inputs = dispose._motion_inputs(bundle, None)
    np.testing.assert_allclose(inputs["trajectory_flow"][0, 100, 100], (0, 3 * peak), rtol=1e-6)
    np.testing.assert_allclose(inputs["trajectory_flow"][1, 103, 100], (4 * peak, 0), rtol=1e-6)
    assert "trajectory=dispose" in dispose.parts["guidance_rules"]
    # another ControlNet keeps ours: first flow zero, normalised to the full displacement
    ours = _engine("once")
    assert ours.guidance_conventions == GuidanceConventions()
    trajectory = ours._motion_inputs(bundle, None)["trajectory_flow"]
    assert not trajectory[0].any() and np.abs(trajectory[1, ..., 0]).max() == pytest.approx(4.0, rel=0.05)
    # the preset, or the user, decide otherwise
    assert _engine("dispose", preset="dispose").guidance_conventions == PRESET
    assert _engine("dispose", conventions=GuidanceConventions()).guidance_conventions == GuidanceConventions()
