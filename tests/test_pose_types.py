"""Pose and PoseSequence: views, visibility, boxes, transforms and the JSON file, each against values worked
out by hand for small hand-written poses (COCO-WholeBody 133: body 0-16, feet 17-22, face 23-90, hands 91-132;
MediaPipe world landmarks (33, 4))."""

from __future__ import annotations

import json

import numpy as np
import pytest

from animate.pose import Pose, PoseError, PoseSequence


def _keypoints(score: float = 0.0) -> np.ndarray:
    kp = np.zeros((133, 3))
    kp[:, 0] = np.arange(133) * 2.0  # x = 2 i
    kp[:, 1] = 100.0 - np.arange(133) * 0.5  # y = 100 - i / 2
    kp[:, 2] = score
    return kp


def test_a_pose_stores_float32_and_refuses_wrong_shapes():
    pose = Pose(_keypoints(0.5).tolist(), world=np.ones((33, 4)).tolist())
    assert pose.keypoints.dtype == np.float32 and pose.keypoints.shape == (133, 3)
    assert pose.world.dtype == np.float32 and pose.world.shape == (33, 4)
    assert pose.mask is None and pose.detected is True
    assert Pose(_keypoints()).world is None
    with pytest.raises(ValueError, match=r"^keypoints must be \(133, 3\), got \(17, 3\)$"):
        Pose(np.zeros((17, 3)))
    with pytest.raises(ValueError, match=r"^world must be \(33, 4\), got \(33, 3\)$"):
        Pose(_keypoints(), world=np.zeros((33, 3)))


def test_empty_is_an_undetected_pose_of_zeros():
    pose = Pose.empty()
    assert pose.detected is False and pose.world is None and pose.mask is None
    assert pose.keypoints.shape == (133, 3) and pose.keypoints.dtype == np.float32
    assert not pose.keypoints.any()


def test_xy_and_scores_are_the_columns():
    kp = _keypoints(0.25)
    pose = Pose(kp)
    np.testing.assert_array_equal(pose.xy, kp[:, :2].astype(np.float32))
    np.testing.assert_array_equal(pose.scores, np.full(133, 0.25, np.float32))


def test_visible_is_score_at_least_the_threshold_and_never_when_undetected():
    kp = _keypoints()
    kp[:5, 2] = [0.29, 0.3, 0.31, 0.0, 1.0]
    pose = Pose(kp)
    # 0.3 as float32 is 0.30000001: it passes its own threshold (>=)
    assert pose.visible()[:5].tolist() == [False, True, True, False, True]
    assert pose.visible(0.31)[:5].tolist() == [False, False, True, False, True]
    assert pose.visible(0.0).all()  # >= 0 holds for every score
    assert pose.visible().sum() == 3
    assert not Pose(kp, detected=False).visible(0.0).any()


def test_body_box_spans_the_seen_body_and_feet_only():
    kp = _keypoints()
    kp[3] = (40, 10, 0.9)
    kp[20] = (5, 70, 0.3)  # a foot point exactly at the threshold counts
    kp[12] = (90, 50, 0.29)  # below: ignored
    kp[23] = (-50, -50, 1.0)  # face: not part of the body box
    kp[100] = (500, 500, 1.0)  # hand: neither
    box = Pose(kp).body_box()
    assert box == (5.0, 10.0, 40.0, 70.0)
    assert all(type(v) is float for v in box)
    kp[22] = (60, 80, 0.5)  # the last foot point (index 22) counts too
    assert Pose(kp).body_box() == (5.0, 10.0, 60.0, 80.0)
    assert Pose(kp).body_box(threshold=0.5) == (40.0, 10.0, 60.0, 80.0)
    kp[20, 2] = kp[22, 2] = 0.0
    assert Pose(kp).body_box() is None  # one point is no box
    assert Pose(kp).body_box(threshold=0.0) == (0.0, 10.0, 90.0, 100.0)
    assert Pose(kp, detected=False).body_box(threshold=0.0) is None


def test_body_score_is_the_mean_of_the_17_body_scores():
    kp = _keypoints()
    kp[:17, 2] = np.arange(17) / 16  # mean 0.5
    kp[17:, 2] = 1.0  # feet, face and hands do not count
    score = Pose(kp).body_score()
    assert score == pytest.approx(0.5) and type(score) is float
    assert Pose(kp, detected=False).body_score() == 0.0


