"""Main-person tracking: salience by hand, the matching gates at their boundaries, the selection window."""

from __future__ import annotations

import math

import numpy as np
import pytest

from animate.pose.tracking import TrackingOptions, _Track, salience, track_main_person
from animate.pose.types import Pose


def boxed(x0: float, y0: float, x1: float, y1: float, score: float = 0.9) -> Pose:
    """A pose whose 17 body keypoints span exactly the box (the rest unseen)."""
    kp = np.zeros((133, 3), np.float32)
    kp[:17, 0] = np.linspace(x0, x1, 17)
    kp[:17, 1] = np.linspace(y0, y1, 17)[::-1]
    kp[:17, 2] = score
    return Pose(kp)


def test_salience_by_hand():
    w, h = 400, 300
    assert salience((0, 0, w, h), w, h) == pytest.approx(1.0 * (0.5 + 0.5 * 1.0) + 1e-3)
    # Quarter-size box in the top-left quadrant: half the diagonal, centre (-0.25, -0.25) from the middle:
    # centrality 1 - 2 x 0.3536 / 1.4142 = 0.5.
    assert salience((0, 0, w / 2, h / 2), w, h) == pytest.approx(0.5 * 0.75 + 0.5e-3)
    # A box centred outside the frame has centrality 0, not a negative one.
    diag = math.hypot(40, 30) / math.hypot(w, h)
    assert salience((2 * w, 2 * h, 2 * w + 40, 2 * h + 30), w, h) == pytest.approx(diag * 0.5)


def test_match_gates_at_their_boundaries():
    options = TrackingOptions(max_missing=5, match_distance=0.5, min_size_ratio=0.5)
    track = _Track({0: boxed(100, 200, 130, 240)}, (100, 200, 130, 240), 0)  # diagonal 50

    def moved(dx: float, dy: float, scale: float = 1.0) -> tuple[float, float, float, float]:
        return (100 + dx, 200 + dy, 100 + dx + 30 * scale, 200 + dy + 40 * scale)

    # Cost: centre distance over the larger diagonal; the gate widens with missed frames up to 4 of them.
    assert track.match_cost(moved(6, 8), 1, options) == pytest.approx(10 / 50)
    assert track.match_cost(moved(-15, 20), 1, options) == pytest.approx(0.5)  # at the gate: linked
    assert track.match_cost(moved(15.6, -20.8), 1, options) is None
    assert track.match_cost(moved(30, 40), 2, options) == pytest.approx(1.0)  # 2 frames: gate 1.0
    assert track.match_cost(moved(60, 80), 4, options) == pytest.approx(2.0)
    assert track.match_cost(moved(60.6, 80.8), 5, options) is None  # the gate stops growing at 4 frames
    assert track.match_cost(moved(0, 0), 5, options) == pytest.approx(0.0)  # max_missing: still linked
    assert track.match_cost(moved(0, 0), 6, options) is None
    # Size: diagonal 25 is half of 50 (linked), 24 is less (not); the cost uses the larger diagonal.
    assert track.match_cost(moved(0, 0, 0.5), 1, options) == pytest.approx(math.hypot(7.5, 10) / 50)
    assert track.match_cost(moved(0, 0, 0.48), 1, options) is None
    assert track.match_cost(moved(0, 0, 1.5), 1, options) == pytest.approx(math.hypot(7.5, 10) / 75)


def test_no_usable_candidate_gives_empty_poses():
    quiet = TrackingOptions(min_body_score=0.5)
    frames = [[], [boxed(0, 0, 50, 100, score=0.49)], []]
    assert [p.detected for p in track_main_person(frames, 200, 200, quiet)] == [False] * 3
    at_threshold = [[boxed(0, 0, 50, 100, score=0.5)]]
    assert track_main_person(at_threshold, 200, 200, quiet)[0].detected


def test_people_crossing_keep_their_tracks():
    # Two people walk towards each other: each frame is assigned by the cheapest link, not by list order.
    frames = [
        [boxed(200 - 10 * t, 50, 240 - 10 * t, 130), boxed(40 + 10 * t, 40, 100 + 10 * t, 160)]
        for t in range(8)
    ]
    track = track_main_person(frames, 300, 200)  # the second person is larger: the main one
    assert [p.keypoints[0, 0] for p in track] == pytest.approx([40 + 10 * t for t in range(8)])


def test_the_main_person_is_chosen_in_the_first_frames_only():
    # A larger person who arrives after the selection window does not take over.
    options = TrackingOptions(select_frames=3)
    frames = [[boxed(90, 60, 110, 100)] for _ in range(6)]
    for t in range(3, 6):
        frames[t].append(boxed(0, 0, 200, 200))
    track = track_main_person(frames, 200, 200, options)
    assert all(p.keypoints[0, 0] == 90 for p in track)
    # Within the window the larger one wins, even if it arrives one frame later.
    options = TrackingOptions(select_frames=4)
    assert track_main_person(frames, 200, 200, options)[5].keypoints[0, 0] == 0


def test_a_track_lost_for_longer_than_max_missing_is_not_resumed():
    # Unseen for 1 frame: resumed; unseen for 2 = max_missing frames: a new track, not the main person's.
    options = TrackingOptions(max_missing=2, select_frames=1)
    frames = [[boxed(90, 60, 110, 100)], [], [boxed(90, 60, 110, 100)], [], [], [boxed(90, 60, 110, 100)]]
    track = track_main_person(frames, 200, 200, options)
    assert [p.detected for p in track] == [True, False, True, False, False, False]


def test_a_bystander_near_the_main_person_does_not_take_their_track():
    # One track, two candidates within its gate: the closer one continues it, the other starts a new track.
    main = [[boxed(100, 50, 140, 150)] for _ in range(3)]
    main += [[boxed(102, 50, 142, 150), boxed(115, 60, 145, 140)] for _ in range(3)]
    track = track_main_person(main, 300, 200)
    assert [p.keypoints[0, 0] for p in track] == [100, 100, 100, 102, 102, 102]


def test_a_taken_track_does_not_end_the_matching():
    # b is closer to track A (cost 25/60) than to track B (35/60), but A already took a (cost 0):
    # b must still continue B, the larger (main) person, instead of starting a new track.
    options = TrackingOptions(match_distance=1.0)
    a, b = (85, 80, 115, 120), (142, 76, 178, 124)  # diagonals 50 and 60, both 30 px from the centre
    frames = [[boxed(*a), boxed(*b)] for _ in range(3)] + [[boxed(*a), boxed(107, 76, 143, 124)]]
    track = track_main_person(frames, 260, 200, options)
    assert [p.keypoints[0, 0] for p in track] == [142, 142, 142, 107]
