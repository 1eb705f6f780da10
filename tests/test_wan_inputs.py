"""Wan2.2-Animate inputs (``animate.engines.wan_inputs``, ``animate.face.wan``) against hand-computed values and
the sheet's measured numbers (../shared/research/WAN_ANIMATE.md sections 1, 3, 4)."""

from __future__ import annotations

import numpy as np
import pytest

from animate.engines import wan_inputs as wi
from animate.errors import AnimateError
from animate.face.wan import crop_face, face_box, face_boxes


@pytest.mark.parametrize(
    ("source", "expected"),
    [((1920, 1080), (1280, 720)), ((1080, 1920), (720, 1280)), ((640, 480), (1104, 816)),
     ((720, 720), (960, 960)), ((832, 480), (1248, 720))],
)  # fmt: skip
def test_generation_size_matches_upstreams_measured_sizes(source, expected) -> None:
    assert wi.generation_size(*source, "720p") == expected


def test_480p_tier_and_bad_tier() -> None:
    # area 832 x 480 = 399,360 at 16:9: h = sqrt(399360 / (16/9)) = 474.0 -> 464; w = 399360 / 474.0 = 842.5 -> 832
    assert wi.generation_size(1920, 1080, "480p") == (832, 464)
    with pytest.raises(AnimateError) as err:
        wi.generation_size(1920, 1080, "1080p")
    assert err.value.code == "invalid_option"


def test_letterbox_puts_black_bars_around_the_scaled_source() -> None:
    image = np.full((100, 50, 3), 200, np.uint8)  # portrait into a square: bars left and right
    out = wi.letterbox(image, 64, 64)
    # scaled to 32 x 64, centred at x = 16
    assert (out[:, 16:48] == 200).all()
    assert not out[:, :16].any() and not out[:, 48:].any()
    kp = wi.letterbox_keypoints(np.array([[50.0, 100.0, 0.7]]), 50, 100, 64, 64)
    assert kp.tolist() == [[16 + 32.0, 64.0, pytest.approx(0.7)]]


def test_face_box_rule_on_known_landmarks() -> None:
    """Sheet, measured upstream: landmarks spanning x 400-600, y 300-500 on a 1000^2 frame -> x 385-614,
    y 278-507 (area x 1.3, x grows half the gain each side, the top 3/4 of the height gain)."""
    xs, ys = np.meshgrid(np.linspace(400, 600, 9), np.linspace(300, 500, 8))
    points = np.stack([xs.ravel()[:68], ys.ravel()[:68]], 1)
    points[-1] = (600, 500)
    assert face_box(points, 1000, 1000) == (385, 614, 278, 507)
    # clipped to the frame
    assert face_box(points - 390, 1000, 1000)[0] == 0 and face_box(points - 290, 1000, 1000)[2] == 0


def _with_face(box: tuple[float, float, float, float]) -> np.ndarray:
    kp = np.zeros((133, 3), np.float32)
    x0, y0, x1, y1 = box
    kp[23:91, 0] = np.linspace(x0, x1, 68)
    kp[23:91, 1] = np.linspace(y0, y1, 68)[::-1]
    kp[23:91, 2] = 1
    return kp


def test_a_missing_face_is_held_from_the_last_good_frame() -> None:
    frames = np.stack(
        [_with_face((100, 100, 200, 200)), _with_face((300, 100, 400, 200)), np.zeros((133, 3))]
    )
    missing_first = np.stack([np.zeros((133, 3)), _with_face((300, 100, 400, 200))])
    boxes = face_boxes(frames, 1000, 1000)
    assert boxes[2] == boxes[1] != boxes[0]
    assert face_boxes(missing_first, 1000, 1000)[0] == face_boxes(missing_first, 1000, 1000)[1]
    partial = _with_face((300, 100, 400, 200))
    partial[23:60, 2] = 0  # 31 of 68 points seen: too few, held
    assert face_boxes(np.stack([frames[0], partial]), 1000, 1000)[1] == boxes[0]


def test_no_face_anywhere_falls_back_to_the_head_points() -> None:
    kp = np.zeros((1, 133, 3), np.float32)
    kp[0, 0] = (500, 200, 1)  # nose
    kp[0, 5] = (560, 300, 1)  # shoulders 120 px apart -> a 72 px square around the nose
    kp[0, 6] = (440, 300, 1)
    assert face_boxes(kp, 1000, 1000) == [(464, 536, 164, 236)]


def test_crop_is_stretched_to_512() -> None:
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[20:40, 10:70] = 255
    crop = crop_face(frame, (10, 70, 20, 40))
    assert crop.shape == (512, 512, 3) and (crop == 255).all()