def test_transformed_maps_pixels_and_keeps_the_rest():
    kp = _keypoints(0.7)
    world = np.arange(132, dtype=np.float32).reshape(33, 4)
    mask = np.full((4, 4), 255, np.uint8)
    pose = Pose(kp, world=world, mask=mask, detected=False)
    out = pose.transformed((0.5, 3.0), (10.0, -4.0))
    np.testing.assert_allclose(out.keypoints[:, 0], kp[:, 0] * 0.5 + 10, rtol=1e-6)
    np.testing.assert_allclose(out.keypoints[:, 1], kp[:, 1] * 3 - 4, rtol=1e-6)
    np.testing.assert_array_equal(out.keypoints[:, 2], np.full(133, 0.7, np.float32))
    assert out.mask is None and out.detected is False
    np.testing.assert_array_equal(out.world, world)
    np.testing.assert_array_equal(pose.keypoints, kp.astype(np.float32))  # the original is untouched
    assert pose.mask is mask
    no_offset = pose.transformed((2.0, 2.0))
    np.testing.assert_allclose(no_offset.keypoints[:, :2], kp[:, :2] * 2, rtol=1e-6)


def test_pose_json_rounds_and_hides_undetected_keypoints():
    kp = _keypoints(0.5)
    kp[0] = (1.23456, 7.00049, 0.1234)
    world = np.zeros((33, 4))
    world[0] = (0.123456, -1.0000049, 2.5, 1.0)
    data = Pose(kp, world=world).to_json()
    assert set(data) == {"detected", "keypoints", "world"}
    assert data["detected"] is True
    assert data["keypoints"][0] == pytest.approx([1.235, 7.0, 0.123], abs=1e-6)
    assert data["world"][0] == pytest.approx([0.12346, -1.0, 2.5, 1.0], abs=1e-6)
    assert len(data["keypoints"]) == 133 and len(data["world"]) == 33
    hidden = Pose(kp, detected=False).to_json()
    assert hidden["detected"] is False
    assert np.array(hidden["keypoints"]).shape == (133, 3) and not np.any(hidden["keypoints"])
    no_world = Pose(kp).to_json()["world"]
    assert np.array(no_world).shape == (33, 4) and not np.any(no_world)
    json.dumps(data)  # plain Python numbers only


def test_pose_from_json_reads_world_or_zeros():
    kp = _keypoints(0.5)
    back = Pose.from_json({"detected": 0, "keypoints": kp.tolist()})
    assert back.detected is False and back.mask is None
    assert back.world.shape == (33, 4) and not back.world.any()
    np.testing.assert_array_equal(back.keypoints, kp.astype(np.float32))
    world = np.full((33, 4), 0.25)
    back = Pose.from_json({"detected": True, "keypoints": kp.tolist(), "world": world.tolist()})
    assert back.detected is True
    np.testing.assert_array_equal(back.world, world.astype(np.float32))


def _sequence() -> PoseSequence:
    frames = [
        Pose(_keypoints(0.9), world=np.full((33, 4), 0.5), mask=np.ones((2, 2), np.uint8)),
        Pose(_keypoints(0.8), detected=False),
        Pose(_keypoints(0.6)),
        Pose.empty(),
    ]
    return PoseSequence(frames, width=64, height=48, fps=25.0)


def test_a_sequence_indexes_iterates_and_stacks_its_frames():
    seq = _sequence()
    assert len(seq) == 4 and seq[2] is seq.frames[2] and list(seq) == seq.frames
    kp = seq.keypoints
    assert kp.shape == (4, 133, 3) and kp.dtype == np.float32
    np.testing.assert_array_equal(kp[0], _keypoints(0.9).astype(np.float32))
    assert not kp[1].any()  # undetected frames have zero scores (and coordinates)
    np.testing.assert_array_equal(kp[2], _keypoints(0.6).astype(np.float32))
    assert seq.detected.tolist() == [True, False, True, False] and seq.detected.dtype == bool
    assert seq.detected_fraction() == 0.5
    empty = PoseSequence([], 10, 10, 0.0)
    assert empty.keypoints.shape == (0, 133, 3) and empty.keypoints.dtype == np.float32
    assert empty.detected_fraction() == 0.0 and empty.meta == {}
    assert _sequence().meta is not seq.meta


