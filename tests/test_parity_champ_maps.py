"""Champ's guidance maps in Champ's conventions (fudan-generative-vision/champ @ 02e5533, UPSTREAM_PARITY.md
Champ 2 and 3): depth normalised per frame, body min..max -> 255..0 with the background 0 (its Blender
scene's Normalize + Invert), and the rules chosen whenever Champ's encoders are loaded. Expectations come from
the rule applied by hand to the depth values."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from animate.body import Camera, Renderer
from animate.body.render import RenderedFrame
from animate.motion.bundle import GuidanceConventions
from animate.pose.draw import COLORS
from animate.pose.draw_dwpose import draw_pose_dwpose


def _frame(depth: np.ndarray) -> RenderedFrame:
    h, w = depth.shape
    mask = depth > 0
    return RenderedFrame(
        mask=mask,
        depth=depth.astype(np.float32),
        normal=np.zeros((h, w, 3), np.float32),
        face=np.where(mask, 0, -1).astype(np.int32),
        bary=np.zeros((h, w, 3), np.float32),
        part=np.where(mask, 0, -1).astype(np.int16),
    )


def test_champ_depth_on_a_synthetic_buffer():
    depth = np.array([[0.0, 2.0, 2.5], [3.0, 0.0, 2.25]])
    champ = _frame(depth).depth_map("champ")
    # 255 * (1 - (z - 2) / (3 - 2)), rounded half up: 255, 127.5 -> 128, 0, 191.25 -> 191; background 0
    np.testing.assert_array_equal(champ, [[0, 255, 128], [0, 0, 191]])
    # ours keeps the far body apart from the background: 255 .. 64 over at least 0.5 m
    ours = _frame(depth).depth_map()
    np.testing.assert_array_equal(ours, [[0, 255, 160], [64, 0, 207]])
    assert np.array_equal(ours, _frame(depth).depth_image)
    with pytest.raises(ValueError, match="depth convention"):
        _frame(depth).depth_map("metric")


def test_champ_depth_of_a_rendered_tilted_quad():
    # a quad 2 m away, leaning back: its top is farther than its bottom
    vertices = np.array([[-0.4, -0.4, 2.3], [0.4, -0.4, 2.3], [0.4, 0.4, 1.7], [-0.4, 0.4, 1.7]], np.float32)
    faces = np.array([[0, 2, 1], [0, 3, 2]], np.int32)
    frame = Renderer(faces, np.zeros(4, np.int64)).render(vertices, Camera.default(48, 48))
    champ = frame.depth_map("champ")
    z = frame.depth[frame.mask]
    far, near = z.max(), z.min()
    assert champ[frame.depth == far].tolist() == [0] * int((frame.depth == far).sum())
    assert (champ[frame.depth == near] == 255).all()
    assert (champ[~frame.mask] == 0).all() and frame.mask.sum() > 100
    expected = np.floor(255 * (1 - (z.astype(np.float64) - near) / (far - near)) + 0.5)
    np.testing.assert_array_equal(champ[frame.mask], expected)


def test_champ_rules_whenever_its_encoders_are_loaded():
    rules = GuidanceConventions.for_networks(champ=("depth", "normal", "semantic", "skeleton"))
    assert (rules.depth, rules.skeleton) == ("champ", "dwpose")
    only_normal = GuidanceConventions.for_networks(champ=("normal",))
    assert (only_normal.depth, only_normal.skeleton) == ("floor64", "pose_images")


# -- Champ 3: the skeleton for Champ's `dwpose` encoder, in DWPose's annotator style --------------------------
def _shoulders(score: float = 0.5) -> np.ndarray:
    """133 keypoints with only the shoulders seen: left (COCO 5) at (100, 50), right (COCO 6) at (20, 50)."""
    k = np.zeros((133, 3), np.float32)
    k[5] = (100.5, 50.5, score)
    k[6] = (20.5, 50.5, score)
    return k


def test_dwpose_style_neck_to_right_shoulder_is_153_0_0_and_4_px_in_half_width():
    image = draw_pose_dwpose(_shoulders(), 120, 100)
    # the limb neck (60.5, 50.5) -> right shoulder (20.5, 50.5): an ellipse centred at int(40.5) = 40, half
    # width 4, OpenPose's first colour (255, 0, 0) darkened by 0.6 -> (153, 0, 0), in RGB order
    assert tuple(image[50, 40]) == (153, 0, 0)
    column = image[:, 40]
    assert all(tuple(column[y]) == (153, 0, 0) for y in range(46, 55))
    assert not column[45].any() and not column[55].any()
    # joints: discs of radius 4 in full colour, whatever the confidence: right shoulder OpenPose colour 2
    assert tuple(image[50, 20]) == (255, 170, 0) and tuple(image[54, 20]) == (255, 170, 0)
    assert not image[50, 15].any()
    assert tuple(image[50, 60]) == (255, 85, 0)  # the neck: OpenPose colour 1
    # the other shoulder's limb: colour 1 darkened, (255, 85, 0) * 0.6 -> (153, 51, 0)
    assert tuple(image[50, 80]) == (153, 51, 0)


def test_dwpose_style_seen_rules_and_palette():
    rng = np.random.default_rng(0)
    k = np.zeros((133, 3), np.float32)
    k[:, :2] = rng.uniform(5, 155, (133, 2))
    k[:, 2] = 0.9
    image = draw_pose_dwpose(k, 160, 160)
    # every pixel is from the annotator's palette: black, limbs at 0.6, joints, hand hues (rounded as OpenCV
    # does), hand joints blue, face points white
    limbs = {tuple(int(c * 0.6) for c in color) for color in COLORS[:17]}
    hands = {
        tuple(int(v) for v in np.rint(np.array(colorsys.hsv_to_rgb(e / 20, 1, 1)) * 255)) for e in range(20)
    }
    palette = {(0, 0, 0), (0, 0, 255), (255, 255, 255)} | limbs | set(COLORS) | hands
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert colours <= palette and len(colours) > 30
    # body only (hands and face unseen): at most 36 colours (Champ's images hold 48 or fewer)
    body_only = k.copy()
    body_only[17:, 2] = 0.0
    assert len({tuple(c) for c in draw_pose_dwpose(body_only, 160, 160).reshape(-1, 3)}) <= 36
    # DWPose's float32 scores against 0.3 as Champ's numpy 1.23 compares them: a body point element by element
    # (float32 0.3 = 0.30000001 > 0.3 in float64: drawn), the neck from both shoulders > 0.3 in float32 (not
    # drawn at 0.3), a hand or face point unless < 0.3 in float32 (drawn at 0.3)
    below = np.nextafter(np.float32(0.3), np.float32(0))
    lone = np.zeros((133, 3), np.float32)
    lone[0] = (40.5, 40.5, 0.3)  # nose
    lone[1] = (60.5, 40.5, below)  # left eye: OpenPose 15
    lone[5] = (20.5, 120.5, 0.3)  # shoulders: the neck sits at their middle, (40, 120)
    lone[6] = (60.5, 120.5, 0.3)
    lone[23 + 30] = (100.5, 100.5, 0.3)  # a face point
    lone[23 + 31] = (130.5, 100.5, below)
    drawn = draw_pose_dwpose(lone, 160, 160)
    assert tuple(drawn[40, 40]) == COLORS[0] and not drawn[40, 60].any()
    assert tuple(drawn[120, 20]) == COLORS[5] and tuple(drawn[120, 60]) == COLORS[2]
    assert not drawn[120, 40].any()  # no neck, so no limbs either
    assert tuple(drawn[100, 100]) == (255, 255, 255) and not drawn[100, 130].any()
    assert tuple(drawn[103, 100]) == (255, 255, 255) and not drawn[104, 100].any()  # radius 3


def test_champ_encoders_get_champ_depth_and_the_rendered_bodys_dwpose_skeleton(tmp_path):
    """The animator's guidance stage with Champ's depth and skeleton encoders loaded: depth 255..0 per frame
    and the skeleton drawn at the rendered body's joints, not at the bundle's 2D keypoints."""
    from test_motion_body_field import ARM_RAISED, synthetic_motion

    from animate.animator import Animator, _Reporter
    from animate.body import load_anny
    from animate.engines.diffusion import DiffusionEngine
    from animate.motion.bundle import GuidanceBundle
    from animate.settings import Settings
    from controlnets import GuidanceFusion
    from pipelines import AnimationPipeline
    from pipelines.testing import tiny_components

    components = tiny_components(with_guidance_encoders=False)
    components["guidance_encoders"] = GuidanceFusion(
        guidance_types=("depth", "skeleton"),
        block_out_channels=(8, 16),
        out_channels=32,
        attention_num_heads=2,
        attention_norm_num_groups=8,
    )
    engine = DiffusionEngine(AnimationPipeline(**components))
    assert (engine.guidance_conventions.depth, engine.guidance_conventions.skeleton) == ("champ", "dwpose")

    width, height = 144, 256
    motion = synthetic_motion(load_anny(), {}, [{}, ARM_RAISED], size=(width, height))
    body_points = motion.keypoints()  # (T, 23, 2) the rendered bodies' joints
    keypoints = np.zeros((2, 133, 3), np.float32)
    keypoints[:, :23, :2] = body_points + 30.0  # the 2D keypoints sit off the body
    keypoints[:, :23, 2] = 1.0
    bundle = GuidanceBundle(
        reference=np.zeros((height, width, 3), np.uint8),
        reference_mask=motion.reference_render.mask.astype(np.uint8) * 255,
        reference_keypoints=keypoints[0],
        keypoints=keypoints,
        fps=10.0,
        size=(width, height),
        body=motion,
    )
    Animator(Settings(weights_dir=tmp_path))._fill_guidance(bundle, _Reporter(None, None), engine)
    bundle.validate()

    renderer, camera = motion.renderer()
    for t, vertices in enumerate(motion.iter_vertices()):
        frame = renderer.render(vertices, camera)
        depth = bundle.depth[t, ..., 0]
        z = frame.depth[frame.mask]
        assert (depth[frame.depth == z.max()] == 0).all() and (depth[frame.depth == z.min()] == 255).all()
        assert not depth[~frame.mask].any()
        # the right shoulder (COCO 6, OpenPose 2) is a disc of OpenPose colour 2 at the body's joint
        x, y = body_points[t, 6].astype(int)
        assert tuple(bundle.skeleton[t, y, x]) == COLORS[2]
        off_x, off_y = keypoints[t, 6, :2].astype(int)
        assert tuple(bundle.skeleton[t, off_y, off_x]) != COLORS[2]
        assert (bundle.skeleton[t] == (153, 0, 0)).all(axis=-1).any()  # the neck -> right shoulder limb
