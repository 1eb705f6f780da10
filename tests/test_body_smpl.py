"""SMPLBody: an SMPL .npz built here (random arrays with SMPL's names and shapes, on a plausible skeleton),
loaded through smplx without chumpy, posed, fitted and rendered through the same pipeline as Anny."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from animate.body import CHAMP_PALETTE, Camera, Renderer, SMPLBody, load_body
from animate.body.fit import (
    FitOptions,
    ShapeOptions,
    fit_sequence,
    fit_shape,
    keypoint_errors,
    mask_iou,
    person_height_px,
)
from animate.body.model import NUM_JOINTS
from animate.cli import run
from animate.errors import AnimateError
from tests.conftest import DANCE, WOMAN_JPG

NUM_VERTICES, NUM_FACES = 6890, 13776
PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
#: A T-pose in SMPL's canonical frame (y up, facing +z, the person's left at +x), metres.
JOINTS = np.array(
    [
        (0, 0, 0), (0.09, -0.08, 0), (-0.09, -0.08, 0), (0, 0.11, 0), (0.1, -0.48, 0), (-0.1, -0.48, 0),
        (0, 0.25, 0), (0.1, -0.88, -0.02), (-0.1, -0.88, -0.02), (0, 0.3, 0), (0.11, -0.93, 0.1),
        (-0.11, -0.93, 0.1), (0, 0.5, 0), (0.07, 0.4, 0), (-0.07, 0.4, 0), (0, 0.58, 0.03), (0.18, 0.42, 0),
        (-0.18, 0.42, 0), (0.44, 0.42, 0), (-0.44, 0.42, 0), (0.68, 0.42, 0), (-0.68, 0.42, 0),
        (0.77, 0.42, 0), (-0.77, 0.42, 0),
    ],
    np.float32,
)  # fmt: skip
#: Where each joint's flesh extends to (its first child, or a point beyond the leaf joints).
SEGMENT_END = {j: PARENTS.index(j) for j in range(24) if j in PARENTS}
SEGMENT_END.update({10: None, 11: None, 15: None, 22: None, 23: None})
LEAF_OFFSET = {10: (0, 0, 0.08), 11: (0, 0, 0.08), 15: (0, 0.18, 0), 22: (0.08, 0, 0), 23: (-0.08, 0, 0)}
RADIUS = np.array([0.12, 0.08, 0.08, 0.12, 0.06, 0.06, 0.12, 0.05, 0.05, 0.12, 0.04, 0.04, 0.05, 0.05, 0.05,
                   0.09, 0.05, 0.05, 0.04, 0.04, 0.03, 0.03, 0.03, 0.03])  # fmt: skip
#: smplx's SMPL keypoint vertices (nose, eyes, ears, toes, heels) put where they belong: (position, joint).
KEYPOINT_VERTICES = {
    332: ((0, 0.62, 0.1), 15), 2800: ((0.03, 0.66, 0.08), 15), 6260: ((-0.03, 0.66, 0.08), 15),
    583: ((0.07, 0.63, 0), 15), 4071: ((-0.07, 0.63, 0), 15), 3216: ((0.1, -0.95, 0.16), 10),
    3226: ((0.14, -0.95, 0.14), 10), 3387: ((0.1, -0.95, -0.05), 7), 6617: ((-0.1, -0.95, 0.16), 11),
    6624: ((-0.14, -0.95, 0.14), 11), 6787: ((-0.1, -0.95, -0.05), 8),
}  # fmt: skip


def synthetic_smpl(path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write an SMPL-shaped .npz: flesh scattered around each bone, blended skinning, small random blend
    shapes (beta 0 scales the body), random local triangles, the joint regressor picking joint vertices."""
    rng = np.random.default_rng(seed)
    part = rng.integers(0, 24, NUM_VERTICES)
    start = JOINTS[part]
    end = np.array(
        [JOINTS[SEGMENT_END[p]] if SEGMENT_END[p] is not None else JOINTS[p] + LEAF_OFFSET[p] for p in part]
    )
    # Flesh on a cylinder around each bone (random heights and angles), so a limb's silhouette does not
    # depend on its twist, which keypoints cannot see.
    axis = (end - start) / np.linalg.norm(end - start, axis=1, keepdims=True)
    side = np.cross(axis, rng.normal(size=(NUM_VERTICES, 3)))
    side /= np.linalg.norm(side, axis=1, keepdims=True)
    along = rng.uniform(0, 1, (NUM_VERTICES, 1))
    v = start + along * (end - start) + RADIUS[part, None] * side
    markers = rng.choice(np.setdiff1d(np.arange(NUM_VERTICES), list(KEYPOINT_VERTICES)), 24, replace=False)
    v[markers], part[markers] = JOINTS, np.arange(24)
    for index, (position, joint) in KEYPOINT_VERTICES.items():
        v[index], part[index] = position, joint
    weights = np.zeros((NUM_VERTICES, 24), np.float32)
    share = rng.uniform(0.7, 1.0, NUM_VERTICES)
    weights[np.arange(NUM_VERTICES), part] = share
    parent = np.array([max(PARENTS[p], 0) for p in part])
    weights[np.arange(NUM_VERTICES), parent] += 1 - share
    regressor = np.zeros((24, NUM_VERTICES), np.float32)
    regressor[np.arange(24), markers] = 1.0
    shapedirs = rng.normal(0, 0.002, (NUM_VERTICES, 3, 10)).astype(np.float32)
    shapedirs[:, :, 0] = 0.05 * v
    faces = np.zeros((NUM_FACES, 3), np.int64)
    faces[:, 0] = rng.integers(0, NUM_VERTICES, NUM_FACES)
    for p in range(24):  # the other two corners from the same part: triangles stay on their bone
        same = part[faces[:, 0]] == p
        faces[same, 1:] = rng.choice(np.flatnonzero(part == p), (same.sum(), 2))
    arrays = {
        "v_template": v.astype(np.float32),
        "shapedirs": shapedirs,
        "posedirs": rng.normal(0, 0.001, (NUM_VERTICES, 3, 207)).astype(np.float32),
        "J_regressor": regressor,
        "weights": weights,
        "kintree_table": np.stack([np.array(PARENTS, np.int64) % 2**32, np.arange(24)]).astype(np.uint32),
        "f": faces.astype(np.uint32),
    }
    np.savez(path, **arrays)
    return arrays