def test_with_keypoints_replaces_keypoints_and_keeps_world_and_masks():
    seq = _sequence()
    new = np.stack([_keypoints(s) + 1 for s in (0.1, 0.2, 0.3, 0.4)])  # float64 in
    out = seq.with_keypoints(new)
    assert (out.width, out.height, out.fps) == (64, 48, 25.0)
    assert out.detected.tolist() == [True, False, True, False]  # kept when not given
    for t, pose in enumerate(out.frames):
        assert pose.keypoints.dtype == np.float32
        np.testing.assert_array_equal(pose.keypoints, new[t].astype(np.float32))
    np.testing.assert_array_equal(out.frames[0].world, np.full((33, 4), 0.5, np.float32))
    assert out.frames[0].mask is seq.frames[0].mask
    assert seq.frames[0].keypoints[0, 2] == np.float32(0.9)  # the original is untouched
    flipped = seq.with_keypoints(new, detected=np.array([0, 1, 1, 0]))
    assert flipped.detected.tolist() == [False, True, True, False]
    assert all(type(p.detected) is bool for p in flipped.frames)


def test_a_sequence_round_trips_through_its_file(tmp_path):
    seq = _sequence()
    path = tmp_path / "poses.json"
    seq.save(path)
    text = path.read_text()
    assert ", " not in text and ": " not in text  # compact separators
    data = json.loads(text)
    assert {k: data[k] for k in ("version", "width", "height", "fps", "layout")} == {
        "version": 1,
        "width": 64,
        "height": 48,
        "fps": 25.0,
        "layout": "coco_wholebody_133",
    }
    assert len(data["frames"]) == 4
    back = PoseSequence.load(path)
    assert (back.width, back.height, back.fps, len(back)) == (64, 48, 25.0, 4)
    assert type(back.width) is int and type(back.fps) is float
    assert back.detected.tolist() == [True, False, True, False]
    np.testing.assert_allclose(back.keypoints, seq.keypoints, atol=5e-4)
    np.testing.assert_allclose(back.frames[0].world, np.full((33, 4), 0.5))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "poses file version 2 is not 1"),
        ({"version": None}, "poses file version None is not 1"),
        ({"layout": "coco_17"}, "poses file layout 'coco_17' is not coco_wholebody_133"),
        ({"layout": None}, "poses file layout None is not coco_wholebody_133"),
    ],
)
def test_other_versions_and_layouts_are_refused(change, message):
    data = _sequence().to_json() | change
    with pytest.raises(PoseError) as info:
        PoseSequence.from_json(data)
    assert info.value.code == "unsupported_pose_file" and info.value.message == message


def test_unreadable_and_malformed_files_are_refused(tmp_path):
    with pytest.raises(PoseError) as info:
        PoseSequence.load(tmp_path / "missing.json")
    assert info.value.code == "unreadable_pose_file"
    assert info.value.message.startswith(f"cannot read poses file {tmp_path / 'missing.json'}: ")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PoseError, match="cannot read poses file") as info:
        PoseSequence.load(tmp_path / "bad.json")
    assert info.value.code == "unreadable_pose_file"
    good = _sequence().to_json()
    for name, data in [
        ("nowidth.json", {k: v for k, v in good.items() if k != "width"}),  # KeyError
        ("shape.json", good | {"frames": [{"detected": True, "keypoints": [[1, 2, 3]]}]}),  # ValueError
        ("type.json", good | {"width": None}),  # TypeError
        ("frame.json", good | {"frames": [None]}),  # a frame that is not an object
        ("list.json", [good]),  # not an object at all
    ]:
        (tmp_path / name).write_text(json.dumps(data))
        with pytest.raises(PoseError) as info:
            PoseSequence.load(tmp_path / name)
        assert info.value.code == "unreadable_pose_file", name
        assert info.value.message.startswith(f"malformed poses file {tmp_path / name}: "), name
