"""``animate.engines.wan_inputs`` geometry and arithmetic against boxes, pixels and counts worked out by hand
(upstream Wan2.2-Animate's ``padding_resize``, ``get_frame_indices``, ``get_aug_mask``; ../shared/research/
WAN_ANIMATE.md), and the pipeline's segment rule against a brute-force search written here."""

from __future__ import annotations

import numpy as np
import pytest

from animate.engines import wan_inputs as wi
from animate.errors import AnimateError

# (source w, h, box w, h) -> (scaled w, scaled h, x0, y0), by hand: scale to touch the tighter side, floor
# the scaled side, centre with the offset floored
GEOMETRY = {
    (100, 50, 64, 64): (64, 32, 0, 16),  # landscape into a square: 64 / 100 x 50 = 32, bars of 16
    (50, 100, 64, 64): (32, 64, 16, 0),  # portrait into a square
    (30, 70, 63, 48): (20, 48, 21, 0),  # 48 / 70 x 30 = 20.57 -> 20; (63 - 20) / 2 = 21.5 -> 21
    (70, 30, 48, 63): (48, 20, 0, 21),  # the transpose
    (100, 200, 50, 100): (50, 100, 0, 0),  # the same aspect: no bars
    (1920, 1080, 720, 1280): (720, 405, 0, 437),  # 720 / 1920 x 1080 = 405; (1280 - 405) / 2 = 437.5
}


@pytest.mark.parametrize("case", list(GEOMETRY))
def test_letterbox_geometry_by_hand(case) -> None:
    assert wi.letterbox_geometry(*case) == GEOMETRY[case]


def test_letterbox_places_a_landscape_source_between_bars_top_and_bottom() -> None:
    image = np.zeros((50, 100, 3), np.uint8)
    image[:, :, 0] = 200
    image[:, :, 2] = 7
    out = wi.letterbox(image, 64, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (out[16:48, :, 0] == 200).all() and (out[16:48, :, 2] == 7).all() and not out[16:48, :, 1].any()
    assert not out[:16].any() and not out[48:].any()


def test_letterbox_of_a_mask_keeps_two_dimensions_and_exact_values() -> None:
    mask = np.zeros((70, 30), np.uint8)  # box (20, 48) at x 21 in 63 x 48 (GEOMETRY above)
    mask[:, 15:] = 255
    out = wi.letterbox(mask, 63, 48, interpolation=0)  # nearest: masks stay 0 / 255
    assert out.shape == (48, 63) and set(np.unique(out)) == {0, 255}
    assert not out[:, :21].any() and not out[:, 41:].any()
    # the right half of the source (columns 15..29) lands on box columns 10..19: x 31..40
    assert (out[:, 31:41] == 255).all() and not out[:, 21:31].any()


def test_letterbox_shrinks_by_area_and_enlarges_bilinearly() -> None:
    # columns 0, 0, 255 repeated: shrinking 6 -> 2 by area averages each 3 columns to 85; a bilinear shrink
    # samples source columns 1 and 4 (x = (i + 0.5) x 3 - 0.5), both 0
    stripes = np.zeros((6, 6), np.uint8)
    stripes[:, 2::3] = 255
    assert (wi.letterbox(stripes, 2, 2) == 85).all()
    assert not wi.letterbox(stripes, 2, 2, interpolation=1).any()
    # enlarging 2 -> 4: bilinear gives the edge pixels and the thirds between them (0, 64, 191, 255);
    # an area enlargement would repeat each pixel twice
    ramp = np.array([[0, 255], [0, 255]], np.uint8)
    assert wi.letterbox(ramp, 4, 4)[0].tolist() == [0, 64, 191, 255]


def test_letterbox_keypoints_scale_and_shift_into_the_box() -> None:
    # 1920 x 1080 into 720 x 1280: scale 0.375 both ways, y + 437
    kp = np.array([[[0.0, 0.0, 0.9], [1920.0, 1080.0, 0.4], [100.0, 200.0, 0.0]]])
    out = wi.letterbox_keypoints(kp, 1920, 1080, 720, 1280)
    assert out.dtype == np.float32 and out.shape == kp.shape
    assert out[0, :, :2].tolist() == [[0.0, 437.0], [720.0, 405.0 + 437.0], [37.5, 75.0 + 437.0]]
    assert out[0, :, 2] == pytest.approx([0.9, 0.4, 0.0])
    assert kp[0, 1, 0] == 1920.0  # the input is not changed, float32 input included
    single = np.array([[1920.0, 1080.0, 1.0]], np.float32)
    wi.letterbox_keypoints(single, 1920, 1080, 720, 1280)
    assert single.tolist() == [[1920.0, 1080.0, 1.0]]
    # portrait into a square: x + 16, scale 0.64 on both axes
    assert wi.letterbox_keypoints(np.array([[50.0, 100.0, 1.0]]), 50, 100, 64, 64)[0, :2].tolist() == [48, 64]


def test_30_fps_indices_by_hand() -> None:
    # 5 frames at 10 fps (0.5 s) -> 15 frames at 30 fps, frame k shows source round(k / 3)
    assert wi.to_wan_rate(5, 10.0).tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4]
    # 6 frames at 60 fps -> 3 frames (0.1 s): source frames 0, 2, 4
    assert wi.to_wan_rate(6, 60.0).tolist() == [0, 2, 4]
    assert wi.to_wan_rate(2, 60.0).tolist() == [0, 1]  # 1 frame by the rate, at least 2
    assert wi.to_wan_rate(3, 30.0).tolist() == [0, 1, 2]  # the same rate: identity
    assert wi.to_wan_rate(5, 10.0).dtype.kind == "i" and wi.from_wan_rate(5, 10.0, 15).dtype.kind == "i"
    # back: output frame j at 10 fps takes the 30 fps frame 3 j, clipped to what was generated
    assert wi.from_wan_rate(5, 10.0, 15).tolist() == [0, 3, 6, 9, 12]
    assert wi.from_wan_rate(5, 10.0, 8).tolist() == [0, 3, 6, 7, 7]
    assert wi.from_wan_rate(3, 60.0, 2).tolist() == [0, 0, 1]  # round(0.5) = 0, round(1.0) = 1