@pytest.fixture(scope="module")
def smpl_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("smpl") / "SMPL_NEUTRAL.npz"
    return path, synthetic_smpl(path)


@pytest.fixture(scope="module")
def smpl(smpl_file) -> SMPLBody:
    return load_body(smpl_file[0])


def test_smpl_loads_through_smplx_without_chumpy(smpl, smpl_file):
    import smplx

    path, arrays = smpl_file
    assert isinstance(smpl._smplx, smplx.SMPL) and "chumpy" not in sys.modules
    assert load_body(path) is smpl and smpl.name == "smpl"
    assert smpl.num_vertices == NUM_VERTICES and smpl.faces.shape == (NUM_FACES, 3)
    assert len(smpl.shape_names) == 10 and smpl.default_shape().shape == (10,)
    # Champ's 24 parts are SMPL's joints: each vertex takes its dominant skinning joint.
    np.testing.assert_array_equal(smpl.vertex_parts, arrays["weights"].argmax(1))


def test_smpl_posing_matches_smplx_lbs(smpl):
    gen = torch.Generator().manual_seed(1)
    shape = torch.randn(1, 10, generator=gen)
    root, transl = torch.randn(3, 3, generator=gen), torch.randn(3, 3, generator=gen)
    pose = torch.randn(3, NUM_JOINTS, 3, generator=gen) * 0.4
    rest = smpl.rest(shape)
    posed = smpl.pose(rest, root, pose, transl)
    np.testing.assert_allclose(posed.vertices, smpl.smplx_vertices(shape, root, pose, transl), atol=1e-5)
    np.testing.assert_allclose(posed.joints[:, 0], transl, atol=1e-6)  # transl places the root joint
    ids = torch.tensor([5, 700, 6000])
    subset = smpl.pose(rest, root, pose, transl, vertex_ids=ids).vertices
    np.testing.assert_allclose(subset, posed.vertices[:, ids], atol=1e-6)
    assert smpl.pose(rest, root, pose, transl, with_vertices=False).vertices is None


def _observations(body, rest, root, pose, transl, camera):
    """Detected 2D keypoints (T, 133, 3) and MediaPipe-like world landmarks (T, 33, 4) of a posed body."""
    posed = body.pose(rest, root, pose, transl, with_vertices=False)
    j, kp = posed.joints, posed.keypoints
    t = len(root)
    keypoints = np.zeros((t, 133, 3), np.float32)
    keypoints[:, :23, :2] = camera.project(kp).numpy()
    keypoints[:, :23, 2] = 1.0
    world = torch.zeros(t, 33, 4)
    world[..., 3] = 1.0
    hand_l, hand_r = j[:, 8] + 0.3 * (j[:, 8] - j[:, 7]), j[:, 12] + 0.3 * (j[:, 12] - j[:, 11])
    mp = {0: kp[:, 0], 7: kp[:, 3], 8: kp[:, 4], 11: j[:, 6], 12: j[:, 10], 13: j[:, 7], 14: j[:, 11],
          15: j[:, 8], 16: j[:, 12], 17: hand_l, 19: hand_l, 18: hand_r, 20: hand_r, 23: j[:, 13], 24: j[:, 16],
          25: j[:, 14], 26: j[:, 17], 27: j[:, 15], 28: j[:, 18], 31: kp[:, 17], 32: kp[:, 20]}  # fmt: skip
    for index, value in mp.items():
        world[:, index, :3] = value - j[:, :1, :].squeeze(1)
    return keypoints, world.numpy()


