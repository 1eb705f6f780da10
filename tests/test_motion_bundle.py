"""The guidance bundle and its named rules: each published network's rules written out by hand (README,
"Reproducing published results"), every per-frame field's shape checked against (T, H, W, ...) with
``size = (width, height)``, and the saved file holding exactly the arrays put in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from animate.motion.bundle import GuidanceBundle, GuidanceConventions
from animate.motion.frames import CacheDirectory, FrameSource

OURS = {
    "keypoints": "wholebody",
    "trajectory": "density",
    "cmp_io": "resample",
    "unseen": "skip",
    "seen": "at_least",
    "depth": "floor64",
    "skeleton": "pose_images",
}
# DisPose.pth's ControlNet: its keypoints, trajectory and CMP input/output; the preset adds its two defects
DISPOSE = {"keypoints": "openpose18", "trajectory": "dispose", "cmp_io": "dispose"}
DEFECTS = {"unseen": "zeros", "seen": "above"}


def _fields(rules: GuidanceConventions) -> dict[str, str]:
    return {name: getattr(rules, name) for name in OURS}


def test_our_rules_are_the_defaults_and_describe_as_ours():
    assert _fields(GuidanceConventions()) == OURS
    assert _fields(GuidanceConventions.for_networks()) == OURS
    assert GuidanceConventions().describe() == "ours"


@pytest.mark.parametrize(
    ("kwargs", "changed"),
    [
        ({"dispose": True}, DISPOSE),
        ({"preset": "dispose"}, DISPOSE | DEFECTS),
        ({"dispose": True, "preset": "dispose"}, DISPOSE | DEFECTS),
        ({"preset": "other"}, {}),
        ({"champ": ("depth",)}, {"depth": "champ"}),
        ({"champ": ["skeleton"]}, {"skeleton": "dwpose"}),
        ({"champ": iter(["normal", "semantic"])}, {}),  # Champ's normal / semantic maps have no own rule
        (
            {"champ": ("depth", "normal", "skeleton"), "dispose": True},
            DISPOSE | {"depth": "champ", "skeleton": "dwpose"},
        ),
    ],
)
def test_for_networks_picks_each_published_networks_rules(kwargs, changed):
    rules = GuidanceConventions.for_networks(**kwargs)
    assert _fields(rules) == OURS | changed
    # describe lists exactly the changed rules, in the fields' order
    expected = ", ".join(f"{k}={v}" for k, v in (OURS | changed).items() if k in changed)
    assert rules.describe() == (expected or "ours")


def test_describe_of_one_changed_rule():
    assert GuidanceConventions(seen="above").describe() == "seen=above"
    assert GuidanceConventions(depth="champ", cmp_io="dispose").describe() == "cmp_io=dispose, depth=champ"


@pytest.mark.parametrize("name", list(OURS))
def test_an_unknown_rule_is_refused_by_name(name):
    with pytest.raises(ValueError) as info:
        GuidanceConventions(**{name: "upstream"})
    assert str(info.value).startswith(f"GuidanceConventions.{name} must be one of (")
    assert str(info.value).endswith(", got 'upstream'")
    for choice in (OURS[name], (DISPOSE | DEFECTS | {"depth": "champ", "skeleton": "dwpose"})[name]):
        assert repr(choice) in str(info.value)
        GuidanceConventions(**{name: choice})  # each listed choice is accepted


# size = (width, height) = (5, 3): every per-frame field of T = 2 frames
T, W, H = 2, 5, 3
SHAPES = {
    "pose_images": (T, H, W, 3),
    "skeleton": (T, H, W, 3),
    "depth": (T, H, W, 3),
    "normal": (T, H, W, 3),
    "semantic": (T, H, W, 3),
    "mask": (T, H, W),
    "dense_flow": (T, H, W, 2),
    "trajectory_flow": (T, H, W, 2),
    "sparse_flow": (T, H, W, 2),
    "sparse_mask": (T, H, W),
}


def _bundle(**fields) -> GuidanceBundle:
    return GuidanceBundle(
        reference=np.zeros((H, W, 3), np.uint8),
        reference_mask=np.zeros((H, W), np.uint8),
        reference_keypoints=np.zeros((133, 3), np.float32),
        keypoints=np.zeros((T, 133, 3), np.float32),
        fps=12.5,
        size=(W, H),
        **fields,
    )


def _full() -> dict[str, np.ndarray]:
    return {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}


def test_a_bundle_knows_its_frames_and_size():
    bundle = _bundle()
    assert (bundle.num_frames, bundle.width, bundle.height) == (T, W, H)
    assert isinstance(bundle.num_frames, int)
    assert all(getattr(bundle, name) is None for name in SHAPES)
    assert bundle.body is None and bundle.caches is None and bundle.extras == {}
    assert _bundle().extras is not bundle.extras  # each bundle its own dict
    bundle.validate()  # only the reference and its mask are set
    _bundle(**_full()).validate()  # every field at its shape


def _transposed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The same shape with height and width swapped (the mistake a (W, H) stack makes)."""
    i = shape.index(H)
    swapped = list(shape)
    swapped[i], swapped[i + 1] = W, H
    return tuple(swapped)