def reference_segments(frames: int, length: int, overlap: int) -> list[tuple[int, int]]:
    """The pipeline's rule, searched: pad to the first T >= frames that segments tile exactly (each new
    segment adds ``length - overlap`` frames after the first ``overlap``), segment i at i x (length - overlap)."""
    total = frames
    while (total - overlap) % (length - overlap):
        total += 1
    starts = range(0, total - overlap, length - overlap)
    return [(start, start + length) for start in starts]


@pytest.mark.parametrize(("length", "overlap"), [(5, 1), (9, 1), (13, 5), (77, 1), (77, 5)])
def test_segments_match_the_searched_rule(length: int, overlap: int) -> None:
    for frames in range(2, 3 * length):
        got = wi.segments(frames, length, overlap)
        assert got == reference_segments(frames, length, overlap), frames
        if frames <= overlap:  # the pipeline counts no segment either (and then fails): the engine's guard
            assert got == []
            continue
        assert got[-1][1] >= frames and got[-1][1] - (length - overlap) < max(frames, length)


def test_segment_length_rounds_down_to_4n_plus_1() -> None:
    assert [wi.segment_length(n) for n in range(1, 14)] == [1, 1, 1, 1, 5, 5, 5, 5, 9, 9, 9, 9, 13]


@pytest.mark.parametrize(
    ("length", "overlap", "ok"),
    [(5, 1, True), (4, 1, False), (8, 1, True), (0, 1, False), (13, 5, True), (12, 5, False),
     (16, 5, True), (17, 5, True), (9, 5, False), (77, 5, True)],
)  # fmt: skip
def test_check_segments_boundaries(length: int, overlap: int, ok: bool) -> None:
    if ok:
        wi.check_segments(length, overlap)
        return
    with pytest.raises(AnimateError) as err:
        wi.check_segments(length, overlap)
    least = 5 if overlap == 1 else 13
    assert err.value.code == "invalid_option"
    assert err.value.message == (
        f"segment_frames must be >= {least} with overlap_frames {overlap}, got {length}"
    )


@pytest.mark.parametrize("overlap", [0, 2, 4, 6])
def test_check_segments_refuses_other_overlaps(overlap: int) -> None:
    with pytest.raises(AnimateError) as err:
        wi.check_segments(77, overlap)
    assert err.value.code == "invalid_option"
    assert err.value.message == f"overlap_frames must be 1 or 5, got {overlap}"