def test_smpl_fits_and_renders_through_the_same_pipeline(smpl):
    # Ground truth: a slightly taller body (beta 0 = +1) moving its arms, upright and facing the camera.
    camera = Camera.default(288, 384)
    gen = torch.Generator().manual_seed(2)
    frames = 6
    true_shape = torch.zeros(1, 10)
    true_shape[0, 0] = 1.0
    rest = smpl.rest(true_shape)
    pose = (
        torch.randn(1, NUM_JOINTS, 3, generator=gen) * 0.2
        + torch.linspace(0, 1, frames)[:, None, None] * torch.randn(1, NUM_JOINTS, 3, generator=gen) * 0.2
    )
    root = torch.tensor([[np.pi, 0.0, 0.0]]).repeat(frames, 1)  # y up -> image up, facing -z (the camera)
    transl = torch.tensor([[0.05, 0.1, 3.2]]).repeat(frames, 1)
    keypoints, world = _observations(smpl, rest, root, pose, transl, camera)
    renderer = Renderer(smpl.faces, smpl.vertex_parts)
    truth = smpl.pose(rest, root, pose, transl).vertices
    masks = np.stack([renderer.render(truth[t], camera).mask_image for t in range(frames)])

    shape, _ = fit_shape(smpl, keypoints[:3], world[:3], camera, masks[:3], ShapeOptions(steps=15))
    track = fit_sequence(smpl, shape, keypoints, world, camera, FitOptions(steps=30, chunk=4))
    assert track.model == "smpl" and track.pose.shape == (frames, NUM_JOINTS, 3)
    height = person_height_px(keypoints)
    assert np.median(keypoint_errors(smpl, track, keypoints)) < 0.01 * height

    vertices = track.vertices(smpl)
    for t in range(frames):
        frame = renderer.render(vertices[t], camera)
        assert mask_iou(frame.mask, masks[t] > 127) > 0.75
        colours = {tuple(c) for c in np.unique(frame.semantic_image[frame.mask], axis=0).tolist()}
        assert colours <= {tuple(c) for c in CHAMP_PALETTE.tolist()} and len(colours) >= 12
        np.testing.assert_allclose(np.linalg.norm(frame.normal[frame.mask], axis=1), 1.0, atol=1e-4)


def test_missing_or_unusable_model_files_are_user_errors(tmp_path, smpl_file):
    with pytest.raises(AnimateError) as missing:
        load_body(tmp_path / "SMPL_NEUTRAL.npz")
    assert missing.value.code == "body_model_not_found"
    pkl = tmp_path / "SMPL_NEUTRAL.pkl"
    pkl.write_bytes(b"not read")
    with pytest.raises(AnimateError) as pickled:
        load_body(pkl)
    assert pickled.value.code == "bad_body_model" and "npz" in pickled.value.message
    arrays = dict(np.load(smpl_file[0]))
    del arrays["posedirs"]
    np.savez(tmp_path / "partial.npz", **arrays)
    with pytest.raises(AnimateError) as partial:
        load_body(tmp_path / "partial.npz")
    assert partial.value.code == "bad_body_model" and "posedirs" in partial.value.message


def test_guidance_cli_reports_a_missing_body_model(tmp_path, data_dir):
    args = ["guidance", str(WOMAN_JPG), str(DANCE), "-o", str(tmp_path / "out")]
    assert run([*args, "--body-model", str(tmp_path / "missing.npz")]) == 2


@pytest.mark.gpu
def test_fit_and_render_on_cuda_match_the_cpu(smpl_file):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cpu, gpu = load_body(smpl_file[0]), load_body(smpl_file[0], "cuda")
    camera = Camera.default(288, 384)
    frames = 4
    root = torch.tensor([[np.pi, 0.0, 0.0]]).repeat(frames, 1)
    pose = 0.2 * torch.randn(frames, NUM_JOINTS, 3, generator=torch.Generator().manual_seed(3))
    transl = torch.tensor([[0.0, 0.1, 3.2]]).repeat(frames, 1)
    keypoints, world = _observations(cpu, cpu.rest(torch.zeros(1, 10)), root, pose, transl, camera)
    options = FitOptions(steps=20, chunk=2)
    tracks = [fit_sequence(b, b.default_shape(), keypoints, world, camera, options) for b in (cpu, gpu)]
    np.testing.assert_allclose(tracks[0].pose, tracks[1].pose, atol=2e-3)
    vertices = tracks[1].vertices(gpu)
    assert vertices.is_cuda
    on_cpu = Renderer(cpu.faces, cpu.vertex_parts).render(vertices[0].cpu(), camera)
    on_gpu = Renderer(gpu.faces, gpu.vertex_parts, device="cuda").render(vertices[0], camera)
    assert (on_cpu.face != on_gpu.face).mean() < 1e-3
    np.testing.assert_allclose(on_gpu.depth[on_gpu.mask], on_cpu.depth[on_gpu.mask], atol=1e-4)