@pytest.mark.parametrize("name", [*SHAPES, "reference", "reference_mask"])
def test_validate_names_a_field_whose_shape_disagrees(name):
    expected = {"reference": (H, W, 3), "reference_mask": (H, W)}.get(name) or SHAPES[name]
    for wrong in (_transposed(expected), (expected[0] + 1, *expected[1:]), expected[:-1]):
        fields = _full()
        bundle = _bundle(**fields)
        setattr(bundle, name, np.zeros(wrong, np.float32))
        with pytest.raises(ValueError) as info:
            bundle.validate()
        assert str(info.value) == f"GuidanceBundle.{name} has shape {wrong}, expected {expected}"


def test_validate_reads_a_lazy_sources_shape():
    flow = FrameSource(T, lambda a, b: np.zeros((b - a, H, W, 2), np.float32), (H, W, 2), np.float32)
    _bundle(dense_flow=flow).validate()
    short = FrameSource(T + 1, lambda a, b: np.zeros((b - a, H, W, 2)), (H, W, 2), np.float32)
    with pytest.raises(ValueError, match=r"dense_flow has shape \(3, 3, 5, 2\), expected \(2, 3, 5, 2\)"):
        _bundle(dense_flow=short).validate()


def test_close_removes_the_caches_and_is_harmless_without_them(tmp_path):
    _bundle().close()
    caches = CacheDirectory(parent=tmp_path)
    mask = caches.cache("mask", T, (H, W), np.uint8)
    mask.append(np.full((T, H, W), 255, np.uint8))
    bundle = _bundle(mask=mask, caches=caches)
    bundle.close()
    assert not caches.path.exists()


def test_save_npz_holds_exactly_the_arrays_and_reads_sources_in_full(tmp_path):
    rng = np.random.default_rng(3)
    keypoints = rng.uniform(0, 5, (T, 133, 3)).astype(np.float32)
    flow = rng.normal(size=(T, H, W, 2)).astype(np.float32)
    mask = rng.integers(0, 2, (T, H, W)).astype(np.uint8) * 255
    bundle = _bundle(
        dense_flow=flow,
        mask=FrameSource(T, lambda a, b: mask[a:b], (H, W), np.uint8),
        extras={"note": np.ones(3)},
    )
    bundle.keypoints = keypoints
    path = bundle.save_npz(tmp_path / "guidance.npz")
    assert path == Path(tmp_path / "guidance.npz") and isinstance(path, Path)
    with np.load(path) as saved:
        assert set(saved.files) == {
            "fps", "size", "reference", "reference_mask", "reference_keypoints", "keypoints", "dense_flow",
            "mask",
        }  # fmt: skip
        assert float(saved["fps"]) == 12.5
        assert saved["size"].tolist() == [W, H]
        np.testing.assert_array_equal(saved["keypoints"], keypoints)
        np.testing.assert_array_equal(saved["dense_flow"], flow)
        np.testing.assert_array_equal(saved["mask"], mask)
        assert saved["mask"].dtype == np.uint8 and saved["dense_flow"].dtype == np.float32