def test_a_real_face_from_the_talking_head_lands_centred() -> None:
    """MediaPipe's 68 points on a frame of the shared talking head: in the 512 crop the nose tip (iBUG 30) lies
    in the middle band (the head is a little turned), the eyes in the upper half, the mouth in the lower half,
    with margin on every side (the box grows beyond the landmarks)."""
    from animate.media import open_video
    from animate.pose import MediaPipeEstimator

    video = open_video("../shared/data/driving/talking_head_animateanyone.mp4")
    frame = next(iter(video.frames(max_frames=1)))
    with MediaPipeEstimator(static=True, whole_body=True, segmentation=False) as estimator:
        kp = estimator.detect(frame)[0].keypoints
    height, width = frame.shape[:2]
    assert (kp[23:91, 2] > 0).all()
    (box,) = face_boxes(kp[None], width, height)
    x0, x1, y0, y1 = box
    nose = kp[23 + 30, :2]
    u, v = (nose[0] - x0) / (x1 - x0), (nose[1] - y0) / (y1 - y0)
    assert 0.3 < u < 0.7 and 0.35 < v < 0.75
    for eye in (range(36, 42), range(42, 48)):
        ex, ey = kp[[23 + i for i in eye], :2].mean(axis=0)
        assert x0 < ex < x1 and y0 < ey < (y0 + y1) / 2
    mx, my = kp[23 + 48 : 23 + 68, :2].mean(axis=0)
    assert x0 < mx < x1 and (y0 + y1) / 2 < my < y1
    face = kp[23:91, :2]
    assert face[:, 0].min() > x0 and face[:, 0].max() < x1 and face[:, 1].min() > y0 and face[:, 1].max() < y1
    crop = crop_face(frame, box)
    assert crop.shape == (512, 512, 3) and crop.std() > 10


def test_replace_mask_is_the_dilated_bounding_rectangle_in_exact_0_255() -> None:
    person = np.zeros((64, 64), np.uint8)
    person[10, 10] = 255
    person[30, 40] = 255
    mask = wi.replace_mask(person)
    assert set(np.unique(mask)) == {0, 255}
    # 7x7 three times grows each dot by 9: boxes x 1..19 / 31..49, y 1..19 / 21..39; their hull is
    # x 1..49, y 1..39, filled over [1, 39) x [1, 49) (upstream's 1x1 grid leaves the last row/column as dilated)
    assert (mask[1:39, 1:49] == 255).all()
    assert mask[5, 45] == 255  # inside the rectangle, far from both dots
    assert mask[39, 5] == 0 and mask[39, 35] == 255  # last row: only the dilated dot
    assert not mask[:1].any() and not mask[40:].any() and not mask[:, :1].any() and not mask[:, 50:].any()
    assert not wi.replace_mask(np.zeros((8, 8), np.uint8)).any()


def test_background_blacks_out_the_mask() -> None:
    frame = np.full((4, 4, 3), 90, np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 255
    bg = wi.background(frame, mask)
    assert not bg[1:3, 1:3].any() and (bg[0] == 90).all()


def test_30_fps_resampling_and_back() -> None:
    # 8 frames at 24 fps = 1/3 s -> 10 frames at 30 fps, source index round(k / 30 * 24)
    assert wi.to_wan_rate(8, 24.0).tolist() == [0, 1, 2, 2, 3, 4, 5, 6, 6, 7]
    # output frame j at 24 fps takes 30 fps frame round(j / 24 * 30) (numpy rounds half to even)
    back = wi.from_wan_rate(8, 24.0, 10)
    assert back.tolist() == [0, 1, 2, 4, 5, 6, 8, 9]
    # composing both: every output frame shows the driving frame of its own time
    assert wi.to_wan_rate(8, 24.0)[back].tolist() == list(range(8))
    assert len(wi.from_wan_rate(300, 29.97, len(wi.to_wan_rate(300, 29.97)))) == 300
    assert wi.to_wan_rate(1, 25.0).tolist() == [0, 0]  # the pipeline cannot pad a 1-frame list


def test_segments_follow_the_pipelines_rule() -> None:
    assert wi.segment_length(77) == 77 and wi.segment_length(80) == 77 and wi.segment_length(11) == 9
    assert wi.segments(17, 9, 1) == [(0, 9), (8, 17)]
    assert wi.segments(21, 13, 5) == [(0, 13), (8, 21)]
    assert wi.segments(10, 9, 1) == [(0, 9), (8, 17)]  # padded to 17
    assert wi.segments(77, 77, 1) == [(0, 77)]
    assert len(wi.segments(78, 77, 5)) == 2
    with pytest.raises(AnimateError):
        wi.check_segments(77, 2)
    with pytest.raises(AnimateError):
        wi.check_segments(8, 5)  # rounds to 5: no room after 5 overlap frames
    with pytest.raises(AnimateError):
        wi.check_segments(9, 5)  # the pipeline would count T // 4 = one segment too many and fail its assert
    wi.check_segments(13, 5)
    wi.check_segments(5, 1)
