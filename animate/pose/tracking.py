"""Main-person selection and tracking: every frame's candidates in, one person's poses out.

Candidates are linked into tracks frame to frame by box overlap and centre distance; the main person is
the track that is largest and most central over the first frames it appears in. Everyone else is ignored,
and a single-person estimator that jumps to a bystander starts a new track, which is ignored too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from animate.pose.types import Pose

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class TrackingOptions:
    select_frames: int = 12  # the main person is chosen on this many frames from the first detection
    max_missing: int = 48  # a track not seen for this many frames ends
    match_distance: float = 0.6  # centre jump allowed per frame, in box diagonals (grows with missed frames)
    min_size_ratio: float = 0.4  # smaller/larger box diagonal allowed between linked detections
    min_body_score: float = 0.1  # candidates whose mean body score is below this are noise


def salience(box: Box, width: int, height: int) -> float:
    """Large and central scores high: box diagonal (share of the frame's) weighted by centrality.

    The diagonal, not the area, measures size, so a person seen edge-on (a thin box) still counts as large.
    """
    x0, y0, x1, y1 = box
    size = float(np.hypot(x1 - x0, y1 - y0) / np.hypot(width, height))
    cx, cy = (x0 + x1) / 2 / width - 0.5, (y0 + y1) / 2 / height - 0.5
    centrality = max(0.0, 1.0 - 2.0 * float(np.hypot(cx, cy)) / np.sqrt(2.0))
    return size * (0.5 + 0.5 * centrality) + 1e-3 * centrality  # centrality breaks ties


def _diag(box: Box) -> float:
    return float(np.hypot(box[2] - box[0], box[3] - box[1])) + 1e-6


def _centre(box: Box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


@dataclass
class _Track:
    frames: dict[int, Pose]
    last_box: Box
    last_frame: int

    def match_cost(self, box: Box, frame: int, options: TrackingOptions) -> float | None:
        gap = frame - self.last_frame
        if gap > options.max_missing:
            return None
        d0, d1 = _diag(self.last_box), _diag(box)
        if min(d0, d1) / max(d0, d1) < options.min_size_ratio:
            return None
        dist = float(np.linalg.norm(_centre(box) - _centre(self.last_box))) / max(d0, d1)
        limit = options.match_distance * min(gap, 4)  # a few missed frames widen the gate, not forever
        return dist if dist <= limit else None


def track_main_person(
    candidates: list[list[Pose]], width: int, height: int, options: TrackingOptions | None = None
) -> list[Pose]:
    """One pose per frame for the main person; ``Pose.empty()`` where they were not found."""
    options = options or TrackingOptions()
    tracks: list[_Track] = []
    live: list[_Track] = []
    for t, people in enumerate(candidates):
        boxed = [(p, p.body_box()) for p in people if p.detected and p.body_score() >= options.min_body_score]
        boxed = [(p, b) for p, b in boxed if b is not None]
        live = [tr for tr in live if t - tr.last_frame <= options.max_missing]
        pairs = sorted(
            (cost, i, j)
            for i, tr in enumerate(live)
            for j, (_, box) in enumerate(boxed)
            if (cost := tr.match_cost(box, t, options)) is not None
        )
        used_tracks: set[int] = set()
        used_people: set[int] = set()
        for _, i, j in pairs:  # greedy by cost: good enough for the handful of people in a frame
            if i in used_tracks or j in used_people:
                continue
            used_tracks.add(i)
            used_people.add(j)
            live[i].frames[t], live[i].last_box, live[i].last_frame = boxed[j][0], boxed[j][1], t
        for j, (pose, box) in enumerate(boxed):
            if j not in used_people:
                track = _Track({t: pose}, box, t)
                tracks.append(track)
                live.append(track)
    if not tracks:
        return [Pose.empty() for _ in candidates]
    first = min(min(tr.frames) for tr in tracks)
    window = range(first, first + options.select_frames)

    def rank(track: _Track) -> float:
        return sum(
            salience(track.frames[t].body_box(), width, height)  # type: ignore[arg-type]
            for t in window
            if t in track.frames
        )

    main = max(tracks, key=rank)
    return [main.frames.get(t, Pose.empty()) for t in range(len(candidates))]