def test_generation_size_message_names_the_tiers() -> None:
    with pytest.raises(AnimateError) as err:
        wi.generation_size(640, 480, "4k")
    assert err.value.message == "resolution must be one of 480p, 720p"
    # 480p of a square: sqrt(399360) = 631.9 -> 624 both ways; 720p is the default tier
    assert wi.generation_size(1920, 1080) == (1280, 720)
    assert wi.generation_size(500, 500, "480p") == (624, 624)


def test_replace_mask_threshold_is_above_127() -> None:
    person = np.zeros((40, 40), np.uint8)
    person[20, 20] = 127  # not a person pixel
    empty = wi.replace_mask(person)
    assert empty.shape == (40, 40) and empty.dtype == np.uint8 and not empty.any()
    person[20, 20] = 128
    mask = wi.replace_mask(person)
    # one dot grows by 3 x 3 = 9 each way: rows and columns 11..29; the rectangle [11, 29) leaves 29 as dilated
    assert mask.dtype == np.uint8 and (mask[11:30, 11:30] == 255).all()
    assert not mask[:11].any() and not mask[30:].any() and not mask[:, :11].any() and not mask[:, 30:].any()


def test_keypoint_person_mask_is_the_hull_grown_by_a_tenth_of_the_height() -> None:
    kp = np.array(
        [[10, 10, 0.9], [30, 10, 0.9], [30, 50, 0.3], [10, 50, 0.9], [60, 70, 0.29], [5, 75, 0.0]], np.float64
    )
    mask = wi.keypoint_person_mask(kp, 80, 80)
    # seen: the rectangle x 10..30, y 10..50 (0.3 counts, 0.29 does not); pad int(0.1 x 40) = 4
    expected = np.zeros((80, 80), np.uint8)
    expected[6:55, 6:35] = 255
    assert np.array_equal(mask, expected) and mask.dtype == np.uint8
    # two seen points are no hull: an empty mask of the frame's size
    assert wi.keypoint_person_mask(kp[[0, 1, 4]], 80, 60).shape == (60, 80)
    assert not wi.keypoint_person_mask(kp[[0, 1, 4]], 80, 60).any()
    # a flat figure (height 0) still grows by 1 px
    flat = np.array([[10, 20, 1.0], [30, 20, 1.0], [20, 20, 1.0]])
    assert np.array_equal(np.nonzero(wi.keypoint_person_mask(flat, 40, 40).any(axis=1))[0], [19, 20, 21])


def test_background_blacks_out_any_positive_mask_value() -> None:
    frame = np.full((2, 3, 3), 90, np.uint8)
    mask = np.array([[0, 1, 255], [0, 0, 0]], np.uint8)
    bg = wi.background(frame, mask)
    assert bg.dtype == np.uint8
    assert bg[..., 0].tolist() == [[90, 0, 0], [90, 90, 90]]


def test_clip_input_normalises_each_channel_in_rgb_order() -> None:
    reference = np.zeros((20, 10, 3), np.uint8)
    reference[..., 0], reference[..., 1], reference[..., 2] = 255, 0, 51
    mean, std = (0.5, 0.25, 0.2), (0.5, 0.25, 0.1)
    out = wi.clip_input(reference, 8, mean, std)
    assert out.shape == (1, 3, 8, 8) and out.dtype == np.float32
    # (1 - 0.5) / 0.5 = 1; (0 - 0.25) / 0.25 = -1; (0.2 - 0.2) / 0.1 = 0
    assert out[0, 0] == pytest.approx(np.ones((8, 8))) and out[0, 1] == pytest.approx(-np.ones((8, 8)))
    assert out[0, 2] == pytest.approx(np.zeros((8, 8)), abs=1e-6)
    # bicubic (OpenCV's a = -0.75): doubling a 0 | 255 step, the pixel a quarter past column 3 takes
    # 255 x (w(0.75) + w(1.75)) = 255 x (0.26171875 - 0.03515625) = 57.8 -> 58 (bilinear: 64, area: 0)
    step = np.zeros((4, 8, 3), np.uint8)
    step[:, 4:] = 255
    row = wi.clip_input(step, 16, (0, 0, 0), (1, 1, 1))[0, 0, 0]
    assert row[7] == pytest.approx(58 / 255) and row[8] == pytest.approx(197 / 255)
