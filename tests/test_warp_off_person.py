"""The warp engine's body path where the fitted body is wider than the person (a squeezed or side view):
body surface the reference shows off its person is background there, and is not drawn.

Synthetic: the reference image is the body's own semantic render on grey, but the person mask is the
body with 10 px taken off both sides of every row. The frame repeats the reference pose, so the person
drawn must be the person (within the 3 px tolerance and the soft edge), not the wider body; only the
hands are always drawn.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_motion_body_field import synthetic_motion
from test_warp_body import GREY, anny, reference_of  # noqa: F401  (anny: the session fixture)

from animate.body import PART_NAMES
from animate.engines.warp import BodyWarp


@pytest.mark.parametrize("scale", [1, 2])
def test_a_body_fitted_wider_than_the_person_is_drawn_as_wide_as_the_person(anny, scale):  # noqa: F811
    motion = synthetic_motion(anny, {}, [{}])
    image, body = reference_of(motion)
    person = cv2.erode(body.astype(np.uint8), np.ones((1, 21), np.uint8)) > 0  # 10 px off each side
    off = cv2.distanceTransform((~person).astype(np.uint8), cv2.DIST_L2, 5)
    # Beyond the tolerance (3 px), a pixel of rounding and the soft edge: the body there is background.
    outer = body & (off > 5.0)
    assert outer.sum() > 3000
    frame, masks = BodyWarp(motion, image, person, scale=scale).frame(motion.vertices(0, 1)[0])
    drawn, unseen = masks.silhouette, masks.fill
    hands = np.isin(motion.reference_render.part, [PART_NAMES.index(n) for n in ("left_hand", "right_hand")])
    assert (outer & hands).sum() > 50
    # Hands are drawn however the mask lies (masks often miss fingers).
    assert drawn[outer & hands].mean() > 0.75
    shown = outer & ~unseen & ~hands  # other surface the reference shows there (off its person)
    assert shown.sum() > 0.9 * outer.sum()
    assert drawn[shown].mean() < 0.01, drawn[shown].mean()
    grey = np.abs(frame[shown].astype(int) - GREY).sum(1) < 40
    assert grey.mean() > 0.95, grey.mean()
    # Surface nobody saw (grazing the edge) is still filled and drawn; the person itself is all drawn.
    assert (outer & unseen).sum() > 100 and drawn[outer & unseen].mean() > 0.9
    core = cv2.erode(person.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert drawn[core].mean() > 0.99
    # Where it repeats the reference pose, the reference saw every surface point inside its person.
    assert unseen[core].mean() < 0.005, unseen[core].mean()
